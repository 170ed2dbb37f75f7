"""Growing the cluster: bootstrap tokens, the admin kubeconfig and `picluster status`, against
a stand-in API server (tests/support/api_standin.py) on a LAN of the test's own."""

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
from builder.secrets.tokens import TOKENS_FILE
from builder.spec.load import load_cluster
from tests.support.api_standin import BUILDER, APIStandin, api_standin
from tests.support.built_project import OLD_TOKEN, node_item, project
from tests.support.host import TINY_EPOCH, mounted, publish_tiny_base
from tests.support.project import fixed_secrets

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("lan")]

OWN_TOKENS = {
    "cp1": "cp1aaa.0123456789abcdef",
    "w1": "w1aaaa.0123456789abcdef",
    "w2": "w2aaaa.0123456789abcdef",
}


@pytest.fixture
def api(tmp_path: Path, lan: ipaddress.IPv4Address) -> Iterator[APIStandin]:
    with api_standin(fixed_secrets(), tmp_path, lan) as server:
        yield server


def nobody_listens() -> str:
    """An endpoint cluster.yaml accepts where nothing answers."""
    return f"{BUILDER}:9"


def per_node_record() -> dict[str, Any]:
    return {"nodes": OWN_TOKENS, "at_init": [OWN_TOKENS["w1"], OWN_TOKENS["w2"]]}


