"""`picluster verify` before the suite runs: a node that does not answer over SSH is named, with
ssh's own reason, within seconds, and so is one that accepts the connection and then says nothing;
a --skip that names no check lists the checks. A suite that stalls on a node ends at a deadline."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from builder.cli import main
from builder.cluster.verify import Checks, Deadlines, run_suite, verify
from builder.errors import UserError
from builder.progress import Reporter
from builder.run import Output, Runner
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED


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


@pytest.fixture(params=[b"", b"SSH-2.0-OpenSSH_9.2\r\n"], ids=["silent", "banner, then silent"])
def stalling_port(request: pytest.FixtureRequest) -> Iterator[int]:
    """A TCP listener on 127.0.0.1 that accepts every connection and then says nothing (or only
    its SSH banner, so ssh waits in key exchange, where its ConnectTimeout no longer counts)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.sendall(request.param)
            held.append(connection)

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_verify_gives_up_on_a_node_that_accepts_ssh_and_says_nothing(
    tmp_path: Path, stalling_port: int, allow_subprocess: None
) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host 192.168.50.*\n    HostName 127.0.0.1\n    Port {stalling_port}\n"
        "    StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n"
    )
    start = time.monotonic()
    with pytest.raises(UserError) as refused:
        verify(BUNDLED, load_cluster(BUNDLED), Checks(ssh_config=config), Reporter(sys.stderr), Runner(),
               Deadlines(reach=1.5))  # fmt: skip
    assert time.monotonic() - start < 6
    message = refused.value.render()
    for node in ("cp1", "w1", "w2"):
        assert f"  {node}: accepts the connection, then no answer within 1.5 s" in message, message
    assert len(message.splitlines()) <= 12


class StalledSuite(Runner):
    """Starts, in place of the suite, one that plans two checks on cp1, passes the first and
    then waits on the node for ever, as one does when a node stops answering in the middle."""

    def start(
        self, command: Sequence[str | Path], *, cwd: Path | None = None, output: Output = "show"
    ) -> subprocess.Popen[bytes]:
        report = command[list(command).index("--report-json") + 1]
        records = [{"planned": 2}, {"node": "cp1", "check": "hostname", "outcome": "passed", "message": ""},
                   {"node": "cp1", "check": "swap off", "outcome": "running"}]  # fmt: skip
        lines = "".join(json.dumps(record) + "\n" for record in records)
        script = f"import sys, time; open(sys.argv[1], 'a').write({lines!r}); time.sleep(60)"
        return super().start([sys.executable, "-c", script, report], output="hide")


def test_a_suite_that_stalls_on_a_node_ends_at_a_deadline_naming_the_check(
    tmp_path: Path, allow_subprocess: None
) -> None:
    said: list[str] = []
    start = time.monotonic()
    with pytest.raises(UserError) as refused:
        run_suite(BUNDLED, Checks(nodes=["cp1"]), said.append, StalledSuite(), deadline=1.5)
    assert time.monotonic() - start < 6
    assert refused.value.message.startswith("check swap off on cp1 has not finished within 1.5 s")
