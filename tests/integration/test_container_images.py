"""`images: card` against the real programs: Debian's docker-registry on 127.0.0.1 serving small
arm64 OCI images made here (the kube images cannot be fetched on this machine), the real skopeo
fetching them into the cache and `picluster build` writing them onto the cards, and the real
containerd importing an archive read back from a card."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builder.errors import UserError
from builder.image import container_images
from builder.image.build import build_images
from builder.image.context import BuildContext
from builder.progress import silent
from builder.render.images import node_images
from builder.run import Runner
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.agent import (
    calls,
    install_standins,
    kube_calls,
    node_root,
    run_agent,
    run_until_phase,
    state,
)
from tests.support.host import TINY_EPOCH, publish_flannel_image, publish_tiny_base
from tests.support.project import BUNDLED, fixed_secrets
from tests.support.registry import Registry, containerd, registry

pytestmark = pytest.mark.integration

CARD_FOLDER = "var/lib/picluster/images"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, dict[str, str]]]:
    """The registry, holding an image for every reference the bundled cluster's nodes run, each
    under its path without the registry's host; and each reference's digest there."""
    folder = tmp_path_factory.mktemp("registry")
    with registry(folder) as served:
        cluster = card_cluster(served)
        digests = served.push_stand_ins(
            (ref for node in cluster.nodes for ref in wanted(cluster, node.name)), folder
        )
        yield served, digests


def card_cluster(served: Registry) -> Cluster:
    bundled = load_cluster(BUNDLED)
    settings = bundled.cluster.model_copy(update={"images": "card", "image_mirror": served.url})
    return bundled.model_copy(update={"cluster": settings})


def wanted(cluster: Cluster, node: str) -> tuple[str, ...]:
    (found,) = (n for n in cluster.nodes if n.name == node)
    return node_images(cluster, found).references


def build(cluster: Cluster, images: Path, cache: Path) -> list[str]:
    return build_images(cluster, fixed_secrets(), {}, BuildContext(images, cache, silent(), Runner()))


def card_file(image: Path, path: str, out: Path) -> bytes:
    """A file on a card's root filesystem, read back with debugfs."""
    subprocess.run(
        ["debugfs", "-R", f"dump /{path} {out}", f"{image}?offset={260 * 2**20}"],
        capture_output=True,
        check=True,
    )
    return out.read_bytes()


@pytest.fixture(autouse=True)
def _pinned_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))


def test_each_card_carries_its_nodes_images_as_the_registry_served_them(
    tmp_path: Path, served: tuple[Registry, dict[str, str]]
) -> None:
    """And flannel's as picluster made it, which no registry serves."""
    mirror, served_digests = served
    cluster = card_cluster(mirror)
    cache = tmp_path / "cache"
    publish_tiny_base(cluster, cache)
    flannel = publish_flannel_image(cache)
    digests = {**served_digests, flannel.reference: flannel.digest}
    assert build(cluster, tmp_path / "images", cache) == ["cp1", "w1", "w2"]
    for node in ("cp1", "w1"):
        image = tmp_path / "images" / f"{node}.img"
        index = json.loads(card_file(image, f"{CARD_FOLDER}/index.json", tmp_path / f"{node}-index.json"))
        carried = {entry["reference"]: entry for entry in index["images"]}
        assert sorted(carried) == sorted(wanted(cluster, node))
        for reference, entry in carried.items():
            assert entry["digest"] == digests[reference], f"{node}: {reference} as the registry served it"
            archive = card_file(image, f"{CARD_FOLDER}/{entry['archive']}", tmp_path / "archive.tar")
            cached = cache / "container-images" / f"{digests[reference].replace(':', '-')}-arm64.tar"
            expected = flannel.archive if reference == flannel.reference else cached
            assert archive == expected.read_bytes(), f"{node}: {reference}"
        if node == "w1":
            assert not [ref for ref in carried if "apiserver" in ref or "etcd" in ref], "no control plane"
    manifest = card_file(
        tmp_path / "images/cp1.img", "etc/picluster/kube-flannel.yml", tmp_path / "kube-flannel.yml"
    )
    assert manifest.count(f"image: {flannel.reference}@{flannel.digest}\n".encode()) == 2, "pinned by digest"


