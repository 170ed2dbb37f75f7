"""`picluster upgrade` against a stand-in cluster: the API server stood in on a LAN of the test's
own (drain, uncordon, Ready), each node a folder its real agent works on (`picluster-agent upgrade`,
as picluster runs it over SSH) with kubeadm, apt-get, apt-mark and systemctl stood in
(tests/support/standins.py: `kubeadm upgrade apply/node` do to the node's files what upstream's do, and
apt refuses to move a held package, as apt does)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cluster import upgrade
from builder.errors import UserError
from builder.secrets import release
from builder.spec.releases import Release
from tests.support.agent import agent_command, agent_env, calls, install_standins, node_root, state
from tests.support.apt_repository import repository
from tests.support.upgrade_lab import NODES, Lab, upgrade_lab

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lan")]

__all__ = ["repository"]


@pytest.fixture
def lab(tmp_path: Path, lan: ipaddress.IPv4Address) -> Iterator[Lab]:
    """cp1, w1 and w2 at Kubernetes 1.34.2, joined; cluster.yaml asking for 1.34.3."""
    with upgrade_lab(tmp_path, lan) as made:
        yield made


def test_every_node_moves_in_kubeadms_order_drained_and_uncordoned(lab: Lab) -> None:
    lab.run()
    assert lab.steps == [
        ("cp1", "kubeadm"), ("cp1", "apply"), ("cp1", "kubelet"),
        ("w1", "kubeadm"), ("w1", "node"), ("w1", "kubelet"),
        ("w2", "kubeadm"), ("w2", "node"), ("w2", "kubelet"),
    ]  # fmt: skip
    assert lab.api.unschedulable == [(n, cordon) for n in NODES for cordon in (True, False)]
    assert lab.api.evicted == ["default/web-w1", "default/web-w2"], "DaemonSet and mirror pods stay"
    state_dir = lab.cluster_file.parent / ".picluster"
    assert release.load(state_dir) == Release.of("1.34.3") and not (state_dir / "upgrade.json").exists()
    cp1 = lab.roots["cp1"]
    assert (cp1 / "etc/kubernetes/manifests/kube-apiserver.yaml").read_text().endswith("v1.34.3\n")
    assert list((cp1 / "etc/kubernetes/tmp").glob("kubeadm-backup-manifests-*/kube-apiserver.yaml"))
    for name, root in lab.roots.items():
        packages = json.loads((root / "var/lib/dpkg/standin-packages.json").read_text())
        assert packages == {"versions": dict.fromkeys(("kubeadm", "kubelet", "kubectl"), "1.34.3"),
                            "held": ["kubeadm", "kubectl", "kubelet"]}, name  # fmt: skip
        assert (
            (root / "etc/apt/preferences.d/kubernetes")
            .read_text()
            .startswith("Package: kubeadm kubelet kubectl\nPin: version 1.34.3-*\n")
        )
        assert (root / "var/lib/kubelet/config.yaml").read_text().endswith("v1.34.3\n"), name
        assert state(root)["upgrade"]["done"].split() == [s for n, s in lab.steps if n == name]
    assert ["kubeadm", "upgrade", "apply", "v1.34.3", "--yes"] in calls(lab.standins)


def test_cut_off_midway_a_rerun_goes_on_from_the_step_it_stopped_in(lab: Lab) -> None:
    lab.fail[("w1", "node")] = "the link went down"
    with pytest.raises(UserError) as stopped:
        lab.run()
    said = stopped.value.render()
    assert "stopped at w1, step kubeadm upgrade node: ssh: connect to host" in said
    assert "w1 is cordoned, its pods moved elsewhere" in said and "goes on from this step" in said
    progress = json.loads((lab.cluster_file.parent / ".picluster/upgrade.json").read_text())
    assert progress["done"]["w1"] == ["kubeadm", "drain"]
    assert release.load(lab.cluster_file.parent / ".picluster") == Release.of("1.34.2"), "not recorded yet"
    before = list(lab.steps)
    lab.run()
    assert lab.steps[len(before) :][0] == ("w1", "node"), "cp1's steps and w1's first are not run again"
    assert release.load(lab.cluster_file.parent / ".picluster") == Release.of("1.34.3")


def test_a_node_whose_kubeadm_step_was_skipped_is_stopped_by_kubeadm(lab: Lab) -> None:
    """kubeadm refuses a release newer than itself: the words reach the user, naming the node."""
    state_dir = lab.cluster_file.parent / ".picluster"
    upgrade.Progress(Release.of("1.34.2"), Release.of("1.34.3"), {"cp1": ["kubeadm"]}).save(state_dir)
    with pytest.raises(UserError) as stopped:
        lab.run()
    assert "stopped at cp1, step kubeadm upgrade apply v1.34.3" in stopped.value.render()
    assert "Upgrade kubeadm first" in json.dumps(state(lab.roots["cp1"])["upgrade"])


def apt_in(root: Path) -> dict[str, str]:
    """The real apt and dpkg, working on the node's folder as on its own root: apt's folders and
    dpkg's database under it (APT_CONFIG), the programs this machine's."""
    for folder in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/apt.conf.d",
                   "var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/apt/lists/partial",
                   "var/cache/apt/archives/partial", "var/log/apt"):  # fmt: skip
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "var/lib/dpkg/status").touch()
    config = root.parent / "apt.conf"
    config.write_text(
        f'Dir "{root}/";\nDir::State::status "{root}/var/lib/dpkg/status";\n'
        'Dir::Bin::Methods "/usr/lib/apt/methods/";\nDir::Bin::dpkg "/usr/bin/dpkg";\n'
        f'DPkg::Options {{ "--root={root}"; "--admindir={root}/var/lib/dpkg";\n'
        f'  "--log={root}/var/log/dpkg.log"; }};\n'
        'APT::Sandbox::User "root";\n'
    )
    return {"APT_CONFIG": str(config)}


def installed(root: Path) -> dict[str, str]:
    listed = subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W"],
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    return dict(line.split("\t") for line in listed.splitlines())


def held(root: Path, env: dict[str, str]) -> list[str]:
    shown = subprocess.run(
        ["apt-mark", "showhold"], env={**os.environ, **env}, capture_output=True, text=True
    )
    return shown.stdout.split()


def test_the_real_apt_moves_a_node_from_one_release_to_the_next_keeping_the_holds(
    tmp_path: Path, repository: str
) -> None:
    """A node at 1.34.1 (installed and held as first boot does it) to 1.34.2 with the real apt,
    dpkg and apt-mark: kubeadm first, alone; kubelet and kubectl later; every one held after."""
    if os.geteuid() != 0:
        pytest.skip("dpkg installs as root")
    root = node_root(tmp_path / "w1", "w1", packages={"install": "firstboot", "apt_repository": repository})
    standins = install_standins(tmp_path / "bin", "systemctl")
    env = {**agent_env(standins, root), **apt_in(root)}

    def agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            agent_command(root, *args), env=env, capture_output=True, text=True, timeout=300
        )

    for step in ("kubeadm", "kubelet"):  # first boot's 1.34.1, as the agent's own steps install it
        done = agent("upgrade", "--to", "1.34.1", "--repository", repository, step)
        assert done.returncode == 0, done.stdout + done.stderr
    assert installed(root) == dict.fromkeys(("kubeadm", "kubectl", "kubelet"), "1.34.1-1.1")
    done = agent("upgrade", "--to", "1.34.2", "--repository", repository, "kubeadm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(root) == {"kubeadm": "1.34.2-1.1", "kubectl": "1.34.1-1.1", "kubelet": "1.34.1-1.1"}
    assert held(root, env) == ["kubeadm", "kubectl", "kubelet"]
    assert subprocess.run([root / "usr/bin/kubeadm"], capture_output=True, text=True).stdout == (
        "stand-in kubeadm 1.34.2-1.1\n"
    )
    done = agent("upgrade", "--to", "1.34.2", "--repository", repository, "kubelet")
    assert done.returncode == 0, done.stdout + done.stderr
    assert installed(root) == dict.fromkeys(("kubeadm", "kubectl", "kubelet"), "1.34.2-1.1")
    assert held(root, env) == ["kubeadm", "kubectl", "kubelet"]
    assert [call for call in calls(standins) if call[0] == "systemctl"] == [
        ["systemctl", "daemon-reload"], ["systemctl", "restart", "kubelet"]
    ] * 2  # fmt: skip
