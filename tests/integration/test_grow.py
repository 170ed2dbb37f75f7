"""Growing the cluster: bootstrap tokens, the admin kubeconfig and `picluster status`, against
a stand-in API server (tests/integration/api_standin.py) on a LAN of the test's own."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cryptography import x509

from builder.cli import main
from builder.project import Project
from builder.secrets import store
from builder.secrets.tokens import TOKENS_FILE
from builder.spec.load import load_cluster
from tests.conftest import BUNDLED, FIXED_TOKEN, fixed_secrets
from tests.integration.api_standin import BUILDER, APIStandin, api_standin
from tests.integration.conftest import TINY_EPOCH, mounted, publish_tiny_base

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lan")]

OLD_TOKEN = FIXED_TOKEN


@pytest.fixture
def api(tmp_path: Path, lan: ipaddress.IPv4Address) -> Iterator[APIStandin]:
    with api_standin(fixed_secrets(), tmp_path, lan) as server:
        yield server


def project(tmp_path: Path, endpoint: str, token_age: timedelta) -> Path:
    """A cluster.yaml whose three nodes were built `token_age` ago, with its .picluster/."""
    folder = tmp_path / "project"
    folder.mkdir()
    data = yaml.safe_load(BUNDLED.read_text())
    data["cluster"]["control_plane_endpoint"] = endpoint
    (folder / "cluster.yaml").write_text(yaml.safe_dump(data))
    store.save(folder / ".picluster", fixed_secrets())
    issued = datetime.now(UTC) - token_age
    record = {
        "current": OLD_TOKEN,
        "issued_at": issued.isoformat(),
        "nodes": dict.fromkeys(["cp1", "w1", "w2"], OLD_TOKEN),
    }
    (folder / ".picluster" / TOKENS_FILE).write_text(json.dumps(record))
    return folder / "cluster.yaml"


def add_node(cluster_file: Path, name: str = "w3", address: str = "192.168.50.23/24") -> None:
    data = yaml.safe_load(cluster_file.read_text())
    data["nodes"].append({"name": name, "role": "worker", "model": "pi4", "address": address})
    cluster_file.write_text(yaml.safe_dump(data))


def join_token(out: Path, node: str) -> str:
    documents = yaml.safe_load_all((out / node / "root/etc/picluster/kubeadm.yaml").read_text())
    join = next(d for d in documents if d["kind"] == "JoinConfiguration")
    token: str = join["discovery"]["bootstrapToken"]["token"]
    return token


def created_token(api: APIStandin) -> str:
    """The one token the stand-in was asked to create."""
    (secret,) = api.created
    return f"{secret['stringData']['token-id']}.{secret['stringData']['token-secret']}"


def render(cluster_file: Path, out: Path) -> int:
    return main(["render", "-f", str(cluster_file), "-o", str(out)])


def test_picluster_token_creates_the_secret_kubeadm_would(tmp_path: Path, api: APIStandin) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(hours=1))
    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["token", "-f", str(cluster_file)]) == 0
    (secret,) = api.created
    recorded = json.loads((cluster_file.parent / ".picluster" / TOKENS_FILE).read_text())
    token_id, token_secret = recorded["current"].split(".")
    assert secret["metadata"] == {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"}
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == (
        "v1",
        "Secret",
        "bootstrap.kubernetes.io/token",
    )
    data = secret["stringData"]
    assert set(data) == {
        "description", "token-id", "token-secret", "expiration",
        "usage-bootstrap-authentication", "usage-bootstrap-signing", "auth-extra-groups",
    }  # fmt: skip
    assert (data["token-id"], data["token-secret"]) == (token_id, token_secret)
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == "system:bootstrappers:kubeadm:default-node-token"
    expiration = datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(hours=24) <= expiration <= datetime.now(UTC) + timedelta(hours=24)
    assert api.clients == ["organizationName=system:masters,commonName=picluster-admin"]
    assert recorded["nodes"] == dict.fromkeys(["cp1", "w1", "w2"], OLD_TOKEN)  # built cards keep theirs


def test_the_standin_refuses_a_client_without_the_cluster_certificate(
    api: APIStandin, tmp_path: Path
) -> None:
    (tmp_path / "ca.crt").write_bytes(fixed_secrets().ca.public_pem)
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(f"https://{api.endpoint}/api/v1/nodes", verify=str(tmp_path / "ca.crt"), timeout=5)
    assert api.clients == []


def grow(cluster_file: Path, out: Path) -> int:
    """What `picluster build` does for the tokens before it builds (Project.tokens_to_build), then
    a render of the cards with the tokens that recorded."""
    project = Project.open(cluster_file)
    project.tokens_to_build(project.existing_secrets("build"), print)
    return render(cluster_file, out)


def test_render_neither_asks_the_cluster_nor_records_a_token(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(days=3))  # build would make a new token
    record = cluster_file.parent / ".picluster" / TOKENS_FILE
    before = (record.read_bytes(), record.stat().st_mtime_ns)
    add_node(cluster_file)
    assert render(cluster_file, tmp_path / "after") == 0
    assert (api.clients, api.created) == ([], [])
    assert (record.read_bytes(), record.stat().st_mtime_ns) == before
    assert join_token(tmp_path / "after", "w3") == OLD_TOKEN  # the current one, shown
    error = capsys.readouterr().err
    assert "w3: shown with bootstrap token abcdef; `picluster build` asks the cluster" in error


def test_a_node_added_gets_the_current_token_while_the_cluster_honours_it_and_no_other_card_changes(
    tmp_path: Path, api: APIStandin
) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(hours=2))
    api.add_token(OLD_TOKEN, (datetime.now(UTC) + timedelta(hours=22)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert grow(cluster_file, tmp_path / "before") == 0
    assert api.clients == []  # nothing new: nothing asked
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w3") == OLD_TOKEN
    assert len(api.clients) == 1 and api.created == []
    for node in ("cp1", "w1", "w2"):
        assert tree(tmp_path / "before" / node) == tree(tmp_path / "after" / node)


def test_a_young_token_the_cluster_does_not_know_is_replaced(tmp_path: Path, api: APIStandin) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(hours=2))  # e.g. deleted by an admin
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w3") == created_token(api)


def test_unreachable_cluster_with_a_young_token_goes_on_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, f"{BUILDER}:9", timedelta(hours=2))
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w3") == OLD_TOKEN
    assert "the API server did not answer" in capsys.readouterr().out


def test_a_node_added_after_the_token_expired_gets_a_new_one_made_on_the_cluster(
    tmp_path: Path, api: APIStandin
) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(days=3))
    assert grow(cluster_file, tmp_path / "before") == 0  # nothing new: nothing asked
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w3") == created_token(api) != OLD_TOKEN
    for node in ("cp1", "w1", "w2"):
        assert tree(tmp_path / "before" / node) == tree(tmp_path / "after" / node)


def test_a_token_the_cluster_still_honours_is_kept(tmp_path: Path, api: APIStandin) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(days=3))
    later = (datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    api.add_token(OLD_TOKEN, later)  # e.g. made with a longer ttl by hand
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert api.created == []
    assert join_token(tmp_path / "after", "w3") == OLD_TOKEN


def test_unreachable_cluster_with_an_expired_token_builds_no_card(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, f"{BUILDER}:9", timedelta(days=3))
    add_node(cluster_file)
    images = tmp_path / "images"
    build = ["build", "-f", str(cluster_file), "-o", str(images), "--cache", str(tmp_path / "cache")]
    assert main(build) == 2
    error = capsys.readouterr().err
    assert "w3 would join with bootstrap token abcdef, made 72 h ago, past its 24 h lifetime" in error
    assert f"https://{BUILDER}:9" in error and "no card that could not join was written" in error
    assert OLD_TOKEN not in error  # the token id is not secret; the whole token is
    assert not images.exists() or not any(images.iterdir()), "no image was written"


@pytest.fixture
def built(tmp_path: Path, api: APIStandin, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A project whose three images were built (on the stand-in base) with a three-day-old
    token; returns cluster.yaml and the build command line."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))
    cluster_file = project(tmp_path, api.endpoint, timedelta(days=3))
    cache = tmp_path / "cache"
    publish_tiny_base(load_cluster(cluster_file), cache)
    build = ["build", "-f", str(cluster_file), "-o", str(tmp_path / "images"), "--cache", str(cache)]
    assert main(build) == 0
    return cluster_file, build


def test_build_after_adding_a_node_builds_only_that_node(
    built: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, build = built
    images = tmp_path / "images"
    before = {path.name: path.stat().st_mtime_ns for path in images.glob("*.img")}
    add_node(cluster_file)
    assert main(build) == 0
    after = {path.name: path.stat().st_mtime_ns for path in images.glob("*.img")}
    assert set(after) == {"cp1.img", "w1.img", "w2.img", "w3.img"}
    assert {name: after[name] for name in before} == before
    assert "made bootstrap token" in capsys.readouterr().out


def test_kubeconfig_holds_an_admin_certificate_from_the_cluster_ca(tmp_path: Path, api: APIStandin) -> None:
    cluster_file = project(tmp_path, api.endpoint, timedelta(hours=1))
    out = tmp_path / "admin.conf"
    assert main(["kubeconfig", "-f", str(cluster_file), "-o", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(out.read_text())
    assert config["clusters"][0]["cluster"]["server"] == f"https://{api.endpoint}"
    user = config["users"][0]["user"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    ca = x509.load_pem_x509_certificate(fixed_secrets().ca.public_pem)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == "CN=picluster-admin,O=system:masters"
    (tmp_path / "c.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
    (tmp_path / "c.key").write_bytes(base64.b64decode(user["client-key-data"]))
    (tmp_path / "ca.crt").write_bytes(
        base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    )
    answer = requests.get(f"https://{api.endpoint}/api/v1/nodes", verify=str(tmp_path / "ca.crt"),
                          cert=(str(tmp_path / "c.crt"), str(tmp_path / "c.key")), timeout=5)  # fmt: skip
    assert answer.status_code == 200


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, to fill."""
    with mounted(tmp_path / "small", "-t", "tmpfs", "-o", "size=256k", "tmpfs") as folder:
        yield folder


