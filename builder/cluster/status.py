"""`picluster status`: per node in cluster.yaml, whether its image is built, stale (and why) or
missing, and, when the API server answers, the node's Ready condition, kubelet version and
address; nodes the cluster has that cluster.yaml does not are listed too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from builder.cluster import api
from builder.image.outputs import (
    IMAGE_SUFFIXES,
    NodeOutputs,
    build_record,
    mismatched_set,
    read_record,
    recorded_images,
    stale_reasons,
)
from builder.render.plan import NodePlan
from builder.spec.releases import Release

CERTIFICATE_WARNING_DAYS = 30
"""The control planes renew kubeadm's certificates from RENEW_WITHIN_DAYS (30) days before they
expire (overlays' agent/certs.py): an API server certificate closer to its end than that was not."""


@dataclass
class NodeStatus:
    name: str
    image: str  # built | stale | missing
    why: list[str] = field(default_factory=list)
    ready: str | None = None  # True | False | Unknown | None when the cluster was not asked
    kubelet: str | None = None
    internal_ip: str | None = None


def image_status(plans: list[NodePlan], images: Path, base_key: str) -> list[NodeStatus]:
    statuses = []
    for plan in plans:
        present = any((images / f"{plan.node}.img{suffix}").exists() for suffix in IMAGE_SUFFIXES)
        outputs = NodeOutputs(images, plan.node, None)
        if not present or not outputs.record.exists():
            statuses.append(NodeStatus(plan.node, "missing", ["not built yet"]))
            continue
        stored = read_record(outputs)
        if stored is None:
            statuses.append(NodeStatus(plan.node, "stale", [f"{outputs.record.name} is damaged; rebuild"]))
            continue
        # the registries are not asked whether a tag moved: the images are taken as recorded
        wanted = build_record(plan, base_key, None, stored.get("compress"), recorded_images(outputs))
        mismatch = mismatched_set(NodeOutputs(images, plan.node, stored.get("compress")), stored)
        reasons = stale_reasons(stored, wanted) + ([mismatch] if mismatch else [])
        statuses.append(NodeStatus(plan.node, "stale" if reasons else "built", reasons))
    return statuses


def add_cluster_view(statuses: list[NodeStatus], nodes: list[Any]) -> tuple[list[NodeStatus], int]:
    """Fill in what the cluster says of each node; add the ones cluster.yaml does not have. What
    cannot be read of a node (the answer is not as Kubernetes writes it) shows as unknown; node
    objects without a name are left out and counted."""
    by_name = {status.name: status for status in statuses}
    unnamed = 0
    for item in nodes:
        name = api.node_name(item)
        if not name:
            unnamed += 1
            continue
        status = by_name.get(name) or NodeStatus(name, "not in cluster.yaml")
        if name not in by_name:
            statuses.append(status)
            by_name[name] = status
        status.ready = node_ready(item)
        status.kubelet = _text(_field(item, "status", "nodeInfo", "kubeletVersion"))
        status.internal_ip = _internal_ip(_field(item, "status", "addresses"))
    for status in statuses:
        if status.ready is None and status.image != "not in cluster.yaml":
            status.ready = "not joined"
    return statuses, unnamed


def _field(item: Any, *path: str) -> Any:
    """item[path[0]][path[1]]..., or None where a step is missing or not a mapping."""
    for key in path:
        if not isinstance(item, dict):
            return None
        item = item.get(key)
    return item


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def node_ready(item: Any) -> str:
    """A node object's Ready condition's status (Unknown when the node has none, as Kubernetes
    says of a node it has not heard from); "unknown" when the conditions cannot be read."""
    conditions = _field(item, "status", "conditions")
    if not isinstance(conditions or [], list):
        return "unknown"
    ready = next((c for c in conditions or [] if _field(c, "type") == "Ready"), {"status": "Unknown"})
    return _text(_field(ready, "status")) or "unknown"


def _internal_ip(addresses: Any) -> str | None:
    if not isinstance(addresses, list):
        return None
    return next((_text(_field(a, "address")) for a in addresses if _field(a, "type") == "InternalIP"), None)


def format_status(statuses: list[NodeStatus], cluster_note: str, warnings: list[str]) -> str:
    """`warnings`: what is wrong (a bootstrap token of a node not joined, a certificate about to
    expire), each with its fix."""
    rows = [("node", "image", "ready", "kubelet", "address")]
    rows += [(s.name, s.image, s.ready or "-", s.kubelet or "-", s.internal_ip or "-") for s in statuses]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += [f"{s.name}: {s.image}: {'; '.join(s.why)}" for s in statuses if s.image == "stale"]
    lines.append(cluster_note)
    lines += [f"warning: {line}" for line in warnings]
    return "\n".join(lines)


def as_json(statuses: list[NodeStatus], cluster_note: str, warnings: list[str]) -> str:
    return json.dumps(
        {"nodes": [asdict(s) for s in statuses], "cluster": cluster_note, "warnings": warnings}, indent=2
    )


def server_note(version: str, expires: datetime, now: datetime) -> str:
    """What the API server says of itself: its release and when its certificate expires."""
    return (
        f"Kubernetes {version}, its certificate expires {expires:%Y-%m-%d} (in {(expires - now).days} days)"
    )


def server_warnings(
    version: str, recorded: Release | None, expires: datetime, now: datetime, control_plane: str
) -> list[str]:
    """A certificate within CERTIFICATE_WARNING_DAYS of expiring, whose control planes have not renewed
    it; a release other than the one picluster recorded (an upgrade made by hand, or cut off)."""
    warnings = []
    left = expires - now
    if left < timedelta(days=CERTIFICATE_WARNING_DAYS):
        warnings.append(
            f"the API server's certificate expires {expires:%Y-%m-%d %H:%M} UTC, in {left.days} days, and "
            "the control planes renew theirs from 30 days before: on each (e.g. ssh "
            f"{control_plane}), `sudo picluster-agent status` shows the last check and "
            "`journalctl -u picluster-certs` why it failed"
        )
    if recorded is not None and version.removeprefix("v") != str(recorded):
        warnings.append(
            f"the API server runs {version}, but picluster recorded {recorded} as the cluster's release: "
            "cards are built for the recorded one; picluster upgrade records the release it moves the "
            "cluster to"
        )
    return warnings
