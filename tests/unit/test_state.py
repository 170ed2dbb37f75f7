"""The cluster's secrets: created once with private modes, reused after, shaped as kubeadm expects."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from builder import state
from builder.errors import UserError
from builder.pki import new_bootstrap_token
from tests.conftest import fixed_secrets


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_creates_private_state(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    secrets = state.load_or_create(folder)
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
    first = state.load_or_create(tmp_path / ".picluster")
    again = state.load_or_create(tmp_path / ".picluster")
    assert again == first


def test_loose_modes_are_tightened(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    state.load_or_create(folder)
    (folder / "pki" / "ca.key").chmod(0o644)
    folder.chmod(0o755)
    state.load(folder)
    assert mode(folder / "pki" / "ca.key") == 0o600
    assert mode(folder) == 0o700


def test_incomplete_state_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / ".picluster"
    state.load_or_create(folder)
    (folder / "pki" / "sa.key").unlink()
    with pytest.raises(UserError, match=r"sa\.key is missing"):
        state.load_or_create(folder)


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
