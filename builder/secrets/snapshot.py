"""The cluster's newest etcd snapshot, kept in the state folder beside its CAs.

`picluster backup` fetches it from a control plane (builder.cluster.snapshot) and writes it here
(`etcd-snapshot.db`, 0600: it holds every Secret of the cluster in clear) with its record
(`etcd-snapshot.json`: where and when it was taken, its revision, keys and SHA-256), so the
backup archive that holds the folder holds the whole cluster. `picluster replace` of the only
control plane sets `restore` in the record: from then on that node's cards restore the snapshot
the folder holds when they are built (agent/snapshot.py), instead of starting an empty cluster.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from builder.errors import UserError
from builder.files import read_json_record, write_atomic

SNAPSHOT_FILE = "etcd-snapshot.db"
RECORD_FILE = "etcd-snapshot.json"
PENDING_FILE = "etcd-snapshot.db.pending"
"""A snapshot being saved: written whole under this name, then its record, then it takes its own
name, so a save killed anywhere leaves a pair that matches (load finishes or drops it)."""


@dataclass(frozen=True)
class Snapshot:
    node: str
    """The control plane it was taken on."""
    taken_at: str
    revision: int
    keys: int
    sha256: str
    restore: bool = False
    """The first control plane's cards restore it (its card was replaced: the only one died)."""

    def describe(self) -> str:
        return f"taken on {self.node} at {self.taken_at}: {self.keys} keys at revision {self.revision}"


def save(state_dir: Path, taken: Snapshot, data: bytes) -> None:
    """The snapshot under its pending name, its record, then the snapshot under its own name."""
    write_atomic(state_dir / PENDING_FILE, data, 0o600)
    _write_record(state_dir, taken)
    os.replace(state_dir / PENDING_FILE, state_dir / SNAPSHOT_FILE)


def load(state_dir: Path) -> Snapshot | None:
    """The record; None when no snapshot was ever fetched. A damaged record is refused. A save
    that was killed is finished first when its record was written, else dropped."""
    path = state_dir / RECORD_FILE
    pending = state_dir / PENDING_FILE
    try:
        raw = read_json_record(path)
    except FileNotFoundError:
        pending.unlink(missing_ok=True)
        return None
    try:
        taken = Snapshot(**raw) if isinstance(raw, dict) else None
    except TypeError:  # a key missing or unknown
        taken = None
    typed = taken is not None and all(
        isinstance(getattr(taken, key), kind)
        for key, kind in (("node", str), ("taken_at", str), ("sha256", str), ("revision", int),
                          ("keys", int), ("restore", bool))
    )  # fmt: skip
    if taken is None or not typed:
        raise _damaged(path)
    if pending.exists():
        if hashlib.sha256(pending.read_bytes()).hexdigest() == taken.sha256:
            os.replace(pending, state_dir / SNAPSHOT_FILE)  # killed after its record
        else:
            pending.unlink()  # killed before its record: the previous pair stands
    return taken


def data(state_dir: Path, taken: Snapshot) -> bytes:
    """The snapshot's bytes, checked against its record."""
    path = state_dir / SNAPSHOT_FILE
    try:
        content = path.read_bytes()
    except OSError:
        raise _damaged(path) from None
    if hashlib.sha256(content).hexdigest() != taken.sha256:
        raise _damaged(path)
    return content


def mark_restore(state_dir: Path, taken: Snapshot) -> Snapshot:
    marked = replace(taken, restore=True)
    _write_record(state_dir, marked)
    return marked


def _write_record(state_dir: Path, taken: Snapshot) -> None:
    write_atomic(state_dir / RECORD_FILE, json.dumps(asdict(taken), indent=2).encode() + b"\n", 0o600)


def _damaged(path: Path) -> UserError:
    return UserError(
        f"{path} is damaged: the etcd snapshot and its record ({SNAPSHOT_FILE}, {RECORD_FILE}) do not match",
        "remove both and run picluster backup where a control plane answers (it fetches a new one), "
        "or restore both from your backup",
    )
