"""The wait for the API server, against a real HTTPS server on 127.0.0.1 (a stand-in for
kube-apiserver's /readyz) whose certificate comes from a test CA."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path

import pytest
from agent.api import NotReady, wait_until_ready
from agent.host import Backoff
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.agent import api_server_standin, make_ca, make_server_cert

pytestmark = pytest.mark.integration


@pytest.fixture
def pinned_ca(tmp_path: Path) -> tuple[object, Path]:
    ca = make_ca("cluster CA")
    (tmp_path / "ca.crt").write_bytes(ca[1].public_bytes(Encoding.PEM))
    return ca, tmp_path / "ca.crt"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_ready_when_the_server_is_signed_by_the_pinned_ca(tmp_path: Path, pinned_ca: tuple) -> None:
    ca, ca_file = pinned_ca
    sleeps: list[float] = []
    with api_server_standin(*make_server_cert(ca), tmp_path) as port:
        wait_until_ready(f"127.0.0.1:{port}", ca_file, Backoff(1, 8), sleep=sleeps.append)
    assert sleeps == []


def test_refuses_a_server_signed_by_another_ca(tmp_path: Path, pinned_ca: tuple) -> None:
    _, ca_file = pinned_ca
    reasons: list[str] = []
    with (
        api_server_standin(*make_server_cert(make_ca("another CA")), tmp_path) as port,
        pytest.raises(NotReady) as refused,
    ):
        wait_until_ready(
            f"127.0.0.1:{port}", ca_file, Backoff(0.01, 0.01), on_wait=reasons.append, give_up_after=0.2
        )
    assert "TLS refused" in str(refused.value)
    assert "certificate verify failed" in str(refused.value)
    assert reasons and all("TLS refused" in reason for reason in reasons)


def test_backs_off_with_a_cap_while_the_server_is_down_then_goes_on(tmp_path: Path, pinned_ca: tuple) -> None:
    ca, ca_file = pinned_ca
    port = free_port()
    sleeps: list[float] = []
    reasons: list[str] = []
    with ExitStack() as server:

        def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if len(sleeps) == 6:  # the API server comes up during the sixth wait
                server.enter_context(api_server_standin(*make_server_cert(ca), tmp_path, port))

        wait_until_ready(f"127.0.0.1:{port}", ca_file, Backoff(1, 8), sleep=sleep, on_wait=reasons.append)
    assert sleeps == [1, 2, 4, 8, 8, 8]
    assert len(reasons) == 6 and "ConnectionError" in reasons[0]
