"""Write node plans to a folder, `<out>/<node>/{boot,root}/...`, so a user can read what lands where.

Each node's folder is built under a temporary name and swapped in whole. Only a folder picluster
wrote (it carries MARKER) is ever replaced: node names such as `etc` or `home` are valid, and
`render -o .` must not delete a folder of the user's that happens to share one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from builder.errors import UserError
from builder.plan import NodePlan

MARKER = ".picluster-render"


def write_tree(plan: NodePlan, out_dir: Path, mtime: int | None = None) -> Path:
    """Write one node's files under out_dir/<node>; return that folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / plan.node
    if final.is_symlink() or (final.exists() and not (final / MARKER).is_file()):
        raise UserError(
            f"{final} exists and is not a folder picluster render wrote; it is left as it is",
            "render into another folder (-o DIR), or move that one away",
        )
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


def _swap_in(staging: Path, final: Path) -> None:
    if not final.exists():
        staging.rename(final)
        return
    retired = final.with_name(f".{final.name}.old")
    shutil.rmtree(retired, ignore_errors=True)
    final.rename(retired)
    staging.rename(final)
    shutil.rmtree(retired)
