"""A cluster for `picluster upgrade` to move: the API server stood in on a LAN of the test's own
(drain, uncordon, Ready), each node a folder its real agent works on (`picluster-agent upgrade`,
run as picluster runs it over SSH) with kubeadm, apt-get, apt-mark and systemctl stood in
(tests/support/standins.py). Used by tests/integration/test_upgrade.py and bench/upgrade_orchestration.py."""

from __future__ import annotations

import ipaddress
import json
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from builder.cluster import ssh, upgrade
from builder.progress import Reporter
from builder.secrets import release, store
from builder.spec.load import load_cluster
from builder.spec.model import Node
from builder.spec.releases import Release
from tests.support.agent import agent_command, agent_env, install_standins, node_root, run_agent
from tests.support.api_standin import APIStandin, api_standin
from tests.support.host import serve_folder
from tests.support.project import BUNDLED, fixed_secrets

KEY = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0stand+in\n-----END PGP PUBLIC KEY BLOCK-----\n"
NODES = ("cp1", "w1", "w2")
"""The nodes of a lab of two workers."""


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
            raise ssh.NodeFailed("ssh: connect to host 192.168.50.11 port 22: No route to host")
        root = self.roots[node.name]
        done = subprocess.run(agent_command(root, *command[1:]), env=agent_env(self.standins, root),
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        if done.returncode != 0:
            raise ssh.NodeFailed(done.stdout.strip().splitlines()[-1])
        self.steps.append((node.name, step))
        if step == "kubelet":
            self.api.node(node.name)["status"]["nodeInfo"]["kubeletVersion"] = f"v{command[3]}"
        return done.stdout

    def run(self, reporter: Reporter | None = None) -> None:
        cluster = load_cluster(self.cluster_file)
        state_dir = self.cluster_file.parent / ".picluster"
        progress = upgrade.Progress.load(state_dir) or upgrade.Progress(
            Release.of("1.34.2"), Release.of("1.34.3"), {}
        )
        upgrade.upgrade(
            cluster,
            fixed_secrets(),
            state_dir,
            progress,
            self.shell,
            reporter or Reporter(),
            sleep=lambda s: None,
        )


@contextmanager
def upgrade_lab(tmp_path: Path, lan: ipaddress.IPv4Address, workers: int = 2) -> Iterator[Lab]:
    """cp1 and `workers` workers (w1, w2, ...) at Kubernetes 1.34.2, joined, a pod of a
    ReplicaSet and one of a DaemonSet on each worker, cp1's static pods mirrored; cluster.yaml
    asking for 1.34.3."""
    names = ("cp1", *(f"w{index}" for index in range(1, workers + 1)))
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/Release.key").write_text(KEY)
    standins = install_standins(
        tmp_path / "bin", "kubeadm", "kubelet", "kubectl", "apt-get", "apt-mark", "systemctl"
    )
    with serve_folder(tmp_path / "repo") as url, api_standin(fixed_secrets(), tmp_path, lan) as api:
        folder = tmp_path / "project"
        folder.mkdir()
        data = yaml.safe_load(BUNDLED.read_text())
        data["cluster"].update(control_plane_endpoint=api.endpoint, kubernetes="1.34.3",
                               kubernetes_repository=f"{url}/")  # fmt: skip
        template = data["nodes"][1]
        data["nodes"] = [data["nodes"][0]] + [
            {**template, "name": name, "address": f"192.168.50.{10 + index}/24"}
            for index, name in enumerate(names[1:], 1)
        ]
        cluster_file = folder / "cluster.yaml"
        cluster_file.write_text(yaml.safe_dump(data))
        store.save(folder / ".picluster", fixed_secrets())
        release.record(folder / ".picluster", Release.of("1.34.2"))
        data["cluster"]["kubernetes"] = "1.34.2"  # the cards were built for the release it runs
        (tmp_path / "cards.yaml").write_text(yaml.safe_dump(data))
        roots = {name: node_root(tmp_path / name, name, tmp_path / "cards.yaml") for name in names}
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
        api.register_nodes(names, {})
        for name in names:
            api.node(name)["status"] = {"conditions": [{"type": "Ready", "status": "True"}],
                                        "nodeInfo": {"kubeletVersion": "v1.34.2"}}  # fmt: skip
        api.pods = [pod("kube-system", "kube-apiserver-cp1", "cp1", None, mirror=True)]
        for name in names[1:]:
            api.pods += [pod("default", f"web-{name}", name, "ReplicaSet"),
                         pod("kube-system", f"kube-proxy-{name}", name, "DaemonSet")]  # fmt: skip
        yield Lab(cluster_file, roots, standins, api)


def pod(namespace: str, name: str, node: str, owner: str | None, mirror: bool = False) -> dict[str, object]:
    metadata: dict[str, object] = {"namespace": namespace, "name": name}
    if owner:
        metadata["ownerReferences"] = [{"kind": owner, "name": f"{name}-owner"}]
    if mirror:
        metadata["annotations"] = {"kubernetes.io/config.mirror": "0123abcd"}
    return {"metadata": metadata, "spec": {"nodeName": node}, "status": {"phase": "Running"}}