def test_the_real_containerd_imports_a_cards_archive_under_its_name_and_digest(
    tmp_path: Path, served: tuple[Registry, dict[str, str]]
) -> None:
    mirror, digests = served
    cluster = card_cluster(mirror)
    context = BuildContext(tmp_path / "images", tmp_path / "cache", silent(), Runner())
    reference = next(ref for ref in wanted(cluster, "w1") if "kube-proxy" in ref)
    fetched = container_images.fetch_images([reference], mirror.url, context)[reference]
    with containerd() as runtime:
        runtime.ctr("images", "import", "--platform", "linux/arm64", str(fetched.archive))
        assert runtime.images() == {reference: digests[reference]}


def test_the_same_image_gives_the_same_archive_bytes(
    tmp_path: Path, served: tuple[Registry, dict[str, str]]
) -> None:
    mirror, _ = served
    reference = wanted(card_cluster(mirror), "w1")[0]
    made = []
    for name in ("one", "two"):
        context = BuildContext(tmp_path / "images", tmp_path / name, silent(), Runner())
        archive = container_images.fetch_images([reference], mirror.url, context)[reference].archive
        made.append(hashlib.sha256(archive.read_bytes()).hexdigest())
        with tarfile.open(archive) as tar:
            assert {(m.mtime, m.uid, m.gid, m.uname) for m in tar} == {(0, 0, 0, "")}, (
                "fixed times and owners"
            )
    assert made[0] == made[1]


def test_an_image_the_registry_lacks_fails_the_build_naming_it(
    tmp_path: Path, served: tuple[Registry, dict[str, str]]
) -> None:
    mirror, _ = served
    cluster = card_cluster(mirror)
    settings = cluster.cluster.model_copy(update={"kubernetes": "1.34.1"})  # etcd:3.6.4-0 is not there
    cluster = cluster.model_copy(update={"cluster": settings})
    cache = tmp_path / "cache"
    publish_tiny_base(cluster, cache)
    with pytest.raises(UserError) as raised:
        build(cluster, tmp_path / "images", cache)
    assert raised.value.message.startswith(
        f"container image registry.k8s.io/etcd:3.6.4-0 could not be fetched from {mirror.host}/etcd:3.6.4-0:"
    )
    assert raised.value.message.endswith("manifest unknown: manifest unknown")
    assert not list((tmp_path / "images").glob("*.img")), "no card is written"


def test_a_blob_that_does_not_match_its_digest_fails_the_build_naming_the_image(
    tmp_path: Path, served: tuple[Registry, dict[str, str]]
) -> None:
    mirror, _ = served
    reference = wanted(card_cluster(mirror), "w1")[-1]
    where = f"docker://{mirror.host}/{reference.split('/', 1)[1]}"
    manifest = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--raw", "--tls-verify=false", where], capture_output=True, check=True
        ).stdout
    )
    layer = manifest["layers"][0]["digest"].split(":")[1]
    stored = mirror.storage / "docker/registry/v2/blobs/sha256" / layer[:2] / layer / "data"
    original = stored.read_bytes()
    stored.write_bytes(original[:-4] + bytes(4))
    try:
        context = BuildContext(tmp_path / "images", tmp_path / "cache", silent(), Runner())
        with pytest.raises(UserError) as raised:
            container_images.fetch_images([reference], mirror.url, context)
    finally:
        stored.write_bytes(original)
    print(raised.value.message)
    assert reference in raised.value.message
    assert "did not match" in raised.value.message.lower() or "digest" in raised.value.message
    assert not list((tmp_path / "cache/container-images").glob("*.tar")), "nothing half-fetched is kept"


def card_with_images(
    tmp_path: Path, node: str, mirror: Registry, packages: dict[str, str] | None = None
) -> tuple[Path, list[str]]:
    """A node root whose card carries its images, fetched from the registry as build does."""
    root = node_root(tmp_path, node, packages=packages or {"install": "image"})
    listed = json.loads((root / "etc/picluster/node.json").read_text())["images"]
    context = BuildContext(tmp_path / "images", tmp_path / "cache", silent(), Runner())
    fetched = container_images.fetch_images(listed, mirror.url, context)
    for entry in container_images.card_files(fetched.values()):
        target = root / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(entry.data if entry.source is None else entry.source.read_bytes())
    return root, listed


