"""picluster flash against real loop devices (root) and regular files.

A loop device does not say it is removable, so writes to one pass --force-non-removable; the
test of that refusal shows the flag is needed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.card.bmap_reader import parse_bmap
from builder.card.flash import Disk, read_back, uses, zero
from builder.cli import main
from builder.image.bmap import bmap_text, digest_image
from builder.image.build import build_images
from builder.image.context import BuildContext
from builder.image.layout import BOOT_OFFSET, ROOT_OFFSET
from builder.progress import silent
from builder.run import Runner
from builder.spec.model import Cluster
from tests.support.host import TINY_EPOCH, publish_tiny_base, require_tools
from tests.support.project import fixed_secrets

pytestmark = pytest.mark.integration

MIB = 2**20
DATA = [(0, b"boot sector " * 100), (5 * MIB, os.urandom(3 * MIB)), (40 * MIB - 4096, b"end of root" * 300)]
OLD = b"\xa5"  # what a used card holds where the image has nothing to say


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """images/n1.img: 40 MiB, sparse, three data ranges, with its .sha256 and .bmap."""
    folder = tmp_path / "images"
    folder.mkdir()
    image = folder / "n1.img"
    with image.open("wb") as handle:
        handle.truncate(40 * MIB)
        for offset, data in DATA:
            handle.seek(offset)
            handle.write(data)
    digests = digest_image(image)
    (folder / "n1.img.sha256").write_text(f"{digests.sha256}  n1.img\n")
    (folder / "n1.img.bmap").write_text(digests.bmap)
    return folder


def loop_device(backing: Path, size: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("loop devices need root (make test runs as root)")
    with backing.open("wb") as handle:
        for _ in range(size // MIB):
            handle.write(OLD * MIB)
    made = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    device = Path(made.stdout.strip())
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", str(device)], check=True)


@pytest.fixture
def card(tmp_path: Path) -> Iterator[Path]:
    yield from loop_device(tmp_path / "card.bin", 64 * MIB)


def flash(images: Path, device: Path, *extra: str) -> int:
    return main(["flash", "n1", "--device", str(device), "--yes", "-i", str(images), *extra])


def test_writes_the_mapped_blocks_and_zeros_between_them(
    images: Path, card: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flash(images, card, "--force-non-removable") == 0
    written = card.read_bytes()
    image = (images / "n1.img").read_bytes()
    for offset, data in DATA:
        assert written[offset : offset + len(data)] == data
    assert written[20 * MIB : 21 * MIB] == bytes(MIB)  # a hole in the image: the card's old bytes zeroed
    assert written[: len(image)] == image
    assert written[len(image) :] == OLD * (64 * MIB - len(image))  # past the image: left alone
    out = capsys.readouterr()
    assert "writing 3 MiB of n1.img to" in out.out and "zeros over the other 37 MiB" in out.out
    assert "read back all 41943040 bytes of n1.img's length" in out.out
    assert "100% written" in out.err


@pytest.fixture
def built(tmp_path: Path, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    """images/w1.img, a real node image (FAT boot partition, ext4 root) on the stand-in base."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))
    cache = tmp_path / "cache"
    publish_tiny_base(cluster, cache)
    images = tmp_path / "images"
    build_images(cluster, fixed_secrets(), {}, BuildContext(images, cache, silent(), Runner()))
    return images


