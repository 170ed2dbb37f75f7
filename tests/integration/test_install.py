"""picluster installed like any Python tool: the wheel built from this checkout, installed into a
fresh venv, run from a folder outside the checkout, must render the bundled cluster byte for byte
as the checkout does, find its base by the same key, and find its verify suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.cli import main
from builder.secrets import store
from builder.spec.load import load_cluster
from tests.support.host import TINY_EPOCH, publish_tiny_base
from tests.support.project import BUNDLED, REPO, fixed_secrets

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The `picluster` program of a fresh venv that holds only the wheel and its dependencies."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"  # the checkout's files only: no build/ left over from another build
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout  # fmt: skip
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", work / "dist", source],
        check=True, cwd=work, capture_output=True,
    )  # fmt: skip
    (wheel,) = (work / "dist").glob("picluster-*.whl")
    subprocess.run([sys.executable, "-m", "venv", work / "venv"], check=True)
    subprocess.run([work / "venv/bin/pip", "install", "-q", wheel], check=True, cwd=work, capture_output=True)
    yield work / "venv/bin/picluster"


def site(folder: Path) -> Path:
    """A cluster.yaml in a folder of its own, with the fixed secrets, far from the checkout."""
    folder.mkdir()
    shutil.copy(BUNDLED, folder / "cluster.yaml")
    store.save(folder / ".picluster", fixed_secrets())
    return folder / "cluster.yaml"


def picluster(program: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The installed program, with nothing of the checkout on its path."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["SOURCE_DATE_EPOCH"] = str(TINY_EPOCH)
    return subprocess.run([program, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under folder: its mode and bytes (a link's target for a link)."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        if path.is_symlink():
            entries[str(path.relative_to(folder))] = (0o777, os.readlink(path).encode())
        elif path.is_file():
            entries[str(path.relative_to(folder))] = (path.stat().st_mode & 0o7777, path.read_bytes())
    return entries


def test_the_installed_wheel_carries_its_own_files(installed: Path, tmp_path: Path) -> None:
    show = (
        "from builder import resources as r, upstream as u; "
        "print(r.OVERLAYS_DIR, r.FIRMWARE_DIR, r.VERIFY_SUITE, u.MANIFEST)"
    )
    where = picluster(installed.with_name("python"), "-c", show, cwd=tmp_path)
    *folders, manifest = [Path(found) for found in where.stdout.split()]
    assert len(folders) == 3 and all(folder.is_dir() for folder in folders), where.stderr
    assert manifest.is_file(), manifest
    assert all(path.is_relative_to(installed.parents[1]) for path in [*folders, manifest]), folders


def test_the_installed_wheel_renders_what_the_checkout_renders(
    installed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster_file = site(tmp_path / "site")
    rendered = picluster(installed, "render", "-f", cluster_file, "-o", tmp_path / "wheel", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))
    assert main(["render", "-f", str(cluster_file), "-o", str(tmp_path / "checkout")]) == 0
    wheel, checkout = tree(tmp_path / "wheel"), tree(tmp_path / "checkout")
    assert len(wheel) > 100 and "cp1/root/etc/systemd/system/swap.target" in wheel
    assert wheel == checkout


def test_the_installed_wheel_builds_on_the_same_base_and_finds_its_checks(
    installed: Path, tmp_path: Path
) -> None:
    cluster_file = site(tmp_path / "site")
    cache = tmp_path / "cache"
    publish_tiny_base(load_cluster(cluster_file), cache)  # under the key the checkout computes
    built = picluster(
        installed, "build", "-o", tmp_path / "images", "--cache", cache, cwd=cluster_file.parent
    )
    assert built.returncode == 0, built.stderr
    assert "base image: cached" in built.stdout + built.stderr
    assert sorted(path.name for path in (tmp_path / "images").glob("*.img")) == [
        "cp1.img",
        "w1.img",
        "w2.img",
    ]
    checked = picluster(installed, "verify", "--skip", "no_such_check", cwd=cluster_file.parent)
    assert checked.returncode == 2
    assert "no such check" in checked.stderr and "ssh_key_login" in checked.stderr, checked.stderr
