"""`picluster backup`: the cluster's etcd, fetched from a control plane into the state folder.

Each control plane keeps its newest etcd snapshots on its card (overlays' agent/snapshot.py,
daily). The backup asks the control planes in turn, over SSH as `picluster verify` reaches them,
for a fresh one (`picluster-agent snapshot --send`: saved, read back with etcdutl, and printed
as JSON; the newest kept one when etcd does not answer), checks it against the SHA-256 the node
computed, and keeps it in the state folder (builder.secrets.snapshot), which the archive holds.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from builder.cluster.ssh import NodeFailed, NodeShell
from builder.secrets import snapshot
from builder.spec.model import Cluster

AGENT = "picluster-agent"


class NoSnapshot(Exception):
    """No control plane sent one; the message says what each said."""


def fetch(
    cluster: Cluster, shell: NodeShell, state_dir: Path, say: Callable[[str], None]
) -> snapshot.Snapshot:
    """The first control plane's snapshot that arrives whole, saved in the state folder (keeping
    the record's `restore`); raises NoSnapshot."""
    reasons = []
    for plane in cluster.control_planes:
        say(f"asking {plane.name} ({plane.address.ip}) for an etcd snapshot over SSH")
        try:
            output = shell(plane, [AGENT, "snapshot", "--send"])
            taken, data = _read(output, plane.name)
        except NodeFailed as error:
            reasons.append(f"{plane.name}: {error}")
            continue
        previous = snapshot.load(state_dir)
        if previous is not None and previous.restore:
            taken = replace(taken, restore=True)
        snapshot.save(state_dir, taken, data)
        return taken
    raise NoSnapshot("; ".join(reasons))


def _read(output: str, node: str) -> tuple[snapshot.Snapshot, bytes]:
    """The agent's last line: the snapshot and what it says of it, checked."""
    lines = output.strip().splitlines()
    try:
        sent = json.loads(lines[-1])
        data = base64.b64decode(sent["data"], validate=True)
        taken = snapshot.Snapshot(
            node=node,
            taken_at=str(sent["taken_at"]),
            revision=int(sent["revision"]),
            keys=int(sent["keys"]),
            sha256=str(sent["sha256"]),
        )
    except (IndexError, ValueError, KeyError, TypeError, binascii.Error):
        raise NodeFailed(f"its agent did not send a snapshot: {(lines or ['(nothing)'])[-1][:200]}") from None
    if hashlib.sha256(data).hexdigest() != taken.sha256:
        raise NodeFailed("the snapshot arrived damaged (its SHA-256 is not the one the node sent)")
    return taken, data
