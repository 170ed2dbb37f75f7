"""The build machine's side of a test: its tools, a mount, a folder served over HTTP on 127.0.0.1,
and a project cache holding a tiny stand-in base and flannel's image."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from builder.image import base
from builder.image.context import default_cache
from builder.image.flannel_image import FlannelImage, build_flannel_image
from builder.progress import Reporter, silent
from builder.run import Runner
from builder.spec.model import Cluster

TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mke2fs", "debugfs", "e2fsck")
TINY_EPOCH = 1_795_467_600
"""2026-11-23: as digits also a plausible YYYYMMDD..., which debugfs must not read as a date."""


def require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed on this machine: {', '.join(missing)} (make test installs them)")


@contextmanager
def mounted(folder: Path, *arguments: str) -> Iterator[Path]:
    """`mount ARGUMENTS folder` while the block runs; the test is skipped where it cannot mount."""
    folder.mkdir()
    mount = subprocess.run(["mount", *arguments, str(folder)], capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount {' '.join(arguments)} here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def publish_tiny_base(cluster: Cluster, cache: Path) -> Path:
    """A stand-in for the Debian base, published in the cache under the real key.

    Its partition table and filesystems are real (made by the same code as the real base); its
    content is a handful of files instead of Debian, so tests of stamping run in seconds.
    """
    require_tools(*TOOLS)
    root = cache / "tiny-root"
    for folder in ("etc/systemd/system", "usr/lib/systemd/system", "var/lib", "boot/firmware", "opt"):
        (root / folder).mkdir(parents=True)
    (root / "etc/hostname").write_text("debian\n")
    (root / "etc/resolv.conf").write_text("nameserver 127.0.0.53\n")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "boot/firmware/vmlinuz").write_bytes(b"stand-in kernel\n")
    (root / "boot/firmware/initrd.img").write_bytes(b"stand-in initrd\n")
    (root / "boot/firmware/config.txt").write_text("# from the raspi-firmware package\n")
    inputs = base.manifest(cluster)
    folder = cache / "base" / base.cache_key(inputs)[:16]
    base.publish_base(root, inputs, folder, TINY_EPOCH, Runner(), base.room_for_images(inputs))
    shutil.rmtree(root)
    publish_flannel_image(cache)
    return folder


def publish_flannel_image(cache: Path) -> FlannelImage:
    """flannel's image, which every card carries: built once into the project's cache (minutes,
    as root), and copied into `cache` under its key, as a build there would find it."""
    if os.geteuid() != 0:
        pytest.skip("building the flannel image needs root (make test runs as root)")
    require_tools("mmdebstrap", "umoci", "skopeo", "go", "qemu-aarch64-static")
    built = build_flannel_image(default_cache(), Runner(), Reporter())
    folder = cache / "flannel-image" / built.archive.parent.name
    if not folder.exists():
        shutil.copytree(built.archive.parent, folder)
    return build_flannel_image(cache, Runner(), silent())


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve a folder over HTTP on 127.0.0.1; yields the base URL, without a trailing slash."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
