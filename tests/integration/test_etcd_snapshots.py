"""etcd snapshots and the restore of a dead only control plane, with the real etcd a card runs.

The programs are Debian trixie's etcd-server and etcd-client (etcd, etcdctl and etcdutl 3.5),
what every card carries (builder/image/debian.py ETCD_TOOLS), fetched for this machine into the
test cache (tests/support/debian_packages.py). etcd runs as kubeadm runs it
(tests/support/etcd_lab.py: its flags and TLS layout, certificates from the state folder's
etcd CA) in a network namespace holding cp1's address, and the agent runs in the same namespace
on a folder standing for cp1's card, so 127.0.0.1:2379 is that member, as on a card. The agent's
commands are the card's: its snapshot (etcdctl save, etcdutl status), the `--send` picluster
backup fetches, and its restore (etcdutl restore) before `kubeadm init`, which is the one
STAND-IN here (tests/support/standins.py: its preflight refuses a non-empty /var/lib/etcd unless the
check is ignored, as upstream's checks.go DirAvailableCheck does). The restored data is then
served by a real etcd again and read back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from builder.cluster import snapshot as cluster_snapshot
from builder.cluster.ssh import NodeFailed
from builder.image.context import default_cache
from builder.render.node import render_cluster
from builder.render.tree import write_trees
from builder.secrets import snapshot, store
from builder.spec.load import load_cluster
from builder.spec.model import Node
from tests.support import debian_packages
from tests.support.agent import AGENT_LAUNCHER, FAST, calls, install_standins, state
from tests.support.etcd_lab import etcd_flags, ns, write_pki
from tests.support.project import BUNDLED, REPO, fixed_secrets

pytestmark = pytest.mark.integration

ADDRESS = "192.168.50.10"
"""cp1's, in the bundled cluster.yaml: the only control plane."""
SNAPSHOTS = Path("var/lib/picluster/etcd-snapshots")
SECRET_KEY = "/registry/secrets/default/db-password"


@pytest.fixture(scope="module")
def etcd_bin() -> Path:
    if os.geteuid() != 0:
        pytest.fail("network namespaces need root")
    return debian_packages.unpacked(default_cache(), "trixie", ["etcd-server", "etcd-client"]) / "usr/bin"


