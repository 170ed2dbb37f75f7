"""Fetching files over HTTP(S) with requests: resumable, verified, cached by URL.

A partial download is kept as `<name>.part` and resumed with a Range request; the file gets its
final name only once its SHA-256 matches, so a cache never holds a corrupt or truncated file.
"""

from __future__ import annotations

import hashlib
import lzma
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import requests

from builder.errors import UserError

TIMEOUT = (10, 60)
"""(connect, read) seconds."""
CHUNK = 1024 * 1024
STREAM_CHUNK = 64 * 1024
"""Small enough that a broken connection loses little of what already arrived."""
SPARSE_BLOCK = 4096


def fetch_text(url: str) -> str:
    """A small text file, e.g. an apt repository key."""
    try:
        response = requests.get(url, timeout=TIMEOUT)
        response.raise_for_status()
    except requests.RequestException as error:
        raise UserError(f"cannot download {url}: {error}", "check the network or the URL") from None
    return response.text


def fetch_file(url: str, target: Path, sha256: str) -> Path:
    """Download url to target (resuming a partial download) and check its SHA-256."""
    if target.exists() and _sha256(target) == sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            if response.status_code == 416:  # nothing left to send: the part is complete
                pass
            else:
                response.raise_for_status()
                resumed = response.status_code == 206
                with partial.open("ab" if resumed else "wb") as sink:
                    for chunk in response.iter_content(STREAM_CHUNK):
                        sink.write(chunk)
    except requests.RequestException as error:
        raise UserError(
            f"cannot download {url}: {error}",
            "run the build again to resume; check the network or the URL",
        ) from None
    actual = _sha256(partial)
    if actual != sha256:
        partial.unlink()
        raise UserError(
            f"{url} has SHA-256 {actual}, expected {sha256}",
            "check base.image.sha256 against the publisher's checksum; the download was discarded",
        )
    os.replace(partial, target)
    return target


def fetch_checked(url: str, target: Path, check: Callable[[Path], None]) -> Path:
    """Download url whole to target, which it reaches only once check (which raises) accepts it.

    For files known by what they hold rather than by their bytes, so a part cannot be checked
    before it is complete: a broken or refused download leaves nothing behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with requests.get(url, stream=True, timeout=TIMEOUT) as response:
            response.raise_for_status()
            with partial.open("wb") as sink:
                for chunk in response.iter_content(STREAM_CHUNK):
                    sink.write(chunk)
        check(partial)
        os.replace(partial, target)
    except requests.RequestException as error:
        raise UserError(f"cannot download {url}: {error}", "check the network or the URL") from None
    finally:
        partial.unlink(missing_ok=True)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def unpack_image(source: Path, target: Path) -> Path:
    """A downloaded disk image, decompressed if it is .xz, written sparse (zero blocks as holes)."""
    if source.suffix != ".xz":
        return source
    partial = target.with_name(target.name + ".part")
    decompressor = lzma.LZMADecompressor()
    with source.open("rb") as compressed, partial.open("wb") as sink:
        while chunk := compressed.read(CHUNK):
            _write_sparse(sink, decompressor.decompress(chunk))
        sink.truncate(sink.tell())
    os.replace(partial, target)
    return target


def _write_sparse(sink: BinaryIO, data: bytes) -> None:
    for start in range(0, len(data), SPARSE_BLOCK):
        block = data[start : start + SPARSE_BLOCK]
        if block.count(0) == len(block):
            sink.seek(len(block), os.SEEK_CUR)
        else:
            sink.write(block)
