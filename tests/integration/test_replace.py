"""`picluster replace` against the real etcd (Debian's etcd-server and etcd-client): three
control planes' etcd members, each in a network namespace of its own on one bridge, run with
kubeadm's flags and TLS layout, certificates signed by the etcd CA of the cluster's state folder.
One card dies; picluster, run from the build machine's namespace, removes its member through a
survivor and deletes its Node from the API server (the one STAND-IN: kube-apiserver cannot run
here, tests/support/api_standin.py); a new member of the same name then joins as kubeadm
joins one, and etcd has three healthy members again.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cluster import api, etcd
from builder.errors import UserError
from builder.render.node import render_cluster
from builder.secrets import store, tokens
from builder.secrets.store import TOKENS_FILE
from builder.spec.load import load_cluster
from tests.support.api_standin import APIStandin, api_standin
from tests.support.built_project import node_item
from tests.support.etcd_lab import etcd_flags, ns, write_pki
from tests.support.project import BUNDLED, REPO, fixed_secrets

pytestmark = pytest.mark.integration

PLANES = {"cp1": "192.168.50.10", "cp2": "192.168.50.11", "cp3": "192.168.50.12"}
WORKER = ("w1", "192.168.50.21")
"""A worker: a Node, no etcd member; its card need not run here."""
BUILDER = "192.168.50.9"
"""The build machine, which also serves the API server stand-in as the cluster's endpoint."""


@dataclass
class Lab:
    folder: Path
    prefix: str
    cluster_file: Path
    api: APIStandin | None = None
    members: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def netns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def pki(self, node: str) -> Path:
        return self.folder / node / "pki" / "etcd"

    def start(self, node: str, initial: dict[str, str], state: str) -> None:
        data = self.folder / node / "etcd"
        shutil.rmtree(data, ignore_errors=True)
        log = open(self.folder / node / "etcd.log", "ab")  # noqa: SIM115 - the member keeps it
        flags = etcd_flags(node, PLANES[node], self.pki(node), data, initial, state)
        self.members[node] = subprocess.Popen(["ip", "netns", "exec", self.netns(node), "etcd", *flags],
                                              stdout=log, stderr=log)  # fmt: skip

    def kill(self, node: str) -> None:
        member = self.members.pop(node)
        member.send_signal(signal.SIGKILL)
        member.wait()

    def etcdctl(
        self, *arguments: str, endpoints: list[str], check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The real etcdctl, from the build machine's namespace, with cp1's healthcheck client."""
        pki = self.pki("cp1")
        return ns(
            self.netns("builder"), "env", "ETCDCTL_API=3", "etcdctl",
            f"--endpoints={','.join(f'https://{PLANES[n]}:2379' for n in endpoints)}",
            f"--cacert={pki}/ca.crt", f"--cert={pki}/healthcheck-client.crt",
            f"--key={pki}/healthcheck-client.key", "--dial-timeout=3s", "--command-timeout=5s", *arguments,
            check=check,
        )  # fmt: skip

    def join_member(self, node: str) -> None:
        """What kubeadm's control-plane join does to etcd (CreateStackedEtcdStaticPodManifestFile
        in cmd/kubeadm/app/phases/etcd/local.go): add the member as a learner, start it with the
        cluster as it is, promote it once it has caught up. kubeadm's etcd client retries each
        call (cmd/kubeadm/app/util/etcd/etcd.go), as here: just after a removal etcd's strict
        reconfiguration check refuses a new member a while, and a learner behind the leader
        cannot be promoted."""
        peer = f"--peer-urls=https://{PLANES[node]}:2380"
        voters = list(self.members)
        added = self.retried(voters, "unhealthy cluster", "member", "add", node, peer, "--learner", "-w",
                             "json")  # fmt: skip
        learner = json.loads(added)["member"]
        assert learner["isLearner"]
        self.start(node, PLANES, "existing")
        self.retried(voters, "in sync with leader", "member", "promote", f"{learner['ID']:x}")

    def retried(self, endpoints: list[str], transient: str, *arguments: str) -> str:
        """etcdctl's output, tried again for 30 s while it fails with `transient`."""
        deadline = time.monotonic() + 30
        while True:
            done = self.etcdctl(*arguments, endpoints=endpoints, check=False)
            if done.returncode == 0:
                return done.stdout
            if transient not in done.stderr or time.monotonic() > deadline:
                raise AssertionError(f"etcdctl {' '.join(arguments)}: {done.stderr}")
            time.sleep(1)

    def member_names(self) -> list[str]:
        """The members' names, a learner's marked as one."""
        alive = next(iter(self.members))
        listing = json.loads(self.etcdctl("member", "list", "-w", "json", endpoints=[alive]).stdout)
        return sorted(
            m.get("name", "") + (" (learner)" if m.get("isLearner") else "") for m in listing["members"]
        )

    def wait_healthy(self, nodes: list[str]) -> None:
        deadline = time.monotonic() + 30
        while True:
            health = self.etcdctl("endpoint", "health", endpoints=nodes, check=False)
            if health.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"etcd did not become healthy: {health.stdout}{health.stderr}")
            time.sleep(0.5)

    def replace(self, node: str, *flags: str) -> subprocess.CompletedProcess[str]:
        """`picluster replace`, run on the build machine (its namespace)."""
        return ns(
            self.netns("builder"), "env", f"PYTHONPATH={REPO}", sys.executable, "-m", "builder", "replace",
            node, "-f", str(self.cluster_file), *flags, check=False,
        )  # fmt: skip


