"""`picluster upgrade`: move the running cluster to the release cluster.yaml names, node by node,
in kubeadm's documented order (kubernetes/website content/en/docs/tasks/administer-cluster/
kubeadm/kubeadm-upgrade.md, upgrading-linux-nodes.md; ../shared/reference day2-facts.md §A): the
first control plane (`kubeadm upgrade apply`), the other control planes one at a time, then the
workers one at a time (`kubeadm upgrade node`); each drained before its kubelet moves and
uncordoned once it is Ready at the new release.

The node's own steps run on it over SSH, as `picluster verify` reaches it, through its agent
(`picluster-agent upgrade`); draining, uncordoning and the wait for Ready go through the API
server. Every step done is recorded in the state folder (upgrade.json) as it ends, so a run cut
off anywhere (Ctrl-C, a lost link, a failed node) resumes at the step it stopped in; the release
is recorded (release.json) once every node runs it, and cards are built for it from then on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.cluster import api
from builder.cluster.drain import Stuck, drain
from builder.cluster.ssh import NodeFailed, NodeShell
from builder.errors import UserError
from builder.files import read_json_record, write_atomic
from builder.progress import Reporter
from builder.render.images import node_images
from builder.secrets import release
from builder.secrets.pki import ClusterSecrets
from builder.spec.model import Cluster, Node
from builder.spec.releases import Release

PROGRESS_FILE = "upgrade.json"
FIRST = ("kubeadm", "apply", "drain", "kubelet", "uncordon", "ready")
CONTROL_PLANE = ("kubeadm", "node", "drain", "kubelet", "uncordon", "ready")
WORKER = ("kubeadm", "drain", "node", "kubelet", "uncordon", "ready")
ON_THE_NODE = ("kubeadm", "apply", "node", "kubelet")
"""Steps the node's agent runs (agent/upgrade.py); the others go through the API server."""
DRAIN_S = 300.0
READY_S = 600.0
POLL_S = 2.0
AGENT = "/usr/sbin/picluster-agent"


@dataclass(frozen=True)
class NodeSteps:
    node: Node
    steps: tuple[str, ...]
    role: str


def order(cluster: Cluster) -> list[NodeSteps]:
    """The first control plane, the other control planes, then the workers, as cluster.yaml lists them."""
    first = cluster.init_node
    planes = [n for n in cluster.control_planes if n.name != first.name]
    workers = [n for n in cluster.nodes if n.role != "control-plane"]
    return [
        NodeSteps(first, FIRST, "first control plane"),
        *(NodeSteps(n, CONTROL_PLANE, "control plane") for n in planes),
        *(NodeSteps(n, WORKER, "worker") for n in workers),
    ]


def describe_step(step: str, to: Release) -> str:
    return {
        "kubeadm": f"kubeadm {to}",
        "apply": f"kubeadm upgrade apply v{to}",
        "node": "kubeadm upgrade node",
        "drain": "drain",
        "kubelet": f"kubelet and kubectl {to}, restart",
        "uncordon": "uncordon",
        "ready": f"Ready at v{to}",
    }[step]


def format_plan(cluster: Cluster, running: Release, wanted: Release, done: dict[str, list[str]]) -> str:
    """What the upgrade does, before it does anything: per node in order, its steps (those done
    by an earlier run marked), the apt repository, and the images the new release runs."""
    new = cluster.kubernetes_repository
    old = new.replace(f"/v1.{wanted.minor}/", f"/v1.{running.minor}/")
    repository = (
        f"the apt repository stays {new}"
        if running.minor == wanted.minor
        else f"the apt repository moves from {old} to {new}"
        if old != new
        else f"the apt repository for 1.{wanted.minor} is {new} (cluster.kubernetes_repository)"
    )
    lines = [f"upgrade Kubernetes {running} -> {wanted}: {repository}"]
    for index, item in enumerate(order(cluster), 1):
        steps = [
            describe_step(step, wanted) + (" (done)" if step in done.get(item.node.name, []) else "")
            for step in item.steps
        ]
        lines.append(f"  {index}. {item.node.name} ({item.role}): {', '.join(steps)}")
    for role, node in _one_of_each_role(cluster):
        listed = node_images(cluster, node).references
        lines.append(f"  images a {role} runs at {wanted} (its node pulls those it lacks):")
        lines += [f"    {reference}" for reference in listed]
    return "\n".join(lines)


