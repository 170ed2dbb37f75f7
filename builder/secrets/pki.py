"""The cluster's certificate authorities, service-account key pair and bootstrap token.

Pure: everything here makes or reads bytes; `state.py` keeps them on disk. Keys are ECDSA P-256
(kubeadm's `encryptionAlgorithm: ECDSA-P256`, so the certificates kubeadm signs match), and
certificates are signed deterministically (RFC 6979), so the same keys and time give the same bytes.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CA_VALIDITY = timedelta(days=3650)
"""kubeadm's own default for CA certificates (caCertificateValidityPeriod 87600h)."""

TOKEN_ALPHABET = string.ascii_lowercase + string.digits

KeyFactory = Callable[[], ec.EllipticCurvePrivateKey]


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_bootstrap_token() -> str:
    """A kubeadm bootstrap token, `[a-z0-9]{6}.[a-z0-9]{16}`."""
    pick = secrets.choice
    return (
        "".join(pick(TOKEN_ALPHABET) for _ in range(6))
        + "."
        + "".join(pick(TOKEN_ALPHABET) for _ in range(16))
    )


@dataclass(frozen=True)
class KeyPair:
    """A certificate (or bare public key) and its private key, both PEM."""

    public_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class ClusterSecrets:
    """What every control plane needs to share so each can run or join the same cluster.

    The file names are those kubeadm uses under /etc/kubernetes/pki; copying them there before
    `kubeadm init` or `kubeadm join --control-plane` makes kubeadm use them instead of new ones.
    """

    ca: KeyPair
    front_proxy_ca: KeyPair
    etcd_ca: KeyPair
    service_account: KeyPair
    bootstrap_token: str

    def pki_files(self) -> dict[str, bytes]:
        return {
            "ca.crt": self.ca.public_pem,
            "ca.key": self.ca.key_pem,
            "front-proxy-ca.crt": self.front_proxy_ca.public_pem,
            "front-proxy-ca.key": self.front_proxy_ca.key_pem,
            "etcd/ca.crt": self.etcd_ca.public_pem,
            "etcd/ca.key": self.etcd_ca.key_pem,
            "sa.pub": self.service_account.public_pem,
            "sa.key": self.service_account.key_pem,
        }

    @property
    def ca_cert_hash(self) -> str:
        return ca_cert_hash(self.ca.public_pem)

    @property
    def ca_not_before(self) -> datetime:
        """When the newest of the cluster's CAs became valid: a node whose clock is earlier
        fails every TLS handshake with the cluster."""
        return max(
            x509.load_pem_x509_certificate(pair.public_pem).not_valid_before_utc
            for pair in (self.ca, self.front_proxy_ca, self.etcd_ca)
        )


def ca_cert_hash(cert_pem: bytes) -> str:
    """kubeadm's CA pin: SHA-256 of the DER SubjectPublicKeyInfo, as `sha256:<hex>`."""
    certificate = x509.load_pem_x509_certificate(cert_pem)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def make_secrets(now: datetime, key_factory: KeyFactory = new_key, token: str = "") -> ClusterSecrets:
    return ClusterSecrets(
        ca=make_ca("kubernetes", now, key_factory()),
        front_proxy_ca=make_ca("front-proxy-ca", now, key_factory()),
        etcd_ca=make_ca("etcd-ca", now, key_factory()),
        service_account=make_key_pair(key_factory()),
        bootstrap_token=token or new_bootstrap_token(),
    )


def make_ca(common_name: str, now: datetime, key: ec.EllipticCurvePrivateKey) -> KeyPair:
    """A self-signed CA certificate shaped like the ones kubeadm makes itself."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = key.public_key()
    serial = (
        int.from_bytes(
            hashlib.sha256(
                public_key.public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ).digest()[:16],
            "big",
        )
        >> 1
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key))


def make_key_pair(key: ec.EllipticCurvePrivateKey) -> KeyPair:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(public, _private_pem(key))


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    # kubeadm writes EC keys as "EC PRIVATE KEY" (SEC 1); do the same so files look familiar.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


ADMIN_VALIDITY = timedelta(days=365)


def make_admin_client(
    ca: KeyPair,
    now: datetime,
    validity: timedelta = ADMIN_VALIDITY,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> KeyPair:
    """A client certificate in group system:masters, signed by the cluster CA, valid for
    `validity`: what picluster puts in admin kubeconfigs (a year) and talks to the API server
    with (new bootstrap tokens, status: minutes)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"),
            x509.NameAttribute(NameOID.COMMON_NAME, "picluster-admin"),
        ]
    )
    return _make_client(ca, subject, now, validity, key or new_key())


def make_etcd_client(etcd_ca: KeyPair, now: datetime, validity: timedelta) -> KeyPair:
    """A client certificate signed by the etcd CA, as kubeadm's etcd demands of every client
    (--client-cert-auth); shaped like kubeadm's etcd/healthcheck-client (certs/certlist.go)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "picluster-etcd-client")])
    return _make_client(etcd_ca, subject, now, validity, new_key())


def _make_client(
    ca: KeyPair, subject: x509.Name, now: datetime, validity: timedelta, key: ec.EllipticCurvePrivateKey
) -> KeyPair:
    ca_cert = x509.load_pem_x509_certificate(ca.public_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(certificate.public_bytes(serialization.Encoding.PEM), _private_pem(key))
