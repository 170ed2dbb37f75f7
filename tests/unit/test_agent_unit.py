"""The agent as it lands on a card: its files, and its systemd unit, enabled and ordered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from builder.render.node import render_node
from builder.render.plan import NodePlan
from builder.render.tree import write_trees
from builder.secrets.pki import ClusterSecrets
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED

UNIT = "usr/lib/systemd/system/picluster-agent.service"


@pytest.fixture(params=["cp1", "w1"])
def plan(request: pytest.FixtureRequest, secrets: ClusterSecrets) -> NodePlan:
    cluster = load_cluster(BUNDLED)
    (node,) = [n for n in cluster.nodes if n.name == request.param]
    return render_node(cluster, node, secrets)


def files(plan: NodePlan) -> dict[str, tuple[int, str | None]]:
    return {str(e.path): (e.mode, e.link) for e in plan.files if e.partition == "root"}


def unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> every value it is given (systemd lets a key repeat; its lists add up)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).extend(value.split())
    return settings


def test_every_node_carries_the_agent_and_enables_its_unit(plan: NodePlan) -> None:
    carried = files(plan)
    assert carried["usr/sbin/picluster-agent"] == (0o755, None)
    for module in (
        "cli",
        "config",
        "host",
        "state",
        "preflight",
        "links",
        "packages",
        "images",
        "api",
        "join",
    ):
        assert carried[f"usr/lib/picluster/agent/{module}.py"] == (0o644, None)
    wants = "etc/systemd/system/multi-user.target.wants/picluster-agent.service"
    assert carried[wants] == (0o777, f"/{UNIT}")


def test_the_unit_runs_the_agent_before_kubelet_once_the_network_and_clock_are_up(plan: NodePlan) -> None:
    (unit,) = [e for e in plan.files if str(e.path) == UNIT]
    settings = unit_settings(unit.data.decode())
    assert settings["ExecStart"] == ["/usr/sbin/picluster-agent", "run"]
    assert settings["Before"] == ["kubelet.service"]
    assert {"network-online.target", "time-sync.target", "containerd.service"} <= set(settings["After"])
    assert settings["Wants"] == ["network-online.target"]
    assert settings["WantedBy"] == ["multi-user.target"]
    # a oneshot ordered before kubelet would deadlock kubeadm's `systemctl restart kubelet`
    assert settings["Type"] == ["exec"]


def test_systemd_analyze_verifies_the_unit(plan: NodePlan, tmp_path: Path, allow_subprocess: None) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    root = write_trees([plan], tmp_path)[0] / "root"
    # the units ours names (multi-user.target, network-online.target, ...) come from this
    # machine's systemd, as they would from the node's
    units = root / "usr/lib/systemd/system"
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True, dirs_exist_ok=True)
    command = ["systemd-analyze", "verify", f"--root={root}", "picluster-agent.service"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
