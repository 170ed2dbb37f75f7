"""The Debian base: a root tree made by mmdebstrap under qemu-user, with the Pi kernel and firmware.

What goes in (packages, apt sources, dpkg options, the hooks) is listed here and is part of the
base's cache key (builder.image.base); the tree is made into an image there.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from builder.download import fetch_text
from builder.errors import UserError
from builder.image import kubernetes_apt
from builder.image.context import BuildContext
from builder.image.mmdebstrap_progress import MmdebstrapProgress
from builder.resources import FIRMWARE_DIR
from builder.run import Runner
from builder.spec.model import Cluster

HOOKS_DIR = Path(__file__).resolve().parent / "hooks"
HOOKS = (HOOKS_DIR / "essential.sh", HOOKS_DIR / "customize.sh")
"""The mmdebstrap hooks, part of the base's cache key."""
INITRAMFS_MODULES = FIRMWARE_DIR / "initramfs-modules"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
COMPONENTS = ("main", "non-free-firmware")

ETCD_TOOLS = ("etcd-client", "etcd-server")
"""etcdctl saves a control plane's etcd and etcdutl checks and restores it (agent/snapshot.py);
the server itself is left out (ETCD_EXCLUDED) and its service masked (overlays/links.yaml)."""
ETCD_EXCLUDED = "path-exclude=/usr/bin/etcd"
"""etcd-server's own server (26 MB), left out of a node's base: the cluster's etcd is kubeadm's
static pod."""
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
"""The CNI plugins a node runs from Debian's containernetworking-plugins: flannel's conflist
delegates to bridge with host-local addresses and chains portmap, and the kubelet brings up each
pod's loopback (overlays/links.yaml puts them in /opt/cni/bin); flannel's own plugin comes with its
image."""
MODULES = "/usr/lib/modules/*/kernel"
PI_WIFI = ("43430", "43455")
"""The Wi-Fi chips of the Pi 3 (43430) and the Pi 3B+, 4 and 400 (43455), whose firmware stays."""
TRIMMED = (
    # device trees of other vendors' boards (qcom, rockchip, freescale, ...): 55 MiB; the Pi's are
    # under broadcom/, which raspi-firmware copies onto the boot partition
    "path-exclude=/usr/lib/linux-image-*/*",
    "path-include=/usr/lib/linux-image-*/broadcom/*",
    # the 21 CNI plugins no node runs: 45 MiB
    "path-exclude=/usr/lib/cni/*",
    *(f"path-include=/usr/lib/cni/{name}" for name in CNI_PLUGINS),
    # containerd's shims for the runtimes before runc.v2, which the cards' containerd runs: 14 MiB
    "path-exclude=/usr/bin/containerd-shim",
    "path-exclude=/usr/bin/containerd-shim-runc-v1",
    # the GPU firmware's camera (start_x), debug (start_db) and cut-down (start_cd) builds, which
    # only config.txt's start_x, start_debug or gpu_mem=16 select; raspi-firmware copies what is
    # left onto the boot partition, so each counts twice: 32 MiB
    "path-exclude=/usr/lib/raspi-firmware/start*",
    "path-exclude=/usr/lib/raspi-firmware/fixup*",
    *(f"path-include=/usr/lib/raspi-firmware/{name}" for name in
      ("start.elf", "fixup.dat", "start4.elf", "fixup4.dat")),
    # Wi-Fi firmware of chips no Pi has: 15 MiB
    "path-exclude=/usr/lib/firmware/brcm/*",
    "path-exclude=/usr/lib/firmware/cypress/*",
    *(f"path-include=/usr/lib/firmware/brcm/brcmfmac{chip}-sdio.*" for chip in PI_WIFI),
    *(f"path-include=/usr/lib/firmware/cypress/cyfmac{chip}-sdio.*" for chip in PI_WIFI),
    # kernel modules for hardware no Pi has, or a cluster node does not drive: cameras and TV
    # tuners (but CEC, which the Pi's HDMI driver vc4 needs), other vendors' GPUs, Wi-Fi and
    # Ethernet chips (the Pi's own and every USB Ethernet adapter stay; USB Wi-Fi dongles go),
    # sensors, InfiniBand, and sound cards but the Pi's: 38 MiB. Netfilter, overlay, vxlan,
    # bridge, NFS, iSCSI, rbd, device mapper and USB storage are all kept.
    f"path-exclude={MODULES}/drivers/media/*",
    f"path-include={MODULES}/drivers/media/cec/*",
    f"path-exclude={MODULES}/drivers/gpu/drm/*/*",
    *(f"path-include={MODULES}/drivers/gpu/drm/{name}/*" for name in
      ("vc4", "v3d", "display", "tiny", "panel", "bridge", "scheduler", "ttm")),
    f"path-exclude={MODULES}/drivers/net/wireless/*",
    f"path-include={MODULES}/drivers/net/wireless/broadcom/brcm80211/*",
    f"path-exclude={MODULES}/drivers/net/ethernet/*",
    f"path-include={MODULES}/drivers/net/ethernet/broadcom/*",
    f"path-exclude={MODULES}/drivers/iio/*",
    f"path-exclude={MODULES}/drivers/infiniband/*",
    *(f"path-exclude={MODULES}/sound/{name}/*" for name in ("pci", "usb", "firewire")),
    f"path-exclude={MODULES}/sound/soc/*/*",
    f"path-include={MODULES}/sound/soc/bcm/*",
    # udev's databases of vendor and model names (PCI, USB, ACPI, Bluetooth, MAC prefixes): 9 MiB;
    # the rest of hwdb.d (network names, autosuspend, input quirks) stays and the first boot
    # builds it into /etc/udev/hwdb.bin
    *(f"path-exclude=/usr/lib/udev/hwdb.d/20-{name}.hwdb" for name in
      ("pci-vendor-model", "usb-vendor-model", "OUI", "acpi-vendor", "bluetooth-vendor-product")),
    # glibc's converters between character sets other than UTF-8 and Latin-1 (built in): 8 MiB
    "path-exclude=/usr/lib/*/gconv/*",
)  # fmt: skip
"""What no Pi node uses, left out of a Debian base unless base.trim is false."""
PACKAGES = (
    # boot and system; dbus: runc and kubelet drive systemd's cgroups over D-Bus
    "systemd", "systemd-sysv", "dbus", "udev", "kmod", "initramfs-tools", "zstd", "raspi-firmware",
    "e2fsprogs", "dosfstools", "cloud-guest-utils", "sudo",
    # network and time
    "iproute2", "systemd-timesyncd", "openssh-server", "wpasupplicant", "ca-certificates",
    # the Wi-Fi chips of the Pi 3, 3B+ and 4 (raspi-firmware only suggests it; without it wlan0
    # never appears): 18 MB in every base keeps one base for every cluster; and the regulatory
    # database, without which the kernel keeps the world domain whatever country Wi-Fi names
    "firmware-brcm80211", "wireless-regdb",
    # the first-boot agent
    "python3", "python3-yaml", "python3-requests",
    # Kubernetes node prerequisites (kubeadm's preflight checks for several of these)
    # (iptables brings ebtables-nft as ebtables; Debian's ebtables package is the legacy tool, pulls
    # in Perl, 55 MiB, and kubeadm no longer checks for it: kubernetes#127151, in 1.32 and the
    # patch releases of 1.28 to 1.31)
    "containerd", "containernetworking-plugins", "iptables", "conntrack", "ethtool", "socat",
    *ETCD_TOOLS,
)  # fmt: skip
VIRTUAL_IP_PACKAGES = ("keepalived", "haproxy")
"""What serves a control_plane_endpoint in the nodes' LAN on the control planes, as system services
kubeadm neither pulls nor resets (builder.render.node.VIRTUAL_IP_LAYER)."""
KERNEL = "linux-image-arm64"
QEMU_BINFMT = "qemu-aarch64"
ARM64_MACHINES = ("aarch64", "arm64")
"""platform.machine() on a build machine that runs arm64 programs natively."""
DPKG_OPTIONS = (
    "force-unsafe-io",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)