def _one_of_each_role(cluster: Cluster) -> list[tuple[str, Node]]:
    workers = [n for n in cluster.nodes if n.role != "control-plane"]
    return [("control plane", cluster.init_node), *([("worker", workers[0])] if workers else [])]


@dataclass
class Progress:
    running: Release
    wanted: Release
    done: dict[str, list[str]]

    @classmethod
    def load(cls, state_dir: Path) -> Progress | None:
        path = state_dir / PROGRESS_FILE
        try:
            raw = read_json_record(path)  # a FIFO would block; it is damaged, as said below
        except FileNotFoundError:
            return None
        try:
            done = {str(node): [str(step) for step in steps] for node, steps in raw["done"].items()}
            return cls(Release.of(raw["from"]), Release.of(raw["to"]), done)
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UserError(
                f"{path} is damaged: it records how far an upgrade has come",
                "delete it and run picluster upgrade again: it starts from the first node, and every "
                "step is safe to run again",
            ) from None

    def save(self, state_dir: Path) -> None:
        raw = {"from": str(self.running), "to": str(self.wanted), "done": self.done}
        write_atomic(state_dir / PROGRESS_FILE, json.dumps(raw, indent=2).encode() + b"\n", 0o600)


def upgrade(
    cluster: Cluster,
    secrets: ClusterSecrets,
    state_dir: Path,
    progress: Progress,
    shell: NodeShell,
    reporter: Reporter,
    connect: api.Connect = api.connect,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Every step not yet done, in order, each recorded as it ends; then the release."""
    start = time.monotonic()
    to = progress.wanted
    for item in order(cluster):
        name = item.node.name
        for step in item.steps:
            if step in progress.done.setdefault(name, []):
                continue
            reporter.say(f"[{_elapsed(start)}] {name}: {describe_step(step, to)}")
            try:
                if step in ON_THE_NODE:
                    command = [AGENT, "upgrade", "--to", str(to), "--repository",
                               cluster.kubernetes_repository, step]  # fmt: skip
                    shell(item.node, command)
                else:
                    with connect(cluster.api_endpoint, secrets) as server:
                        _api_step(server, name, step, to, sleep)
            except (NodeFailed, Stuck, api.Unreachable) as error:
                raise UserError(
                    f"the upgrade to {to} stopped at {name}, step {describe_step(step, to)}: {error}\n"
                    f"  {name} is {_where(item, progress.done[name])}",
                    f"fix the cause on {name} (its `sudo picluster-agent status` and journal say more), "
                    f"then run picluster upgrade again: it goes on from this step",
                ) from None
            progress.done[name].append(step)
            progress.save(state_dir)
    release.record(state_dir, to)
    (state_dir / PROGRESS_FILE).unlink()
    reporter.say(f"[{_elapsed(start)}] every node runs Kubernetes {to}; cards are built for it from now on")


def _api_step(
    server: api.ClusterAPI, name: str, step: str, to: Release, sleep: Callable[[float], None]
) -> None:
    if step == "drain":
        drain(server, name, DRAIN_S, sleep)
    elif step == "uncordon":
        api.set_unschedulable(server, name, False)
    else:
        end = time.monotonic() + READY_S
        while not _ready_at(api.get_node(server, name), to):
            if time.monotonic() > end:
                raise NodeFailed(f"not Ready at v{to} within {READY_S:g} s (its kubelet's journal says why)")
            sleep(POLL_S)


def _ready_at(node: dict[str, Any] | None, to: Release) -> bool:
    status = (node or {}).get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    return ready and (status.get("nodeInfo") or {}).get("kubeletVersion") == f"v{to}"


def _where(item: NodeSteps, done: list[str]) -> str:
    """The node's state after the steps done, in words."""
    if "uncordon" in done:
        return "upgraded and schedulable"
    if "drain" in done:
        return "cordoned, its pods moved elsewhere: it takes no new pods until the upgrade goes on"
    if {"apply", "node"} & set(done):
        return "running the new release's kubeadm configuration, its kubelet not yet upgraded"
    if "kubeadm" in done:
        return "holding the new kubeadm only; it runs as before"
    return "as it was"


def _elapsed(start: float) -> str:
    seconds = int(time.monotonic() - start)
    return f"{seconds // 60:2d}m{seconds % 60:02d}s"