def recorded(cluster_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((cluster_file.parent / ".picluster" / TOKENS_FILE).read_text())
    return data


def expires_in(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def joined(api: APIStandin, *names: str) -> None:
    api.nodes = [node_item(name, "True", "192.168.50.1") for name in names]


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


def test_picluster_token_makes_one_node_the_secret_kubeadm_would(tmp_path: Path, api: APIStandin) -> None:
    cluster_file = project(tmp_path, api.endpoint)
    before = datetime.now(UTC).replace(microsecond=0)
    assert main(["token", "-f", str(cluster_file), "w1"]) == 0
    (secret,) = api.created
    token_id, token_secret = recorded(cluster_file)["nodes"]["w1"].split(".")
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
    assert data["description"] == "picluster: lets w1 join"
    expiration = datetime.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before + timedelta(days=90) <= expiration <= datetime.now(UTC) + timedelta(days=90)
    assert api.clients == ["organizationName=system:masters,commonName=picluster-admin"]
    # the other cards keep theirs, and the shared token they still carry stays on the cluster
    assert recorded(cluster_file)["nodes"] == {
        "cp1": OLD_TOKEN,
        "w1": f"{token_id}.{token_secret}",
        "w2": OLD_TOKEN,
    }
    assert api.deleted == []


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
    cluster_file = project(tmp_path, api.endpoint)  # build would make tokens
    record = cluster_file.parent / ".picluster" / TOKENS_FILE
    before = (record.read_bytes(), record.stat().st_mtime_ns)
    add_node(cluster_file)
    assert render(cluster_file, tmp_path / "after") == 0
    assert (api.clients, api.created) == ([], [])
    assert (record.read_bytes(), record.stat().st_mtime_ns) == before
    assert join_token(tmp_path / "after", "w1") == OLD_TOKEN
    error = capsys.readouterr().err
    assert (
        "w3: shown with a stand-in bootstrap token; `picluster build` makes its own on the cluster" in error
    )


def test_a_node_added_gets_its_own_token_made_on_the_cluster_and_no_other_card_changes(
    tmp_path: Path, api: APIStandin
) -> None:
    cluster_file = project(tmp_path, api.endpoint)  # a record from before per-node tokens still loads
    joined(api, "cp1", "w1", "w2")
    assert grow(cluster_file, tmp_path / "before") == 0
    add_node(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w3") == created_token(api) != OLD_TOKEN
    assert api.created[0]["stringData"]["description"] == "picluster: lets w3 join"
    for node in ("cp1", "w1", "w2"):
        assert tree(tmp_path / "before" / node) == tree(tmp_path / "after" / node)
    record = recorded(cluster_file)
    assert record["nodes"] == {"cp1": OLD_TOKEN, "w1": OLD_TOKEN, "w2": OLD_TOKEN, "w3": created_token(api)}
    assert record["at_init"] == [OLD_TOKEN]  # the first control plane's card, as it was built
    assert datetime.fromisoformat(record["recheck_at"]) > datetime.now(UTC) + timedelta(days=89)  # w3's


def test_a_card_not_joined_whose_token_the_cluster_lost_gets_a_new_one_a_joined_node_keeps_its_own(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, api.endpoint, per_node_record())
    joined(api, "cp1", "w1")  # w1's token is gone too: it has joined, so no matter
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w1") == OWN_TOKENS["w1"]
    assert join_token(tmp_path / "after", "w2") == created_token(api) != OWN_TOKENS["w2"]
    out = capsys.readouterr().out
    assert (
        f"w2 has not joined and its card's bootstrap token {OWN_TOKENS['w2'][:6]}: the cluster does not know"
        in out
    )
    assert "reflash w2" in out and OWN_TOKENS["w2"] not in out


def test_a_token_that_expires_within_a_day_is_renewed_and_the_old_one_deleted(
    tmp_path: Path, api: APIStandin
) -> None:
    cluster_file = project(tmp_path, api.endpoint, per_node_record())
    joined(api, "cp1")
    w1_expires = expires_in(timedelta(days=2))
    api.add_token(OWN_TOKENS["w1"], w1_expires)
    api.add_token(OWN_TOKENS["w2"], expires_in(timedelta(hours=12)))
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w1") == OWN_TOKENS["w1"]
    assert join_token(tmp_path / "after", "w2") == created_token(api)
    assert api.deleted == [f"bootstrap-token-{OWN_TOKENS['w2'][:6]}"]
    # the next build asks the cluster again a day before w1's token lapses, not before
    assert recorded(cluster_file)["recheck_at"] == w1_expires.replace("Z", "+00:00")


def test_a_build_asks_the_cluster_only_when_a_token_may_lapse_within_a_day(
    tmp_path: Path, api: APIStandin
) -> None:
    record = {**per_node_record(), "recheck_at": (datetime.now(UTC) + timedelta(days=30)).isoformat()}
    cluster_file = project(tmp_path, api.endpoint, record)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert api.clients == []  # no network for a build with nothing to renew
    joined(api, "cp1", "w1", "w2")
    record["recheck_at"] = (datetime.now(UTC) + timedelta(hours=20)).isoformat()
    (cluster_file.parent / ".picluster" / TOKENS_FILE).write_text(json.dumps(record))
    assert grow(cluster_file, tmp_path / "after") == 0
    assert len(api.clients) == 1 and api.created == []
    assert recorded(cluster_file)["recheck_at"] == datetime.max.replace(tzinfo=UTC).isoformat()
    assert grow(cluster_file, tmp_path / "after") == 0
    assert len(api.clients) == 1  # every node has joined: never again, unless cluster.yaml changes


def test_a_node_removed_from_cluster_yaml_has_its_token_deleted_on_the_cluster(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, api.endpoint, per_node_record())
    joined(api, "cp1", "w1")
    api.add_token(OWN_TOKENS["w2"], expires_in(timedelta(days=80)))
    data = yaml.safe_load(cluster_file.read_text())
    data["nodes"] = [node for node in data["nodes"] if node["name"] != "w2"]
    cluster_file.write_text(yaml.safe_dump(data))
    assert grow(cluster_file, tmp_path / "after") == 0
    assert api.deleted == [f"bootstrap-token-{OWN_TOKENS['w2'][:6]}"] and api.created == []
    assert set(recorded(cluster_file)["nodes"]) == {"cp1", "w1"}
    assert f"deleted bootstrap token {OWN_TOKENS['w2'][:6]} on the cluster: w2 left cluster.yaml" in (
        capsys.readouterr().out
    )


def test_unreachable_cluster_keeps_every_card_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, nobody_listens())
    before = recorded(cluster_file)
    assert grow(cluster_file, tmp_path / "after") == 0
    assert join_token(tmp_path / "after", "w1") == OLD_TOKEN and recorded(cluster_file) == before
    assert "the API server did not answer" in capsys.readouterr().out


def test_unreachable_cluster_builds_no_card_for_a_node_added(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, nobody_listens())
    add_node(cluster_file)
    images = tmp_path / "images"
    build = ["build", "-f", str(cluster_file), "-o", str(images), "--cache", str(tmp_path / "cache")]
    assert main(build) == 2
    error = capsys.readouterr().err
    assert "w3 needs a bootstrap token made on the cluster, and the API server cannot be asked" in error
    assert f"https://{nobody_listens()}" in error and "no card that could not join was written" in error
    assert not images.exists() or not any(images.iterdir()), "no image was written"


def test_status_names_each_card_not_joined_whose_token_lapses_with_the_fix(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    record = per_node_record()
    record["nodes"] = {**OWN_TOKENS, "w3": "w3aaaa.0123456789abcdef", "w4": "w4aaaa.0123456789abcdef"}
    cluster_file = project(tmp_path, api.endpoint, record)
    add_node(cluster_file, "w3", "192.168.50.23/24")
    add_node(cluster_file, "w4", "192.168.50.24/24")
    joined(api, "cp1", "w4")  # w4's token has expired: it joined, so no matter
    api.add_token(OWN_TOKENS["w2"], expires_in(timedelta(hours=5)))
    api.add_token("w3aaaa.0123456789abcdef", expires_in(timedelta(days=40)))
    capsys.readouterr()
    assert main(["status", "-f", str(cluster_file), "-i", str(tmp_path / "images")]) == 0
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: w1 has not joined and its card's bootstrap token {OWN_TOKENS['w1'][:6]}: the cluster "
        "does not know it (expired or revoked): picluster build, then picluster flash w1",
        f"warning: w2 has not joined and its card's bootstrap token {OWN_TOKENS['w2'][:6]}: it expires "
        f"{expires_in(timedelta(hours=5))[:10]} {expires_in(timedelta(hours=5))[11:16]} UTC: "
        "picluster build, then picluster flash w2",
    ]


@pytest.fixture
def built(tmp_path: Path, api: APIStandin, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A project whose three images were built (on the stand-in base), its nodes given tokens of
    their own; returns cluster.yaml and the build command line."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(TINY_EPOCH))
    cluster_file = project(tmp_path, api.endpoint)
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
    cluster_file = project(tmp_path, api.endpoint)
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
    cluster_file = project(tmp_path, f"{BUILDER}:8443")
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
    assert report["cluster"].startswith(f"cluster: https://{api.endpoint} answered: Kubernetes v1.34.2, ")


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_first_build_records_the_release_its_cards_run(built: tuple[Path, list[str]]) -> None:
    cluster_file, _ = built
    recorded = json.loads((cluster_file.parent / ".picluster/release.json").read_text())
    assert recorded == {"kubernetes": load_cluster(cluster_file).cluster.kubernetes}


def status_lines(cluster_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    capsys.readouterr()
    assert main(["status", "-f", str(cluster_file), "-i", str(tmp_path / "images")]) == 0
    return capsys.readouterr().out.splitlines()


def test_status_shows_the_release_and_when_the_api_servers_certificate_expires(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, api.endpoint, per_node_record())
    lines = status_lines(cluster_file, tmp_path, capsys)
    expires = datetime.now(UTC) + timedelta(days=365)
    assert (
        f"cluster: https://{api.endpoint} answered: Kubernetes v1.34.2, its certificate expires "
        f"{expires:%Y-%m-%d} (in 364 days)" in lines
    )
    assert not [line for line in lines if line.startswith("warning:") and "bootstrap token" not in line]


def test_status_warns_of_a_certificate_the_control_planes_did_not_renew(
    tmp_path: Path, lan: ipaddress.IPv4Address, capsys: pytest.CaptureFixture[str]
) -> None:
    with api_standin(fixed_secrets(), tmp_path, lan, certificate_days=20.5) as server:
        cluster_file = project(tmp_path, server.endpoint, per_node_record())
        lines = status_lines(cluster_file, tmp_path, capsys)
    (warning,) = [line for line in lines if line.startswith("warning:") and "bootstrap token" not in line]
    assert "the API server's certificate expires" in warning and "in 20 days" in warning
    assert "journalctl -u picluster-certs" in warning


def test_status_warns_when_the_cluster_runs_another_release_than_recorded(
    tmp_path: Path, api: APIStandin, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = project(tmp_path, api.endpoint, per_node_record())
    (cluster_file.parent / ".picluster/release.json").write_text('{"kubernetes": "1.34.2"}')
    api.git_version = "v1.34.3"
    lines = status_lines(cluster_file, tmp_path, capsys)
    (warning,) = [line for line in lines if line.startswith("warning:") and "bootstrap token" not in line]
    assert "the API server runs v1.34.3, but picluster recorded 1.34.2" in warning