def inputs(cluster: Cluster) -> dict[str, Any]:
    """Every input of a Debian base that changes its bytes, for its cache key."""
    base = cluster.base
    return {
        "suite": base.suite,
        "arch": base.arch,
        "sources": apt_sources(base.suite),
        "packages": packages(cluster),
        "kubernetes": kubernetes_inputs(cluster),
        "dpkg_options": [*DPKG_OPTIONS, *node_filters(cluster)],
        "files": {
            path.relative_to(path.parents[1]).as_posix(): sha256_file(path)
            for path in sorted([*HOOKS, INITRAMFS_MODULES])
        },
    }


def build_root(cluster: Cluster, work: Path, context: BuildContext) -> Path:
    """mmdebstrap a root tree into `work`; return it. Its boot partition's files are in
    boot/firmware."""
    require_root()
    require_host_tools()
    ensure_binfmt(context.runner)
    kubernetes = None
    if cluster.cluster.packages == "image":
        kubernetes = write_kubernetes_sources(cluster, work / "kubernetes")
    with context.reporter.step("mmdebstrap: Debian packages, kernel and Pi firmware (several minutes)"):
        context.runner.stream(
            mmdebstrap_command(cluster, work / "root", kubernetes),
            work / "mmdebstrap.log",
            follow=MmdebstrapProgress().feed,
            show=context.reporter.say,
        )
    return work / "root"


def node_filters(cluster: Cluster) -> list[str]:
    """dpkg's filters a node's base adds to the quick build's (DPKG_OPTIONS): the etcd server left
    out, and what no Pi node uses unless base.trim is false."""
    return [ETCD_EXCLUDED, *(TRIMMED if cluster.base.trim else ())]


def packages(cluster: Cluster) -> list[str]:
    return sorted({*PACKAGES, KERNEL, *cluster_packages(cluster)})


def cluster_packages(cluster: Cluster) -> set[str]:
    """What a cluster's settings add to its base, whichever base it is."""
    kubernetes = kubernetes_apt.PACKAGES if cluster.cluster.packages == "image" else ()
    served = VIRTUAL_IP_PACKAGES if cluster.virtual_ip else ()
    return {*cluster.base.packages, *kubernetes, *served}


