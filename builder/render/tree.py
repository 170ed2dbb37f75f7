"""Write node plans to a folder, `<out>/<node>/{boot,root}/...`, so a user can read what lands where.

Every node's folder is built under a temporary name first, then each is swapped in whole: a
render that fails (a full disk) replaces nothing. Only a folder picluster wrote (it carries
MARKER) is ever replaced: node names such as `etc` or `home` are valid, and `render -o .` must
not delete a folder of the user's that happens to share one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from builder.errors import UserError
from builder.files import remove_leftovers, scratch_prefix
from builder.render.plan import NodePlan

MARKER = ".picluster-render"
FULL = (errno.ENOSPC, errno.EDQUOT)


def write_trees(plans: Sequence[NodePlan], out_dir: Path, mtime: int | None = None) -> list[Path]:
    """Write every node's files under out_dir/<node>; return those folders."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for plan in plans:
        check_replaceable(out_dir / plan.node)
        remove_leftovers(out_dir / plan.node)  # a killed render's copies of the cluster's keys
    staged: list[Path] = []
    try:
        for plan in plans:
            staged.append(
                Path(tempfile.mkdtemp(dir=out_dir, prefix=scratch_prefix(out_dir / plan.node, "new")))
            )
            _fill(staged[-1], plan, mtime)
    except BaseException as error:
        for staging in staged:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and error.errno in FULL:
            raise UserError(
                f"{out_dir} has no room for the nodes' folders ({error.strerror}); nothing was replaced",
                "make room on that filesystem, or render into another folder (-o DIR)",
            ) from None
        raise
    for plan, staging in zip(plans, staged, strict=True):
        _swap_in(staging, out_dir / plan.node)
    return [out_dir / plan.node for plan in plans]


def _fill(staging: Path, plan: NodePlan, mtime: int | None) -> None:
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
    retired = Path(tempfile.mkdtemp(dir=final.parent, prefix=scratch_prefix(final, "old")))
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
