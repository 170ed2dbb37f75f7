"""The upstream source archives the real programs are built from (builder/upstream.py):
taken from a local folder or downloaded once, from a real HTTP server on 127.0.0.1, and always
checked against upstream.toml's tree hash, which upstream's own tarball of a tag passes as well as
the local `git archive` of it."""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder import upstream
from builder.errors import UserError
from builder.upstream import Source, fetch_source
from tests.support.project import REPO

pytestmark = pytest.mark.integration

NAME = "cni-v1.1.2"
"""The smallest of the archives."""
SOURCE = upstream.sources()[NAME]


def local_archives() -> Path:
    """The folder the suite takes the upstream archives from: ../shared/upstream beside the clone,
    or the one PICLUSTER_UPSTREAM names (tests/conftest.py)."""
    folder = upstream.local_folder()
    if folder is None:
        pytest.skip(f"no upstream archives here: put shared/ beside the clone or set {upstream.LOCAL}")
    return folder


def repack(changed: str = "") -> bytes:
    """The local archive as upstream's download packs it: gzip, another top folder, other times
    and owners; with changed, that file's contents altered."""
    packed = io.BytesIO()
    with (
        tarfile.open(local_archives() / f"{NAME}.tar.xz") as original,
        tarfile.open(fileobj=packed, mode="w:gz") as copy,
    ):
        for member in original:
            contents = original.extractfile(member) if member.isfile() else None
            member.name = "containernetworking-cni-3363d14/" + member.name.partition("/")[2]
            member.mtime, member.uname, member.uid = 1_000_000_000, "upstream", 1000
            if member.name.endswith(changed) and contents and changed:
                data = contents.read() + b"\n"
                member.size, contents = len(data), io.BytesIO(data)
            copy.addfile(member, contents)
    return packed.getvalue()


@dataclass
class Server:
    url: str
    body: bytes = b""
    cut_after: int | None = None
    """Close the connection after this many bytes of a full-length response."""
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body[: state.cut_after])
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1.1.2.tar.gz"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield state
    httpd.shutdown()


def served(server: Server) -> Source:
    return Source(NAME, server.url, SOURCE.tree_sha256)


def test_every_local_archive_passes_the_manifest() -> None:
    local = local_archives()
    for source in upstream.sources().values():
        archive = fetch_source(source, local, Path("/nonexistent"))
        assert archive == local / f"{source.name}.tar.xz"


def test_a_download_is_checked_by_its_tree_cached_and_used_again(server: Server, tmp_path: Path) -> None:
    server.body = repack()
    cache = tmp_path / "cache"
    archive = fetch_source(served(server), tmp_path, cache)
    assert archive.read_bytes() == server.body
    assert archive.parent == cache / "upstream" / "archives"
    assert fetch_source(served(server), tmp_path, cache) == archive
    assert server.requests == ["/v1.1.2.tar.gz"]


def test_a_download_with_a_changed_file_is_refused_and_not_cached(server: Server, tmp_path: Path) -> None:
    server.body = repack(changed="libcni/api.go")
    with pytest.raises(UserError) as refused:
        fetch_source(served(server), tmp_path, tmp_path / "cache")
    assert f"not {SOURCE.tree_sha256}" in str(refused.value)
    assert server.url in str(refused.value)
    assert not list((tmp_path / "cache").rglob("*.*"))


def test_a_download_cut_midway_leaves_nothing_behind(server: Server, tmp_path: Path) -> None:
    server.body, server.cut_after = repack(), 40_000
    with pytest.raises(UserError, match="cannot be downloaded"):
        fetch_source(served(server), tmp_path, tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.*"))


def test_with_no_local_copy_and_no_network_one_message_says_what_and_where(tmp_path: Path) -> None:
    with socket.socket() as unlistened:  # bound, never listening: a connection is refused
        unlistened.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unlistened.getsockname()[1]}/v1.1.2.tar.gz"
        with pytest.raises(UserError) as failed:
            fetch_source(Source(NAME, url, SOURCE.tree_sha256), tmp_path, tmp_path / "cache")
    message = failed.value.render()
    for named in (NAME, url, SOURCE.tree_sha256, "PICLUSTER_UPSTREAM"):
        assert named in message


def test_a_changed_local_archive_is_refused(tmp_path: Path) -> None:
    (tmp_path / f"{NAME}.tar.gz").write_bytes(repack(changed="libcni/api.go"))
    with pytest.raises(UserError, match=f"not {SOURCE.tree_sha256}"):
        fetch_source(SOURCE, tmp_path, tmp_path / "cache")


def test_the_flannel_lab_without_its_sources_fails_once_saying_why(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the flannel lab needs root (make test runs as root)")
    refused = "http://127.0.0.1:1"  # every download goes to a proxy that is not there
    env = {
        **os.environ,
        "PICLUSTER_UPSTREAM": str(tmp_path),
        "PICLUSTER_CACHE": str(tmp_path / "cache"),
        "HTTPS_PROXY": refused,
        "HTTP_PROXY": refused,
        "NO_PROXY": "",
    }
    # -rN: no short summary, which under CI=1 repeats each message whole
    pytest_run = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rN"]
    done = subprocess.run(
        [*pytest_run, "tests/integration/test_flannel_lab.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.count("put flannel-v0.10.0.tar.xz (git archive of the tag)") == 1, done.stdout
    assert done.stdout.count("the flannel lab did not start (the first error above says why)") == 8
    assert "Traceback" not in done.stdout and "During handling" not in done.stdout
