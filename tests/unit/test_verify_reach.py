"""`picluster verify` before the suite runs: a node that does not answer over SSH is named, with
ssh's own reason, within seconds; a --skip that names no check lists the checks."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from builder.cli import main
from tests.conftest import BUNDLED


def closed_port() -> int:
    """A local TCP port nothing listens on, so ssh is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_verify_names_each_unreachable_node_and_why(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], allow_subprocess: None
) -> None:
    port = closed_port()
    config = tmp_path / "ssh_config"
    config.write_text(f"Host 192.168.50.*\n    HostName 127.0.0.1\n    Port {port}\n")
    start = time.monotonic()
    status = main(["verify", "-f", str(BUNDLED), "--ssh-config", str(config)])
    elapsed = time.monotonic() - start
    out, err = capfd.readouterr()
    refused = f"ssh: connect to host 127.0.0.1 port {port}: Connection refused"
    for node in ("cp1", "w1", "w2"):
        assert f"{node}: unreachable: {refused}" in err  # as each answers
        assert f"  {node}: {refused}" in err  # in the error
    assert f"`ssh -F {config} pi@192.168.50.12`" in err
    assert status == 2
    assert elapsed < 20
    assert "Traceback" not in out + err and "RuntimeError" not in out + err


def test_verify_lists_the_checks_when_skip_names_none(capsys: pytest.CaptureFixture[str]) -> None:
    # no allow_subprocess: the name is checked before any node is reached
    assert main(["verify", "-f", str(BUNDLED), "--skip", "time_synchronized"]) == 2
    message, _, hint = capsys.readouterr().err.partition("fix:")
    assert "--skip time_synchronized: no such check" in message
    assert "time_synchronised" in hint and "hostname" in hint and "flannel_daemonset" in hint
