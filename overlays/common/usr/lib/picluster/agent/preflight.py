"""What kubeadm needs of the node, checked and, where the agent can, fixed.

Each check returns one Result: ok, fixed, or failed with the reason. A failed check that makes
kubeadm fail for certain blocks the join; an unsynchronised clock does not when the clock is
already past the image's build time (the cluster's certificates are valid from before then).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import NodeConfig
from agent.host import CommandFailed, Host, utc
from agent.links import ipv4

NO_KERNEL_NEEDS = "node.json lists no kernel_needs (a card from an older picluster); reflash the card"
"""node.json's kernel_needs is what the card applies at boot (modules-load.d, sysctl.d, the
kernel command line), written by the same render: preflight checks and repairs the running node
against it. Without it there is nothing to check against."""
TIME_SYNCHRONISED = "/run/systemd/timesync/synchronized"
"""systemd-timesyncd creates this file once it has synchronised the clock."""
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # ok | fixed | failed
    detail: str
    blocking: bool = True

    @property
    def line(self) -> str:
        return f"{self.name:<11} {self.status:<6} {self.detail}"

    def record(self) -> dict[str, str]:
        blocks = self.status == "failed" and self.blocking
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "blocks_join": str(blocks).lower(),
        }


def preflight(host: Host, config: NodeConfig, only: Collection[str] = ()) -> list[Result]:
    """Every check, or `only` those named (a retry checks again what failed)."""
    return [check(host, config) for name, check in CHECKS.items() if not only or name in only]


def _fixed(name: str, detail: str, host: Host) -> Result:
    return Result(name, "fixed", f"{'would fix: ' if host.dry_run else ''}{detail}")


def _swaps(host: Host) -> list[str]:
    lines = host.path("/proc/swaps").read_text().splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


def check_swap(host: Host, config: NodeConfig) -> Result:
    active = _swaps(host)
    if not active:
        return Result("swap", "ok", "no swap in use")
    try:
        host.run(["swapoff", "-a"])
    except CommandFailed as error:
        return Result("swap", "failed", f"swap on {', '.join(active)}: {error.summary}")
    if not host.dry_run and _swaps(host):
        return Result("swap", "failed", f"swap still on {', '.join(_swaps(host))} after swapoff -a")
    return _fixed("swap", f"turned off swap on {', '.join(active)}", host)


def check_modules(host: Host, config: NodeConfig) -> Result:
    needs = config.kernel_needs
    if needs is None:
        return Result("modules", "failed", NO_KERNEL_NEEDS)
    # /sys/module/<name> exists for loaded modules and for ones built into the kernel
    missing = [name for name in needs.modules if not host.path(f"/sys/module/{name}").exists()]
    if not missing:
        return Result("modules", "ok", ", ".join(needs.modules) + " loaded")
    try:
        for name in missing:
            host.run(["modprobe", name])
    except CommandFailed as error:
        return Result("modules", "failed", error.summary)
    return _fixed("modules", "loaded " + ", ".join(missing), host)


def check_sysctls(host: Host, config: NodeConfig) -> Result:
    needs = config.kernel_needs
    if needs is None:
        return Result("sysctls", "failed", NO_KERNEL_NEEDS)
    changed = []
    for key, wanted in needs.sysctls.items():
        path = host.path("/proc/sys/" + key.replace(".", "/"))
        if not path.exists():
            return Result("sysctls", "failed", f"{key} does not exist (is br_netfilter loaded?)")
        value = path.read_text().strip()
        if value != wanted:
            if not host.dry_run:
                path.write_text(wanted + "\n")
            changed.append(f"{key} {value} -> {wanted}")
    if changed:
        return _fixed("sysctls", "; ".join(changed), host)
    return Result("sysctls", "ok", ", ".join(f"{key}={value}" for key, value in needs.sysctls.items()))


def check_cgroups(host: Host, config: NodeConfig) -> Result:
    needs = config.kernel_needs
    if needs is None:
        return Result("cgroups", "failed", NO_KERNEL_NEEDS)
    controllers = host.path("/sys/fs/cgroup/cgroup.controllers")
    if controllers.exists() and "memory" in controllers.read_text().split():
        return Result("cgroups", "ok", "memory controller enabled")
    booted_with = host.path("/proc/cmdline").read_text().split()
    missing = [arg for arg in needs.args if arg not in booted_with]
    flags = " ".join(missing or needs.args)
    reason = f"the kernel command line lacks {flags}" if missing else "the kernel ignored them"
    return Result(
        "cgroups",
        "failed",
        f"memory cgroup controller not enabled ({reason}); add {flags} to "
        "/etc/default/raspi-extra-cmdline and /boot/firmware/cmdline.txt, then reboot",
    )


def _link(host: Host, name: str) -> dict[str, Any] | None:
    try:
        output = host.run(["ip", "-j", "addr", "show", "dev", name], changes=False)
    except CommandFailed:
        return None
    links: list[dict[str, Any]] = json.loads(output or "[]")
    return links[0] if links else None


def check_interface(host: Host, config: NodeConfig) -> Result:
    name, wanted = config.iface, config.address
    link = _link(host, name)
    if link is None:
        return Result("interface", "failed", f"{name} does not exist; is the cable's port {name}?")
    raised = False
    flags = link.get("flags", [])
    if isinstance(flags, list) and "UP" not in flags:
        try:
            host.run(["ip", "link", "set", "dev", name, "up"])
        except CommandFailed as error:
            return Result("interface", "failed", f"{name} is down: {error.summary}")
        raised = True
    deadline = time.monotonic() + config.timing.address_timeout
    while wanted not in ipv4(link) and time.monotonic() < deadline and not host.dry_run:
        host.sleep(1)  # systemd-networkd may still be configuring it
        link = _link(host, name) or link
    held = ipv4(link)
    if wanted not in held:
        return Result(
            "interface",
            "failed",
            f"{name} holds {', '.join(map(str, held)) or 'no IPv4 address'}, not {wanted}; "
            + _network_hint(host, name),
        )
    if raised:
        return _fixed("interface", f"brought {name} up; it holds {wanted}", host)
    return Result("interface", "ok", f"{name} is up and holds {wanted}")


NM_KEYFILE = "/etc/NetworkManager/system-connections/picluster-cluster.nmconnection"
"""Where a Raspberry Pi OS card keeps its address; a Debian card has networkd's file instead."""


