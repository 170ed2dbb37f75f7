"""Writing files so that a reader never sees half of one (write a temporary name, then rename),
and one writer at a time in a folder (a lock file)."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace path with data in one step; the mode is set before the name appears.

    `durable` also waits for the data to reach the disk, for what cannot be made again (the
    cluster's secrets). Build outputs skip it: on ext4 an fsync also flushes every other file
    written in the same journal transaction, here the whole just-written image.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def exclusive(lock: Path, what: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold `lock` (an flock, released by the kernel when the holder dies, however it dies)
    while writing `what`; a second picluster waits, saying which process it waits for."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            say(f"waiting: {holder} is writing {what}")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"picluster (pid {os.getpid()})\n")
        handle.flush()
        yield
