"""The cluster's secrets: created once with private modes, reused after, shaped as kubeadm expects."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from builder.cli import main
from builder.errors import UserError
from builder.secrets import store, tokens
from builder.secrets.pki import make_admin_client, new_bootstrap_token
from builder.secrets.store import TOKENS_FILE
from tests.support.project import BUNDLED, file_contents, fixed_secrets


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_creates_private_state(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    secrets = store.load_or_create(folder)
    assert mode(folder) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.relative_to(folder).as_posix() for p in files} == {
        "bootstrap-token",
        "pki/ca.crt",
        "pki/ca.key",
        "pki/front-proxy-ca.crt",
        "pki/front-proxy-ca.key",
        "pki/etcd/ca.crt",
        "pki/etcd/ca.key",
        "pki/sa.pub",
        "pki/sa.key",
    }
    assert all(mode(p) == 0o600 for p in files)
    assert all(mode(p) == 0o700 for p in folder.rglob("*") if p.is_dir())
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", secrets.bootstrap_token)


def test_later_runs_reuse_the_same_cluster_identity(tmp_path: Path) -> None:
    first = store.load_or_create(tmp_path / ".picluster")
    again = store.load_or_create(tmp_path / ".picluster")
    assert again == first


def test_a_folder_others_may_list_but_whose_keys_they_cannot_read_loads_as_it_is(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    store.load_or_create(folder)
    folder.chmod(0o755)
    (folder / "pki").chmod(0o755)
    (folder / "pki/etcd/ca.key").chmod(0o644)  # behind pki/etcd, 0700: still private
    store.load(folder)
    assert [mode(folder), mode(folder / "pki"), mode(folder / "pki/etcd/ca.key")] == [0o755, 0o755, 0o644]


def test_incomplete_state_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    store.load_or_create(folder)
    (folder / "pki" / "sa.key").unlink()
    with pytest.raises(UserError, match=r"pki/sa\.key: missing"):
        store.load_or_create(folder)


def test_certificate_authorities_are_ca_certificates_named_like_kubeadms() -> None:
    secrets = fixed_secrets()
    names = {}
    for pair in (secrets.ca, secrets.front_proxy_ca, secrets.etcd_ca):
        cert = x509.load_pem_x509_certificate(pair.public_pem)
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        names[cert.subject.rfc4514_string()] = cert
    assert set(names) == {"CN=kubernetes", "CN=front-proxy-ca", "CN=etcd-ca"}
    ca = names["CN=kubernetes"]
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 3650


def test_key_files_match_their_certificates() -> None:
    secrets = fixed_secrets()
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    for pair in (secrets.ca, secrets.front_proxy_ca, secrets.etcd_ca):
        key = load_pem_private_key(pair.key_pem, None)
        cert = x509.load_pem_x509_certificate(pair.public_pem)
        assert key.public_key() == cert.public_key()
        assert pair.key_pem.startswith(b"-----BEGIN EC PRIVATE KEY-----")


def test_fixed_inputs_give_the_same_bytes() -> None:
    assert fixed_secrets() == fixed_secrets()


def test_tokens_are_random_and_well_formed() -> None:
    tokens = {new_bootstrap_token() for _ in range(50)}
    assert len(tokens) == 50
    assert all(re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", t) for t in tokens)


# --- a damaged state folder is named, never replaced -------------------------------------------


def listing(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture
def cluster_state(tmp_path: Path) -> Path:
    folder = tmp_path / ".picluster"
    store.load_or_create(folder)
    return folder


def test_a_missing_ca_certificate_is_named_and_nothing_is_made_anew(cluster_state: Path) -> None:
    (cluster_state / "pki/ca.crt").unlink()
    before = file_contents(cluster_state)
    with pytest.raises(UserError) as caught:
        store.load_or_create(cluster_state)
    assert "pki/ca.crt: missing" in caught.value.message
    assert "picluster restore" in caught.value.hint
    assert file_contents(cluster_state) == before, "no secret was written"


def cut(name: str, keep: int) -> Callable[[Path], object]:
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:keep])


def copy_over(source: str, target: str) -> Callable[[Path], object]:
    return lambda folder: (folder / target).write_bytes((folder / source).read_bytes())


DAMAGE = {
    "truncated key": (cut("pki/ca.key", 60), "pki/ca.key: not an"),
    "empty key": (cut("pki/ca.key", 0), "pki/ca.key: not an"),
    "truncated certificate": (cut("pki/ca.crt", 100), "pki/ca.crt: not a PEM"),
    "foreign key": (copy_over("pki/ca.key", "pki/etcd/ca.key"), "etcd/ca.key: does not belong to pki/etcd"),
    "foreign sa key": (copy_over("pki/ca.key", "pki/sa.key"), "pki/sa.key: does not belong"),
    "bad token": (lambda folder: (folder / "bootstrap-token").write_text("ABCDEF.0123456789abcdef\n"),
                  "not a bootstrap token"),
}  # fmt: skip


@pytest.mark.parametrize(("damage", "named"), DAMAGE.values(), ids=DAMAGE.keys())
def test_broken_secrets_are_refused_on_load(cluster_state: Path, damage: Any, named: str) -> None:
    damage(cluster_state)
    with pytest.raises(UserError) as caught:
        store.load(cluster_state)
    assert named in caught.value.message


def test_a_foreign_ca_key_is_refused(cluster_state: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    store.load_or_create(other)
    shutil.copy(other / "pki/ca.key", cluster_state / "pki/ca.key")
    with pytest.raises(UserError, match=r"pki/ca\.key: does not belong to pki/ca\.crt"):
        store.load(cluster_state)


def test_a_certificate_that_is_no_ca_is_refused(cluster_state: Path) -> None:
    secrets = store.load(cluster_state)
    client = make_admin_client(secrets.ca, datetime.now(UTC))
    (cluster_state / "pki/front-proxy-ca.crt").write_bytes(client.public_pem)
    (cluster_state / "pki/front-proxy-ca.key").write_bytes(client.key_pem)
    with pytest.raises(UserError, match=r"pki/front-proxy-ca\.crt: not a CA certificate"):
        store.load(cluster_state)


def test_links_in_the_state_folder_are_refused_and_never_followed(
    cluster_state: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.key"
    outside.write_bytes((cluster_state / "pki/ca.key").read_bytes())
    outside.chmod(0o644)
    (cluster_state / "pki/ca.key").unlink()
    (cluster_state / "pki/ca.key").symlink_to(outside)
    (cluster_state / "pki/sa.key").chmod(0o644)
    with pytest.raises(UserError, match=r"pki/ca\.key: a link \(to "):
        store.load(cluster_state)
    assert mode(outside) == 0o644, "the file outside was not touched"


def test_a_dangling_state_folder_link_is_named(tmp_path: Path) -> None:
    (tmp_path / ".picluster").symlink_to(tmp_path / "unmounted")
    with pytest.raises(UserError, match="which does not exist"):
        store.load_or_create(tmp_path / ".picluster")


def test_an_empty_folder_becomes_a_cluster_and_a_linked_one_stays_linked(tmp_path: Path) -> None:
    (tmp_path / "vault").mkdir()
    (tmp_path / ".picluster").symlink_to(tmp_path / "vault")
    store.load_or_create(tmp_path / ".picluster")
    assert (tmp_path / ".picluster").is_symlink()
    assert (tmp_path / "vault/pki/ca.key").is_file()
    assert [p.name for p in tmp_path.iterdir() if ".new-" in p.name] == []


def test_an_unwritable_cluster_folder_is_a_user_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(BUNDLED, folder / "cluster.yaml")
    if os.geteuid() == 0:  # root writes anywhere; a read-only mount stops it too
        refusing = mock.Mock(mkdtemp=mock.Mock(side_effect=PermissionError(13, "Permission denied")))
        blocked = mock.patch("builder.secrets.store.tempfile", refusing)
    else:
        folder.chmod(0o500)
        blocked = contextlib.nullcontext()
    with blocked:
        assert main(["render", "-f", str(folder / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot create the cluster's secrets" in err and "Permission denied" in err
    assert "created the cluster's CA" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"[1, 2]", b'{"current": "x", "issued_at": "2026-01-01T00:00:00+00:00", "nodes": {}}',
     b'{"current": "abcdef.0123456789abcdef", "issued_at": "yesterday", "nodes": {}}', b"\xff\xfe\x00"],
    ids=["empty", "not JSON", "a list", "bad token", "bad time", "binary"],
)  # fmt: skip
def test_a_damaged_token_record_is_a_one_screen_error(
    tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    store.load_or_create(tmp_path / ".picluster")
    (tmp_path / ".picluster/tokens.json").write_bytes(content)
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "tokens.json is damaged" in err and "Traceback" not in err


def test_a_token_record_from_before_per_node_tokens_still_loads(tmp_path: Path) -> None:
    """Every node of it keeps the one token it was built with, which the first control plane's
    card still makes; the shared `current` is no longer written."""
    secrets = fixed_secrets()
    store.save(tmp_path / ".picluster", secrets)
    shared = {"current": "qrstuv.0123456789qrstuv", "issued_at": "2026-01-01T00:00:00+00:00",
              "nodes": dict.fromkeys(["cp1", "w1", "w2"], secrets.bootstrap_token)}  # fmt: skip
    (tmp_path / ".picluster" / TOKENS_FILE).write_text(json.dumps(shared))
    loaded = tokens.load_tokens(tmp_path / ".picluster", secrets)
    assert loaded == tokens.Tokens(shared["nodes"], (secrets.bootstrap_token,))
    tokens.save_tokens(tmp_path / ".picluster", loaded)
    assert json.loads((tmp_path / ".picluster" / TOKENS_FILE).read_text()) == {
        "nodes": shared["nodes"],
        "at_init": [secrets.bootstrap_token],
    }
    assert tokens.load_tokens(tmp_path / ".picluster", secrets) == loaded


def test_a_replaced_first_control_plane_is_recorded_and_read_back(tmp_path: Path) -> None:
    secrets = fixed_secrets()
    store.save(tmp_path / ".picluster", secrets)
    replaced = tokens.Tokens({"cp1": "cpcpcp.0123456789abcdef"}, (), first_joins=True)
    tokens.save_tokens(tmp_path / ".picluster", replaced)
    record = json.loads((tmp_path / ".picluster" / TOKENS_FILE).read_text())
    assert record["first_control_plane_joins"] is True
    assert tokens.load_tokens(tmp_path / ".picluster", secrets) == replaced
    record["first_control_plane_joins"] = "yes"
    (tmp_path / ".picluster" / TOKENS_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match="first_control_plane_joins: not true or false"):
        tokens.load_tokens(tmp_path / ".picluster", secrets)