@dataclass
class Card:
    """A folder standing for cp1's card, in a namespace holding cp1's address, with etcd."""

    root: Path
    netns: str
    bin: Path
    etcd: subprocess.Popen[bytes] | None = None

    def env(self, standins: Path | None = None) -> dict[str, str]:
        first = [str(standins)] if standins else []
        system = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "kubeadm").exists()]
        path = os.pathsep.join([*first, str(self.bin), *system])
        return {**os.environ, "PATH": path, "STANDIN_NODE_ROOT": str(self.root)}

    def agent_command(self, *args: str) -> list[str]:
        """The card's agent, in the card's namespace."""
        launcher = [sys.executable, str(AGENT_LAUNCHER), "--root", str(self.root)]
        return ["ip", "netns", "exec", self.netns, *launcher, *args]

    def agent(self, *args: str, standins: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.agent_command(*args), env=self.env(standins), capture_output=True, text=True, timeout=300
        )

    def start_etcd(self, pki: Path) -> None:
        """etcd on the card's /var/lib/etcd, as kubeadm's manifest runs it on cp1."""
        data = self.root / "var/lib/etcd"
        log = open(self.root.parent / "etcd.log", "ab")  # noqa: SIM115 - the member keeps it
        flags = etcd_flags("cp1", ADDRESS, pki, data, {"cp1": ADDRESS}, "new")
        self.etcd = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, str(self.bin / "etcd"), *flags], stdout=log, stderr=log
        )
        deadline = time.monotonic() + 30
        while self.etcdctl(pki, "endpoint", "health", check=False).returncode != 0:
            assert time.monotonic() < deadline, (self.root.parent / "etcd.log").read_text()[-2000:]
            time.sleep(0.3)

    def stop_etcd(self) -> None:
        if self.etcd is not None:
            self.etcd.kill()
            self.etcd.wait()
            self.etcd = None

    def etcdctl(self, pki: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return ns(
            self.netns, str(self.bin / "etcdctl"), "--endpoints=https://127.0.0.1:2379",
            f"--cacert={pki}/ca.crt", f"--cert={pki}/healthcheck-client.crt",
            f"--key={pki}/healthcheck-client.key", "--dial-timeout=3s", "--command-timeout=10s", *arguments,
            check=check,
        )  # fmt: skip


def make_namespace(stack: ExitStack, name: str) -> str:
    """A namespace whose eth0 (one end of a veth pair, the other end idle) holds cp1's address:
    nothing else is reachable."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    stack.callback(subprocess.run, ["ip", "netns", "delete", name], check=False)
    ns(name, "ip", "link", "set", "lo", "up")
    ns(name, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "idle0")
    ns(name, "ip", "addr", "add", f"{ADDRESS}/24", "dev", "eth0")
    ns(name, "ip", "link", "set", "eth0", "up")
    return name


def card_root(folder: Path, etcd_snapshot: bytes | None = None) -> Path:
    """cp1's card as picluster renders it (restoring `etcd_snapshot`), with the tests' timings and
    the Kubernetes tools taken as installed."""
    cluster = load_cluster(BUNDLED)
    plans = render_cluster(cluster, fixed_secrets(), etcd_snapshot=etcd_snapshot)
    root = write_trees([plan for plan in plans if plan.node == "cp1"], folder)[0] / "root"
    node_json = root / "etc/picluster/node.json"
    config = json.loads(node_json.read_text())
    config["agent"] = FAST
    config["packages"]["install"] = "image"
    node_json.write_text(json.dumps(config, indent=2))
    (root / "var/lib/etcd").mkdir(mode=0o700, parents=True)  # as etcd-server's package leaves it
    return root


@pytest.fixture
def running(tmp_path: Path, etcd_bin: Path) -> Iterator[Card]:
    """cp1's card after `kubeadm init`: kubeadm's etcd certificates and manifest, etcd running
    with a Secret and a hundred other keys."""
    with ExitStack() as stack:
        card = Card(card_root(tmp_path / "old"), make_namespace(stack, f"sn{os.getpid()}"), etcd_bin)
        stack.callback(card.stop_etcd)
        pki = card.root / "etc/kubernetes/pki/etcd"
        write_pki(fixed_secrets().etcd_ca, pki, "cp1", ADDRESS)
        (card.root / "etc/kubernetes/manifests").mkdir(parents=True)
        (card.root / "etc/kubernetes/manifests/etcd.yaml").write_text("# kubeadm's etcd static pod\n")
        card.start_etcd(pki)
        card.etcdctl(pki, "put", SECRET_KEY, "s3cret")
        for index in range(100):
            card.etcdctl(pki, "put", f"/registry/configmaps/default/c{index}", "x" * 100)
        yield card


def kept(root: Path) -> list[Path]:
    return sorted((root / SNAPSHOTS).glob("etcd-*.db"))


def etcdutl_status(card: Card, snapshot_file: Path) -> dict[str, int]:
    done = subprocess.run([str(card.bin / "etcdutl"), "snapshot", "status", str(snapshot_file), "-w", "json"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(done.stdout)


def test_a_control_plane_saves_its_etcd_checks_it_and_keeps_three(running: Card) -> None:
    card = running
    for _ in range(4):
        done = card.agent("snapshot")
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(1.1)  # one snapshot a second: they are named by the time
    files = kept(card.root)
    assert len(files) == 3
    assert stat.S_IMODE((card.root / SNAPSHOTS).stat().st_mode) == 0o700
    assert {stat.S_IMODE(path.stat().st_mode) for path in files} == {0o600}
    found = etcdutl_status(card, files[-1])
    assert found["totalKey"] >= 101
    recorded = state(card.root)["snapshot"]
    assert recorded["file"] == files[-1].name
    assert (recorded["keys"], recorded["revision"], recorded["kept"]) == (
        str(found["totalKey"]), str(found["revision"]), "3"
    )  # fmt: skip
    said = subprocess.run([sys.executable, str(AGENT_LAUNCHER), "--root", str(card.root), "status"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"snapshot {files[-1].name}" in said


def test_a_snapshot_killed_midway_leaves_the_one_before_whole(running: Card) -> None:
    card = running
    pki = card.root / "etc/kubernetes/pki/etcd"
    first = card.agent("snapshot")
    assert first.returncode == 0, first.stdout + first.stderr
    [previous] = kept(card.root)
    before = previous.read_bytes()
    for index in range(24):  # a database of a few MB, sent at 4 Mbit/s: seconds to kill it in
        card.etcdctl(pki, "put", f"/registry/configmaps/default/big{index}", "y" * 100_000)
    ns(card.netns, "ip", "link", "set", "lo", "mtu", "1500")  # tbf drops a packet larger than its burst
    ns(card.netns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "4mbit", "burst", "16kb",
       "latency", "1s")  # fmt: skip
    time.sleep(1.1)
    agent = subprocess.Popen(
        card.agent_command("snapshot"), env=card.env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    parts: list[Path] = []
    while not any(part.stat().st_size > 0 for part in parts):
        assert agent.poll() is None, "the snapshot ended before it could be killed"
        assert time.monotonic() < deadline, "etcdctl never began writing"
        time.sleep(0.01)
        parts = list((card.root / SNAPSHOTS).glob("*.part"))
    os.killpg(agent.pid, signal.SIGKILL)
    agent.wait()
    ns(card.netns, "tc", "qdisc", "del", "dev", "lo", "root")
    assert kept(card.root) == [previous]
    assert previous.read_bytes() == before
    assert etcdutl_status(card, previous)["totalKey"] >= 101
    assert state(card.root)["snapshot"]["file"] == previous.name
    again = card.agent("snapshot")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "left by an interrupted run" in again.stdout
    assert not list((card.root / SNAPSHOTS).glob("*.part"))
    assert len(kept(card.root)) == 2


def test_the_only_control_plane_dies_and_a_fresh_card_restores_the_cluster(
    running: Card, tmp_path: Path
) -> None:
    """backup fetches a snapshot through the agent's --send; the dead cp1 is replaced (the state
    folder marks its cards as restoring); the new card's agent restores etcd and runs kubeadm init;
    a real etcd then serves the restored data under cp1's name and peer URL."""
    old = running
    pki = old.root / "etc/kubernetes/pki/etcd"
    revision_before = int(json.loads(old.etcdctl(pki, "endpoint", "status", "-w", "json").stdout)[0]
                          ["Status"]["header"]["revision"])  # fmt: skip
    state_dir = tmp_path / "site/.picluster"
    state_dir.parent.mkdir()
    store.save(state_dir, fixed_secrets())

    def shell(node: Node, command: list[str]) -> str:  # ssh to the node, its agent as root
        assert node.name == "cp1" and command[0] == "picluster-agent", command
        done = old.agent(*command[1:])
        if done.returncode != 0:
            raise NodeFailed(done.stdout.strip().splitlines()[-1])
        return done.stdout

    taken = cluster_snapshot.fetch(load_cluster(BUNDLED), shell, state_dir, lambda line: None)
    assert taken.keys >= 101 and taken.revision == revision_before
    assert stat.S_IMODE((state_dir / snapshot.SNAPSHOT_FILE).stat().st_mode) == 0o600
    old.stop_etcd()  # the card dies

    shutil.copy(BUNDLED, tmp_path / "site/cluster.yaml")
    with ExitStack() as stack:  # the build machine, where nothing answers at cp1's address
        gone = f"sn{os.getpid()}g"
        subprocess.run(["ip", "netns", "add", gone], check=True)
        stack.callback(subprocess.run, ["ip", "netns", "delete", gone], check=False)
        replaced = subprocess.run(
            ["ip", "netns", "exec", gone, sys.executable, "-m", "builder", "replace", "cp1",
             "-f", str(tmp_path / "site/cluster.yaml")],
            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    assert "its next card restores etcd" in replaced.stdout
    marked = snapshot.load(state_dir)
    assert marked is not None and marked.restore

    with ExitStack() as stack:
        new = Card(card_root(tmp_path / "new", snapshot.data(state_dir, marked)),
                   make_namespace(stack, f"sn{os.getpid()}n"), old.bin)  # fmt: skip
        stack.callback(new.stop_etcd)
        carried = new.root / "var/lib/picluster/restore/etcd-snapshot.db"
        assert stat.S_IMODE(carried.stat().st_mode) == 0o600
        standins = install_standins(tmp_path / "standins", "kubeadm", "kubelet", "kubectl")
        joined = new.agent("join", standins=standins)
        assert joined.returncode == 0, joined.stdout + joined.stderr
        [init] = [call for call in calls(standins) if call[:2] == ["kubeadm", "init"]]
        assert "--ignore-preflight-errors=DirAvailable--var-lib-etcd" in init
        assert "[WARNING DirAvailable--var-lib-etcd]: /var/lib/etcd is not empty" in joined.stdout
        assert (new.root / "var/lib/etcd/member/snap/db").stat().st_size > 1000  # etcd's, not kubeadm's

        new_pki = new.root.parent / "etcd-pki"
        write_pki(fixed_secrets().etcd_ca, new_pki, "cp1", ADDRESS)
        new.start_etcd(new_pki)
        assert new.etcdctl(new_pki, "get", SECRET_KEY, "--print-value-only").stdout.strip() == "s3cret"
        members = json.loads(new.etcdctl(new_pki, "member", "list", "-w", "json").stdout)["members"]
        assert [(m["name"], m["peerURLs"]) for m in members] == [("cp1", [f"https://{ADDRESS}:2380"])]
        header = json.loads(new.etcdctl(new_pki, "endpoint", "status", "-w", "json").stdout)[0]["Status"]
        assert int(header["header"]["revision"]) > revision_before + 999_000_000  # --bump-revision
        compacted = new.etcdctl(new_pki, "get", SECRET_KEY, f"--rev={revision_before}", check=False)
        assert "required revision has been compacted" in compacted.stderr  # --mark-compacted
    assert state(new.root)["phase"] == "joined"
