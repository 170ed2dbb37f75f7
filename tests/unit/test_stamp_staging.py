"""A node's files wait in a staging folder while mcopy and debugfs write them into its image; a
control plane's include the cluster's CA keys. The folder is beside the image (never /tmp), and
what a killed build left there is cleared by the next one."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from builder.image.layout import BaseImage, layout_for
from builder.image.stamp import remove_staged, stamp
from builder.render.node import render_node
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED, fixed_secrets


class Killed(Exception):
    """The build, killed while the files are staged."""


def test_a_control_planes_files_are_staged_beside_its_image_and_a_killed_builds_are_cleared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    images = tmp_path / "images"
    images.mkdir()
    cluster = load_cluster(BUNDLED)
    plan = render_node(cluster, cluster.nodes[0], fixed_secrets())
    ca_key = fixed_secrets().ca.key_pem
    staged: list[Path] = []

    class Runner:
        def run(self, command: list[str], **kwargs: Any) -> str:
            if command[0] == "mcopy":  # the boot files, staged as scratch/boot/<name>
                folder = Path(command[-2]).parents[1]
                staged.append(folder)
                assert any(path.read_bytes() == ca_key for path in folder.rglob("*") if path.is_file())
                shutil.copytree(folder, images / ".cp1.stamp-k1lled00")  # what a kill would leave
                raise Killed
            return ""

    base = BaseImage(tmp_path / "base.img", "key", 0, layout_for(1 << 30), frozenset(), frozenset())
    with pytest.raises(Killed):
        stamp(base, plan, images / ".cp1.abcdefgh.img.partial", 0, Runner())  # type: ignore[arg-type]
    [folder] = staged
    assert folder.parent == images and stat.S_IMODE((images / ".cp1.stamp-k1lled00").stat().st_mode) == 0o700
    assert not list((tmp_path / "tmp").iterdir())

    old = tmp_path / "tmp/picluster-stamp-0ld0ld00"  # an earlier version's, killed an hour ago
    shutil.copytree(images / ".cp1.stamp-k1lled00", old)
    young = tmp_path / "tmp/picluster-stamp-y0ung000"  # may be in use by such a version
    shutil.copytree(old, young)
    foreign = tmp_path / "tmp/picluster-stamp-n0tours0"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a staging folder\n")
    hour_ago = time.time() - 3700
    for path in (old, foreign):
        os.utime(path, (hour_ago, hour_ago))
    remove_staged(images)
    assert not list(images.iterdir())
    assert sorted(path.name for path in (tmp_path / "tmp").iterdir()) == [foreign.name, young.name]
