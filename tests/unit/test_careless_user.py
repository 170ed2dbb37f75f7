"""The command line as a careless or unlucky user meets it: nothing it was handed destroys the
cluster's secrets or a file of the user's, and every mistake is a one-screen error, exit 2."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.cli import main
from builder.image.bmap import digest_image
from tests.conftest import BUNDLED, file_contents


def refused(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["kubeconfig", "-o", ".picluster/pki/ca.key"],
        ["backup", "-o", ".picluster/pki/ca.key"],
        ["backup", "-o", "cluster.yaml"],
        ["kubeconfig", "-o", "cluster.yaml"],
    ],
    ids=["kubeconfig over the CA key", "backup over the CA key", "backup over cluster.yaml",
         "kubeconfig over cluster.yaml"],
)  # fmt: skip
def test_an_output_never_lands_on_the_secrets_or_a_file_of_the_users(
    site: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site)
    before = file_contents(site)
    assert main([*argv, "-f", "cluster.yaml"]) == 2
    refused(capsys)
    assert file_contents(site) == before


def test_an_output_through_a_link_is_refused(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "usb").mkdir()
    (site / "backup.tgz").symlink_to(tmp_path / "usb/backup.tgz")
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(site / "backup.tgz")]) == 2
    refused(capsys, "is a link")
    assert (site / "backup.tgz").is_symlink()


def test_render_into_the_state_folder_is_refused(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = file_contents(site / ".picluster")
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(site / ".picluster")]) == 2
    refused(capsys, "inside the cluster's state folder")
    assert file_contents(site / ".picluster") == before


def test_a_refused_node_folder_stops_render_before_it_writes_any(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fresh"
    (out / "w1").mkdir(parents=True)
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(out)]) == 2
    refused(capsys, "w1 exists and is not a folder picluster render wrote")
    assert sorted(path.name for path in out.iterdir()) == ["w1"]


def test_render_leaves_a_users_folder_named_like_its_old_trees(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "out")
    Path(".w2.old").mkdir()
    Path(".w2.old/notes").write_text("precious\n")
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", "."]) == 0
    assert Path(".w2.old/notes").read_text() == "precious\n"


def test_a_linked_cluster_yaml_never_gets_a_new_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the secrets beside the link's target and none beside the link, either guess could
    give the next card a new CA: it is an error that names both."""
    (tmp_path / "dotfiles").mkdir()
    shutil.copy(BUNDLED, tmp_path / "dotfiles/cluster.yaml")
    assert main(["render", "-f", str(tmp_path / "dotfiles/cluster.yaml"), "-o", str(tmp_path / "a")]) == 0
    (tmp_path / "work").mkdir()
    (tmp_path / "work/cluster.yaml").symlink_to(tmp_path / "dotfiles/cluster.yaml")
    capsys.readouterr()
    assert main(["render", "-f", str(tmp_path / "work/cluster.yaml"), "-o", str(tmp_path / "b")]) == 2
    refused(capsys, "the cluster's secrets are beside its target")
    assert not (tmp_path / "work/.picluster").exists()


