"""The Kubernetes release the cluster runs, recorded in the state folder (`release.json`).

The first `build` records cluster.kubernetes as the release the cluster is born at, and
`picluster upgrade` records the new one once every node runs it; in between, cluster.yaml may
name a newer release (the one to upgrade to), but no card is built for it: a kubelet newer than
its API server is unsupported (kubernetes/website content/en/releases/version-skew-policy.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from builder.errors import UserError
from builder.files import read_json_record, write_atomic
from builder.spec.model import KUBERNETES_VERSION
from builder.spec.releases import ETCD, Release

RELEASE_FILE = "release.json"


def record(state_dir: Path, release: Release) -> None:
    data = json.dumps({"kubernetes": str(release)}, indent=2).encode() + b"\n"
    write_atomic(state_dir / RELEASE_FILE, data, 0o600)


def load(state_dir: Path) -> Release | None:
    """The recorded release; None before the first build recorded one."""
    path = state_dir / RELEASE_FILE
    try:
        raw = read_json_record(path)
    except FileNotFoundError:
        return None
    version = raw.get("kubernetes") if isinstance(raw, dict) else None
    match = KUBERNETES_VERSION.fullmatch(version) if isinstance(version, str) else None
    if not match or int(match[1]) not in ETCD:
        raise UserError(
            f"{path} is damaged: it records the Kubernetes release the cluster runs",
            'restore it from your backup of the state folder, or write {"kubernetes": "1.X.Y"} into '
            "it with the release `kubectl version` shows for the server",
        )
    return Release(int(match[1]), int(match[2]))
