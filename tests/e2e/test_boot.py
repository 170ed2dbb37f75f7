"""A card picluster built boots to an SSH key login as its node, its root grows to fill the
card, the agent prepares the node and waits, and `picluster verify` passes what runs without
Kubernetes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.image.layout import ROOT_OFFSET
from tests.support.apt_repository import make_repository
from tests.support.host import require_tools
from tests.support.machines import (
    CARD_SIZE,
    Booted,
    Card,
    agent_state_when,
    boot,
    keep_console,
    picluster_verify,
    stamp_with_test_unit,
)

pytestmark = pytest.mark.e2e


EGRESS_UNIT = """[Unit]
Description=picluster test: count what containerd sends off the test network (10.0.2.0/24)
After=containerd.service
Before=picluster-agent.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/iptables -w -A OUTPUT ! -o lo ! -d 10.0.2.0/24 \\
    -m cgroup --path system.slice/containerd.service -m comment --comment picluster-test-egress

[Install]
WantedBy=multi-user.target
"""
"""containerd's cgroup exists only once it runs, so the rule comes after it and before the agent
(which imports, or pulls through containerd); the base's iptables is the nf_tables one."""


@pytest.fixture(scope="module")
def booted(card: Card) -> Iterator[Booted]:
    """The card as picluster builds it, with one test unit more: a counter of containerd's packets
    to anywhere but the test network."""
    image = card.work / "cp1-plain.img"
    stamp_with_test_unit(
        card.cluster_file,
        "cp1",
        "picluster-test-egress.service",
        EGRESS_UNIT,
        image,
        card.flannel_digest,
        *card.carried_files,
    )
    os.truncate(image, CARD_SIZE)
    with boot(card, image, "plain") as running:
        yield running


def test_the_card_boots_to_an_ssh_key_login_as_itself(booted: Booted) -> None:
    assert booted.ssh("hostname").stdout.strip() == "cp1"
    assert "inet 10.0.2.15/24" in booted.ssh("ip -4 -o addr show dev eth0").stdout
    assert booted.ssh("sudo -n true").returncode == 0, "passwordless sudo for the login user"
    assert booted.ssh("cat /etc/machine-id").stdout.strip() not in ("", "uninitialized")
    assert booted.ssh("findmnt -n -o FSTYPE /boot/firmware").stdout.strip() == "vfat"
    # the base build leaves udev's hardware database to the first boot (systemd-hwdb-update)
    assert booted.ssh("test -s /etc/udev/hwdb.bin && echo built").stdout.strip() == "built"


def test_the_root_filesystem_grows_to_fill_the_card(booted: Booted, card: Card) -> None:
    deadline = time.monotonic() + 120
    while booted.ssh("test -e /var/lib/picluster/root-grown").returncode != 0:
        assert time.monotonic() < deadline, f"root not grown; console: {keep_console(booted)}"
        time.sleep(5)
    root_bytes = int(booted.ssh("findmnt -n -b -o SIZE /").stdout)
    image_root = card.image.stat().st_size - ROOT_OFFSET
    assert root_bytes > image_root + 1.5 * 2**30, (root_bytes, image_root)
    partition_sectors = int(booted.ssh("cat /sys/class/block/vda2/size").stdout)
    assert partition_sectors * 512 > CARD_SIZE - ROOT_OFFSET - 2**20, "the partition reaches the card's end"


def test_the_agent_prepares_the_node_and_waits_for_packages(booted: Booted) -> None:
    """preflight passes but for the clock (nothing to synchronise with), nothing is stale, and
    with `packages: firstboot` the agent waits for the Kubernetes repository, retrying."""
    state = agent_state_when(booted, "waiting: packages")
    assert "Release.key" in state["last_error"]
    checks = {check["name"]: check["status"] for check in state["preflight"]}
    assert checks == {"swap": "ok", "modules": "ok", "sysctls": "ok", "cgroups": "ok", "interface": "ok",
                      "clock": "failed", "containerd": "ok"}, state["preflight"]  # fmt: skip
    assert state["links"] == []
    assert booted.ssh("systemctl is-active picluster-agent").stdout.strip() == "active"


def test_picluster_verify_passes_what_runs_without_kubernetes(booted: Booted) -> None:
    agent_state_when(booted, "waiting: packages")
    status, report = picluster_verify(booted)
    assert status == 0, report
    assert "0 failed" in report
    for check in (
        "hostname",
        "address on the cluster interface",
        "memory cgroup controller active",
        "module loaded vxlan",
        "containerd running, SystemdCgroup",
        "agent: status agrees with the node",
        "certs: daily renewal timer on",
        "etcd: daily snapshot timer on, the last snapshot taken",
    ):
        assert f"\n{check} " in report and _cell(report, check) == "ok", check  # fmt: skip
    assert _cell(report, "kubelet running with --node-ip") == "skip"
    assert "Kubernetes is not installed on this node (agent phase 'waiting: packages'" in report
    assert "skipped on request (--skip time_synchronised)" in report


