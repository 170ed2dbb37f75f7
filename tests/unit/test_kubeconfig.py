"""`picluster kubeconfig`: a file of its own it may replace; into a kubeconfig the user keeps
(`kubectl config view --flatten` of several clusters) it merges only this cluster's entries."""

from __future__ import annotations

import base64
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from builder.cli import main
from builder.cluster.kubeconfig import admin_kubeconfig
from builder.secrets.pki import ADMIN_VALIDITY, CA_VALIDITY, make_secrets
from builder.spec.load import load_cluster
from tests.support.kubeconfigs import MULTI_CLUSTER, OTHER_CA, STALE_CERT, multi_cluster
from tests.support.project import BUNDLED


def named(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in entries}


def kubeconfig(site: Path, *argv: str) -> int:
    return main(["kubeconfig", "-f", str(site / "cluster.yaml"), *argv])


def test_merge_replaces_only_this_clusters_entries(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(multi_cluster(site))
    config.chmod(0o640)
    before = yaml.safe_load(config.read_text())
    assert kubeconfig(site, "--merge", "-o", str(config)) == 0
    after = yaml.safe_load(config.read_text())
    assert config.stat().st_mode & 0o777 == 0o600  # it holds an admin key now: as kubectl writes one
    assert list(after) == list(before)
    for key in ("apiVersion", "kind", "current-context", "preferences", "extensions"):
        assert after[key] == before[key], key
    for key in ("clusters", "contexts", "users"):
        assert [entry["name"] for entry in after[key]] == [entry["name"] for entry in before[key]]
        mine = {"homelab", "picluster-admin@homelab"}
        kept = [entry for entry in before[key] if entry["name"] not in mine]
        assert [entry for entry in after[key] if entry["name"] not in mine] == kept
    user = named(after["users"])["picluster-admin@homelab"]["user"]
    assert user["client-certificate-data"] != STALE_CERT
    cert = x509.load_pem_x509_certificate(base64.b64decode(user["client-certificate-data"]))
    assert cert.subject.rfc4514_string() == "CN=picluster-admin,O=system:masters"
    context = named(after["contexts"])["picluster-admin@homelab"]["context"]
    assert context == {"cluster": "homelab", "user": "picluster-admin@homelab"}


def test_merge_adds_this_cluster_to_a_kubeconfig_without_it(site: Path, tmp_path: Path) -> None:
    data = yaml.safe_load(multi_cluster(site))
    mine = {"homelab", "picluster-admin@homelab"}
    for key in ("clusters", "contexts", "users"):
        data[key] = [entry for entry in data[key] if entry["name"] not in mine]
    config = tmp_path / "config"
    config.write_text(yaml.safe_dump(data))
    assert kubeconfig(site, "--merge", "-o", str(config)) == 0
    after = yaml.safe_load(config.read_text())
    assert [entry["name"] for entry in after["clusters"]] == ["prod", "kind-dev", "homelab"]
    users = ["prod-admin", "kind-dev", "picluster-admin@homelab"]
    assert [entry["name"] for entry in after["users"]] == users
    assert after["current-context"] == "prod"


def test_merge_into_no_file_writes_a_private_kubeconfig_of_its_own(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "kube" / "config"
    assert kubeconfig(site, "--merge", "-o", str(config)) == 0
    assert config.stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load(config.read_text())["current-context"] == "picluster-admin@homelab"
    assert kubeconfig(site, "-o", str(config)) == 0, "and it is one picluster may replace"


def test_a_kubeconfig_picluster_wrote_is_replaced(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "admin.conf"
    assert kubeconfig(site, "-o", str(config)) == 0
    first = config.read_bytes()
    assert kubeconfig(site, "-o", str(config)) == 0
    assert config.read_bytes() != first  # a new certificate


def test_merge_never_replaces_another_cluster_of_the_same_name(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.write_text(MULTI_CLUSTER.replace("HOMELAB_CA", OTHER_CA))
    before = config.read_bytes()
    assert kubeconfig(site, "--merge", "-o", str(config)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "already has a cluster named homelab" in err and "another CA" in err
    assert config.read_bytes() == before


@pytest.mark.parametrize(
    "text",
    ["clusters: [oops\n", "- just\n- a list\n", "kind: Pod\napiVersion: v1\n",
     "kind: Config\nusers: {a: b}\n", "kind: Config\nclusters:\n- just a name\n"],
    ids=["not YAML", "a list", "another kind", "users not a list", "an entry not a mapping"],
)  # fmt: skip
def test_merge_refuses_what_is_not_a_kubeconfig_in_one_screen(
    site: Path, tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config"
    config.write_text(text)
    assert kubeconfig(site, "--merge", "-o", str(config)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config} is not a kubeconfig") and "Traceback" not in err, err
    assert len(err.splitlines()) <= 4
    assert config.read_text() == text


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_merge_as_root_leaves_the_kubeconfig_its_owners(site: Path, tmp_path: Path) -> None:
    """`sudo picluster kubeconfig --merge -o ~/.kube/config`: the user must still read it."""
    config = tmp_path / "config"
    config.write_text(multi_cluster(site))
    config.chmod(0o600)
    os.chown(config, 1000, 1000)
    assert kubeconfig(site, "--merge", "-o", str(config)) == 0
    assert (config.stat().st_uid, config.stat().st_gid, config.stat().st_mode & 0o777) == (1000, 1000, 0o600)


def test_an_admin_certificate_never_outlives_the_ca_that_signed_it() -> None:
    now = datetime.now(UTC)
    secrets = make_secrets(now - CA_VALIDITY + timedelta(days=30))
    written = yaml.safe_load(admin_kubeconfig(load_cluster(BUNDLED), secrets, now))
    client = x509.load_pem_x509_certificate(
        base64.b64decode(written["users"][0]["user"]["client-certificate-data"])
    )
    ca = x509.load_pem_x509_certificate(secrets.ca.public_pem)
    assert client.not_valid_after_utc == ca.not_valid_after_utc
    fresh = yaml.safe_load(admin_kubeconfig(load_cluster(BUNDLED), make_secrets(now), now))
    client = x509.load_pem_x509_certificate(
        base64.b64decode(fresh["users"][0]["user"]["client-certificate-data"])
    )
    assert client.not_valid_after_utc - now < ADMIN_VALIDITY + timedelta(minutes=1)
