"""picluster talking to an API server that misbehaves, and killed while it talks: a server that
stalls or dribbles ends `status` and `token` at a deadline that names it, an odd answer is named
without a traceback, and no admin key is ever left on disk (tests/support/api_standin.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from builder import cli
from builder.cli import main
from builder.cluster import api
from builder.secrets.pki import make_secrets
from tests.support.api_standin import APIStandin, api_standin
from tests.support.built_project import node_item, project
from tests.support.project import REPO, fixed_secrets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lan")]


@pytest.fixture
def server(tmp_path: Path, lan: ipaddress.IPv4Address) -> Iterator[APIStandin]:
    folder = tmp_path / "standin"
    folder.mkdir()
    with api_standin(fixed_secrets(), folder, lan) as standin:
        yield standin


def private_keys(folder: Path) -> set[Path]:
    """Every file below `folder` that holds a PEM private key."""
    return {path for path in folder.rglob("*") if path.is_file() and b"PRIVATE KEY" in path.read_bytes()}


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_a_killed_status_leaves_no_admin_key_anywhere(
    tmp_path: Path, server: APIStandin, how: signal.Signals
) -> None:
    """Killed while it waits on the API server, as a CI timeout or a closed terminal kills it."""
    cluster_file = project(tmp_path, server.endpoint)
    for folder in ("tmp", "home"):
        (tmp_path / folder).mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(tmp_path / "tmp"),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    }
    before = private_keys(tmp_path)  # the cluster's own (.picluster/) and the stand-in's
    server.slow = "silent"
    # as from a terminal: under nohup (as make test may run) SIGHUP is ignored, and would be here
    status = subprocess.Popen([sys.executable, "-m", "builder", "status", "-f", str(cluster_file)],
                              cwd=cluster_file.parent, env=env, stdout=subprocess.DEVNULL,
                              preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))  # fmt: skip
    try:
        for _ in range(200):
            if server.clients or status.poll() is not None:
                break
            time.sleep(0.1)
        assert server.clients, "status asked the API server"
        status.send_signal(how)
        assert status.wait(10) == -how
    finally:
        status.kill()
    assert private_keys(tmp_path) == before
    assert not any(path.name.startswith("picluster-") for path in (tmp_path / "tmp").iterdir())


def test_keys_earlier_versions_left_in_tmp_are_removed(
    tmp_path: Path, server: APIStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a version kept the key in /tmp/picluster-api-*, left behind when it was killed."""
    temporary = tmp_path / "tmp"
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    left, live, other = (temporary / f"picluster-api-{name}" for name in ("left", "live", "other"))
    for folder in (left, live, other):
        folder.mkdir(parents=True)
        for name in ("ca.crt", "admin.crt", "admin.key"):
            (folder / name).write_text(name)
    (other / "notes").write_text("not picluster's")
    an_hour_ago = time.time() - 3601
    for folder in (left, other):
        os.utime(folder, (an_hour_ago, an_hour_ago))
    assert main(["status", "-f", str(project(tmp_path, server.endpoint))]) == 0
    assert sorted(path.name for path in temporary.iterdir()) == ["picluster-api-live", "picluster-api-other"]


def test_the_admin_certificate_picluster_talks_with_lives_minutes(server: APIStandin) -> None:
    now = datetime.now(UTC)
    with api.connect(server.endpoint, fixed_secrets()) as cluster:
        certificate = x509.load_pem_x509_certificate(Path(cluster.certificate[0]).read_bytes())
        assert api.list_nodes(cluster) == []
    assert certificate.not_valid_after_utc - now <= timedelta(minutes=15)
    assert server.clients == ["organizationName=system:masters,commonName=picluster-admin"]


@pytest.mark.parametrize("slow", ["silent", "dribble"])
def test_a_stalled_api_server_ends_status_and_token_at_a_deadline_that_names_it(
    tmp_path: Path,
    server: APIStandin,
    slow: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api, "DEADLINE_S", 2.0)
    cluster_file = project(tmp_path, server.endpoint)
    server.slow = slow  # type: ignore[assignment]
    start = time.monotonic()
    assert main(["status", "-f", str(cluster_file)]) == 0
    assert main(["token", "-f", str(cluster_file), "w1"]) == 2
    assert time.monotonic() - start < 10
    out, err = capsys.readouterr()
    said = f"https://{server.endpoint}/api/v1/nodes: no whole answer within 2 s"
    assert f"cluster: not reachable ({said}" in out
    assert err.startswith(f"error: cannot reach the API server: https://{server.endpoint}/api/v1/")
    assert "no whole answer within 2 s" in err and "Traceback" not in err
    assert len(err.splitlines()) <= 3


