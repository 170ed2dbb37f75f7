"""Write node plans to a folder, `<out>/<node>/{boot,root}/...`, so a user can read what lands where.

Each node's folder is built under a temporary name and swapped in whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from builder.plan import NodePlan


def write_tree(plan: NodePlan, out_dir: Path, mtime: int | None = None) -> Path:
    """Write one node's files under out_dir/<node>; return that folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / plan.node
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
