"""`render -o` onto a filesystem that fills up: an error naming the folder, and the trees of the
previous render left whole."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli import main
from tests.support.host import mounted
from tests.support.project import BUNDLED, file_contents

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: room for one render of the bundled cluster (about 1 MiB), not much more."""
    if os.geteuid() != 0:
        pytest.skip("mounting a filesystem needs root (make test runs as root)")
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=4m", "tmpfs") as folder:
        yield folder


def fill(path: Path) -> None:
    with path.open("wb") as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_render_onto_a_full_disk_names_the_folder_and_replaces_nothing(
    small_disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    out = small_disk / "out"
    argv = ["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(out)]
    assert main(argv) == 0
    before = file_contents(out)
    fill(small_disk / "filler")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out} has no room for the nodes' folders"), err
    assert "nothing was replaced" in err and "Traceback" not in err
    assert file_contents(out) == before
    assert sorted(os.listdir(out)) == ["cp1", "w1", "w2"], "no half-written folder left"
