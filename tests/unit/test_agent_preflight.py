"""Preflight checks against a node root in a folder: /proc and /sys files written by the test,
and stand-ins for swapoff and modprobe that change those files as the real ones would."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from agent import preflight
from agent.cli import wait_for_preflight
from agent.config import NodeConfig, load_config
from agent.host import Host
from agent.state import State

from tests.support.agent import node_root

SWAPS_HEADER = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = node_root(tmp_path)
    (root / "proc/sys/net/ipv4").mkdir(parents=True)
    (root / "proc/sys/net/bridge").mkdir(parents=True)
    (root / "proc/swaps").write_text(SWAPS_HEADER)
    (root / "proc/cmdline").write_text("console=tty0 root=LABEL=RASPIROOT rw\n")
    (root / "sys/fs/cgroup").mkdir(parents=True)
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    needs = load_config(root / "etc/picluster/node.json").kernel_needs
    assert needs is not None
    for key, value in needs.sysctls.items():
        (root / "proc/sys" / key.replace(".", "/")).write_text(value + "\n")
    return root


@pytest.fixture
def config(root: Path) -> NodeConfig:
    return load_config(root / "etc/picluster/node.json")


def listing(root: Path, **needs: Any) -> NodeConfig:
    """The node's config once its node.json's kernel_needs lists `needs` instead."""
    path = root / "etc/picluster/node.json"
    raw = json.loads(path.read_text())
    raw["kernel_needs"].update(needs)
    path.write_text(json.dumps(raw))
    return load_config(path)


def standin(folder: Path, name: str, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """STAND-IN for a system tool: a shell script that does to the node root what the tool does."""
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n# STAND-IN for {name}\n{script}\n")
    (folder / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_swap_in_use_is_turned_off(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    (root / "proc/swaps").write_text(SWAPS_HEADER + "/var/swap file 102396 0 -2\n")
    standin(tmp_path / "bin", "swapoff", f"printf '{SWAPS_HEADER}' > {root}/proc/swaps", monkeypatch)
    result = preflight.check_swap(Host(root), config)
    assert (result.status, result.detail) == ("fixed", "turned off swap on /var/swap")
    assert preflight.check_swap(Host(root), config).status == "ok"


def test_swap_that_will_not_go_off_fails(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    (root / "proc/swaps").write_text(SWAPS_HEADER + "/dev/zram0 partition 102396 0 100\n")
    standin(tmp_path / "bin", "swapoff", "exit 0", monkeypatch)
    result = preflight.check_swap(Host(root), config)
    assert (result.status, result.detail) == ("failed", "swap still on /dev/zram0 after swapoff -a")


def test_missing_modules_are_loaded(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    (root / "sys/module/overlay").mkdir(parents=True)
    standin(tmp_path / "bin", "modprobe", f'mkdir -p {root}/sys/module/"$1"', monkeypatch)
    result = preflight.check_modules(Host(root), config)
    assert config.kernel_needs is not None and config.kernel_needs.modules[0] == "overlay"
    assert (result.status, result.detail) == ("fixed", f"loaded {', '.join(config.kernel_needs.modules[1:])}")
    assert preflight.check_modules(Host(root), config).status == "ok"


def test_preflight_loads_exactly_the_modules_node_json_lists(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    standin(tmp_path / "bin", "modprobe", f'mkdir -p {root}/sys/module/"$1"', monkeypatch)
    (root / "sys/module/overlay").mkdir(parents=True)
    only_overlay = listing(root, modules=["overlay"])
    assert preflight.check_modules(Host(root), only_overlay).detail == "overlay loaded"
    one_more = listing(root, modules=["overlay", "nf_conntrack"])
    result = preflight.check_modules(Host(root), one_more)
    assert (result.status, result.detail) == ("fixed", "loaded nf_conntrack")


def test_flannels_legacy_iptables_modules_are_required(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    """flannel v0.10.0's own iptables is legacy-only and its container cannot load modules: the
    node must have loaded them (network/iptables.go only logs a failure)."""
    for name in ("overlay", "br_netfilter", "vxlan"):
        (root / "sys/module" / name).mkdir(parents=True)
    standin(
        tmp_path / "bin", "modprobe", 'echo "modprobe: FATAL: Module $1 not found" >&2; exit 1', monkeypatch
    )
    result = preflight.check_modules(Host(root), config)
    assert result.status == "failed" and "Module ip_tables not found" in result.detail


def test_a_node_json_without_kernel_needs_fails_and_says_to_reflash(root: Path) -> None:
    """A card from an older picluster: its boot applied lists preflight cannot know."""
    path = root / "etc/picluster/node.json"
    raw = json.loads(path.read_text())
    del raw["kernel_needs"]
    path.write_text(json.dumps(raw))
    config = load_config(path)
    for check in (preflight.check_modules, preflight.check_sysctls, preflight.check_cgroups):
        result = check(Host(root), config)
        assert result.status == "failed" and result.blocking, check
        assert "kernel_needs" in result.detail and "reflash the card" in result.detail


def test_a_module_that_cannot_load_fails_with_modprobes_words(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    script = 'echo "modprobe: FATAL: Module $1 not found in directory /lib/modules/6.12" >&2; exit 1'
    standin(tmp_path / "bin", "modprobe", script, monkeypatch)
    result = preflight.check_modules(Host(root), config)
    assert result.status == "failed" and "Module overlay not found" in result.detail


def test_wrong_sysctls_are_set(root: Path, config: NodeConfig) -> None:
    (root / "proc/sys/net/ipv4/ip_forward").write_text("0\n")
    result = preflight.check_sysctls(Host(root), config)
    assert (result.status, result.detail) == ("fixed", "net.ipv4.ip_forward 0 -> 1")
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "1\n"


def test_preflight_sets_exactly_the_sysctls_node_json_lists(root: Path) -> None:
    (root / "proc/sys/net/bridge/bridge-nf-call-iptables").unlink()
    only_forwarding = listing(root, sysctls={"net.ipv4.ip_forward": "1"})
    result = preflight.check_sysctls(Host(root), only_forwarding)
    assert (result.status, result.detail) == ("ok", "net.ipv4.ip_forward=1")
    (root / "proc/sys/net/ipv4/conf/all").mkdir(parents=True)
    (root / "proc/sys/net/ipv4/conf/all/rp_filter").write_text("2\n")
    one_more = listing(root, sysctls={"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "1"})
    result = preflight.check_sysctls(Host(root), one_more)
    assert (result.status, result.detail) == ("fixed", "net.ipv4.conf.all.rp_filter 2 -> 1")
    assert (root / "proc/sys/net/ipv4/conf/all/rp_filter").read_text() == "1\n"


def test_bridge_sysctls_missing_name_br_netfilter(root: Path, config: NodeConfig) -> None:
    (root / "proc/sys/net/bridge/bridge-nf-call-iptables").unlink()
    result = preflight.check_sysctls(Host(root), config)
    assert result.status == "failed" and "br_netfilter" in result.detail


def test_dry_run_says_what_it_would_fix_and_changes_nothing(root: Path, config: NodeConfig) -> None:
    (root / "proc/sys/net/ipv4/ip_forward").write_text("0\n")
    result = preflight.check_sysctls(Host(root, dry_run=True), config)
    assert result.detail == "would fix: net.ipv4.ip_forward 0 -> 1"
    assert (root / "proc/sys/net/ipv4/ip_forward").read_text() == "0\n"


def test_memory_cgroup_missing_says_how_to_enable_it(root: Path, config: NodeConfig) -> None:
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io pids\n")
    result = preflight.check_cgroups(Host(root), config)
    assert result.status == "failed" and result.blocking
    assert config.kernel_needs is not None
    assert f"the kernel command line lacks {' '.join(config.kernel_needs.args)}" in result.detail
    assert "/boot/firmware/cmdline.txt" in result.detail
    assert preflight.check_cgroups(Host(root), config).status == "failed"


def test_a_missing_memory_cgroup_names_the_kernel_args_node_json_lists(root: Path) -> None:
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpuset cpu io pids\n")
    (root / "proc/cmdline").write_text("console=tty0 cgroup_enable=memory cgroup_memory=1\n")
    config = listing(root, args=["cgroup_enable=memory", "cgroup_memory=1", "cgroup_enable=hugetlb"])
    detail = preflight.check_cgroups(Host(root), config).detail
    assert "(the kernel command line lacks cgroup_enable=hugetlb)" in detail
    config = listing(root, args=["cgroup_enable=memory", "cgroup_memory=1"])
    detail = preflight.check_cgroups(Host(root), config).detail
    assert "(the kernel ignored them); add cgroup_enable=memory cgroup_memory=1 to" in detail


def test_an_address_missing_is_traced_to_the_file_the_card_configures_it_in(root: Path) -> None:
    assert "10-cluster.network" in preflight._network_hint(Host(root), "eth0")  # a Debian card
    keyfile = root / preflight.NM_KEYFILE.lstrip("/")
    keyfile.parent.mkdir(parents=True)
    keyfile.write_text("[connection]\n")
    hint = preflight._network_hint(Host(root), "eth0")  # a Raspberry Pi OS card: NetworkManager
    assert preflight.NM_KEYFILE in hint and "nmcli device show eth0" in hint


def test_clock_synchronised(root: Path, config: NodeConfig) -> None:
    (root / "run/systemd/timesync").mkdir(parents=True)
    (root / "run/systemd/timesync/synchronized").touch()
    assert preflight.check_clock(Host(root), config).status == "ok"


def test_unsynchronised_clock_after_the_cas_start_does_not_block(root: Path, config: NodeConfig) -> None:
    started = time.monotonic()
    result = preflight.check_clock(Host(root), replace(config, ca_not_before=time.time() - 3600))
    assert time.monotonic() - started >= config.timing.clock_timeout  # it waited, boundedly
    assert result.status == "failed" and not result.blocking
    assert "not synchronised after 0.2 s" in result.detail and "going on" in result.detail


def test_a_clock_before_the_cas_start_says_kubeadm_waits(root: Path, config: NodeConfig) -> None:
    """The join waits for the clock (test_agent_join); preflight only says so, and the agent
    goes on to clean the links instead of exiting into a restart loop."""
    result = preflight.check_clock(Host(root), replace(config, ca_not_before=time.time() + 86400))
    assert result.status == "failed" and not result.blocking
    assert (
        "before the cluster's CA became valid" in result.detail
        and "the agent waits for NTP before kubeadm" in result.detail
    )


def test_containerd_answering(root: Path, config: NodeConfig) -> None:
    path = root / "run/containerd/containerd.sock"
    path.parent.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        server.listen()
        assert preflight.check_containerd(Host(root), config).status == "ok"


def test_containerd_silent_is_restarted_and_fails_if_it_stays_silent(
    root: Path, config: NodeConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, allow_subprocess: None
) -> None:
    standin(tmp_path / "bin", "systemctl", f'echo "$@" >> {tmp_path}/systemctl.calls', monkeypatch)
    result = preflight.check_containerd(Host(root), config)
    assert (tmp_path / "systemctl.calls").read_text() == "restart containerd.service\n"
    assert result.status == "failed" and "journalctl -u containerd" in result.detail


def test_run_waits_for_a_failing_check_instead_of_exiting(
    root: Path, config: NodeConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A headless node has nobody to restart the agent: `run` checks again what blocked the
    join, with backoff, saying what it waits for, until it passes."""
    calls: list[str] = []
    replies = iter(["eth0 does not exist; is the cable's port eth0?", "eth0 does not exist", None])

    def interface(host: Host, config: NodeConfig) -> preflight.Result:
        calls.append("interface")
        detail = next(replies)
        return preflight.Result("interface", "failed" if detail else "ok", detail or "eth0 holds it")

    def passing(name: str) -> Any:
        def check(host: Host, config: NodeConfig) -> preflight.Result:
            calls.append(name)
            return preflight.Result(name, "ok", "fine")

        return check

    checks = {name: interface if name == "interface" else passing(name) for name in preflight.CHECKS}
    monkeypatch.setattr(preflight, "CHECKS", checks)
    host = Host(root)
    seen: list[str] = []
    monkeypatch.setattr(Host, "sleep", lambda self, seconds: seen.append(State.load(self).phase))
    state = State.load(host)
    assert wait_for_preflight(host, config, state)
    assert seen == ["waiting: preflight", "waiting: preflight"]
    assert calls == [*preflight.CHECKS, "interface", "interface"], "only what failed is checked again"
    assert [r["name"] for r in state.preflight] == list(preflight.CHECKS)
    assert all(r["status"] == "ok" for r in state.preflight)
