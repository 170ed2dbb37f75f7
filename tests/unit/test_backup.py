"""`picluster backup` and `restore`: the state folder copied off and put back, checked both ways."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import threading
import tracemalloc
from pathlib import Path

import pytest
import yaml

from builder.cli import main
from tests.support.project import BUNDLED, file_contents


def files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def members_of(archive: Path) -> dict[str, bytes]:
    members = {}
    with tarfile.open(archive) as original:
        for member in original:
            extracted = original.extractfile(member)
            assert extracted is not None
            members[member.name] = extracted.read()
    return members


def write_archive(archive: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(archive, "w:gz") as written:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            written.addfile(info, io.BytesIO(data))


def changed_backup(site: Path, archive: Path) -> dict[str, bytes]:
    """A real backup of site's cluster (its folder then removed): its members, to change."""
    assert main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    shutil.rmtree(site / ".picluster")
    return members_of(archive)


def forge(archive: Path, members: dict[str, bytes], **manifest_changes: object) -> None:
    """Write the archive again with these members, every digest in its manifest made to match,
    as a forger would."""
    manifest = json.loads(members.pop("MANIFEST.json"))
    manifest["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    manifest.update(manifest_changes)
    write_archive(archive, [("MANIFEST.json", json.dumps(manifest).encode()), *members.items()])


def test_backup_then_restore_gives_back_the_same_cluster(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "usb/homelab.tar.gz"
    before = file_contents(site / ".picluster")
    assert main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
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
    main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)])
    before = file_contents(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    assert "already holds a cluster's secrets" in capsys.readouterr().err
    assert file_contents(site / ".picluster") == before


def test_a_changed_archive_is_refused_and_nothing_restored(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "backup.tar.gz"
    members = changed_backup(site, archive)
    members["pki/ca.key"] = members["pki/ca.key"][:50]
    write_archive(archive, list(members.items()))
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    err = capsys.readouterr().err
    assert "changed since the backup: pki/ca.key" in err and "Traceback" not in err
    assert not (site / ".picluster").exists()
    assert [p.name for p in site.iterdir() if p.name.startswith(".picluster")] == []


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
    assert (
        main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "b.tar.gz")])
        == 2
    )
    assert "pki/sa.key: missing" in capsys.readouterr().err
    assert not (tmp_path / "b.tar.gz").exists()


# --- hostile archives: bounded, escaped, refused before anything is written ---------------------


def test_a_huge_pax_header_is_refused_without_reading_it_whole(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 300 KB archive whose PAX header says 300 MB took a gigabyte of memory to refuse."""
    header = 64 << 20
    archive = tmp_path / "pax.tgz"
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type, pax.size = tarfile.XHDTYPE, header
    with gzip.open(archive, "wb", compresslevel=1) as packed:
        packed.write(pax.tobuf(tarfile.USTAR_FORMAT))
        chunk = b"9 a=bcde\n" * (1 << 16)
        for _ in range(header // len(chunk)):
            packed.write(chunk)
        packed.write(b"\n" * (header % len(chunk)))
    assert archive.stat().st_size < 1 << 20
    shutil.rmtree(site / ".picluster")
    tracemalloc.start()
    try:
        assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "is not a usable picluster backup" in capsys.readouterr().err
    assert peak < 8 << 20, f"{peak >> 20} MiB"
    assert not (site / ".picluster").exists()


def test_an_archive_with_more_members_than_a_backup_holds_is_refused(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "b.tgz"
    members = changed_backup(site, archive)
    write_archive(archive, [*members.items(), *[("bootstrap-token", members["bootstrap-token"])] * 500])
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    assert "holds bootstrap-token twice" in capsys.readouterr().err
    assert not (site / ".picluster").exists()


def test_a_backup_of_another_cluster_is_restored_only_when_asked(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "b.tgz"
    assert main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "cluster.yaml").write_text(BUNDLED.read_text().replace("name: homelab", "name: lab"))
    assert main(["restore", "-f", str(lab / "cluster.yaml"), str(archive)]) == 2
    err = capsys.readouterr().err
    assert "is a backup of cluster homelab, not of lab" in err and "--other-cluster" in err
    assert not (lab / ".picluster").exists()
    assert main(["restore", "-f", str(lab / "cluster.yaml"), str(archive), "--other-cluster"]) == 0


def test_the_archives_cluster_name_is_shown_escaped(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "b.tgz"
    forge(archive, changed_backup(site, archive), cluster="\x1b]0;owned\x07homelab\x1b[2J")
    capsys.readouterr()
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive), "--other-cluster"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "restored cluster \\x1b]0;owned\\x07homelab\\x1b[2J's secrets" in out


@pytest.mark.parametrize("credential", ["exec", "auth-provider", "token"])
def test_a_kubeconfig_that_runs_a_program_is_not_restored(
    site: Path, tmp_path: Path, credential: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """kubectl runs a kubeconfig's `exec:` command: a forged backup would run one of its choosing."""
    assert main(["kubeconfig", "-f", str(site / "cluster.yaml")]) == 0
    archive = tmp_path / "b.tgz"
    members = changed_backup(site, archive)
    config = yaml.safe_load(members["admin.conf"])
    config["users"][0]["user"] = {
        "exec": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh"}},
        "auth-provider": {"auth-provider": {"name": "oidc"}},
        "token": {"token": "abc"},
    }[credential]
    members["admin.conf"] = yaml.safe_dump(config).encode()
    forge(archive, members)
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    err = capsys.readouterr().err
    assert f"admin.conf: users[0] authenticates by {credential}" in err and "Traceback" not in err
    assert not (site / ".picluster").exists()


def test_restoring_from_a_pipe_is_refused_not_a_hang(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = tmp_path / "backup.tgz"
    os.mkfifo(pipe)
    shutil.rmtree(site / ".picluster")
    codes: list[int] = []
    restoring = threading.Thread(
        target=lambda: codes.append(main(["restore", "-f", str(site / "cluster.yaml"), str(pipe)])),
        daemon=True,
    )
    restoring.start()
    restoring.join(timeout=10)
    if restoring.is_alive():
        with pipe.open("wb"):  # let it go on, then fail
            pass
        restoring.join()
        pytest.fail("restore waited on the pipe")
    assert codes == [2]
    assert "is not a regular file" in capsys.readouterr().err
