"""Container images on the card (cluster.images: card): every image a node runs, fetched for
linux/arm64 with skopeo, cached by the registry's digest, and written onto the card as OCI
archives with an index the agent imports them from (agent/config.py CARD_IMAGES).

skopeo (Debian's, containers/image underneath) speaks the registry protocol, picks the arm64
image out of a multi-platform list, checks every manifest and blob against its digest, and writes
an OCI image layout (converting a Docker manifest to OCI where the registry serves one). Each
image is fetched by the digest the registry named for its tag a moment before, so what is cached
is exactly what that digest names; the cache holds one archive per digest and platform, packed
with GNU tar in a fixed order with fixed times and owners, so the same image gives the same bytes
on every card. containerd's `ctr images import` reads such an archive and names the image by the
index's org.opencontainers.image.ref.name when that is a full reference (containerd
core/images/archive/reference.go, refTranslator), which skopeo writes from the destination name.
"""

from __future__ import annotations

import json
import re
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from builder.errors import UserError
from builder.image.context import BuildContext
from builder.render.plan import FileEntry
from builder.resources import agent_module
from builder.run import CommandError

ARCH = "arm64"
OS = "linux"
CACHE_FOLDER = "container-images"
ROOM_MIB = 512
"""Free space a base built for `images: card` keeps on its root filesystem for the archives,
besides its usual headroom (the build says what each card carries). Each MiB of it costs every
build the time to hash it, as zeros, in each node's image."""


@dataclass(frozen=True)
class CarriedImage:
    reference: str
    """The name the node knows it by."""
    digest: str
    """Its arm64 image manifest's digest in the archive: what containerd lists once imported."""
    archive: Path
    """The cached OCI archive (fetched here, or flannel's, made by builder.image.flannel_image)."""

    @property
    def card_name(self) -> str:
        return f"{self.digest.replace(':', '-')}.tar"


def source(reference: str, mirror: str | None) -> tuple[str, bool]:
    """Where skopeo fetches a reference from, and whether it checks TLS: the reference itself, or
    the same path under the mirror (registry.k8s.io/etcd:3.6.4-0 -> MIRROR/etcd:3.6.4-0)."""
    if mirror is None:
        return reference, True
    scheme, _, host = mirror.partition("://")
    return f"{host.rstrip('/')}/{reference.split('/', 1)[1]}", scheme == "https"


def fetch_images(
    references: Iterable[str], mirror: str | None, context: BuildContext
) -> dict[str, CarriedImage]:
    """Every reference's arm64 image, from the cache or the registry; raises UserError naming the
    image that could not be fetched or did not match its digest."""
    wanted = sorted(set(references))
    folder = context.cache / CACHE_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    fetched = {}
    context.reporter.say(f"==> container images for the cards ({len(wanted)}, {OS}/{ARCH})")
    for index, reference in enumerate(wanted, 1):
        start = time.monotonic()
        where, tls = source(reference, mirror)
        try:
            registry_digest = _registry_digest(reference, where, tls, context)
            archive = folder / f"{registry_digest.replace(':', '-')}-{ARCH}.tar"
            how = "cached"
            if not archive.exists():
                _fetch(reference, f"{where.rsplit(':', 1)[0]}@{registry_digest}", tls, archive, context)
                how = "fetched"
        except CommandError as error:
            raise UserError(
                f"container image {reference} could not be fetched from {where}:\n    {_tail(error)}",
                "check cluster.image_mirror and that the registry serves this image for linux/arm64, "
                "or set cluster.images: pull (the nodes then pull on first boot)",
            ) from None
        fetched[reference] = CarriedImage(reference, archive_digest(archive), archive)
        size = archive.stat().st_size / 2**20
        context.reporter.item(
            index, len(wanted), f"{reference}: {how} ({size:.1f} MiB) in {time.monotonic() - start:.1f}s"
        )
    return fetched


def card_files(images: Iterable[CarriedImage]) -> tuple[FileEntry, ...]:
    """The archives and the index that names them, as files on the card's root."""
    config = agent_module("config")
    folder = PurePosixPath(str(config.CARD_IMAGES).lstrip("/"))
    chosen = sorted(images, key=lambda image: image.reference)
    index = config.card_images_json(
        tuple(config.CardImage(image.reference, image.digest, image.card_name) for image in chosen)
    )
    return (
        *(FileEntry("root", folder / image.card_name, source=image.archive) for image in chosen),
        FileEntry("root", folder / config.CARD_IMAGES_INDEX, index),
    )


def archive_digest(archive: Path) -> str:
    """The digest of the one image manifest an archive's index names."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, archive
        (manifest,) = json.load(member)["manifests"]
    return str(manifest["digest"])


def _registry_digest(reference: str, where: str, tls: bool, context: BuildContext) -> str:
    """The digest the registry names for the tag now, having checked that it has an arm64 image."""
    found = context.runner.run(
        ["skopeo", "inspect", f"--tls-verify={str(tls).lower()}", "--override-os", OS,
         "--override-arch", ARCH, "--format", "{{.Digest}} {{.Os}}/{{.Architecture}}", f"docker://{where}"],
    ).split()  # fmt: skip
    if found[1:] != [f"{OS}/{ARCH}"]:
        raise UserError(
            f"container image {reference} at {where} is built for {found[1:]}, not {OS}/{ARCH}",
            "the cards run arm64: use an image (or a mirror of one) published for linux/arm64",
        )
    return found[0]


def _fetch(reference: str, pinned: str, tls: bool, archive: Path, context: BuildContext) -> None:
    """Copy the image into an OCI layout, then pack it into the cache under its final name."""
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".fetch-") as work:
        layout = Path(work) / "layout"
        context.runner.run(
            ["skopeo", "copy", "--quiet", f"--src-tls-verify={str(tls).lower()}", "--override-os", OS,
             "--override-arch", ARCH, f"docker://{pinned}", f"oci:{layout}:{reference}"],
        )  # fmt: skip
        packed = Path(work) / "image.tar"
        context.runner.run(
            ["tar", "--create", "--file", packed, "--sort=name", "--mtime=@0", "--owner=0", "--group=0",
             "--numeric-owner", "--mode=a+rX,u+w,go-w", "--format=gnu", "-C", layout,
             "index.json", "oci-layout", "blobs"],
        )  # fmt: skip
        packed.rename(archive)


def _tail(error: CommandError) -> str:
    """skopeo's last word, without its log line's time and level."""
    lines = error.output.strip().splitlines()
    if not lines:
        return f"status {error.status}"
    logged = re.fullmatch(r'time=".*" level=\w+ msg="(.*)"', lines[-1])
    return logged[1].replace('\\"', '"') if logged else lines[-1]
