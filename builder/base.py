"""The base image every node's card starts from: Debian built with mmdebstrap, cached by its inputs.

The cache key is the SHA-256 of a sorted JSON manifest of every input that changes the base (suite,
architecture, mirror, packages, the build hooks and module list, the builder's version); a hit
skips mmdebstrap entirely. Per-node files are not in the base: they are stamped onto copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any

from builder import __version__, downloaded_base, kubernetes_apt
from builder.boards import FIRMWARE_DIR
from builder.download import fetch_text
from builder.epoch import source_date_epoch
from builder.errors import UserError
from builder.files import exclusive, write_atomic
from builder.image import BaseImage, Layout, assemble, list_tree
from builder.model import Cluster, ImageSource
from builder.progress import Reporter
from builder.run import run, run_streaming

HOOKS_DIR = Path(__file__).resolve().parent / "hooks"
INITRAMFS_MODULES = FIRMWARE_DIR / "initramfs-modules"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
COMPONENTS = ("main", "non-free-firmware")

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
    "containerd", "containernetworking-plugins", "iptables", "conntrack", "ebtables", "ethtool",
    "socat",
)  # fmt: skip
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


def manifest(cluster: Cluster) -> dict[str, Any]:
    """Every input that changes the base image's bytes."""
    base = cluster.base
    if base.image is not None:
        return {"builder": __version__, "image": base.image.model_dump()}
    return {
        "builder": __version__,
        "suite": base.suite,
        "arch": base.arch,
        "sources": apt_sources(base.suite),
        "packages": packages(cluster),
        "kubernetes": _kubernetes_inputs(cluster),
        "dpkg_options": list(DPKG_OPTIONS),
        "files": {
            path.relative_to(path.parents[1]).as_posix(): _sha256(path)
            for path in sorted([*HOOKS_DIR.iterdir(), INITRAMFS_MODULES])
        },
    }


