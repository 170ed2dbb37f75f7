"""The Makefile's set-up: `make images` installs what building needs and nothing the tests use
(a first make images once had apt install QEMU's system emulator, gcc and gstreamer); `make test`
adds the test tools; neither takes apt's recommends. Read from `make -n`, which prints the
commands each target would run."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.support.project import REPO

TEST_ONLY = {"qemu-system-arm", "gcc", "etcd-server", "docker-registry", "containerd", "faketime", "dpkg-dev"}
BUILD = {"mmdebstrap", "qemu-user-static", "mtools", "e2fsprogs", "golang-go", "umoci", "skopeo"}


def installed_by(target: str) -> tuple[set[str], list[str]]:
    """The packages `make TARGET` would check for and install, and its apt-get install lines."""
    dry = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, check=True)
    listed = {name for found in re.findall(r"for p in ([^;]+); do", dry.stdout) for name in found.split()}
    return listed, [line for line in dry.stdout.splitlines() if "apt-get install" in line]


@pytest.mark.usefixtures("allow_subprocess")
def test_make_images_installs_only_what_building_needs_and_make_test_adds_the_rest() -> None:
    images, installs = installed_by("images")
    assert images >= BUILD and not images & TEST_ONLY, images & TEST_ONLY
    assert installs and all("--no-install-recommends" in line for line in installs)
    tests, installs = installed_by("test")
    assert tests >= BUILD | TEST_ONLY
    assert installs and all("--no-install-recommends" in line for line in installs)
