"""The real base image: Debian arm64 from mmdebstrap, checked by reading the image, not the hooks.

The first run on a machine builds the base (several minutes under qemu-user emulation) into the
same cache `make images` uses, so later runs, and the images users build, reuse it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from builder.image.base import ensure_base
from builder.image.context import BuildContext, default_cache
from builder.image.layout import ROOT_OFFSET, BaseImage
from builder.progress import Reporter
from builder.resources import OVERLAYS_DIR
from builder.run import Runner
from builder.spec.boards import boards
from builder.spec.load import load_cluster
from builder.spec.names import time_zones, wifi_countries
from tests.support.host import TOOLS, require_tools
from tests.support.project import BUNDLED

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def real_base() -> BaseImage:
    if os.geteuid() != 0:
        pytest.skip("building the Debian base needs root")
    require_tools(*TOOLS, "mmdebstrap")
    return ensure_base(
        load_cluster(BUNDLED), BuildContext(default_cache(), default_cache(), Reporter(), Runner())
    )


def boot_files(base: BaseImage) -> set[str]:
    listing = subprocess.run(
        ["mdir", "-b", "-i", base.layout.boot_target(base.image), "::/"],
        capture_output=True, check=True, text=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"},
    ).stdout  # fmt: skip
    return {line.removeprefix("::/") for line in listing.split()}


def debugfs(base: BaseImage, request: str) -> bytes:
    return subprocess.run(
        ["debugfs", "-R", request, base.layout.root_target(base.image)], capture_output=True, check=True
    ).stdout


def read_root(base: BaseImage, path: str) -> bytes:
    return debugfs(base, f"cat {path}")


def stat_root(base: BaseImage, path: str) -> str:
    return debugfs(base, f"stat {path}").decode()


def copy_boot_file(base: BaseImage, name: str, target: Path) -> None:
    subprocess.run(["mcopy", "-i", base.layout.boot_target(base.image), f"::/{name}", str(target)],
                   check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip


def test_boot_partition_carries_kernel_initrd_firmware_and_device_trees(real_base: BaseImage) -> None:
    files = boot_files(real_base)
    for name in ("vmlinuz", "initrd.img", "bootcode.bin", "start4.elf", "fixup4.dat", "start.elf"):
        assert name in files, name
    for model, board in boards().items():
        if board.debian_kernel:
            assert set(board.dtbs) <= set(files), f"{model} device trees"


def test_kernel_is_an_arm64_image_the_firmware_and_qemu_can_boot(
    real_base: BaseImage, tmp_path: Path
) -> None:
    kernel = tmp_path / "vmlinuz"
    copy_boot_file(real_base, "vmlinuz", kernel)
    header = kernel.read_bytes()[:64]
    assert header[56:60] == b"ARMd", "arm64 Image magic (an uncompressed kernel)"


def test_initramfs_holds_the_boot_device_drivers(real_base: BaseImage, tmp_path: Path) -> None:
    require_tools("zstd")
    initrd = tmp_path / "initrd.img"
    copy_boot_file(real_base, "initrd.img", initrd)
    names = _initramfs_names(initrd.read_bytes())
    for module in ("sdhci-iproc.ko", "bcm2835.ko", "virtio_blk.ko", "dwc2.ko"):
        assert any(name.endswith(f"/{module}") or name.endswith(f"/{module}.xz") for name in names), module
    assert not any("/drivers/net/wireless/" in name for name in names), "only the listed module folders"


def test_root_filesystem_is_ready_to_become_any_node(real_base: BaseImage) -> None:
    assert read_root(real_base, "/etc/machine-id").strip() in (b"", b"uninitialized")
    assert not any(path.startswith("etc/ssh/ssh_host_") for path in real_base.others)
    assert "etc/systemd/system/multi-user.target.wants/systemd-networkd.service" in real_base.others
    for deferred in ("/usr/sbin/update-initramfs", "/usr/bin/py3compile", "/usr/sbin/update-ca-certificates"):
        assert b"picluster" not in read_root(real_base, deferred), f"the real {deferred} is back"
    assert 'Fast link dest: "../bin/kmod"' in stat_root(real_base, "/usr/sbin/depmod"), (
        "the real depmod is back"
    )
    assert "boot/firmware" in real_base.dirs, "the boot partition's mount point"


WIFI_FIRMWARE = {
    "brcm/brcmfmac43430-sdio.bin": 200_000,  # Pi 3 Model B
    "brcm/brcmfmac43455-sdio.bin": 400_000,  # Pi 3 Model B+ and Pi 4
    "brcm/brcmfmac43430-sdio.raspberrypi,3-model-b.txt": 500,
    "brcm/brcmfmac43455-sdio.raspberrypi,3-model-b-plus.txt": 500,
    "brcm/brcmfmac43455-sdio.raspberrypi,4-model-b.txt": 500,
    "regulatory.db": 1_000,
    "regulatory.db.p7s": 500,  # the kernel checks the database's signature
}
"""What brcmfmac loads for the Pis' Wi-Fi chips (the chip's firmware, then its board file), and
cfg80211's regulatory database, with a floor on each size; raspi-firmware only suggests
firmware-brcm80211, so without it wlan0 never appears."""


def test_the_wifi_chips_have_their_firmware(real_base: BaseImage) -> None:
    for name, least in WIFI_FIRMWARE.items():
        path = f"/usr/lib/firmware/{name}"
        for _ in range(4):  # linux-firmware links some names to cypress/
            link = re.search(r'Fast link dest: "([^"]+)"', stat_root(real_base, f'"{path}"'))
            if not link:
                break
            path = str(PurePosixPath(path).parent / link[1])
        assert len(read_root(real_base, f'"{path}"')) > least, name


def test_the_time_zones_validate_accepts_are_those_of_the_base(real_base: BaseImage) -> None:
    """builder/spec/timezones.txt: the zones tzdata installs, so `validate` needs no image."""
    installed = set(read_root(real_base, "/var/lib/dpkg/info/tzdata.list").decode().split())
    zone_file = read_root(real_base, "/usr/share/zoneinfo/tzdata.zi").decode().splitlines()
    zones = {line.split()[1] for line in zone_file if line.startswith("Z ")}
    zones |= {line.split()[2] for line in zone_file if line.startswith("L ")}
    assert {zone for zone in zones if f"/usr/share/zoneinfo/{zone}" in installed} == time_zones()


def test_the_wifi_countries_validate_accepts_are_those_of_the_base(real_base: BaseImage) -> None:
    """builder/spec/wifi-countries.txt: the ISO 3166-1 countries of the regulatory database."""
    database = read_root(real_base, "/usr/lib/firmware/regulatory.db-debian")
    assert database[:4] == b"RGDB"
    known = set()
    # after the magic and version, (alpha2, collection pointer) pairs up to a null pointer, as the
    # kernel reads them (net/wireless/reg.c, struct fwdb_country)
    for at in range(8, len(database), 4):
        if database[at + 2 : at + 4] == b"\0\0":
            break
        known.add(database[at : at + 2].decode())
    iso3166 = read_root(real_base, "/usr/share/zoneinfo/iso3166.tab").decode().splitlines()
    countries = {line.split("\t")[0] for line in iso3166 if not line.startswith("#")}
    assert known & countries == wifi_countries()


def modules_folder(base: BaseImage) -> str:
    """The base's one kernel's module folder, usr/lib/modules/<version>."""
    (modules,) = [path for path in base.dirs if path.startswith("usr/lib/modules/") and path.count("/") == 3]
    return modules


def test_module_index_is_made_for_the_kernel(real_base: BaseImage) -> None:
    """depmod runs natively at the end of the build; the index must be the one modprobe reads."""
    modules = modules_folder(real_base)
    dependencies = read_root(real_base, f"/{modules}/modules.dep").decode()
    assert (
        "kernel/drivers/mmc/host/sdhci-iproc.ko.xz: kernel/drivers/mmc/host/sdhci-pltfm.ko.xz" in dependencies
    )
    aliases = read_root(real_base, f"/{modules}/modules.alias").decode()
    assert "alias of:N*T*Cbrcm,bcm2835-sdhciC* sdhci_iproc" in aliases, (
        "device tree aliases for the Pi's SD card"
    )
    assert len(read_root(real_base, f"/{modules}/modules.dep.bin")) > 10_000


KEPT_MODULES = {
    # what Kubernetes and flannel load: netfilter, the bridge, overlay, vxlan, IPVS
    "net/netfilter/nf_conntrack", "net/bridge/br_netfilter", "fs/overlayfs/overlay",
    "drivers/net/vxlan/vxlan", "net/netfilter/ipvs/ip_vs", "net/netfilter/xt_comment",
    # cluster storage: NFS, iSCSI, Ceph's rbd, device mapper (LVM, Longhorn), USB disks
    "fs/nfs/nfs", "fs/nfs/nfsv4", "drivers/scsi/iscsi_tcp", "drivers/block/rbd", "drivers/md/dm-mod",
    "drivers/usb/storage/usb-storage",
    # the Pis' own hardware: Ethernet (Pi 4, Pi 3), Wi-Fi, HDMI
    "drivers/net/ethernet/broadcom/genet/genet", "drivers/net/usb/lan78xx", "drivers/net/usb/smsc95xx",
    "drivers/net/wireless/broadcom/brcm80211/brcmfmac/brcmfmac", "drivers/gpu/drm/vc4/vc4",
}  # fmt: skip
TRIMMED_MODULES = ("drivers/gpu/drm/amd/", "drivers/media/usb/", "drivers/net/wireless/realtek/",
                   "drivers/net/ethernet/intel/", "sound/pci/", "drivers/infiniband/")  # fmt: skip


def test_a_trimmed_base_keeps_what_nodes_load_and_drops_what_no_pi_has(real_base: BaseImage) -> None:
    """base.trim's dpkg filters, read off the image: every module a node or its storage needs is
    there with what it depends on (depmod's index), and the hardware of other boards is not."""
    modules = modules_folder(real_base)
    index = read_root(real_base, f"/{modules}/modules.dep").decode()
    dependencies = {
        line.split(":")[0].removeprefix("kernel/").removesuffix(".ko.xz"): line.split(":")[1].split()
        for line in index.splitlines()
    }
    assert dependencies.keys() >= KEPT_MODULES, sorted(KEPT_MODULES - dependencies.keys())
    files = set(real_base.others)
    for name in KEPT_MODULES:
        for needed in [f"kernel/{name}.ko.xz", *dependencies[name]]:
            assert f"{modules}/{needed}" in files, f"{name} needs {needed}, which the base left out"
    assert "kernel/drivers/media/cec/core/cec.ko.xz" in dependencies["drivers/gpu/drm/vc4/vc4"]
    assert not [name for name in dependencies if name.startswith(TRIMMED_MODULES)]
    boot = boot_files(real_base)
    assert {"start.elf", "fixup.dat", "start4.elf", "fixup4.dat"} <= boot
    assert not {"start_x.elf", "start4db.elf", "start_cd.elf"} & boot
    assert not [path for path in real_base.others if path.startswith("usr/share/perl/")], (
        "perl beyond perl-base: only Debian's legacy ebtables pulled it in"
    )
    assert "usr/sbin/ebtables" in real_base.others, "iptables brings ebtables-nft"
    assert not [path for path in real_base.others if path.startswith("usr/lib/firmware/brcm/brcmfmac4366")]
    hwdb = {path.rsplit("/", 1)[1] for path in real_base.others if path.startswith("usr/lib/udev/hwdb.d/")}
    assert {"20-net-ifname.hwdb", "82-net-auto-link-local.hwdb", "60-autosuspend.hwdb"} <= hwdb
    assert "20-OUI.hwdb" not in hwdb and "20-pci-vendor-model.hwdb" not in hwdb


def test_dpkg_on_the_card_keeps_the_bases_filters_and_syncs_what_it_writes(real_base: BaseImage) -> None:
    """The dpkg options mmdebstrap leaves in the image: a later upgrade on the node leaves out what
    the base did, and dpkg there is not running with the build's force-unsafe-io."""
    options = read_root(real_base, "/etc/dpkg/dpkg.cfg.d/99mmdebstrap").decode().splitlines()
    assert "path-exclude=/usr/lib/cni/*" in options and "path-exclude=/usr/bin/etcd" in options
    assert "force-unsafe-io" not in options, "a power cut during an upgrade could leave empty files"


def test_certificate_store_links_the_trusted_authorities(real_base: BaseImage) -> None:
    """update-ca-certificates runs natively at the end of the build: its links must name the
    certificates where the node sees them, not where the build machine saw them."""
    bundle = read_root(real_base, "/etc/ssl/certs/ca-certificates.crt").decode()
    assert bundle.count("BEGIN CERTIFICATE") > 100
    link = stat_root(real_base, "/etc/ssl/certs/ISRG_Root_X1.pem")
    assert 'Fast link dest: "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt"' in link
    assert 'Fast link dest: "ISRG_Root_X1.pem"' in stat_root(real_base, "/etc/ssl/certs/4042bcee.0"), (
        "subject hash"
    )


def test_every_link_the_overlays_make_points_into_the_base(real_base: BaseImage) -> None:
    """Links to units and plugins must name files that exist: in the base, or in an overlay."""
    overlay_files = {
        path.relative_to(layer).as_posix()
        for layer in OVERLAYS_DIR.iterdir()
        if layer.is_dir()
        for path in layer.rglob("*")
    }
    for link in OVERLAYS_DIR.rglob("*"):
        if link.is_symlink():
            target = os.readlink(link).lstrip("/")
            if target != "dev/null":
                assert target in real_base.others | overlay_files, (
                    f"{link.relative_to(OVERLAYS_DIR)} -> /{target}"
                )


def test_raspi_firmware_hook_is_valid_shell(real_base: BaseImage, tmp_path: Path) -> None:
    hook = tmp_path / "z50-raspi-firmware"
    hook.write_bytes(read_root(real_base, "/etc/kernel/postinst.d/z50-raspi-firmware"))
    assert hook.stat().st_size > 0
    dash = shutil.which("dash") or "sh"
    result = subprocess.run([dash, "-n", str(hook)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_root_filesystem_is_clean_and_the_image_small(real_base: BaseImage) -> None:
    target = real_base.layout.root_target(real_base.image)
    fsck = subprocess.run(["e2fsck", "-fn", target], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    allocated = real_base.image.stat().st_blocks * 512
    assert allocated <= 1.2 * 2**30, f"base image allocates {allocated / 2**30:.2f} GiB"
    assert real_base.image.stat().st_size > ROOT_OFFSET


def _initramfs_names(data: bytes) -> list[str]:
    """Names in an initramfs: uncompressed cpio archives (early firmware) and then a compressed
    one, back to back, as initramfs-tools writes them."""
    names: list[str] = []
    while data:
        if data.startswith(b"0707"):
            found, end = _cpio_names(data)
            names += found
            data = data[end:].lstrip(b"\0")
        else:
            data = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return names


def _cpio_names(archive: bytes) -> tuple[list[str], int]:
    """Names in a "newc" cpio archive, and where the archive ends."""
    names, stream = [], io.BytesIO(archive)
    while True:
        header = stream.read(110)
        if len(header) < 110 or header[:6] not in (b"070701", b"070702"):
            break
        size, name_size = int(header[54:62], 16), int(header[94:102], 16)
        name = stream.read(name_size)[:-1].decode()
        stream.seek((-stream.tell()) % 4, io.SEEK_CUR)
        if name == "TRAILER!!!":
            break
        names.append(name)
        stream.seek(size + (-(stream.tell() + size)) % 4, io.SEEK_CUR)
    return names, stream.tell()


def test_cpio_reader_reads_a_hand_made_archive() -> None:
    """The reader above is ours, so it gets a test of its own: a one-file newc archive."""
    entry = b"070701" + b"0" * 48 + b"00000003" + b"0" * 32 + b"00000006" + b"00000000" + b"hello\0"
    entry += b"\0" * ((-len(entry)) % 4) + b"abc" + b"\0"
    assert _cpio_names(entry)[0] == ["hello"]


def test_a_node_card_on_the_real_base(real_base: BaseImage, tmp_path: Path) -> None:
    """The whole path on the real base: the card's boot partition has what its model boots from."""
    from builder.image.build import build_images
    from builder.progress import silent
    from tests.support.project import fixed_secrets

    cluster = load_cluster(BUNDLED)
    images = tmp_path / "images"
    build_images(cluster, fixed_secrets(), {}, BuildContext(images, default_cache(), silent(), Runner()))
    card = BaseImage(images / "w2.img", "", 0, real_base.layout, real_base.dirs, real_base.others)
    files = boot_files(card)
    assert {"vmlinuz", "initrd.img", "config.txt", "cmdline.txt", "bcm2837-rpi-3-b-plus.dtb"} <= files
    cmdline = tmp_path / "cmdline.txt"
    copy_boot_file(card, "cmdline.txt", cmdline)
    assert "cgroup_enable=memory" in cmdline.read_text().split()
    assert read_root(card, "/etc/hostname") == b"w2\n"
    assert read_root(card, "/etc/machine-id") == b"uninitialized\n", "first boot makes the node's own id"
    fstab = read_root(card, "/etc/fstab").decode()
    assert "LABEL=RASPIROOT" in fstab and "LABEL=RASPIFIRM" in fstab and ",nofail," in fstab
    fsck = subprocess.run(
        ["e2fsck", "-fn", card.layout.root_target(card.image)], capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout


def test_a_folder_or_fifo_where_an_output_goes_stops_the_build_before_any_card(
    real_base: BaseImage, tmp_path: Path
) -> None:
    """A user's folder named w1.img is no image to replace: one message, no traceback, no card."""
    from builder.errors import UserError
    from builder.image.build import build_images
    from builder.progress import silent
    from tests.support.project import fixed_secrets

    images = tmp_path / "images"
    (images / "w1.img").mkdir(parents=True)
    (images / "w1.img" / "photo.jpg").write_bytes(b"kept")
    context = BuildContext(images, default_cache(), silent(), Runner())
    with pytest.raises(UserError) as refused:
        build_images(load_cluster(BUNDLED), fixed_secrets(), {}, context)
    assert f"{images}/w1.img is a folder; the build writes w1's image there" in refused.value.message
    assert sorted(p.name for p in images.iterdir()) == [".picluster.lock", "w1.img"], "no card was written"
    assert (images / "w1.img" / "photo.jpg").read_bytes() == b"kept"
    (images / "w1.img" / "photo.jpg").unlink()
    (images / "w1.img").rmdir()
    os.mkfifo(images / "w2.img.json")
    with pytest.raises(UserError, match=r"w2\.img\.json is not a regular file; the build writes w2's record"):
        build_images(load_cluster(BUNDLED), fixed_secrets(), {}, context)