def cache_key(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def ensure_base(cluster: Cluster, cache_dir: Path, reporter: Reporter, rebuild: bool = False) -> BaseImage:
    """The cached base for this cluster, built first if it is missing or `rebuild` is set."""
    inputs = manifest(cluster)
    key = cache_key(inputs)
    folder = cache_dir / "base" / key[:16]
    if (folder / "base.json").exists() and not rebuild:
        reporter.say(f"==> base image: cached ({folder})")
        return load_base(folder)
    # one build of a base at a time; whoever waited finds it built
    with exclusive(folder.with_name(f"{folder.name}.lock"), f"the base image {folder}", reporter.say):
        if (folder / "base.json").exists() and not rebuild:
            reporter.say(f"==> base image: cached ({folder}), built while this build waited")
            return load_base(folder)
        reporter.say(f"==> base image: building ({_why_rebuild(cache_dir, inputs, rebuild)})")
        if cluster.base.image is not None:
            import_base(cluster.base.image, inputs, folder, cache_dir, reporter)
        else:
            build_base(cluster, inputs, folder, reporter)
    return load_base(folder)


def load_base(folder: Path) -> BaseImage:
    meta = json.loads((folder / "base.json").read_text())
    return BaseImage(
        image=folder / "base.img",
        key=meta["key"],
        built_at=meta["built_at"],
        layout=Layout(**meta["layout"]),
        dirs=frozenset(meta["dirs"]),
        others=frozenset(meta["others"]),
    )


def build_base(cluster: Cluster, inputs: dict[str, Any], folder: Path, reporter: Reporter) -> None:
    """mmdebstrap into a scratch folder, then publish the result into the cache."""
    _require_root()
    require_host_tools()
    ensure_binfmt()
    work = folder.with_name(f".{folder.name}.building")
    remove_tree(work)
    work.mkdir(parents=True)
    epoch = source_date_epoch() or int(time.time())
    kubernetes = None
    if cluster.cluster.packages == "image":
        kubernetes = write_kubernetes_sources(cluster, work / "kubernetes")
    with reporter.step("mmdebstrap: Debian packages, kernel and Pi firmware (several minutes)"):
        run_streaming(
            mmdebstrap_command(cluster, work / "root", kubernetes),
            work / "mmdebstrap.log",
            follow=MmdebstrapProgress().feed,
            show=reporter.say,
        )
    with reporter.step("partitions and filesystems"):
        publish_base(work / "root", inputs, folder, epoch)
    remove_tree(work)


def import_base(source: ImageSource, inputs: dict[str, Any], folder: Path, cache_dir: Path,
                reporter: Reporter) -> None:  # fmt: skip
    """Make a downloaded image (base.image) the base."""
    epoch = source_date_epoch() or int(time.time())
    with reporter.step(f"download {source.url}"):
        raw = downloaded_base.fetch_image(source, cache_dir / "downloads")
    with reporter.step("partitions, labels and contents"):
        staging = _staging(folder)
        layout, dirs, others = downloaded_base.adopt(raw, staging / "base.img", epoch)
        _publish(staging, folder, inputs, epoch, layout, dirs, others)


def publish_base(root: Path, inputs: dict[str, Any], folder: Path, epoch: int) -> None:
    """Turn a root tree (boot partition files under boot/firmware) into the cached base image.

    The image is made beside the cache entry and renamed into place whole.
    """
    staging = _staging(folder)
    boot = staging / "boot"
    (root / "boot" / "firmware").rename(boot)
    (root / "boot" / "firmware").mkdir()
    layout = assemble(root, boot, staging / "base.img", epoch)
    dirs, others = list_tree(root)
    remove_tree(boot)
    _publish(staging, folder, inputs, epoch, layout, dirs, others)


def _staging(folder: Path) -> Path:
    staging = folder.with_name(f".{folder.name}.staging")
    remove_tree(staging)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, folder: Path, inputs: dict[str, Any], epoch: int, layout: Layout,
             dirs: list[str], others: list[str]) -> None:  # fmt: skip
    """Record what the base holds beside it, then move it into the cache whole."""
    meta = {"key": cache_key(inputs), "inputs": inputs, "built_at": epoch,
            "layout": dataclasses.asdict(layout), "dirs": dirs, "others": others}  # fmt: skip
    write_atomic(staging / "base.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    remove_tree(folder)
    staging.rename(folder)


def remove_tree(path: Path) -> None:
    """Delete a build folder, but never one with something mounted inside (a killed mmdebstrap
    can leave /proc or /dev mounted in its root, and deleting through those harms the host)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        inside = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
    if inside:
        raise UserError(
            f"{path} still has filesystems mounted in it: {', '.join(inside)}",
            f"unmount them (umount -R {inside[0]}) and run the build again",
        )
    shutil.rmtree(path)


def packages(cluster: Cluster) -> list[str]:
    extra = kubernetes_apt.PACKAGES if cluster.cluster.packages == "image" else ()
    return sorted({*PACKAGES, KERNEL, *cluster.base.packages, *extra})


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
        "mmdebstrap",
        "--mode=root",
        "--variant=apt",
        # pass apt's and dpkg's output on (without it mmdebstrap keeps it unless they fail): the
        # log then shows what dpkg did, and MmdebstrapProgress counts packages from it
        "--verbose",
        f"--arch={cluster.base.arch}",
        f"--include={','.join(packages(cluster))}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        '--aptopt=Acquire::Languages "none"',
        # debconf's preconfiguration is a Perl run per package under emulation, for no questions
        "--aptopt=#clear DPkg::Pre-Install-Pkgs",
        f'--essential-hook=sh {HOOKS_DIR / "essential.sh"} "$1" {INITRAMFS_MODULES}',
        f'--customize-hook=sh {HOOKS_DIR / "customize.sh"} "$1"',
    ]
    sources = apt_sources(cluster.base.suite)
    if kubernetes is not None:
        options, source = kubernetes_options(kubernetes)
        command += options
        sources.append(source)
    return [*command, cluster.base.suite, str(root), *sources]


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


def _kubernetes_inputs(cluster: Cluster) -> dict[str, str] | None:
    if cluster.cluster.packages != "image":
        return None
    return {"version": cluster.cluster.kubernetes, "repository": cluster.kubernetes_repository}


def ensure_binfmt() -> None:
    """Let this machine run arm64 programs through qemu-user, registering it if needed."""
    if platform.machine() in ARM64_MACHINES:
        return
    name = QEMU_BINFMT
    entry = Path("/proc/sys/fs/binfmt_misc") / name
    if entry.exists():
        return
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
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


def _require_root() -> None:
    if os.geteuid() != 0:
        raise UserError(
            "building the base image needs root (mmdebstrap creates device nodes and file owners)",
            "run `sudo make images`; later builds reuse the cached base",
        )


def _why_rebuild(cache_dir: Path, inputs: dict[str, Any], rebuild: bool) -> str:
    """Which input differs from the newest cached base, so a cache miss is never a mystery."""
    if rebuild:
        return "--rebuild-base"
    cached = sorted((cache_dir / "base").glob("*/base.json"), key=lambda p: p.stat().st_mtime)
    if not cached:
        return "no cached base yet"
    previous = json.loads(cached[-1].read_text())["inputs"]
    changed = sorted(key for key in inputs.keys() | previous.keys() if inputs.get(key) != previous.get(key))
    return "changed since the last base: " + ", ".join(changed)


APT_PLAN = re.compile(r"^(?P<upgraded>\d+) upgraded, (?P<installed>\d+) newly installed")
"""apt-get's summary before it installs ("0 upgraded, 15 newly installed, 0 to remove ...")."""


@dataclasses.dataclass
class MmdebstrapProgress:
    """What the terminal shows of mmdebstrap's --verbose output: its own milestones ("I: installing
    remaining packages..."), and through the minutes that dpkg then works under emulation, how
    many of the packages apt's summary announced are unpacked and set up. A count is shown when it
    moved, at most every `every` seconds after the line before it, and when the last is set up."""

    every: float = 10.0
    planned: int = 0
    unpacked: int = 0
    configured: int = 0
    _said_at: float = dataclasses.field(default=0.0, init=False, repr=False)
    _said_count: int = dataclasses.field(default=0, init=False, repr=False)

    def feed(self, line: str, elapsed: float) -> str | None:
        """Take one line of output; return what to show for it, if anything."""
        # not a step: mmdebstrap's note that it emulates arm64, or a maintainer script's words
        # while dpkg works (the kernel's postinst says "I: /vmlinuz is now a symlink to ...")
        if line.startswith("I: ") and "binfmt" not in line and not self._in_dpkg():
            self._said_at = elapsed
            return line
        if plan := APT_PLAN.match(line):
            # the essential packages' summary comes while they are downloaded, the rest's just
            # before they are installed; either way the count starts again
            self.planned = int(plan["upgraded"]) + int(plan["installed"])
            self.unpacked = self.configured = self._said_count = 0
        elif line.startswith("Unpacking "):
            self.unpacked += 1
        elif line.startswith("Setting up "):
            self.configured += 1
        # any line may be the one that finds a count due: a package's script can talk for a
        # while after the count last moved
        count = self.unpacked + self.configured
        if not self.planned or count == self._said_count:
            return None
        if elapsed - self._said_at < self.every and self.configured < self.planned:
            return None
        self._said_at, self._said_count = elapsed, count
        # indented to sit under the milestone's text, after its "I: "
        return (
            f"   packages: {self.unpacked}/{self.planned} unpacked, {self.configured}/{self.planned} set up"
        )

    def _in_dpkg(self) -> bool:
        """dpkg has started on the announced packages and not set them all up yet."""
        return self.unpacked > 0 and self.configured < self.planned


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