def apt_sources(suite: str) -> list[str]:
    """The suite with its updates and security fixes, as one-line apt sources."""
    components = " ".join(COMPONENTS)
    return [
        f"deb {MIRROR} {suite} {components}",
        f"deb {MIRROR} {suite}-updates {components}",
        f"deb {SECURITY_MIRROR} {suite}-security {components}",
    ]


def mmdebstrap_command(cluster: Cluster, root: Path, kubernetes: Path | None = None) -> list[str]:
    """The mmdebstrap call; `kubernetes` is a folder holding `kubernetes.sources` and
    `kubernetes.pref` when the Kubernetes tools go into the image."""
    command = [
        *mmdebstrap_options(cluster.base.arch, packages(cluster)),
        *(f"--dpkgopt={option}" for option in node_filters(cluster)),
    ]
    sources = apt_sources(cluster.base.suite)
    if kubernetes is not None:
        options, source = kubernetes_options(kubernetes)
        command += options
        sources.append(source)
    return [*command, cluster.base.suite, str(root), *sources]


def mmdebstrap_options(arch: str, included: list[str]) -> list[str]:
    """mmdebstrap and its options for a tree with these packages, built the quick way the hooks
    make it (also used by the tests' Raspberry Pi OS stand-in)."""
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        # pass apt's and dpkg's output on (without it mmdebstrap keeps it unless they fail): the
        # log then shows what dpkg did, and MmdebstrapProgress counts packages from it
        "--verbose",
        f"--arch={arch}",
        f"--include={','.join(included)}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        '--aptopt=Acquire::Languages "none"',
        # debconf's preconfiguration is a Perl run per package under emulation, for no questions
        "--aptopt=#clear DPkg::Pre-Install-Pkgs",
        f'--essential-hook=sh {HOOKS_DIR / "essential.sh"} "$1" {INITRAMFS_MODULES}',
        f'--customize-hook=sh {HOOKS_DIR / "customize.sh"} "$1"',
    ]


def kubernetes_options(folder: Path) -> tuple[list[str], str]:
    """mmdebstrap options and the extra source that bring in the pinned Kubernetes tools, from
    the files write_kubernetes_sources put in folder (they go in with --include)."""
    options = [
        '--setup-hook=mkdir -p "$1/etc/apt/preferences.d" && '
        f'cp {folder / "kubernetes.pref"} "$1/etc/apt/preferences.d/kubernetes"',
        f'--customize-hook=chroot "$1" apt-mark hold {" ".join(kubernetes_apt.PINNED)}',
    ]
    return options, str(folder / "kubernetes.sources")


def write_kubernetes_sources(cluster: Cluster, folder: Path) -> Path:
    """Fetch the repository's key and write the source and pin files mmdebstrap_command uses."""
    key = fetch_text(kubernetes_apt.key_url(cluster))
    if "BEGIN PGP PUBLIC KEY BLOCK" not in key:
        raise UserError(
            f"{kubernetes_apt.key_url(cluster)} is not an armored OpenPGP key",
            "point cluster.kubernetes_repository at a copy of pkgs.k8s.io's repository",
        )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kubernetes.sources").write_text(kubernetes_apt.sources_entry(cluster, key))
    (folder / "kubernetes.pref").write_text(kubernetes_apt.preferences(cluster))
    return folder


def kubernetes_inputs(cluster: Cluster) -> dict[str, str] | None:
    if cluster.cluster.packages != "image":
        return None
    return {"version": cluster.cluster.kubernetes, "repository": cluster.kubernetes_repository}


def ensure_binfmt(runner: Runner) -> None:
    """Let this machine run arm64 programs through qemu-user, registering it if needed."""
    if platform.machine() in ARM64_MACHINES:
        return
    name = QEMU_BINFMT
    entry = Path("/proc/sys/fs/binfmt_misc") / name
    if entry.exists():
        return
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        runner.run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
    rule = Path("/usr/lib/binfmt.d") / f"{name}.conf"
    if not rule.exists():
        raise UserError(
            f"cannot run arm64 programs here: {rule} is missing",
            "install qemu-user-static (make images does this)",
        )
    Path("/proc/sys/fs/binfmt_misc/register").write_text(rule.read_text().strip())


HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "depmod": "kmod", "openssl": "openssl", "unshare": "util-linux"}
"""Programs the base build runs on this machine (customize.sh runs the last three natively),
and the Debian package of each."""


def require_host_tools() -> None:
    """Fail before a long build, not minutes into it, when a program it needs is missing."""
    missing = sorted(package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None)
    if missing:
        raise UserError(
            f"the base build needs programs from these Debian packages: {', '.join(missing)}",
            f"run `make images`, which installs them, or `apt-get install {' '.join(missing)}`",
        )


def require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "building the base image needs root (mmdebstrap creates device nodes and file owners)",
            "run `sudo make images`; later builds reuse the cached base",
        )


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
