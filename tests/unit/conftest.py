"""Unit tests run no programs: an unexpected subprocess fails the test loudly. Nor do they
reach any address off this machine: the bundled cluster's addresses (192.168.50.x) belong to no
host of the tests, so a connection there is refused at once, as from a cluster that is off.

A test that means to run one (openssl, to cross-check a hash) asks for `allow_subprocess`.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from builder.cli import main
from tests.support.project import BUNDLED


class UnexpectedSubprocess(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_subprocess(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if "allow_subprocess" not in request.fixturenames:

        def refuse(*args: Any, **kwargs: Any) -> None:
            raise UnexpectedSubprocess(f"unit test started a program: {args[0] if args else kwargs}")

        monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    yield


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    connect = socket.socket.connect

    def loopback_only(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(address[0]):
            raise ConnectionRefusedError(f"unit tests reach no address off this machine: {address[0]}")
        connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: resolving it would be a look-up off this machine already
        return False


@pytest.fixture
def allow_subprocess() -> None:
    """Request this to let a unit test run a program on purpose."""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A cluster folder (tmp_path/site) whose secrets exist: a first render made them, into
    tmp_path/out."""
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(BUNDLED, folder / "cluster.yaml")
    assert main(["render", "-f", str(folder / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
    return folder
