"""`picluster upgrade` against a stand-in cluster: the API server stood in on a LAN of the test's
own (drain, uncordon, Ready), each node a folder its real agent works on (`picluster-agent upgrade`,
as picluster runs it over SSH) with kubeadm, apt-get, apt-mark and systemctl stood in
(tests/standins.py: `kubeadm upgrade apply/node` do to the node's files what upstream's do, and
apt refuses to move a held package, as apt does)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from builder.cluster import upgrade
from builder.errors import UserError
from builder.progress import Reporter
from builder.secrets import release, store
from builder.spec.load import load_cluster
from builder.spec.model import Node
from builder.spec.releases import Release
from tests.agent_support import agent_command, agent_env, calls, install_standins, node_root, run_agent, state
from tests.conftest import BUNDLED, fixed_secrets
from tests.integration.api_standin import APIStandin, api_standin
from tests.integration.apt_repository import repository
from tests.integration.conftest import serve_folder

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lan")]

__all__ = ["repository"]

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0stand+in\n-----END PGP PUBLIC KEY BLOCK-----\n"
NODES = ("cp1", "w1", "w2")


@dataclass
class Lab:
    cluster_file: Path
    roots: dict[str, Path]
    standins: Path
    api: APIStandin
    steps: list[tuple[str, str]] = field(default_factory=list)
    """Each step a node's agent ran, in order."""
    fail: dict[tuple[str, str], str] = field(default_factory=dict)
    """A step that fails once on a node, with what the node says (a lost link, say)."""

    def shell(self, node: Node, command: list[str]) -> str:
        """Stands in for ssh to the node: its agent, on its folder; a kubelet upgraded registers
        its new version and Ready, as a restarted kubelet does."""
        assert command[:2] == [upgrade.AGENT, "upgrade"], command
        step = command[-1]
        if self.fail.pop((node.name, step), None) is not None:
            raise upgrade.NodeFailed("ssh: connect to host 192.168.50.11 port 22: No route to host")
        root = self.roots[node.name]
        done = subprocess.run(agent_command(root, *command[1:]), env=agent_env(self.standins, root),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if done.returncode != 0:
            raise upgrade.NodeFailed(done.stdout.strip().splitlines()[-1])
        self.steps.append((node.name, step))
        if step == "kubelet":
            self.api.node(node.name)["status"]["nodeInfo"]["kubeletVersion"] = f"v{command[3]}"
        return done.stdout

    def run(self) -> None:
        cluster = load_cluster(self.cluster_file)
        state_dir = self.cluster_file.parent / ".picluster"
        progress = upgrade.Progress.load(state_dir) or upgrade.Progress(
            Release.of("1.34.2"), Release.of("1.34.3"), {}
        )
        upgrade.upgrade(
            cluster, fixed_secrets(), state_dir, progress, self.shell, Reporter(), sleep=lambda s: None
        )


@pytest.fixture
def lab(tmp_path: Path, lan: ipaddress.IPv4Address) -> Iterator[Lab]:
    """cp1, w1 and w2 at Kubernetes 1.34.2, joined; cluster.yaml asking for 1.34.3."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/Release.key").write_text(KEY)
    standins = install_standins(
        tmp_path / "bin", "kubeadm", "kubelet", "kubectl", "apt-get", "apt-mark", "systemctl"
    )
    with serve_folder(tmp_path / "repo") as url, api_standin(fixed_secrets(), tmp_path, lan) as api:
        roots = {name: node_root(tmp_path / name, name) for name in NODES}
        for name, root in roots.items():
            (root / "etc/apt/sources.list.d").mkdir(parents=True)
            (root / "etc/apt/preferences.d").mkdir(parents=True)
            database = {"versions": dict.fromkeys(("kubeadm", "kubelet", "kubectl"), "1.34.2"),
                        "held": ["kubeadm", "kubectl", "kubelet"]}  # fmt: skip
            (root / "var/lib/dpkg").mkdir(parents=True)
            (root / "var/lib/dpkg/standin-packages.json").write_text(json.dumps(database))
            if name == "cp1":
                joined = run_agent(root, standins, "join")
                assert joined.returncode == 0, joined.stdout + joined.stderr
            else:
                (root / "var/lib/kubelet").mkdir(parents=True)
                (root / "var/lib/kubelet/config.yaml").write_text("# stand-in kubelet configuration\n")
        api.register_nodes(NODES, {})
        for name in NODES:
            api.node(name)["status"] = {"conditions": [{"type": "Ready", "status": "True"}],
                                        "nodeInfo": {"kubeletVersion": "v1.34.2"}}  # fmt: skip
        api.pods = [
            pod("default", "web-1", "w1", "ReplicaSet"),
            pod("kube-system", "kube-proxy-w1", "w1", "DaemonSet"),
            pod("kube-system", "kube-apiserver-cp1", "cp1", None, mirror=True),
            pod("default", "web-2", "w2", "ReplicaSet"),
        ]
        folder = tmp_path / "project"
        folder.mkdir()
        data = yaml.safe_load(BUNDLED.read_text())
        data["cluster"].update(control_plane_endpoint=api.endpoint, kubernetes="1.34.3",
                               kubernetes_repository=f"{url}/")  # fmt: skip
        (folder / "cluster.yaml").write_text(yaml.safe_dump(data))
        store.save(folder / ".picluster", fixed_secrets())
        release.record(folder / ".picluster", Release.of("1.34.2"))
        yield Lab(folder / "cluster.yaml", roots, standins, api)


def pod(namespace: str, name: str, node: str, owner: str | None, mirror: bool = False) -> dict[str, object]:
    metadata: dict[str, object] = {"namespace": namespace, "name": name}
    if owner:
        metadata["ownerReferences"] = [{"kind": owner, "name": f"{name}-owner"}]
    if mirror:
        metadata["annotations"] = {"kubernetes.io/config.mirror": "0123abcd"}
    return {"metadata": metadata, "spec": {"nodeName": node}, "status": {"phase": "Running"}}


def test_every_node_moves_in_kubeadms_order_drained_and_uncordoned(lab: Lab) -> None:
    lab.run()
    assert lab.steps == [
        ("cp1", "kubeadm"), ("cp1", "apply"), ("cp1", "kubelet"),
        ("w1", "kubeadm"), ("w1", "node"), ("w1", "kubelet"),
        ("w2", "kubeadm"), ("w2", "node"), ("w2", "kubelet"),
    ]  # fmt: skip
    assert lab.api.unschedulable == [(n, cordon) for n in NODES for cordon in (True, False)]
    assert lab.api.evicted == ["default/web-1", "default/web-2"], "DaemonSet and mirror pods stay"
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
