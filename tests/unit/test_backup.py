"""`picluster backup` and `restore`: the state folder copied off and put back, checked both ways."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from builder.cli import main
from tests.conftest import file_contents


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_backup_then_restore_gives_back_the_same_cluster(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "usb/homelab.tar.gz"
    before = file_contents(site / ".picluster")
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    assert archive.stat().st_mode & 0o777 == 0o600
    shutil.rmtree(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 0
    assert file_contents(site / ".picluster") == before
    assert (site / ".picluster").stat().st_mode & 0o777 == 0o700
    out = capsys.readouterr().out
    assert "restored cluster homelab's secrets (CA sha256:" in out
    assert (site / ".picluster/bootstrap-token").read_text().strip() not in out


def test_restore_never_replaces_a_cluster(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "backup.tar.gz"
    main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(archive)])
    before = file_contents(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    assert "already holds a cluster's secrets" in capsys.readouterr().err
    assert file_contents(site / ".picluster") == before


def test_a_changed_archive_is_refused_and_nothing_restored(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "backup.tar.gz"
    main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(archive)])
    members = {}
    with tarfile.open(archive) as original:
        for member in original:
            extracted = original.extractfile(member)
            assert extracted is not None
            members[member.name] = extracted.read()
    members["pki/ca.key"] = members["pki/ca.key"][:50]
    with tarfile.open(archive, "w:gz") as changed:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            changed.addfile(info, io.BytesIO(data))
    shutil.rmtree(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    err = capsys.readouterr().err
    assert "changed since the backup: pki/ca.key" in err and "Traceback" not in err
    assert not (site / ".picluster").exists()
    assert [p.name for p in site.iterdir() if "restore-" in p.name] == []


@pytest.mark.parametrize("bad", ["link", "parent", "not gzip"])
def test_archives_that_no_backup_is_are_refused(
    site: Path, tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "evil.tar.gz"
    if bad == "not gzip":
        archive.write_bytes(b"just some bytes")
    else:
        with tarfile.open(archive, "w:gz") as evil:
            info = tarfile.TarInfo("pki/ca.key" if bad == "link" else "../outside")
            if bad == "link":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
            evil.addfile(info, io.BytesIO(b""))
    shutil.rmtree(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    assert "is not a usable picluster backup" in capsys.readouterr().err
    assert not (site / ".picluster").exists() and not (tmp_path / "outside").exists()


def test_a_damaged_folder_is_not_backed_up(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / ".picluster/pki/sa.key").unlink()
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "b.tar.gz")]) == 2
    assert "pki/sa.key: missing" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()
