"""Write node plans to a folder, `<out>/<node>/{boot,root}/...`, so a user can read what lands where.

Each node's folder is built under a temporary name and swapped in whole. Only a folder picluster
wrote (it carries MARKER) is ever replaced: node names such as `etc` or `home` are valid, and
`render -o .` must not delete a folder of the user's that happens to share one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from builder.errors import UserError
from builder.render.plan import NodePlan

MARKER = ".picluster-render"


def write_tree(plan: NodePlan, out_dir: Path, mtime: int | None = None) -> Path:
    """Write one node's files under out_dir/<node>; return that folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / plan.node
    check_replaceable(final)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{plan.node}."))
    try:
        for entry in plan.files:
            target = staging / entry.partition / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            if entry.link is not None:
                target.symlink_to(entry.link)
            else:
                target.write_bytes(entry.data)
                target.chmod(entry.mode)
            if mtime is not None:
                os.utime(target, (mtime, mtime), follow_symlinks=False)
        (staging / MARKER).write_text("written by picluster render; replaced whole by the next render\n")
        if mtime is not None:
            os.utime(staging / MARKER, (mtime, mtime))
        staging.chmod(0o700)  # control-plane trees hold the cluster's CA keys
        _swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def check_replaceable(final: Path) -> None:
    """Refuse a node folder that picluster render did not write (call it for every node first,
    so a refusal leaves the output folder as it was)."""
    if final.is_symlink() or (final.exists() and not (final / MARKER).is_file()):
        raise UserError(
            f"{final} exists and is not a folder picluster render wrote; it is left as it is",
            "render into another folder (-o DIR), or move that one away",
        )


def _swap_in(staging: Path, final: Path) -> None:
    """The old tree moves to a name of its own (never one a user's folder could have), the new
    one takes its place. Another render of the same node at the same moment may win the race:
    then its tree stands."""
    retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.old-"))
    try:
        with contextlib.suppress(FileNotFoundError):  # no previous tree, or another render moved it
            final.rename(retired / final.name)
        try:
            staging.rename(final)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(staging)
    finally:
        shutil.rmtree(retired, ignore_errors=True)
