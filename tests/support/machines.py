"""What the e2e tier's boots share: a card picluster built, QEMU running it, SSH into it.

qemu-system-aarch64 -M virt runs the image's own kernel and initrd with the image as its disk;
the tests log in over SSH with a key from cluster.yaml and run the verify suite (`picluster
verify`) against the running node. There is no Pi here; QEMU's virt machine stands in for one (a
Cortex-A72, as in a Pi 4). The guest is on QEMU's user network with restrict=on, so it reaches
nothing outside QEMU: no NTP server, no Kubernetes repository. Its address is the one QEMU's user
network hands out (10.0.2.15), set statically by the card as on a real LAN. The serial console
goes to a log file, kept and named when a test fails.

One VM runs at a time (MAX_VMS): each test module boots its card in a module-scoped fixture,
which stops it when the module's last test is done, on a failure or Ctrl-C too; a QEMU whose
pytest is killed outright dies with it (PR_SET_PDEATHSIG). On a 2-core machine a second guest
only slows the first one's boot.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from builder.image.base import ensure_base
from builder.image.build import build_images, carried_images, clock_epoch
from builder.image.container_images import card_files
from builder.image.context import BuildContext, default_cache
from builder.image.stamp import stamp
from builder.progress import Reporter, silent
from builder.render.images import node_images
from builder.render.node import render_node
from builder.render.plan import FileEntry, NodePlan
from builder.run import Runner
from builder.spec.load import load_cluster
from builder.spec.model import ImageSource
from tests.support.host import TOOLS, require_tools
from tests.support.project import BUNDLED, fixed_secrets
from tests.support.registry import Registry

MAX_VMS = 1
"""How many QEMU guests may run at once in the whole suite."""
BOOT_TIMEOUT = 600
AGENT_TIMEOUT = 300  # the agent's clock check alone waits 120 s for an NTP server
CARD_SIZE = 4 * 2**30
"""The plain boot's disk: larger than the image, as every SD card is, so the root must grow."""
KERNELS = {"debian": ("vmlinuz", "initrd.img"), "raspios": ("kernel8.img", "initramfs8")}
"""Where each flavour of card keeps its kernel and initramfs on the boot partition."""
VIRT_CONSOLE = "console=ttyAMA0"
"""QEMU virt's serial port; the card's own console= arguments name the Pi's."""
PR_SET_PDEATHSIG = 1
_running: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class Card:
    work: Path
    cluster_file: Path
    key: Path
    image: Path
    flannel_digest: str
    """flannel's image's, which the card carries and its manifest pins."""
    carried: dict[str, str] = field(default_factory=dict)
    """The container images the card carries, each reference's digest."""
    carried_files: tuple[FileEntry, ...] = ()
    """Those images as files on the card, for a card stamped with a test unit to carry too."""


@dataclass(frozen=True)
class Booted:
    card: Card
    port: int
    console: Path
    ssh_config: Path

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "10.0.2.15", command],
            capture_output=True,
            text=True,
            timeout=60,
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def quiet_context() -> BuildContext:
    """For the cached base only: its images folder is never written."""
    return BuildContext(default_cache(), default_cache(), silent(), Runner())


def make_card(
    work: Path, model: str, image: ImageSource | None = None, mirror: Registry | None = None
) -> Card:
    """cp1's card, the only node of a cluster on QEMU's user network; on `image` when given; with
    `mirror`, carrying its container images (images: card), small ones made and served there."""
    require_tools(*TOOLS, "qemu-system-aarch64", "ssh", "ssh-keygen")
    key = work / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public_key = (work / "id_ed25519.pub").read_text().strip()
    cluster_file = work / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump(card_data(model, public_key, image, mirror and mirror.url)))
    cluster = load_cluster(cluster_file)
    ensure_base(cluster, BuildContext(work / "images", default_cache(), Reporter(), Runner()))
    context = BuildContext(work / "images", default_cache(), silent(), Runner())
    if mirror is not None:
        mirror.push_stand_ins(node_images(cluster, cluster.nodes[0]).references, work)
    flannel, carried = carried_images(cluster, context)
    build_images(cluster, fixed_secrets(), {}, context)
    images = carried["cp1"]
    return Card(
        work, cluster_file, key, work / "images" / "cp1.img", flannel.digest,
        {image.reference: image.digest for image in images}, card_files(images),
    )  # fmt: skip


