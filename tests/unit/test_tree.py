"""Writing a node's render tree: modes, links, and an all-or-nothing swap."""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

import pytest

from builder.errors import UserError
from builder.render.plan import FileEntry, NodePlan
from builder.render.tree import write_trees

PLAN = NodePlan(
    "n1",
    (
        FileEntry("boot", PurePosixPath("cmdline.txt"), b"console=tty0\n"),
        FileEntry("root", PurePosixPath("etc/picluster/kubeadm.yaml"), b"token\n", 0o600),
        FileEntry("root", PurePosixPath("etc/systemd/system/swap.target"), mode=0o777, link="/dev/null"),
    ),
)


def test_files_land_with_their_modes_and_links(tmp_path: Path) -> None:
    folder = write_trees([PLAN], tmp_path, mtime=1_700_000_000)[0]
    assert (folder / "boot" / "cmdline.txt").read_bytes() == b"console=tty0\n"
    secret = folder / "root" / "etc/picluster/kubeadm.yaml"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert os.readlink(folder / "root" / "etc/systemd/system/swap.target") == "/dev/null"
    assert secret.stat().st_mtime == 1_700_000_000
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_rewrite_replaces_the_whole_node_folder(tmp_path: Path) -> None:
    write_trees([PLAN], tmp_path)
    (tmp_path / "n1" / "root" / "stale").write_text("from an older render")
    write_trees([PLAN], tmp_path)
    assert not (tmp_path / "n1" / "root" / "stale").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1"], "no temporary folders left behind"


def test_a_failed_write_leaves_the_previous_tree(tmp_path: Path) -> None:
    write_trees([PLAN], tmp_path)
    broken = NodePlan("n1", (*PLAN.files, FileEntry("root", PurePosixPath("etc/picluster"), b"clash")))
    with pytest.raises(OSError):
        write_trees([broken], tmp_path)
    assert (tmp_path / "n1" / "root" / "etc/picluster/kubeadm.yaml").read_bytes() == b"token\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n1"]


@pytest.mark.parametrize("kind", ["folder", "file", "link"])
def test_what_picluster_did_not_write_is_never_replaced(tmp_path: Path, kind: str) -> None:
    """`mkdir -p n1/keep; echo precious > n1/keep/f; picluster render -o .` lost the file."""
    existing = tmp_path / "n1"
    if kind == "folder":
        (existing / "keep").mkdir(parents=True)
        (existing / "keep/f").write_text("precious\n")
    elif kind == "file":
        existing.write_text("precious\n")
    else:
        (tmp_path / "elsewhere").mkdir()
        existing.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="is not a folder picluster render wrote"):
        write_trees([PLAN], tmp_path)
    if kind == "folder":
        assert (existing / "keep/f").read_text() == "precious\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["n1", *(["elsewhere"] if kind == "link" else [])]
    )
