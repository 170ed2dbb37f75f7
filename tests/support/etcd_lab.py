"""Real etcd members as kubeadm runs them, for tests in network namespaces: kubeadm's flags and
TLS layout (/etc/kubernetes/pki/etcd), certificates signed by the etcd CA of the cluster's state
folder."""

from __future__ import annotations

import ipaddress
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from builder.secrets.pki import KeyPair

HEALTHCHECK = "kube-etcd-healthcheck-client"


def etcd_flags(
    name: str, address: str, pki: Path, data: Path, initial: dict[str, str], state: str
) -> list[str]:
    """kubeadm's etcd command (getEtcdCommand in cmd/kubeadm/app/phases/etcd/local.go), with the
    paths of this lab; Debian's etcd 3.4 spells two of kubeadm's flags with experimental-."""
    return [
        f"--name={name}",
        f"--listen-client-urls=https://127.0.0.1:2379,https://{address}:2379",
        f"--advertise-client-urls=https://{address}:2379",
        f"--listen-peer-urls=https://{address}:2380",
        f"--initial-advertise-peer-urls=https://{address}:2380",
        f"--data-dir={data}",
        f"--cert-file={pki}/server.crt",
        f"--key-file={pki}/server.key",
        f"--trusted-ca-file={pki}/ca.crt",
        "--client-cert-auth=true",
        f"--peer-cert-file={pki}/peer.crt",
        f"--peer-key-file={pki}/peer.key",
        f"--peer-trusted-ca-file={pki}/ca.crt",
        "--peer-client-cert-auth=true",
        "--snapshot-count=10000",
        "--listen-metrics-urls=http://127.0.0.1:2381",
        "--experimental-initial-corrupt-check=true",
        "--experimental-watch-progress-notify-interval=5s",
        "--initial-cluster=" + ",".join(f"{n}=https://{a}:2380" for n, a in initial.items()),
        f"--initial-cluster-state={state}",
    ]


def sign(ca: KeyPair, common_name: str, client_only: bool, name: str = "", address: str = "") -> KeyPair:
    """A certificate as kubeadm's certs/certlist.go makes etcd's: server and peer for the node's
    name, localhost, its address, 127.0.0.1 and ::1, good for server and client auth; the
    healthcheck client for client auth only."""
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, *([] if client_only else [ExtendedKeyUsageOID.SERVER_AUTH])]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(x509.load_pem_x509_certificate(ca.public_pem).subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if not client_only:
        ips = [ipaddress.ip_address(ip) for ip in (address, "127.0.0.1", "::1")]
        names: list[x509.GeneralName] = [x509.DNSName(name), x509.DNSName("localhost")]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names + [x509.IPAddress(ip) for ip in ips]), critical=False
        )
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return KeyPair(pem, key_pem)


def write_pki(ca: KeyPair, folder: Path, name: str, address: str) -> None:
    """/etc/kubernetes/pki/etcd of a control plane: the CA, its server, peer and healthcheck pairs."""
    folder.mkdir(parents=True)
    (folder / "ca.crt").write_bytes(ca.public_pem)
    pairs = {
        "server": sign(ca, name, False, name, address),
        "peer": sign(ca, name, False, name, address),
        "healthcheck-client": sign(ca, HEALTHCHECK, True),
    }
    for stem, pair in pairs.items():
        (folder / f"{stem}.crt").write_bytes(pair.public_pem)
        (folder / f"{stem}.key").write_bytes(pair.key_pem)
        (folder / f"{stem}.key").chmod(0o600)


def ns(name: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", name, *command], capture_output=True, text=True, check=check
    )
