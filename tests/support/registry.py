"""A real registry and a real containerd on 127.0.0.1 for tests: Debian's docker-registry (the
distribution registry, v2 protocol), small arm64 OCI images made with umoci and pushed with
skopeo, and Debian's containerd with a root, state and socket of its own."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.host import require_tools


@dataclass(frozen=True)
class Registry:
    url: str
    """http://127.0.0.1:PORT"""
    storage: Path

    @property
    def host(self) -> str:
        return self.url.removeprefix("http://")

    def digest(self, path: str) -> str:
        """The digest of the manifest the registry serves for `path` (repository:tag)."""
        raw = subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{self.host}/{path}"],
            capture_output=True, check=True,
        ).stdout  # fmt: skip
        return f"sha256:{hashlib.sha256(raw).hexdigest()}"

    def push_stand_ins(self, references: Iterable[str], work: Path) -> dict[str, str]:
        """A small image standing in for each reference, pushed under its path without the
        registry's host; each one's digest."""
        return {
            reference: self.push_image(reference.split("/", 1)[1], f"stands in for {reference}\n", work)
            for reference in sorted(set(references))
        }

    def push_image(self, path: str, content: str, work: Path) -> str:
        """Make a one-file arm64 OCI image holding `content` and push it as `path`; its digest."""
        layout = work / "layout"
        tag = hashlib.sha256(path.encode()).hexdigest()[:12]
        if not layout.exists():
            _umoci("init", "--layout", str(layout))
        _umoci("new", "--image", f"{layout}:{tag}")
        bundle = work / f"bundle-{tag}"
        _umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
        (bundle / "rootfs" / "content").write_text(content)
        _umoci("repack", "--image", f"{layout}:{tag}", str(bundle))
        _umoci("config", "--image", f"{layout}:{tag}", "--architecture", "arm64", "--os", "linux")
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
             f"docker://{self.host}/{path}"],
            check=True,
        )  # fmt: skip
        return self.digest(path)


@contextmanager
def registry(folder: Path) -> Iterator[Registry]:
    """docker-registry serving from `folder` on a free port of 127.0.0.1, until the block ends."""
    require_tools("docker-registry", "skopeo", "umoci")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = folder / "registry.yml"
    storage = folder / "storage"
    config.write_text(
        "version: 0.1\nlog: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n"
    )
    with (folder / "registry.log").open("wb") as log:
        server = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
    try:
        _wait_for(f"http://127.0.0.1:{port}/v2/", server)
        yield Registry(f"http://127.0.0.1:{port}", storage)
    finally:
        server.terminate()
        server.wait(timeout=10)


@dataclass(frozen=True)
class Containerd:
    socket: Path

    def ctr(self, *arguments: str) -> str:
        return subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *arguments],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    def images(self) -> dict[str, str]:
        """Each image's name and digest, as `ctr images ls` lists them."""
        rows = self.ctr("images", "ls").splitlines()[1:]
        return {row.split()[0]: row.split()[2] for row in rows}


@contextmanager
def containerd() -> Iterator[Containerd]:
    """Debian's containerd, as root, in a folder of its own (never the machine's /var/lib/containerd
    or /run/containerd), without its CRI plugin, until the block ends."""
    require_tools("containerd", "ctr")
    # the socket's path must fit in a sockaddr_un (108 bytes): a short folder of its own
    with tempfile.TemporaryDirectory(prefix="ctd-", dir="/var/tmp") as work:
        folder = Path(work)
        sock = folder / "containerd.sock"
        (folder / "config.toml").write_text(
            f'version = 2\nroot = "{folder}/root"\nstate = "{folder}/state"\n'
            # the Kubernetes plugin is not what is tested, and would write under /etc/cni and /opt
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
            f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n'
            f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{folder}/opt"\n'
        )
        with (folder / "containerd.log").open("wb") as log:
            daemon = subprocess.Popen(
                ["containerd", "--config", str(folder / "config.toml")], stdout=log, stderr=log
            )
        try:
            deadline = time.monotonic() + 30
            while not sock.exists():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"containerd did not start: {(folder / 'containerd.log').read_text()[-2000:]}"
                    )
                time.sleep(0.1)
            yield Containerd(sock)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
            subprocess.run(["umount", "--recursive", "--quiet", str(folder / "root")], check=False)


def _umoci(*arguments: str) -> None:
    subprocess.run(["umoci", "--log", "error", *arguments], check=True, capture_output=True)


def _wait_for(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry did not answer at {url}")
            time.sleep(0.1)
