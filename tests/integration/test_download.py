"""Downloading a base image with requests from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import lzma
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builder.download import fetch_file, unpack_image
from builder.errors import UserError

pytestmark = pytest.mark.integration

PAYLOAD = bytes(range(256)) * 4096 + bytes(8 * 4096) + b"tail" * 1000  # 1 MiB, zeros, a tail


@dataclass
class Server:
    url: str
    ranges: list[str] = field(default_factory=list)
    cut_after: int | None = None
    """Drop the connection after this many bytes, once, to simulate a broken download."""
    honour_range: bool = True


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server(url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/pi.img":
                self.send_error(404)
                return
            requested = self.headers.get("Range")
            start = 0
            if requested and state.honour_range:
                state.ranges.append(requested)
                start = int(requested.removeprefix("bytes=").rstrip("-"))
                if start >= len(PAYLOAD):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
            else:
                self.send_response(200)
            body = PAYLOAD[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:
                self.wfile.write(body[: state.cut_after])
                state.cut_after = None
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_is_verified_and_lands_whole(server: Server, tmp_path: Path) -> None:
    target = fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA)
    assert target.read_bytes() == PAYLOAD
    assert not (tmp_path / "pi.img.part").exists()


def test_a_wrong_checksum_discards_the_download(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="expected 0000"):
        fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", "0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_a_broken_download_resumes_where_it_stopped(server: Server, tmp_path: Path) -> None:
    server.cut_after = 300_000
    with pytest.raises(UserError, match="Connection broken") as broken:
        fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA)
    assert "run the build again to resume" in broken.value.hint
    kept = (tmp_path / "pi.img.part").stat().st_size
    assert 0 < kept <= 300_000
    target = fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA)
    assert server.ranges == [f"bytes={kept}-"]
    assert target.read_bytes() == PAYLOAD


def test_a_server_that_ignores_ranges_still_gives_the_right_file(server: Server, tmp_path: Path) -> None:
    (tmp_path / "pi.img.part").write_bytes(b"garbage from an older attempt")
    server.honour_range = False
    assert fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA).read_bytes() == PAYLOAD


def test_a_verified_file_is_not_downloaded_again(server: Server, tmp_path: Path) -> None:
    fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA)
    server.url = "http://127.0.0.1:9"  # nothing listens there
    assert fetch_file(f"{server.url}/pi.img", tmp_path / "pi.img", SHA).read_bytes() == PAYLOAD


def test_missing_file_is_a_user_error(server: Server, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="404"):
        fetch_file(f"{server.url}/nope.img", tmp_path / "nope.img", SHA)


def test_xz_images_are_unpacked_sparse(tmp_path: Path) -> None:
    image = bytes(4096) * 256 + b"data" * 1024 + bytes(4096) * 256
    packed = tmp_path / "pi.img.xz"
    packed.write_bytes(lzma.compress(image))
    unpacked = unpack_image(packed, tmp_path / "pi.img")
    assert unpacked.read_bytes() == image
    assert unpacked.stat().st_blocks * 512 < len(image) // 4, "zero blocks are holes"
    plain = tmp_path / "plain.img"
    plain.write_bytes(image)
    assert unpack_image(plain, tmp_path / "other.img") == plain
