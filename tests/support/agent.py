"""Running the first-boot agent in tests: a node root in a folder, and stand-ins on PATH.

kubeadm, kubelet and kubectl cannot be installed on these machines: tests/support/standins.py stands in
for them, doing to the node root what the real programs do, and records every call.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from builder.render.node import render_node
from builder.render.tree import write_trees
from builder.spec.load import load_cluster
from tests.support.project import BUNDLED, REPO, fixed_secrets

AGENT_LAUNCHER = REPO / "overlays/common/usr/sbin/picluster-agent"
FAST = {"retry_initial": 0.05, "retry_max": 0.2, "clock_timeout": 0.2, "address_timeout": 0.2,
        "containerd_timeout": 0.2, "ready_poll": 0.05, "static_pod_pause": 0.05}  # fmt: skip
"""Timings that make a test's waits and backoffs take fractions of a second."""
LOCALHOST = ipaddress.ip_address("127.0.0.1")


HA_CLUSTER = REPO / "tests/unit/golden/ha-wifi/cluster.yaml"
"""Three control planes: cp-a runs kubeadm init, cp-b and cp-c join as control planes."""


def node_root(tmp_path: Path, node: str = "cp1", source: Path = BUNDLED, **changes: Any) -> Path:
    """A folder standing for a node's filesystem: every file the card of `node` of `source`
    carries on its root partition, with fast timings and `changes` merged into the top-level
    sections of its node.json."""
    cluster = load_cluster(source)
    chosen = next(n for n in cluster.nodes if n.name == node)
    root = write_trees([render_node(cluster, chosen, fixed_secrets())], tmp_path / "card")[0] / "root"
    config = json.loads((root / "etc/picluster/node.json").read_text())
    config["agent"] = FAST
    for section, values in changes.items():
        config.setdefault(section, {}).update(values)
    (root / "etc/picluster/node.json").write_text(json.dumps(config, indent=2))
    return root


def install_standins(folder: Path, *tools: str) -> Path:
    """A launcher named after each tool that runs its STAND-IN in tests/support/standins.py; crictl's
    always (the packages bring it, and the agent pulls images with it before kubeadm)."""
    folder.mkdir(parents=True, exist_ok=True)
    for tool in {*tools, "crictl"}:
        path = folder / tool
        path.write_text(
            f"#!/bin/sh\n# STAND-IN for {tool}, not the real program\n"
            f'exec {sys.executable} {REPO / "tests/support/standins.py"} {tool} {folder} "$@"\n'
        )
        path.chmod(0o755)
    return folder


def cas_seen(folder: Path) -> list[dict[str, Any]]:
    """What each kubeadm init or control-plane join found in /etc/kubernetes/pki (sha256s)."""
    log = folder / "cas.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def calls(folder: Path) -> list[list[str]]:
    log = folder / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def kube_calls(folder: Path) -> list[list[str]]:
    """The calls of kubeadm, kubelet and kubectl: every stand-in's but crictl's."""
    return [call for call in calls(folder) if call[0] != "crictl"]


def agent_env(standins: Path, root: Path) -> dict[str, str]:
    """PATH with the stand-ins first and no real kubeadm anywhere on it."""
    system = [p for p in os.environ["PATH"].split(os.pathsep) if not (Path(p) / "kubeadm").exists()]
    return {**os.environ, "PATH": os.pathsep.join([str(standins), *system]), "STANDIN_NODE_ROOT": str(root)}


def agent_command(root: Path, *args: str) -> list[str]:
    return [sys.executable, str(AGENT_LAUNCHER), "--root", str(root), *args]


def state(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "var/lib/picluster/state.json").read_text())
    return data


def make_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        _certificate(subject, subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    address: ipaddress.IPv4Address = LOCALHOST,
    *more: ipaddress.IPv4Address,
    days: float = 365,
) -> tuple[bytes, bytes]:
    """A certificate for `address` (and `more`) signed by `ca`, valid `days` more days (kubeadm's
    year by default); returns (cert PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver stand-in")])
    cert = (
        _certificate(subject, ca[1].subject, key.public_key(), days)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip) for ip in (address, *more)]), critical=False
        )
        .sign(ca[0], hashes.SHA256())
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return cert.public_bytes(Encoding.PEM), key_pem


def _certificate(
    subject: x509.Name, issuer: x509.Name, public_key: Any, days: float = 1
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=days))
    )


@contextmanager
def api_server_standin(cert_pem: bytes, key_pem: bytes, folder: Path, port: int = 0) -> Iterator[int]:
    """STAND-IN for kube-apiserver's /readyz over HTTPS on 127.0.0.1; yields its port."""

    class Readyz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = (200, b"ok") if self.path == "/readyz" else (404, b"not found")
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    (folder / "server.crt").write_bytes(cert_pem)
    (folder / "server.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.crt", folder / "server.key")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Readyz)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def run_agent(root: Path, standins: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        agent_command(root, *args), env=agent_env(standins, root), capture_output=True, text=True, timeout=60
    )


def run_until_phase(root: Path, standins: Path, phase: str | None, says: str, retries: int = 3) -> dict:
    """Start the agent, wait until it has said `says` `retries` times and is still running (it
    retries; it does not exit and crash-loop), stop it, and return the state it recorded (in
    `phase`, unless None: between retries it may be stopped in any)."""
    agent = subprocess.Popen(
        agent_command(root, "join"), env=agent_env(standins, root), stdout=subprocess.PIPE, text=True
    )
    assert agent.stdout is not None
    seen = 0
    deadline = time.monotonic() + 30
    try:
        for line in agent.stdout:
            seen += line.startswith(says)
            if seen >= retries:
                break
            assert time.monotonic() < deadline, f"no {says!r} within 30 s"
        assert agent.poll() is None, "the agent exited instead of waiting"
    finally:
        agent.kill()
        agent.wait()
    recorded = state(root)
    assert phase is None or recorded["phase"] == phase
    return recorded
