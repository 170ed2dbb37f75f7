"""The settings a running cluster cannot change, recorded in the state folder (`settings.json`)
when its secrets are made: a cluster.yaml edited afterwards is refused, field by field, before a
card is written that does not fit the cluster its secrets belong to.

Swapping two nodes' roles, say, would make a worker run a second `kubeadm init` with the same CA.
A state folder made before the record existed gets one from the cluster.yaml of the day.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from builder.errors import ConfigError, Problem, UserError
from builder.files import read_json_record, write_atomic
from builder.spec.model import Cluster

SETTINGS_FILE = "settings.json"


@dataclass(frozen=True)
class Fixed:
    field: str
    value: Callable[[Cluster], str]
    why: str


FIXED = (
    Fixed("cluster.name", lambda c: c.cluster.name, "kubeadm made the cluster under this name"),
    Fixed(
        "cluster.pod_subnet",
        lambda c: str(c.cluster.pod_subnet),
        "kubeadm init fixed it, and flannel gives each node its slice of it",
    ),
    Fixed(
        "cluster.control_plane_endpoint",
        lambda c: c.cluster.control_plane_endpoint or "(none)",
        "it is in the API server's certificate and in every joined node's kubeconfig; a cluster "
        "made without one keeps its one control plane: more need a new cluster with the endpoint "
        "set from the start",
    ),
    Fixed(
        "the first control plane",
        lambda c: c.init_node.name,
        "that node runs kubeadm init: another would start a second cluster with the same CA",
    ),
)


def settings_of(cluster: Cluster) -> dict[str, str]:
    return {fixed.field: fixed.value(cluster) for fixed in FIXED}


def encoded(cluster: Cluster) -> bytes:
    return json.dumps(settings_of(cluster), indent=2).encode() + b"\n"


def record(state_dir: Path, cluster: Cluster) -> None:
    write_atomic(state_dir / SETTINGS_FILE, encoded(cluster), 0o600)


def load_record(state_dir: Path) -> dict[str, str] | None:
    """The recorded settings; None for a state folder made before they were recorded."""
    path = state_dir / SETTINGS_FILE
    try:
        raw = read_json_record(path)
    except FileNotFoundError:
        return None
    fields = [fixed.field for fixed in FIXED]
    if (
        not isinstance(raw, dict)
        or sorted(raw) != sorted(fields)
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise UserError(
            f"{path} is damaged: it records the settings a running cluster cannot change "
            f"({', '.join(fields)})",
            "restore it from your backup of the state folder (picluster restore FILE), or delete it "
            "to record them again from cluster.yaml as it is now",
        )
    return raw


def check(source: str, cluster: Cluster, recorded: dict[str, str], state_dir: Path) -> None:
    """Refuse a cluster.yaml whose fixed settings differ from those recorded, naming each."""
    now = settings_of(cluster)
    problems = [
        Problem(
            fixed.field,
            f"was {recorded[fixed.field]} when the cluster's secrets were made, now {now[fixed.field]}; "
            f"a running cluster cannot change it ({fixed.why})",
            f"put it back ({recorded[fixed.field]}), or start a new cluster with a new state folder "
            f"(move {state_dir} away and keep it); if no node of this cluster has ever booted, delete "
            f"{state_dir / SETTINGS_FILE} instead",
        )
        for fixed in FIXED
        if recorded[fixed.field] != now[fixed.field]
    ]
    if problems:
        raise ConfigError(source, problems)
