"""Writing files so that a reader never sees half of one (write a temporary name, then rename),
cleaning up the temporary names a killed run left, one writer at a time in a folder (a lock
file), reading only regular files, and deleting a build folder only when nothing is mounted
inside it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, get_args

from builder.errors import UserError


def write_atomic(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace path with data in one step; the mode is set before the name appears.

    `durable` also waits for the data to reach the disk, for what cannot be made again (the
    cluster's secrets). Build outputs skip it: on ext4 an fsync also flushes every other file
    written in the same journal transaction, here the whole just-written image.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(path)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=scratch_prefix(path, "tmp"))
    except OSError as error:
        raise UserError(
            f"cannot write {path}: {error.strerror}",
            "check that its folder can be created and written, and that the disk has room",
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:  # a full disk, most often
        Path(temporary).unlink(missing_ok=True)
        kept = f"{path} is as it was" if path.exists() else f"nothing was written at {path}"
        raise UserError(
            f"cannot write {path}: {error.strerror}", f"make room there and run again; {kept}"
        ) from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


Scratch = Literal["tmp", "new", "old"]
"""A file being written, a folder being filled, a folder moved aside to be deleted."""


def scratch_prefix(target: Path, kind: Scratch) -> str:
    """The start of a temporary name beside target (tempfile adds 8 random characters): hidden,
    saying what it is for and which process made it, so that a later run can tell what a killed
    run left from what a running one is still writing."""
    return f".{target.name.removeprefix('.')}.{kind}-{os.getpid()}-"


def remove_leftovers(target: Path) -> None:
    """Delete what killed runs left beside target under scratch names: often copies of the
    cluster's keys. Only names scratch_prefix makes, whole, whose process is gone: a user's file
    that merely looks alike, or a link, is never touched."""
    kinds = "|".join(get_args(Scratch))
    pattern = re.compile(rf"\.{re.escape(target.name.removeprefix('.'))}\.(?:{kinds})-(\d+)-[a-z0-9_]{{8}}")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return  # nothing to clean where nothing can be listed; writing there fails on its own
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or _running(int(match[1])):
            continue
        leftover = target.parent / name
        if leftover.is_symlink():
            continue
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        elif leftover.is_file():
            with contextlib.suppress(OSError):  # a folder this user may read but not change
                leftover.unlink()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


@contextlib.contextmanager
def exclusive(lock: Path, what: str, say: Callable[[str], None]) -> Iterator[None]:
    """Hold `lock` (an flock, released by the kernel when the holder dies, however it dies)
    while writing `what`; a second picluster waits, saying which process it waits for."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")  # noqa: SIM115  closed by the with below, after the yield
    except OSError as error:
        raise UserError(
            f"cannot write in {lock.parent}: {error.strerror}", "choose a folder you can write to"
        ) from None
    with handle:
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


class NotRegularFile(OSError):
    """A name that does not hold a regular file: a FIFO would block its reader, a device such as
    /dev/zero never ends, a folder cannot be read."""


KINDS = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
         stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}  # fmt: skip


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file or a link to one; NotRegularFile if not."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opening a FIFO would wait for a writer
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        link = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
        raise NotRegularFile(
            f"{path} is {KINDS.get(stat.S_IFMT(mode), 'not a file')}{link}, not a regular file"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def inside(path: Path, folder: Path) -> bool:
    """Whether path names something in folder, by the names as given or where links lead (neither
    need exist): `ln -s .picluster sl` puts sl/ inside the state folder."""
    as_named = Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))
    try:
        return as_named or path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a loop of links leads nowhere, so not into folder
        return as_named


def check_output(path: Path, keep_out_of: Path | None, replaceable: Callable[[bytes], bool] | None) -> None:
    """Refuse an output path that would destroy something: a place inside `keep_out_of` (the
    cluster's state folder), a link, device or folder (a rename would replace the name, not
    write through it), or an existing file that `replaceable` does not recognise as one picluster
    wrote (None: no existing file may be replaced)."""
    if keep_out_of is not None and inside(path, keep_out_of):
        raise UserError(f"{path} is inside the cluster's state folder {keep_out_of}", "write it elsewhere")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else "not a regular file"
        raise UserError(f"{path} is {kind}; picluster writes only files of its own", "name a new file")
    if not path.exists():
        return
    try:
        ours = replaceable is not None and replaceable(path.read_bytes())
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror}", "name a new file") from None
    if not ours:
        raise UserError(
            f"{path} exists and is not one picluster wrote; it is left as it is", "name a new file"
        )


def remove_tree(path: Path) -> None:
    """Delete a build folder, but never one with something mounted mounted (a killed mmdebstrap
    can leave /proc or /dev mounted in its root, and deleting through those harms the host)."""
    if not path.exists():
        return
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mountinfo") as mounts:
        mounted = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
    if mounted:
        raise UserError(
            f"{path} still has filesystems mounted in it: {', '.join(mounted)}",
            f"unmount them (umount -R {mounted[0]}) and run the build again",
        )
    shutil.rmtree(path)


def read_json_record(path: Path) -> Any:
    """What a small JSON record holds; None when it is damaged (not a regular file, not JSON),
    which the caller says in its own words. FileNotFoundError when there is none; a file that
    cannot be read is a UserError."""
    try:
        with open_regular(path) as handle:  # a FIFO would block, a folder is no record
            return json.loads(handle.read())
    except FileNotFoundError:
        raise
    except NotRegularFile:
        return None
    except OSError as error:
        raise UserError(
            f"cannot read {path}: {error.strerror}", "run picluster as the folder's owner"
        ) from None
    except (ValueError, RecursionError):
        return None