def test_kubeconfig_on_a_full_disk_leaves_the_previous_file(
    tmp_path: Path, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, "192.168.50.10:6443", timedelta(hours=1))
    out = small_disk / "admin.conf"
    command = ["kubeconfig", "-f", str(cluster_file), "-o", str(out)]
    assert main(command) == 0
    before = out.read_bytes()
    with (small_disk / "filler").open("wb", buffering=0) as filler, contextlib.suppress(OSError):
        while True:
            filler.write(bytes(4096))
    capsys.readouterr()
    for argv in (command, [*command, "--merge"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(f"error: cannot write {out}: No space left on device") and "Traceback" not in err
        )
        assert len(err.splitlines()) <= 3
        assert out.read_bytes() == before
        assert sorted(path.name for path in small_disk.iterdir()) == ["admin.conf", "filler"]


def node_item(name: str, ready: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {"kubeletVersion": "v1.34.2"},
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        },
    }


def test_status_shows_images_and_the_clusters_view(
    built: tuple[Path, list[str]], tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file, _ = built
    images = tmp_path / "images"
    api.nodes = [node_item("cp1", "True", "192.168.50.10"), node_item("w1", "False", "192.168.50.21"),
                 node_item("old-pi", "Unknown", "192.168.50.99")]  # fmt: skip
    data = yaml.safe_load(cluster_file.read_text())
    data["timezone"] = "Europe/Paris"  # every card changes
    data["nodes"].append({"name": "w3", "role": "worker", "model": "pi4", "address": "192.168.50.23/24"})
    cluster_file.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["status", "-f", str(cluster_file), "-i", str(images), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    nodes = {node["name"]: node for node in report["nodes"]}
    assert (nodes["cp1"]["image"], nodes["cp1"]["ready"], nodes["cp1"]["internal_ip"]) == (
        "stale",
        "True",
        "192.168.50.10",
    )
    assert "root/etc/localtime" in nodes["cp1"]["why"][0] and "root/etc/timezone" in nodes["cp1"]["why"][0]
    assert (nodes["w1"]["ready"], nodes["w1"]["kubelet"]) == ("False", "v1.34.2")
    assert (nodes["w2"]["ready"], nodes["w3"]["image"], nodes["w3"]["ready"]) == (
        "not joined",
        "missing",
        "not joined",
    )
    assert nodes["old-pi"]["image"] == "not in cluster.yaml"
    assert report["cluster"] == f"cluster: https://{api.endpoint} answered"


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