def test_status_waits_for_a_slow_api_server_its_budget_in_all(
    tmp_path: Path, server: APIStandin, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each answer within the deadline, but status asks several questions: it took 15 s more per
    node yet to join, without a bound on the whole."""
    monkeypatch.setattr(api, "DEADLINE_S", 2.0)
    monkeypatch.setattr(cli, "STATUS_BUDGET_S", 3.0)
    cluster_file = project(tmp_path, server.endpoint)
    server.lag = 1.2
    start = time.monotonic()
    assert main(["status", "-f", str(cluster_file)]) == 0
    assert time.monotonic() - start < 5
    out = capsys.readouterr().out
    assert "cluster: not reachable (" in out and "the answers took 3 s in all (the server is slow)" in out


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b"<html>502 Bad Gateway</html>", "the answer is not JSON"),
        (b"[]", "the answer is not a Kubernetes object"),
        (b'{"kind": "NodeList", "items": {"cp1": {}}}', "the answer is not a list of nodes"),
    ],
    ids=["not JSON", "a JSON list", "items not a list"],
)
def test_an_answer_that_is_not_a_node_list_is_named(
    tmp_path: Path, server: APIStandin, body: bytes, said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, server.endpoint)
    server.nodes_body = body
    assert main(["status", "-f", str(cluster_file)]) == 0
    out, err = capsys.readouterr()
    assert f"cluster: not reachable (https://{server.endpoint}/api/v1/nodes: {said}" in out
    assert "Traceback" not in out + err


def test_node_objects_of_the_wrong_shape_show_as_unknown(
    tmp_path: Path, server: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, server.endpoint)
    odd = [
        node_item("cp1", "True", "192.168.50.10"),
        {"kind": "Node", "status": {}},  # no metadata
        {"metadata": {"name": "w1"}, "status": {"conditions": "Ready", "addresses": [None], "nodeInfo": []}},
        {"metadata": {"name": "w2"}, "status": None},
        "w3",
    ]
    server.nodes_body = json.dumps({"kind": "NodeList", "items": odd}).encode()
    assert main(["status", "-f", str(cluster_file), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    report = json.loads(out)
    nodes = {node["name"]: (node["ready"], node["kubelet"], node["internal_ip"]) for node in report["nodes"]}
    assert nodes == {
        "cp1": ("True", "v1.34.2", "192.168.50.10"),
        "w1": ("unknown", None, None),
        "w2": ("Unknown", None, None),  # as Kubernetes says of a node with no Ready condition
    }
    assert report["cluster"].endswith(" days); 2 node objects without a name were left out")


def test_an_api_server_of_another_cluster_is_named_as_such(
    tmp_path: Path, lan: ipaddress.IPv4Address, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another cluster's CA signed its certificate: said in words, not as urllib3's chain."""
    (tmp_path / "other").mkdir()
    with api_standin(make_secrets(datetime.now(UTC)), tmp_path / "other", lan) as other:
        cluster_file = project(tmp_path, other.endpoint)
        assert main(["status", "-f", str(cluster_file)]) == 0
    out = capsys.readouterr().out
    # every kubeadm CA is named "kubernetes": OpenSSL takes the other's for the issuer, and its
    # signature fails
    said = "TLS failed: the server's certificate is not this cluster's (certificate signature failure)"
    assert f"cluster: not reachable (https://{other.endpoint}/api/v1/nodes: {said})" in out
    assert "HTTPSConnectionPool" not in out and "Max retries" not in out


def test_an_endpoint_where_nothing_listens_is_said_in_words(
    tmp_path: Path, lan: ipaddress.IPv4Address, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, f"{lan}:8443")
    assert main(["token", "-f", str(cluster_file), "w1"]) == 2
    err = capsys.readouterr().err
    assert f"https://{lan}:8443/api/v1/" in err and "nothing listens there (connection refused)" in err