def missing() -> str:
    tools = {"etcd": "etcd-server", "etcdctl": "etcd-client", "ip": "iproute2"}
    absent = [
        f"{tool} (Debian package {package})" for tool, package in tools.items() if not shutil.which(tool)
    ]
    if absent:
        return "missing " + ", ".join(absent)
    if os.geteuid() != 0:
        return "network namespaces need root"
    return ""


def make_network(stack: ExitStack, prefix: str) -> None:
    """A bridge in a "lan" namespace, and a namespace per control plane and the build machine,
    each with an eth0 on it: the addresses exist only inside the namespaces."""
    lan = f"{prefix}-lan"
    for name in [lan, *(f"{prefix}-{node}" for node in [*PLANES, "builder"])]:
        subprocess.run(["ip", "netns", "add", name], check=True)
        stack.callback(subprocess.run, ["ip", "netns", "delete", name], check=False)
    ns(lan, "ip", "link", "add", "br0", "type", "bridge")
    ns(lan, "ip", "link", "set", "br0", "up")
    for index, (node, address) in enumerate([*PLANES.items(), ("builder", BUILDER)]):
        here = f"{prefix}-{node}"
        ns(lan, "ip", "link", "add", f"v{index}", "type", "veth", "peer", "name", "eth0", "netns", here)
        ns(lan, "ip", "link", "set", f"v{index}", "master", "br0", "up")
        ns(here, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        ns(here, "ip", "link", "set", "eth0", "up")
        ns(here, "ip", "link", "set", "lo", "up")


def project(folder: Path) -> Path:
    """The bundled cluster.yaml with three control planes, its .picluster/ as picluster makes it."""
    data: dict[str, Any] = yaml.safe_load(BUNDLED.read_text())
    data["cluster"]["control_plane_endpoint"] = f"{BUILDER}:8443"
    data["nodes"] = [{"name": n, "role": "control-plane", "model": "pi4", "address": f"{a}/24"}
                     for n, a in PLANES.items()]  # fmt: skip
    data["nodes"].append({"name": WORKER[0], "role": "worker", "model": "pi4", "address": f"{WORKER[1]}/24"})
    (folder / "cluster.yaml").write_text(yaml.safe_dump(data))
    store.save(folder / ".picluster", fixed_secrets())
    nodes = {name: f"{name:a<6}.0123456789abcdef" for name in [*PLANES, WORKER[0]]}
    record = {"nodes": nodes, "at_init": [token for name, token in nodes.items() if name != "cp1"]}
    (folder / ".picluster" / TOKENS_FILE).write_text(json.dumps(record))
    return folder / "cluster.yaml"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    prefix = f"rp{os.getpid()}"
    with ExitStack() as stack:
        make_network(stack, prefix)
        lab = Lab(tmp_path, prefix, project(tmp_path))
        etcd_ca = store.load(tmp_path / ".picluster").etcd_ca
        for node, address in PLANES.items():
            write_pki(etcd_ca, lab.pki(node), node, address)
            lab.start(node, PLANES, "new")
        stack.callback(lambda: [lab.kill(node) for node in list(lab.members)])
        lab.wait_healthy(list(PLANES))
        secrets = fixed_secrets()
        lab.api = stack.enter_context(
            api_standin(secrets, tmp_path, ipaddress.IPv4Address(BUILDER), 8443, netns=lab.netns("builder"))
        )
        lab.api.nodes = [node_item(node, "True", address) for node, address in [*PLANES.items(), WORKER]]
        yield lab


def test_a_dead_control_plane_makes_way_for_its_replacement(lab: Lab) -> None:
    assert lab.api is not None
    lab.api.node("cp2")["status"]["conditions"][0]["status"] = (
        "Unknown"  # as the node lifecycle controller marks it
    )
    alive = lab.replace("cp2")
    assert alive.returncode == 2, alive.stderr
    assert "cp2's etcd member still answers at https://192.168.50.11:2379" in alive.stderr
    assert lab.member_names() == ["cp1", "cp2", "cp3"] and lab.api.named("cp2") is not None

    lab.kill("cp2")  # the card dies
    done = lab.replace("cp2")
    assert done.returncode == 0, done.stderr
    assert "removed cp2's etcd member" in done.stdout and "cp1, cp3 remain" in done.stdout
    assert lab.member_names() == ["cp1", "cp3"]
    lab.wait_healthy(["cp1", "cp3"])
    assert lab.api.named("cp2") is None
    again = lab.replace("cp2")  # as after a run stopped between the two removals: it finishes
    assert again.returncode == 0, again.stderr
    assert "no member named cp2 (already removed)" in again.stdout and "no Node cp2" in again.stdout

    lab.join_member("cp2")  # the new card's kubeadm join --control-plane
    lab.wait_healthy(list(PLANES))
    assert lab.member_names() == ["cp1", "cp2", "cp3"]


def test_the_first_control_plane_is_replaced_by_a_card_that_joins(lab: Lab) -> None:
    """cp1's first card ran `kubeadm init`; its replacement joins the running cluster, as the
    other control planes' cards do, with a token of its own made on the cluster."""
    assert lab.api is not None
    state = lab.cluster_file.parent / ".picluster"
    alive = lab.replace("cp1", "--dead")  # the old card still runs: refused, yet the cluster answered
    assert alive.returncode == 2 and "cp1's etcd member still answers" in alive.stderr
    assert lab.member_names() == ["cp1", "cp2", "cp3"]
    assert json.loads((state / TOKENS_FILE).read_text())["first_control_plane_joins"] is True, (
        "recorded before anything is removed: a run killed after the removal must not leave a card that inits"
    )
    lab.kill("cp1")
    done = lab.replace("cp1", "--dead")
    assert done.returncode == 0, done.stderr
    assert "removed cp1's etcd member" in done.stdout and "cp2, cp3 remain" in done.stdout
    assert "cp1's cards join the running cluster from now on" in done.stdout
    assert lab.member_names() == ["cp2", "cp3"] and lab.api.named("cp1") is None
    recorded = json.loads((state / TOKENS_FILE).read_text())
    assert recorded["first_control_plane_joins"] is True
    made = [secret["stringData"]["token-id"] for secret in lab.api.created]
    assert made == [recorded["nodes"]["cp1"].split(".")[0]]

    cluster = load_cluster(lab.cluster_file)
    secrets = store.load(state)
    carried = tokens.load_tokens(state, secrets)
    plan = render_cluster(cluster, secrets, carried)[0]
    kubeadm = {item.path.name: item.data for item in plan.files}["kubeadm.yaml"]
    (join,) = yaml.safe_load_all(kubeadm)
    assert join["kind"] == "JoinConfiguration" and "controlPlane" in join
    assert join["discovery"]["bootstrapToken"]["token"] == recorded["nodes"]["cp1"]

    lab.join_member("cp1")  # the new card's kubeadm join --control-plane
    lab.wait_healthy(list(PLANES))
    assert lab.member_names() == ["cp1", "cp2", "cp3"]


def test_removal_that_would_lose_quorum_is_refused(lab: Lab) -> None:
    assert lab.api is not None
    for node in ("cp2", "cp3"):
        lab.api.node(node)["status"]["conditions"][0]["status"] = "Unknown"
        lab.kill(node)
    refused = lab.replace("cp2")
    assert refused.returncode == 2, refused.stdout
    assert (
        "removing cp2 would leave 2 etcd members of which only 1 answers (cp1); etcd needs 2"
        in refused.stderr
    )
    assert "Traceback" not in refused.stderr
    assert lab.member_names() == ["cp1", "cp2", "cp3"]
    assert lab.api.named("cp2") is not None  # nothing changed


def test_a_worker_makes_way_only_once_its_node_is_not_ready(lab: Lab) -> None:
    """A worker has no etcd member: only its Node goes, and its card's token is replaced on the
    cluster by a new one, which the next build puts on the new card."""
    assert lab.api is not None
    ready = lab.replace("w1")
    assert ready.returncode == 2
    assert "Node w1 is Ready" in ready.stderr and "picluster replace w1 --dead" in ready.stderr
    assert lab.api.named("w1") is not None

    lab.api.node("w1")["status"]["conditions"][0]["status"] = "False"
    tokens_file = lab.cluster_file.parent / ".picluster" / TOKENS_FILE
    old_w1 = json.loads(tokens_file.read_text())["nodes"]["w1"]
    lab.api.add_token(old_w1, "2099-01-01T00:00:00Z")
    done = lab.replace("w1")
    assert done.returncode == 0, done.stderr
    assert "deleted Node w1" in done.stdout and "picluster build" in done.stdout
    assert lab.api.named("w1") is None
    assert lab.member_names() == ["cp1", "cp2", "cp3"]  # no etcd member was touched
    recorded = json.loads((lab.cluster_file.parent / ".picluster" / TOKENS_FILE).read_text())
    made = [secret["stringData"]["token-id"] for secret in lab.api.created]
    assert made == [recorded["nodes"]["w1"].split(".")[0]], "the new card gets a token of its own"
    assert lab.api.deleted == [f"bootstrap-token-{old_w1.split('.')[0]}"], "the dead card's token is revoked"


def test_a_ready_node_goes_when_the_user_says_it_is_dead(lab: Lab) -> None:
    assert lab.api is not None
    done = lab.replace("w1", "--dead")
    assert done.returncode == 0, done.stderr
    assert lab.api.named("w1") is None


def test_a_survivor_that_is_not_etcd_or_not_there_is_named(tmp_path: Path) -> None:
    """Without root: the API server stand-in is no etcd, and nothing listens on port 1."""
    with api_standin(fixed_secrets(), tmp_path) as server:

        def to(endpoint: str) -> api.Connect:
            return lambda _, secrets: api.connect(endpoint, secrets)

        with pytest.raises(UserError) as foreign:
            etcd.remove_member(fixed_secrets(), "cp2", ["192.168.50.10"], to(server.endpoint))
        assert f"etcd at {server.endpoint} refused /v3/cluster/member/list: 404" in foreign.value.message
        with pytest.raises(UserError) as silent:
            etcd.remove_member(fixed_secrets(), "cp2", ["192.168.50.10", "192.168.50.12"], to("127.0.0.1:1"))
        assert "no other control plane's etcd answers" in silent.value.message
        said = "https://127.0.0.1:1/v3/cluster/member/list: nothing listens there (connection refused)"
        assert silent.value.message.count(said) == 2