def test_a_used_card_holds_the_image_byte_for_byte(
    built: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tools("fsck.fat", "mcopy")
    image = built / "w1.img"
    size = image.stat().st_size
    for used in loop_device(tmp_path / "used.bin", size + 8 * MIB):
        assert (
            main(["flash", "w1", "--device", str(used), "--yes", "-i", str(built), "--force-non-removable"])
            == 0
        )
        with used.open("rb") as card:
            held = card.read(size)
        assert hashlib.sha256(held).hexdigest() == hashlib.sha256(image.read_bytes()).hexdigest()
        boot = tmp_path / "boot.fat"
        boot.write_bytes(held[BOOT_OFFSET:ROOT_OFFSET])
        checked = subprocess.run(["fsck.fat", "-n", str(boot)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        kernel = tmp_path / "vmlinuz"
        kernel.write_bytes(os.urandom(2 * MIB))  # what the first kernel update copies there
        subprocess.run(["mcopy", "-i", str(boot), str(kernel), "::vmlinuz-new"], check=True)
        said = " ".join(capsys.readouterr().out.split())
        assert (
            f"read back all {size} bytes of w1.img's length from {used}: their SHA-256 is w1.img.sha256's"
            in said
        )


def test_a_compressed_image_is_written_the_same(images: Path, card: Path) -> None:
    subprocess.run(["zstd", "-q", "--rm", str(images / "n1.img")], check=True)
    assert flash(images, card, "--force-non-removable") == 0
    assert card.read_bytes()[5 * MIB : 8 * MIB] == DATA[1][1]


def test_refuses_a_device_that_is_not_removable(
    images: Path, card: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flash(images, card) == 2
    assert "is not a removable device" in capsys.readouterr().err
    assert card.read_bytes()[:4096] == OLD * 4096


def test_refuses_a_regular_file(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "not-a-card"
    target.write_bytes(b"precious")
    assert flash(images, target, "--force-non-removable") == 2
    assert f"{target} is not a block device" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"


def test_refuses_a_device_smaller_than_the_image(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for small in loop_device(tmp_path / "small.bin", 16 * MIB):
        assert flash(images, small, "--force-non-removable") == 2
        assert "holds 16 MiB, smaller than the image (40 MiB)" in capsys.readouterr().err


def test_refuses_a_mounted_device(
    images: Path, card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    subprocess.run(["mke2fs", "-q", "-t", "ext4", str(card)], check=True)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    mounted = subprocess.run(["mount", str(card), str(mountpoint)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount ext4 here: {mounted.stderr.strip()}")
    try:
        assert flash(images, card, "--force-non-removable") == 2
        assert f"is in use: mounted at {mountpoint}" in capsys.readouterr().err
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_the_running_systems_disk_is_in_use() -> None:
    root = next(
        line.split()
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    disk = Disk(Path("/dev/rootdisk"), "rootdisk", 2**35, True, "", (), frozenset({root[2]}))
    assert "mounted at / (the running system)" in uses(disk)


def test_refuses_a_partition(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for disk in loop_device(tmp_path / "disk.bin", 64 * MIB):
        subprocess.run(["sfdisk", "-q", str(disk)], input="2048,,L\n", text=True, check=True)
        subprocess.run(["partx", "-a", str(disk)], capture_output=True)
        partition = Path(f"{disk}p1")
        if not partition.exists():
            pytest.skip(f"the kernel made no {partition} here")
        assert flash(images, partition, "--force-non-removable") == 2
        assert f"{partition} is a partition, not a whole card" in capsys.readouterr().err


def test_refuses_an_image_that_does_not_match_its_checksum(
    images: Path, card: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (images / "n1.img").open("r+b") as handle:
        handle.seek(5 * MIB + 12345)
        handle.write(b"X")
    assert flash(images, card, "--force-non-removable") == 2
    assert "does not match n1.img.sha256" in capsys.readouterr().err
    assert card.read_bytes()[5 * MIB : 6 * MIB] == OLD * MIB  # nothing was written


def rewrite_bmap(images: Path, size_change: int, dropped: int | None) -> None:
    """Make n1.img.bmap anew, with a valid checksum, from the image's ranges: its size changed,
    a range left out."""
    bmap = parse_bmap((images / "n1.img.bmap").read_text(), "n1.img.bmap")
    ranges = [(r.start // 4096, r.end // 4096 - 1, r.sha256 or "") for r in bmap.ranges]
    kept = [r for i, r in enumerate(ranges) if i != dropped]
    (images / "n1.img.bmap").write_text(bmap_text(bmap.image_size + size_change, kept))


@pytest.mark.parametrize(
    ("size_change", "dropped", "words"),
    [
        (4 * MIB, None, f"n1.img.bmap says the image is {44 * MIB} bytes; it is {40 * MIB}"),
        (-4 * MIB, 2, f"n1.img.bmap says the image is {36 * MIB} bytes; it is {40 * MIB}"),
        (0, 1, f"n1.img.bmap leaves out data of n1.img, in bytes 4096-{40 * MIB - 4096}"),
    ],
    ids=["longer than the image", "shorter than the image", "a data range left out"],
)
def test_refuses_a_bmap_that_does_not_describe_the_image_before_writing(
    images: Path,
    card: Path,
    size_change: int,
    dropped: int | None,
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rewrite_bmap(images, size_change, dropped)
    assert flash(images, card, "--force-non-removable") == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert card.read_bytes() == OLD * 64 * MIB  # nothing was written


def test_read_back_names_the_spans_that_differ(images: Path, tmp_path: Path) -> None:
    bmap = parse_bmap((images / "n1.img.bmap").read_text(), "n1.img.bmap")
    expected = (images / "n1.img.sha256").read_text().split()[0]
    copy = tmp_path / "copy.img"
    copy.write_bytes((images / "n1.img").read_bytes())
    assert read_back(copy, bmap, expected) == []
    with copy.open("r+b") as handle:
        handle.seek(5 * MIB)
        handle.write(b"?")
        handle.seek(30 * MIB)
        handle.write(OLD)
    assert [(span.start, span.end) for span in read_back(copy, bmap, expected)] == [
        (5 * MIB, 8 * MIB),
        (8 * MIB, 40 * MIB - 4096),
    ]


def test_a_card_failing_mid_write_is_one_screen(
    images: Path, card: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "pwrite", failing)
    assert flash(images, card, "--force-non-removable") == 2
    err = capsys.readouterr().err
    assert f"error: writing {card} failed: Input/output error" in err and "Traceback" not in err


def test_zeros_reach_exactly_the_bytes_asked_for(card: Path) -> None:
    start, end = 1000, 3 * 4096 + 5  # unaligned at both ends, whole pages between
    target = os.open(card, os.O_WRONLY | os.O_EXCL)
    try:
        zero(target, start, end)
        zero(target, 5 * MIB + 7, 5 * MIB + 9)  # inside one page
        os.fsync(target)
    finally:
        os.close(target)
    held = card.read_bytes()
    assert held[:start] == OLD * start and held[start:end] == bytes(end - start)
    assert held[end : 5 * MIB + 7] == OLD * (5 * MIB + 7 - end)
    assert held[5 * MIB + 7 : 5 * MIB + 10] == b"\0\0" + OLD


def test_without_a_device_it_lists_removable_devices(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["flash", "n1", "-i", str(images)]) == 2
    out = capsys.readouterr()
    assert out.out.startswith("removable devices:")
    assert "no --device given" in out.err and "picluster flash n1 --device" in out.err


def test_a_node_without_an_image(images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flash", "w9", "-i", str(images)]) == 2
    assert "no image for w9" in capsys.readouterr().err