def test_the_cards_etcd_tools_run_and_debians_own_etcd_stays_off(booted: Booted) -> None:
    """etcdctl and etcdutl (Debian's, arm64) run on the card for the snapshots; etcd-server's own
    server is left out and its service masked, so port 2379 stays kubeadm's etcd's; the snapshot
    waits for kubeadm."""
    assert "etcdctl version: 3.5" in booted.ssh("etcdctl version").stdout
    assert "etcdutl version: 3.5" in booted.ssh("etcdutl version").stdout
    assert booted.ssh("test -e /usr/bin/etcd").returncode != 0
    assert booted.ssh("systemctl is-enabled etcd.service").stdout.strip() == "masked"
    assert booted.ssh("ss -Hltn 'sport = :2379'").stdout.strip() == ""
    assert booted.ssh("systemctl is-enabled picluster-etcd-snapshot.timer").stdout.strip() == "enabled"
    said = booted.ssh("sudo -n picluster-agent snapshot")
    assert said.returncode == 0 and "no etcd runs here yet" in said.stdout, said.stdout + said.stderr


def _cell(report: str, check: str) -> str:
    (row,) = [line for line in report.splitlines() if line.startswith(check + " ")]
    return row.split()[-1]


def test_the_agent_imports_the_cards_images_into_the_cards_containerd_and_nothing_leaves(
    booted: Booted, card: Card
) -> None:
    """images: card: the real containerd (Debian's, arm64) holds each image under its reference with
    the digest the registry served at build time, though the node never reached a registry."""
    state = agent_state_when(booted, "waiting: packages")
    assert {entry["image"]: (entry["status"], entry["digest"]) for entry in state["images"]} == {
        reference: ("imported", digest) for reference, digest in card.carried.items()
    }
    listed = booted.ssh("sudo -n ctr --namespace k8s.io images ls").stdout.splitlines()[1:]
    held = {row.split()[0]: row.split()[2] for row in listed}  # with the CRI plugin's own names
    assert {reference: held.get(reference) for reference in card.carried} == card.carried
    assert _egress(booted) == 0, "containerd sent nothing off the test network"
    # the counter counts: a process in containerd's cgroup dials an address off the test network
    booted.ssh(
        "sudo -n sh -c 'echo $$ > /sys/fs/cgroup/system.slice/containerd.service/cgroup.procs && exec "
        'python3 -c "import socket; socket.create_connection((\\"192.0.2.1\\", 5000), 3)"\''
    )
    assert _egress(booted) > 0


def _egress(booted: Booted) -> int:
    rules = booted.ssh("sudo -n iptables -w -L OUTPUT -v -x -n").stdout.splitlines()
    (counted,) = [line for line in rules if "picluster-test-egress" in line]
    return int(counted.split()[0])


def test_last_the_agents_upgrade_steps_move_the_tools_with_the_cards_own_apt_and_systemd(
    booted: Booted, tmp_path: Path
) -> None:
    """The card's real apt, dpkg and systemd take kubeadm, then kubelet and kubectl, from 1.34.1
    to 1.34.2 out of a signed stand-in repository served on the node (pkgs.k8s.io is out of
    reach), every one held after. Last in the module: it stops the agent, whose first-boot
    install would otherwise race these for apt's lock."""
    require_tools("dpkg-deb", "dpkg-scanpackages", "gpg")
    (tmp_path / "repo").mkdir()
    (tmp_path / "gnupg").mkdir(mode=0o700)
    make_repository(tmp_path / "repo", tmp_path / "gnupg")
    assert booted.ssh("sudo -n systemctl stop picluster-agent").returncode == 0
    packed = subprocess.run(["tar", "-C", str(tmp_path / "repo"), "-cf", "-", "."], capture_output=True,
                            check=True)  # fmt: skip
    login = ["ssh", "-F", str(booted.ssh_config), "10.0.2.15"]
    unpacked = subprocess.run([*login, "mkdir -p repo && tar -C repo -xf -"], input=packed.stdout,
                              capture_output=True, timeout=120)  # fmt: skip
    assert unpacked.returncode == 0, unpacked.stderr
    serve = "python3 -m http.server 8080 --bind 127.0.0.1 --directory /home/pi/repo"
    assert booted.ssh(f"sudo -n systemd-run --unit=standin-repo {serve}").returncode == 0
    repository = "http://127.0.0.1:8080/"

    def step(to: str, name: str) -> None:
        done = subprocess.run(
            [*login, f"sudo -n picluster-agent upgrade --to {to} --repository {repository} {name}"],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def versions() -> dict[str, str]:
        listed = booted.ssh("dpkg-query -W -f '${Package} ${Version}\\n' kubeadm kubelet kubectl").stdout
        return dict(line.split() for line in listed.splitlines())

    step("1.34.1", "kubeadm")
    step("1.34.1", "kubelet")
    assert versions() == dict.fromkeys(("kubeadm", "kubectl", "kubelet"), "1.34.1-1.1")
    step("1.34.2", "kubeadm")
    assert versions() == {"kubeadm": "1.34.2-1.1", "kubectl": "1.34.1-1.1", "kubelet": "1.34.1-1.1"}
    assert booted.ssh("apt-mark showhold").stdout.split() == ["kubeadm", "kubectl", "kubelet"]
    step("1.34.2", "kubelet")
    assert versions() == dict.fromkeys(("kubeadm", "kubectl", "kubelet"), "1.34.2-1.1")
    assert booted.ssh("apt-mark showhold").stdout.split() == ["kubeadm", "kubectl", "kubelet"]
    journal = booted.ssh("sudo -n journalctl -u kubelet -o cat").stdout
    assert "stand-in kubelet 1.34.2-1.1" in journal, "systemd restarted the kubelet at its new release"