def _network_hint(host: Host, name: str) -> str:
    """Where the card's address is configured, and the command that says why it is not there."""
    if host.path(NM_KEYFILE).exists():
        return f"check {NM_KEYFILE} and `nmcli device show {name}`"
    return f"check /etc/systemd/network/10-cluster.network and `networkctl status {name}`"


def check_clock(host: Host, config: NodeConfig) -> Result:
    """Never blocks: the join waits for the clock itself before it runs kubeadm, so the node's
    other checks and clean-links still run while NTP is unreachable."""
    marker = host.path(TIME_SYNCHRONISED)
    deadline = time.monotonic() + config.timing.clock_timeout
    while not marker.exists() and time.monotonic() < deadline and not host.dry_run:
        host.sleep(1)
    clock = utc(time.time())
    if marker.exists():
        return Result("clock", "ok", f"synchronised ({clock})")
    waited = f"not synchronised after {config.timing.clock_timeout:g} s (is an NTP server reachable?)"
    if time.time() >= config.ca_not_before:
        return Result(
            "clock",
            "failed",
            f"{waited}; going on: the clock ({clock}) is past the start of the cluster's CA "
            f"({utc(config.ca_not_before)}), so its certificates are valid",
            blocking=False,
        )
    return Result(
        "clock",
        "failed",
        f"{waited}, and the clock ({clock}) is before the cluster's CA became valid "
        f"({utc(config.ca_not_before)}): TLS would fail, so the agent waits for NTP before kubeadm; "
        "check `timedatectl timesync-status`",
        blocking=False,
    )


def _containerd_answers(socket_path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as connection:
        connection.settimeout(2)
        try:
            connection.connect(str(socket_path))
        except OSError:
            return False
    return True


def check_containerd(host: Host, config: NodeConfig) -> Result:
    path = host.path(CONTAINERD_SOCKET)
    if _containerd_answers(path):
        return Result("containerd", "ok", f"answering on {CONTAINERD_SOCKET}")
    try:
        host.run(["systemctl", "restart", "containerd.service"])
    except CommandFailed as error:
        return Result("containerd", "failed", f"not answering; {error.summary}")
    deadline = time.monotonic() + config.timing.containerd_timeout
    while not host.dry_run and not _containerd_answers(path):
        if time.monotonic() > deadline:
            return Result(
                "containerd",
                "failed",
                f"not answering on {CONTAINERD_SOCKET} after a restart; see `journalctl -u containerd`",
            )
        host.sleep(1)
    return _fixed("containerd", "restarted containerd; it answers", host)


CHECKS: dict[str, Callable[[Host, NodeConfig], Result]] = {
    "swap": check_swap,
    "modules": check_modules,
    "sysctls": check_sysctls,
    "cgroups": check_cgroups,
    "interface": check_interface,
    "clock": check_clock,
    "containerd": check_containerd,
}