def card_data(model: str, public_key: str | None, image: ImageSource | None = None,
              mirror: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The cluster.yaml of make_card's one-node cluster; without `public_key`, the bundled one's
    SSH key (for its base alone: no key is in a base)."""
    data: dict[str, Any] = yaml.safe_load(BUNDLED.read_text())
    data["network"].update(gateway="10.0.2.2", dns=["10.0.2.3"], ntp=[])
    data["nodes"] = [{"name": "cp1", "role": "control-plane", "model": model, "address": "10.0.2.15/24"}]
    if public_key is not None:
        data["access"]["ssh_authorized_keys"] = [public_key]
    if image is not None:
        data["base"]["image"] = image.model_dump()
    if mirror is not None:
        data["cluster"].update(images="card", image_mirror=mirror)
    return data


def on_a_4_gib_card(card: Card, name: str) -> Path:
    """A copy of the card's image as large as a real card, for the root to grow into."""
    image = card.work / f"cp1-{name}-on-a-4-GiB-card.img"
    subprocess.run(["cp", "--sparse=always", str(card.image), str(image)], check=True)
    os.truncate(image, CARD_SIZE)
    return image


def stamp_with_test_unit(
    cluster_file: Path,
    node: str,
    name: str,
    unit_text: str,
    image: Path,
    flannel_digest: str,
    *extra: FileEntry,
) -> None:
    """A node's card as picluster builds it (pinning flannel's image by `flannel_digest`), plus a
    test-only unit enabled on it (and `extra`)."""
    cluster = load_cluster(cluster_file)
    base = ensure_base(cluster, quiet_context())
    plan = render_node(
        cluster,
        next(n for n in cluster.nodes if n.name == node),
        fixed_secrets(),
        flannel_digest=flannel_digest,
    )
    unit = PurePosixPath(f"etc/systemd/system/{name}")
    test_files = (
        FileEntry("root", unit, unit_text.encode(), 0o644),
        FileEntry("root", "etc/systemd/system/multi-user.target.wants" / PurePosixPath(unit.name),
                  mode=0o777, link=f"/{unit}"),
        *extra,
    )  # fmt: skip
    stamp(base, NodePlan(plan.node, plan.files + test_files), image, clock_epoch(base), Runner())


def boot_files(card: Card, image: Path, *names: str) -> dict[str, Path]:
    """Copy files out of a card's FAT partition, as the Pi's firmware reads them."""
    base = ensure_base(load_cluster(card.cluster_file), quiet_context())
    copies = {}
    for name in names:
        copies[name] = card.work / f"{image.stem}-{name}"
        subprocess.run(["mcopy", "-o", "-i", base.layout.boot_target(image), f"::/{name}", str(copies[name])],
                       check=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})  # fmt: skip
    return copies


def card_cmdline(cmdline: Path, console: str | None = None) -> str:
    """The card's own kernel command line; only its console= arguments may give way to QEMU's."""
    words = cmdline.read_text().split()
    if console is None:
        return " ".join(words)
    return " ".join([*(word for word in words if not word.startswith("console=")), console])


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the process that started it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextmanager
def vm(argv: list[str], output: Path | None) -> Iterator[subprocess.Popen[bytes]]:
    """A QEMU guest for the block's length; refused while MAX_VMS others run."""
    alive = [qemu for qemu in _running if qemu.poll() is None]
    if len(alive) >= MAX_VMS:
        pytest.fail(f"{len(alive)} QEMU guest(s) still running; the e2e tier boots one at a time")
    qemu = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=output.open("wb") if output else subprocess.DEVNULL,
        stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
    )  # fmt: skip
    _running.append(qemu)
    try:
        yield qemu
    finally:
        qemu.kill()
        qemu.wait()
        _running.remove(qemu)


