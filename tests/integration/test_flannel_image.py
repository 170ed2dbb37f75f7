"""flannel v0.10.0's OCI image (builder/image/flannel_image.py): what skopeo reads in it, what its
layer holds, that it is the same bytes when built again, and that the real containerd imports it
under its reference."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from builder.errors import UserError
from builder.image import flannel_image
from builder.image.context import default_cache
from builder.image.flannel_image import SOURCE, FlannelImage, build_flannel_image
from builder.progress import silent
from builder.run import Runner
from builder.upstream import fetch_source, local_folder, sources
from tests.support.registry import containerd

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
ELF_AARCH64 = 183
"""e_machine of an arm64 ELF file."""
PT_INTERP = 3
"""A program header naming the dynamic loader: a static binary has none."""


def skopeo(image: FlannelImage, *options: str) -> dict[str, object]:
    shown = subprocess.run(["skopeo", "inspect", *options, f"oci-archive:{image.archive}"],
                           capture_output=True, check=True)  # fmt: skip
    found: dict[str, object] = json.loads(shown.stdout)
    return found


def archive_file(image: FlannelImage, name: str) -> bytes:
    with tarfile.open(image.archive) as archive:
        member = archive.extractfile(name)
        assert member is not None, name
        return member.read()


def layer(image: FlannelImage) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    """The image's one layer: each entry by its path, with its contents."""
    manifest = json.loads(archive_file(image, f"blobs/sha256/{image.digest.removeprefix('sha256:')}"))
    (only,) = manifest["layers"]
    data = archive_file(image, f"blobs/sha256/{only['digest'].removeprefix('sha256:')}")
    entries = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            contents = tar.extractfile(member) if member.isfile() else None
            entries[member.name.strip("/")] = (member, contents.read() if contents else b"")
    return entries


def resolve(entries: dict[str, tuple[tarfile.TarInfo, bytes]], path: str) -> str:
    """Where a path lands in the layer once its symbolic links (a parent's too) are followed."""
    parts = list(PurePosixPath(path).parts)
    done = PurePosixPath("")
    for steps in range(40):
        if not parts:
            return str(done)
        done = done / parts.pop(0)
        found = entries.get(str(done))
        if found and found[0].issym():
            target = PurePosixPath(found[0].linkname)
            parts = [*(target.parts[1:] if target.is_absolute() else target.parts), *parts]
            done = PurePosixPath("") if target.is_absolute() else done.parent
        assert steps < 39, f"{path}: too many links"
    raise AssertionError(path)


def test_the_archive_is_an_oci_image_for_arm64_that_starts_flanneld(flannel: FlannelImage) -> None:
    index = json.loads(archive_file(flannel, "index.json"))
    (described,) = index["manifests"]
    assert described["mediaType"] == OCI_MANIFEST
    assert described["digest"] == flannel.digest
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{flannel.archive}"],
                         capture_output=True, check=True).stdout  # fmt: skip
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == flannel.digest
    assert json.loads(raw)["config"]["mediaType"] == OCI_CONFIG
    config = skopeo(flannel, "--config")
    assert (config["architecture"], config["os"]) == ("arm64", "linux")
    assert config["config"] == {
        "Entrypoint": ["/opt/bin/flanneld"],
        "Env": list(flannel_image.ENV),
    }
    assert flannel.reference == "localhost/picluster/flannel:v0.10.0-arm64"


def test_the_layer_holds_a_static_arm64_flanneld_and_the_tools_it_runs(
    flannel: FlannelImage, tmp_path: Path
) -> None:
    entries = layer(flannel)
    member, binary = entries["opt/bin/flanneld"]
    assert member.mode & 0o111 and binary[:4] == b"\x7fELF"
    assert int.from_bytes(binary[18:20], "little") == ELF_AARCH64
    program_headers, size, count = (int.from_bytes(binary[at : at + n], "little")
                                    for at, n in ((32, 8), (54, 2), (56, 2)))  # fmt: skip
    kinds = [int.from_bytes(binary[program_headers + i * size :][:4], "little") for i in range(count)]
    assert PT_INTERP not in kinds, "flanneld is linked dynamically"
    (tmp_path / "flanneld").write_bytes(binary)
    (tmp_path / "flanneld").chmod(0o755)
    version = subprocess.run(["qemu-aarch64-static", tmp_path / "flanneld", "--version"],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert (version.stdout + version.stderr).strip() == "v0.10.0"
    assert entries["opt/bin/mk-docker-opts.sh"][0].mode & 0o111
    archive = fetch_source(sources()[SOURCE], local_folder(), default_cache())
    with tarfile.open(archive) as source:
        (script,) = (member for member in source if member.name.endswith("/dist/mk-docker-opts.sh"))
        assert entries["opt/bin/mk-docker-opts.sh"][1] == source.extractfile(script).read()  # type: ignore[union-attr]
    assert resolve(entries, "usr/sbin/iptables") == "usr/sbin/xtables-nft-multi"
    for program in ("ip", "cp", "update-ca-certificates", "ifconfig"):
        assert any(f"{folder}/{program}".lstrip("/") in entries for folder in ("/usr/bin", "/usr/sbin")), (
            program
        )
    assert "etc/ssl/certs/ca-certificates.crt" in entries
    assert not [
        name
        for name in entries
        if name.startswith(
            ("usr/share/man/", "usr/lib/aarch64-linux-gnu/gconv/", "var/lib/apt/", "var/log/", "dev/")
        )
    ]


def test_built_again_from_nothing_it_is_the_same_bytes(flannel: FlannelImage, tmp_path: Path) -> None:
    again = build_flannel_image(tmp_path / "cache", Runner(), silent())
    assert again.digest == flannel.digest
    assert again.archive.read_bytes() == flannel.archive.read_bytes()


def test_containerd_imports_it_under_its_reference(flannel: FlannelImage) -> None:
    with containerd() as runtime:
        runtime.ctr("images", "import", "--platform", "linux/arm64", str(flannel.archive))
        assert runtime.images() == {flannel.reference: flannel.digest}


def test_a_wrong_source_archive_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = tmp_path / "upstream" / "flannel-v0.10.0.tar.gz"
    wrong.parent.mkdir()
    (tmp_path / "flannel-0.10.0").mkdir()
    (tmp_path / "flannel-0.10.0/README.md").write_text("not flannel's tree\n")
    with tarfile.open(wrong, "w:gz") as tar:
        tar.add(tmp_path / "flannel-0.10.0", "flannel-0.10.0")
    monkeypatch.setenv("PICLUSTER_UPSTREAM", str(wrong.parent))
    with pytest.raises(UserError) as refused:
        build_flannel_image(tmp_path / "cache", Runner(), silent())
    assert str(wrong) in refused.value.message
    assert "flannel-v0.10.0" in refused.value.message and refused.value.hint
    assert not list((tmp_path / "cache").glob("flannel-image/*/image.json"))