@pytest.mark.parametrize("command", ["status", "token", "kubeconfig", "backup"])
def test_commands_that_work_on_a_cluster_never_make_one(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    extra = ["-o", str(tmp_path / "backup.tgz")] if command == "backup" else []
    assert main([command, "-f", str(tmp_path / "cluster.yaml"), *extra]) == 2
    refused(capsys, "no cluster secrets in")
    assert not (tmp_path / ".picluster").exists()


def test_a_backup_holds_only_the_clusters_files_and_restores(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / ".picluster/MANIFEST.json").write_text('{"files": {}}')  # a backup once unpacked here
    (site / ".picluster/notes.bin").write_bytes(b"\0" * (2 << 20))
    archive = tmp_path / "b.tgz"
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    with tarfile.open(archive) as held:
        assert "notes.bin" not in held.getnames()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(BUNDLED, elsewhere / "cluster.yaml")
    assert main(["restore", "-f", str(elsewhere / "cluster.yaml"), str(archive)]) == 0


@pytest.mark.parametrize(
    "members",
    [
        {"MANIFEST.json": json.dumps({"files": ["pki/ca.crt"]}).encode()},
        {".": b"x", "MANIFEST.json": b"{}"},
        {"pki": b"x", "MANIFEST.json": b"{}"},
        {"x" * 300: b"x", "MANIFEST.json": b"{}"},
    ],
    ids=["files as a list", "a member named .", "a file named pki", "a 300-character name"],
)
def test_odd_archives_are_refused_in_one_screen(
    tmp_path: Path, members: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    archive = tmp_path / "odd.tgz"
    with tarfile.open(archive, "w:gz") as odd:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            odd.addfile(info, io.BytesIO(data))
    assert main(["restore", "-f", str(tmp_path / "cluster.yaml"), str(archive)]) == 2
    refused(capsys, "is not a usable picluster backup")
    assert not (tmp_path / ".picluster").exists()


@pytest.mark.parametrize("value", ["²", "99999999999999999999", "١٢٣"])
def test_a_source_date_epoch_python_would_choke_on_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    refused(capsys, "SOURCE_DATE_EPOCH")
    assert not (tmp_path / ".picluster").exists(), "refused before any secret was made"


@pytest.mark.parametrize("record", [b"", b"[1]", b"{not json"])
def test_a_damaged_build_record_is_a_stale_image(
    site: Path, tmp_path: Path, record: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "cp1.img").write_bytes(b"junk")
    (images / "cp1.img.json").write_bytes(record)
    assert main(["status", "-f", str(site / "cluster.yaml"), "-i", str(images), "--json"]) == 0
    statuses = {node["name"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
    assert statuses["cp1"]["image"] == "stale" and "cp1.img.json is damaged" in statuses["cp1"]["why"][0]


def test_a_state_folder_without_a_single_file_is_a_new_one(tmp_path: Path) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    (tmp_path / ".picluster/pki").mkdir(parents=True)
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / ".picluster/pki/ca.key").is_file()


def made_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def made_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def linked_to_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def edited_bmap(old: str, new: str) -> Callable[[Path], None]:
    """An edit to the .bmap with its checksum made anew, as a hand edit or another tool might."""

    def edit(path: Path) -> None:
        text = path.read_text().replace(old, new)
        stored = re.search(r"<BmapFileChecksum> (\w+) ", text)
        assert stored and old in path.read_text()
        zeroed = text.replace(stored.group(1), "0" * 64)
        path.write_text(zeroed.replace("0" * 64, hashlib.sha256(zeroed.encode()).hexdigest()))

    return edit


BINARY = bytes(range(256))
DAMAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "empty .sha256": (".sha256", lambda p: p.write_bytes(b""), "cp1.img.sha256 is damaged (no SHA-256"),
    "binary .sha256": (".sha256", lambda p: p.write_bytes(BINARY), "cp1.img.sha256 is damaged (not text)"),
    ".sha256 a folder": (".sha256", made_folder, "cp1.img.sha256 is a folder, not a regular file"),
    ".sha256 a FIFO": (".sha256", made_fifo, "cp1.img.sha256 is a FIFO, not a regular file"),
    "empty .bmap": (".bmap", lambda p: p.write_bytes(b""), "cp1.img.bmap is damaged (its checksum"),
    "binary .bmap": (".bmap", lambda p: p.write_bytes(BINARY), "cp1.img.bmap is damaged (not text)"),
    ".bmap a folder": (".bmap", made_folder, "cp1.img.bmap is a folder, not a regular file"),
    ".bmap a FIFO": (".bmap", made_fifo, "cp1.img.bmap is a FIFO, not a regular file"),
    "negative BlockSize": (".bmap", edited_bmap("<BlockSize> 4096", "<BlockSize> -4096"), "BlockSize -4096"),
    "zero BlockSize": (".bmap", edited_bmap("<BlockSize> 4096", "<BlockSize> 0"), "BlockSize 0"),
    "not XML": (".bmap", edited_bmap("</BlockMap>", "</BlockMop>"), "cp1.img.bmap is damaged (mismatched"),
    "a range without its SHA-256": (".bmap", edited_bmap('chksum="', 'sum="'), "range 0 has no SHA-256"),
    "ranges out of order": (".bmap", edited_bmap("> 0 <", "> 300 <"), "range 300 is empty, out of order"),
    "image a FIFO": ("", made_fifo, "cp1.img is a FIFO, not a regular file"),
    "image a link to /dev/zero": ("", linked_to_dev_zero, "is a character device (a link to /dev/zero)"),
    "image a folder": ("", made_folder, "cp1.img is a folder, not a regular file"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_flash_refuses_a_damaged_image_set_in_one_screen(
    site: Path,
    tmp_path: Path,
    damage: tuple[str, Callable[[Path], None], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "cp1.img"
    with image.open("wb") as handle:
        handle.write(b"boot sector " * 100)
        handle.seek(300 * 4096)
        handle.write(b"root " * 100)
        handle.truncate(2**20)
    digests = digest_image(image)
    (images / "cp1.img.sha256").write_text(f"{digests.sha256}  cp1.img\n")
    (images / "cp1.img.bmap").write_text(digests.bmap)
    suffix, spoil, words = damage
    spoil(images / f"cp1.img{suffix}")
    card = tmp_path / "card"
    assert (
        main(
            [
                "flash",
                "cp1",
                "--device",
                str(card),
                "--yes",
                "-i",
                str(images),
                "-f",
                str(site / "cluster.yaml"),
            ]
        )
        == 2
    )
    refused(capsys, words)
    assert not card.exists()


@pytest.mark.parametrize("name", ["cp1.img.json", "cp1.img.sha256", "cp1.img.bmap"])
@pytest.mark.parametrize(
    "spoil", [made_fifo, linked_to_dev_zero, made_folder], ids=["FIFO", "/dev/zero", "folder"]
)
def test_status_reads_no_fifo_or_device_in_the_images_folder(
    site: Path, tmp_path: Path, name: str, spoil: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for made in ("cp1.img", "cp1.img.sha256", "cp1.img.bmap"):
        (images / made).write_bytes(b"junk")
    (images / "cp1.img.json").write_text("{}")
    spoil(images / name)
    assert main(["status", "-f", str(site / "cluster.yaml"), "-i", str(images), "--json"]) == 0
    statuses = {node["name"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
    assert statuses["cp1"]["image"] == "stale"