def test_the_agent_imports_the_cards_images_into_the_real_containerd_and_pulls_nothing(
    tmp_path: Path, served: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror, digests = served
    root, listed = card_with_images(tmp_path, "cp1", mirror)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    with containerd() as runtime:
        monkeypatch.setenv("CONTAINERD_ADDRESS", str(runtime.socket))  # ctr's; crictl is a stand-in
        done = run_agent(root, standins, "join")
        assert done.returncode == 0, done.stdout + done.stderr
        assert runtime.images() == {reference: digests[reference] for reference in listed}
    assert not [call for call in calls(standins) if call[0] == "crictl" and call[3] == "pull"]
    assert [call[:2] for call in kube_calls(standins) if call[0] == "kubeadm"] == [["kubeadm", "init"]]
    recorded = state(root)["images"]
    assert recorded == [{"image": ref, "status": "imported", "digest": digests[ref]} for ref in listed]
    assert (
        f"images:      0 present, {len(listed)} imported, 0 pulled"
        in run_agent(root, standins, "status").stdout
    )


def test_an_archive_that_is_not_what_the_card_recorded_is_not_run_and_the_agent_says_why(
    tmp_path: Path, served: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror, digests = served
    root, _ = card_with_images(tmp_path, "w1", mirror)
    index = root / CARD_FOLDER / "index.json"
    recorded_index = json.loads(index.read_text())
    recorded_index["images"][0]["digest"] = "sha256:" + "0" * 64  # as a damaged card would say
    index.write_text(json.dumps(recorded_index))
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    with containerd() as runtime:
        monkeypatch.setenv("CONTAINERD_ADDRESS", str(runtime.socket))
        recorded = run_until_phase(root, standins, "waiting: images", says="waiting: images")
    first = recorded_index["images"][0]["reference"]
    assert recorded["last_error"].startswith(f"importing {first}: ")
    assert f"containerd holds {digests[first]} for {first}" in recorded["last_error"]
    assert (
        "the card is damaged; build the node's image again (picluster build) and flash it"
        in recorded["last_error"]
    )
    assert kube_calls(standins) == [], "kubeadm waits for the images"


def test_the_images_are_imported_before_the_packages_so_a_node_offline_has_them(
    tmp_path: Path, served: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror, digests = served
    unreachable = {"install": "firstboot", "apt_repository": "https://127.0.0.1:9/"}
    root, listed = card_with_images(tmp_path, "cp1", mirror, unreachable)
    standins = install_standins(tmp_path / "bin")  # no kubeadm, kubelet or kubectl: not installed
    with containerd() as runtime:
        monkeypatch.setenv("CONTAINERD_ADDRESS", str(runtime.socket))
        recorded = run_until_phase(root, standins, "waiting: packages", says="waiting: packages")
        assert runtime.images() == {reference: digests[reference] for reference in listed}
    assert [entry["status"] for entry in recorded["images"]] == ["imported"] * len(listed)


def test_a_card_that_pulls_its_images_still_carries_flannels(tmp_path: Path) -> None:
    """images: pull: no node ever pulls flannel's image (upstream's is schema 1): every card
    carries the one picluster made, and the manifest pins its digest."""
    cluster = load_cluster(BUNDLED)
    cache = tmp_path / "cache"
    publish_tiny_base(cluster, cache)
    flannel = publish_flannel_image(cache)
    build(cluster, tmp_path / "images", cache)
    for node in ("cp1", "w2"):
        image = tmp_path / "images" / f"{node}.img"
        index = json.loads(card_file(image, f"{CARD_FOLDER}/index.json", tmp_path / f"{node}-index.json"))
        (entry,) = index["images"]
        assert (entry["reference"], entry["digest"]) == (flannel.reference, flannel.digest)
        archive = card_file(image, f"{CARD_FOLDER}/{entry['archive']}", tmp_path / "archive.tar")
        assert archive == flannel.archive.read_bytes()
