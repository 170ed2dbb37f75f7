"""flannel v0.10.0's container image, built here from its source as an OCI image archive.

The published quay.io/coreos/flannel:v0.10.0-arm64 is a Docker schema 1 manifest, which containerd
2.0 refuses by default and 2.1 cannot pull at all; so the image is made here, laid out as flannel's
Dockerfile.arm64 at v0.10.0 lays it out:

- its root holds iproute2, net-tools, ca-certificates and iptables (Dockerfile.arm64's `apk add`),
  from Debian arm64 packages instead of Alpine's, on Debian's essential set: their maintainer
  scripts need its shell, dpkg and perl-base (debconf) in any case, and it brings `cp` for the
  DaemonSet's init container that copies the CNI config onto the node;
- /opt/bin/flanneld, built as flannel's Makefile builds dist/flanneld-arm64: CGO_ENABLED=0,
  GOARCH=arm64, `-ldflags "-s -w -X github.com/coreos/flannel/version.Version=v0.10.0"`, and
  -trimpath so the build folder does not show in the binary;
- /opt/bin/mk-docker-opts.sh from the source's dist/; ENTRYPOINT ["/opt/bin/flanneld"] and
  Dockerfile.arm64's ENV FLANNEL_ARCH=arm64.

Left out: the qemu-aarch64-static ADD (a cross-build aid, never run by the image) and
wireguard-tools (flannel v0.10.0 has no WireGuard backend).

umoci makes the layer, config and manifest; the index is rewritten so its one manifest carries the
full reference in both `io.containerd.image.name` and `org.opencontainers.image.ref.name`:
containerd's import (client/import.go, imageName) names an image from the first, else from the
second, and leaves a reference holding `/`, `:` or `@` as it is (core/images/archive/reference.go,
refTranslator), so `ctr images import` names it exactly REFERENCE.

The image is deterministic (fixed time stamps, owners and order), and cached by the hash of its
inputs, this machine's Go among them. Debian's packages are not pinned: the key holds the suite and
the package list, so it cannot see a Debian update, and `rebuild` (picluster build --rebuild-base)
makes it again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from builder import __version__
from builder.errors import UserError
from builder.files import exclusive, remove_tree, write_atomic
from builder.image import debian
from builder.image.base import cache_key, why_rebuild
from builder.image.mmdebstrap_progress import MmdebstrapProgress
from builder.progress import Reporter, silent
from builder.run import Runner
from builder.upstream import GoProgram, fetch_source, go_build, local_folder, sources

VERSION = "v0.10.0"
REFERENCE = f"localhost/picluster/flannel:{VERSION}-arm64"
SOURCE = "flannel-v0.10.0"
FLANNELD = GoProgram(
    "flanneld", SOURCE, "github.com/coreos/flannel",
    ("-trimpath", "-ldflags", f"-s -w -X github.com/coreos/flannel/version.Version={VERSION}", "."),
)  # fmt: skip
CROSS_BUILD = {"GOOS": "linux", "GOARCH": "arm64", "CGO_ENABLED": "0"}
SUITE = "trixie"
PACKAGES = ("iproute2", "net-tools", "ca-certificates", "iptables")
DPKG_OPTIONS = (
    *debian.DPKG_OPTIONS,
    # glibc's character set converters (20 MB): nothing in the image converts character sets
    "path-exclude=/usr/lib/*/gconv/*",
)
EPOCH = 1516731729
"""The v0.10.0 tag's commit time (2018-01-23T18:22:09Z): every time stamp in the image."""
ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "FLANNEL_ARCH=arm64")
"""The PATH a Debian image's config carries (the init container's `cp` is found by it), and
Dockerfile.arm64's ENV."""
LAYOUT_TAG = "image"
"""umoci's name for the image inside the layout, replaced by REFERENCE in the archive."""
CUSTOMIZE = (
    # the card's own iptables and kube-proxy use nf_tables: flanneld's rules must go to the same
    # tables, or its NAT and forward rules sit in legacy tables beside theirs
    'chroot "$1" update-alternatives --set iptables /usr/sbin/iptables-nft',
    'chroot "$1" update-alternatives --set ip6tables /usr/sbin/ip6tables-nft',
)
EMPTIED = ("dev", "var/log", "var/cache", "var/lib/apt")
"""Emptied once mmdebstrap is done: the runtime mounts /dev in the container, and the rest is what
the build left behind (the image has no apt)."""


@dataclasses.dataclass(frozen=True)
class FlannelImage:
    archive: Path
    """An OCI archive: a tar of an OCI image layout."""
    reference: str
    digest: str
    """The image manifest's sha256:..."""


def inputs(runner: Runner) -> dict[str, Any]:
    """Every input that changes the image's bytes."""
    go = runner.run(["go", "env", "GOVERSION"]).strip()
    return {
        "builder": __version__,
        "source": sources()[SOURCE].tree_sha256,
        "build": {"go": go, "args": list(FLANNELD.build_args), "env": CROSS_BUILD},
        "suite": SUITE,
        "sources": debian.apt_sources(SUITE),
        "packages": list(PACKAGES),
        "dpkg_options": list(DPKG_OPTIONS),
        "customize": list(CUSTOMIZE),
        "emptied": list(EMPTIED),
        "config": {"env": list(ENV), "epoch": EPOCH, "reference": REFERENCE},
    }


