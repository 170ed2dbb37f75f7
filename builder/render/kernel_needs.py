"""What Kubernetes and flannel need of a node's kernel: the modules it loads, the sysctls it sets
and the arguments it boots with, each with its reason. Written once, here.

render puts them on the card twice: in the files that apply them at boot (the templates of
modules-load.d and sysctl.d, which carry the reasons as comments; cmdline.txt and Debian's
raspi-extra-cmdline), and in node.json's "kernel_needs", from which the agent's preflight and the
verify suite take what they check. A change here reaches the boot, the agent and the checks
together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Modules:
    """Modules loaded for one reason, which the card's modules-load.d file gives above them as a
    comment, a line of it for each line of `why`."""

    names: tuple[str, ...]
    why: str


@dataclass(frozen=True)
class Sysctls:
    """Sysctls set for one reason, which the card's sysctl.d file gives above them as a comment, a
    line of it for each line of `why`."""

    values: Mapping[str, str]
    why: str


MODULES = (
    Modules(
        ("overlay", "br_netfilter", "vxlan"),
        "containerd's overlay snapshotter, bridge netfilter for kube-proxy and flannel, flannel's vxlan.",
    ),
    Modules(
        ("ip_tables", "iptable_nat", "iptable_filter"),
        "flannel v0.10.0's image carries Alpine's legacy-only iptables and writes its MASQUERADE and\n"
        "FORWARD rules with it (network/iptables.go), only logging a failure. Debian's kernel builds\n"
        "these as modules, and flannel's container has no /lib/modules to load them from: without\n"
        "them pods cannot reach anything outside the pod network (CoreDNS not its upstream).",
    ),
)

SYSCTLS = (
    Sysctls(
        {
            "net.ipv4.ip_forward": "1",
            "net.bridge.bridge-nf-call-iptables": "1",
            "net.bridge.bridge-nf-call-ip6tables": "1",
        },
        "Pods reach each other and the outside through the node: forward, and let iptables see bridged\n"
        "traffic (kube-proxy and flannel's masquerade rules depend on it).",
    ),
)

KERNEL_ARGS = ("cgroup_enable=memory",)
"""The Pi firmware puts cgroup_disable=memory on the command line it hands the kernel; kubelet needs
the memory controller, and only cgroup_enable=memory after it turns it back on (raspberrypi/linux
#6439, #6980). cgroup_enable=cpuset did nothing (the cpuset controller is on in cgroup v2), and
cgroup_memory=1 was a Raspberry Pi kernel's own switch that current ones no longer read; preflight
and verify check cgroup.controllers, whatever the line says. The command line has no comments, so
the reason stays here."""