@contextmanager
def boot(card: Card, image: Path, name: str, extra_qemu: list[str] | None = None) -> Iterator[Booted]:
    kernel, initrd = KERNELS[load_cluster(card.cluster_file).flavour]
    files = boot_files(card, image, kernel, initrd, "cmdline.txt")
    port = free_port()
    console = card.work / f"console-{name}.log"
    ssh_config = card.work / f"ssh_config-{name}"
    ssh_config.write_text(
        f"Host 10.0.2.15\n  HostName 127.0.0.1\n  Port {port}\n  User pi\n  IdentityFile {card.key}\n"
        "  IdentitiesOnly yes\n  BatchMode yes\n  ConnectTimeout 10\n"
        "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
    )
    qemu = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "2048",
            "-nographic", "-no-reboot", "-kernel", str(files[kernel]),
            "-initrd", str(files[initrd]), "-append", card_cmdline(files["cmdline.txt"], VIRT_CONSOLE),
            "-drive", f"file={image},format=raw,if=virtio",
            "-netdev", f"user,id=lan,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            "-device", "virtio-net-pci,netdev=lan", *(extra_qemu or [])]  # fmt: skip
    with vm(qemu, console):
        running = Booted(card, port, console, ssh_config)
        wait_for_login(running)
        yield running


def keep_console(booted: Booted) -> Path:
    return keep_log(booted.console)


def keep_log(console: Path) -> Path:
    """A copy of a serial console's log that outlives the test's folders, named in its failure."""
    return Path(
        shutil.copy(console, Path(os.environ.get("TMPDIR", "/tmp")) / f"picluster-e2e-{console.name}")
    )


EMERGENCY = (b"You are in emergency mode", b"Entering emergency mode", b"root account is locked",
             b"Give root password for maintenance", b"(initramfs) ")  # fmt: skip
"""What systemd and the initramfs print when a boot ends in a shell that needs a keyboard."""


def wait_for_login(booted: Booted) -> None:
    start = time.monotonic()
    while time.monotonic() - start < BOOT_TIMEOUT:
        if booted.ssh("true").returncode == 0:
            print(f"SSH login after {time.monotonic() - start:.0f}s")
            return
        shown = booted.console.read_bytes()
        stranded = [marker.decode() for marker in EMERGENCY if marker in shown]
        if stranded:
            pytest.fail(f"the boot ended in a shell ({stranded[0]!r}); console: {keep_console(booted)}")
        time.sleep(5)
    pytest.fail(f"no SSH login within {BOOT_TIMEOUT}s; serial console kept in {keep_console(booted)}")


def agent_state_when(booted: Booted, phase: str) -> dict[str, Any]:
    """The agent's state once it reaches `phase` (it gets there after preflight and clean-links)."""
    deadline = time.monotonic() + AGENT_TIMEOUT
    while True:
        status = booted.ssh("sudo -n picluster-agent status --json")
        assert status.returncode == 0, status.stderr
        state: dict[str, Any] = json.loads(status.stdout)
        if state["phase"] == phase:
            return state
        if time.monotonic() > deadline:
            pytest.fail(
                f"agent still '{state['phase']}' after {AGENT_TIMEOUT}s; console: {keep_console(booted)}"
            )
        time.sleep(10)


def picluster_verify(booted: Booted) -> tuple[int, str]:
    """`picluster verify` as a user runs it, reaching the node through an ssh_config. No NTP
    server answers inside QEMU's restricted network, so the time check is skipped, by name."""
    done = subprocess.run(
        [sys.executable, "-m", "builder", "verify", "-f", str(booted.card.cluster_file),
         "--ssh-config", str(booted.ssh_config), "--skip", "time_synchronised"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout)
    return done.returncode, done.stdout + done.stderr