def build_flannel_image(
    cache: Path, runner: Runner, reporter: Reporter | None = None, rebuild: bool = False
) -> FlannelImage:
    """The cached flannel image, built first if it is missing or a rebuild was asked for."""
    reporter = reporter or silent()
    manifest = inputs(runner)
    folder = cache / "flannel-image" / cache_key(manifest)[:16]
    if (folder / "image.json").exists() and not rebuild:
        reporter.say(f"==> flannel image: cached ({folder})")
        return load_image(folder)
    # one build of an image at a time; whoever waited finds it built
    with exclusive(folder.with_name(f"{folder.name}.lock"), f"the flannel image {folder}", reporter.say):
        if (folder / "image.json").exists() and not rebuild:
            reporter.say(f"==> flannel image: cached ({folder}), built while this build waited")
            return load_image(folder)
        why = why_rebuild(folder.parent.glob("*/image.json"), manifest, rebuild)
        with reporter.step(f"flannel {VERSION} image for arm64: building ({why})"):
            _build(folder, manifest, cache, runner, reporter)
    return load_image(folder)


def load_image(folder: Path) -> FlannelImage:
    record = folder / "image.json"
    try:
        meta = json.loads(record.read_bytes())
        return FlannelImage(folder / "flannel.tar", meta["reference"], meta["digest"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"the cached flannel image's record {record} is damaged ({type(error).__name__}: {error})",
            f"build it again with picluster build --rebuild-base, or delete {folder}",
        ) from None


def _build(folder: Path, manifest: dict[str, Any], cache: Path, runner: Runner, reporter: Reporter) -> None:
    """Make the image in a scratch folder beside the cache entry, then rename it into place."""
    work = folder.with_name(f".{folder.name}.building")
    remove_tree(work)
    work.mkdir(parents=True)
    source = fetch_source(sources()[SOURCE], local_folder(), cache)
    root = work / "root"
    debian.require_root()
    debian.ensure_binfmt(runner)  # the image's packages configure themselves under qemu-user
    with reporter.step("Debian arm64 packages for the image (mmdebstrap)"):
        runner.stream(mmdebstrap_command(root), work / "mmdebstrap.log",
                      follow=MmdebstrapProgress().feed, show=reporter.say)  # fmt: skip
    empty_leftovers(root)
    with reporter.step(f"flanneld {VERSION} for arm64 (go build)"):
        go = work / "go"
        go_build(FLANNELD, source, go, root / "opt/bin/flanneld", runner, CROSS_BUILD)
        script = go / "gopath/src" / FLANNELD.gopath_package / "dist/mk-docker-opts.sh"
        shutil.copy(script, root / "opt/bin/mk-docker-opts.sh")
    clamp_times(root, EPOCH)
    with reporter.step("OCI image (umoci)"):
        digest = _assemble(root, work / "layout", runner)
        _pack(work / "layout", work / "flannel.tar")
    staging = work / "entry"
    staging.mkdir()
    (work / "flannel.tar").rename(staging / "flannel.tar")
    meta = {"key": cache_key(manifest), "inputs": manifest, "reference": REFERENCE, "digest": digest}
    write_atomic(staging / "image.json", json.dumps(meta, indent=1, sort_keys=True).encode())
    remove_tree(folder)
    staging.rename(folder)
    remove_tree(work)


def mmdebstrap_command(root: Path) -> list[str]:
    """mmdebstrap for the image's root: the essential set (a shell, coreutils, dpkg to configure
    the packages) and PACKAGES, without apt, documentation or locales."""
    return [
        # mmdebstrap leaves out what differs between runs (logs, caches, machine-id) when set
        "env", f"SOURCE_DATE_EPOCH={EPOCH}",
        "mmdebstrap", "--mode=root", "--variant=essential", "--verbose", "--arch=arm64",
        f"--include={','.join(PACKAGES)}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        '--aptopt=Acquire::Languages "none"',
        *(f"--customize-hook={hook}" for hook in CUSTOMIZE),
        SUITE, str(root), *debian.apt_sources(SUITE),
    ]  # fmt: skip


def empty_leftovers(root: Path) -> None:
    for emptied in EMPTIED:
        remove_tree(root / emptied)
        (root / emptied).mkdir()
    for backup in (root / "var/lib/dpkg").glob("*-old"):
        backup.unlink()


def clamp_times(root: Path, epoch: int) -> None:
    """Give every entry the same time, whenever dpkg or a maintainer script wrote it."""
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.utime(Path(folder, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def _assemble(root: Path, layout: Path, runner: Runner) -> str:
    """The OCI layout of the image, with one layer holding root; its manifest's digest."""
    image = f"{layout}:{LAYOUT_TAG}"
    created = datetime.fromtimestamp(EPOCH, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    runner.run(["umoci", "init", "--layout", layout])
    runner.run(["umoci", "new", "--image", image])
    runner.run([
        "umoci", "config", "--image", image, "--no-history", "--created", created,
        "--architecture", "arm64", "--os", "linux", "--config.entrypoint", "/opt/bin/flanneld",
        *(word for variable in ENV for word in ("--config.env", variable)),
    ])  # fmt: skip
    runner.run([
        "umoci", "insert", "--image", image, "--history.created", created,
        "--history.created_by", f"picluster: flannel {VERSION} as its Dockerfile.arm64 lays it out",
        root, "/",
    ])  # fmt: skip
    runner.run(["umoci", "gc", "--layout", layout])
    index = json.loads((layout / "index.json").read_bytes())
    (manifest,) = index["manifests"]
    manifest["annotations"] = {
        "io.containerd.image.name": REFERENCE,
        "org.opencontainers.image.ref.name": REFERENCE,
    }
    (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
    digest: str = manifest["digest"]
    return digest


def _pack(layout: Path, archive: Path) -> None:
    """A tar of the layout, its entries sorted, owned by root and stamped with EPOCH."""

    def fixed(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.mtime, member.uid, member.gid, member.uname, member.gname = EPOCH, 0, 0, "", ""
        member.mode = 0o755 if member.isdir() else 0o644
        return member

    with tarfile.open(archive, "w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, path.relative_to(layout).as_posix(), recursive=False, filter=fixed)
