"""A lab of the golden ha-virtual-ip cluster's three control planes, where Debian's real keepalived
and haproxy serve the control_plane_endpoint as on the cards.

Each control plane is a network namespace whose eth0 (a veth) sits on one bridge in a "lan"
namespace, with its address from cluster.yaml; a "client" namespace on the same bridge reaches
the endpoint. Each control plane runs keepalived and haproxy with the RENDERED keepalived.conf and
haproxy.cfg, and the rendered check script. What the lab rewrites, and only that: the paths of the
check script and of the cluster CA in keepalived.conf (the card's /usr/lib/picluster and
/etc/picluster are the host's here). The interface keeps its rendered name, eth0, as each
namespace has its own.

The one STAND-IN is the API server (kube-apiserver cannot run here): HTTPS on :6443 with a
certificate from the cluster CA naming the node's address and the endpoint's host, as kubeadm's
(GetAPIServerAltNames, cmd/kubeadm/app/util/pkiutil/pki_helpers.go), answering /healthz and
/readyz with 200 "ok" to anyone: kube-apiserver lets anonymous clients read them (the
system:public-info-viewer role, plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go). Like
kube-apiserver, which kubeadm starts without --bind-address, it listens on every address of its
node (BindAddress 0.0.0.0, staging/src/k8s.io/apiserver/pkg/server/options/serving.go), so the
check script reaches it on 127.0.0.1. Run it alone with
`python3 -m tests.support.virtual_ip_lab CERT KEY`.

Everything stays inside the lab's namespaces: no address is added outside them.
"""

from __future__ import annotations

import http.client
import http.server
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from builder.render.node import render_cluster
from builder.spec.load import load_cluster
from builder.spec.model import API_SERVER_PORT, Cluster
from tests.support.agent import make_server_cert
from tests.support.api_standin import in_netns
from tests.support.project import fixed_secrets

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "unit" / "golden" / "ha-virtual-ip" / "cluster.yaml"
REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"ip": "iproute2", "keepalived": "keepalived", "haproxy": "haproxy"}
"""Each program the lab runs, with the Debian package that has it."""
CLIENT = ipaddress.IPv4Interface("192.168.50.30/24")
CHECK_SCRIPT = "/usr/lib/picluster/check-endpoint"
CLUSTER_CA = "/etc/picluster/cluster-ca.crt"
REQUEST_TIMEOUT_S = 1.0


class LabError(Exception):
    pass


@dataclass
class Plane:
    name: str
    address: ipaddress.IPv4Address
    netns: str
    folder: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)


@dataclass
class Lab:
    cluster: Cluster
    prefix: str
    folder: Path
    planes: dict[str, Plane]
    ca_pem: bytes

    @property
    def vip(self) -> ipaddress.IPv4Address:
        assert self.cluster.virtual_ip is not None
        return self.cluster.virtual_ip

    def holders(self) -> list[str]:
        """The control planes whose eth0 carries the virtual IP, as `ip addr` shows it."""
        return [
            plane.name
            for plane in self.planes.values()
            if f" {self.vip}/" in _run("ip", "-n", plane.netns, "-4", "addr", "show", "dev", "eth0")
        ]

    def request(self) -> int | None:
        """GET https://VIP:port/healthz from the client namespace, verified against the cluster CA;
        the status, or None when it failed."""
        try:
            port = self.cluster.endpoint_port
            sock = in_netns(
                f"{self.prefix}-client",
                lambda: socket.create_connection((str(self.vip), port), timeout=REQUEST_TIMEOUT_S),
            )
            context = ssl.create_default_context(cadata=self.ca_pem.decode())
            connection = http.client.HTTPSConnection(str(self.vip), port, context=context)
            connection.sock = context.wrap_socket(sock, server_hostname=str(self.vip))
            connection.request("GET", "/healthz")
            return connection.getresponse().status
        except (OSError, http.client.HTTPException):
            return None

    def start(self, name: str, program: str) -> None:
        plane = self.planes[name]
        assert program not in plane.processes, f"{program} already runs on {name}"
        log = (plane.folder / f"{program}.log").open("ab")
        plane.processes[program] = subprocess.Popen(
            [
                "setpriv",
                "--pdeathsig",
                "KILL",
                "--",
                "ip",
                "netns",
                "exec",
                plane.netns,
                *self._command(plane, program),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        log.close()

    def _command(self, plane: Plane, program: str) -> list[str]:
        folder = plane.folder
        if program == "keepalived":
            return ["keepalived", "--dont-fork", "--log-console", "--vrrp",
                    "-f", str(folder / "keepalived.conf"),
                    "-p", str(folder / "keepalived.pid"), "-r", str(folder / "vrrp.pid")]  # fmt: skip
        if program == "haproxy":
            return ["haproxy", "-db", "-f", str(folder / "haproxy.cfg")]
        return [sys.executable, "-m", "tests.support.virtual_ip_lab",
                str(folder / "apiserver.crt"), str(folder / "apiserver.key")]  # fmt: skip

    def kill(self, name: str, *programs: str) -> None:
        """SIGKILL, as a Pi that loses power: keepalived sends no goodbye advertisement."""
        plane = self.planes[name]
        for program in programs:
            process = plane.processes.pop(program)
            process.send_signal(signal.SIGKILL)
            process.wait()

    def power_off(self, name: str) -> None:
        """A Pi losing power: every program gone at once, and its link silent. A killed keepalived's
        VRRP child still drops the address and says goodbye; a dead Pi does neither."""
        _run("ip", "-n", self.planes[name].netns, "link", "set", "eth0", "down")
        self.kill(name, *self.planes[name].processes)

    def wait_for(self, what: str, done: Callable[[], bool], timeout_s: float) -> float:
        """Seconds until `done()`; a LabError naming `what` and the logs when it is not by then."""
        start = time.monotonic()
        while not done():
            if time.monotonic() - start > timeout_s:
                logs = "\n".join(
                    f"--- {plane.name} {log.name}:\n{log.read_text(errors='replace')[-1500:]}"
                    for plane in self.planes.values()
                    for log in sorted(plane.folder.glob("*.log"))
                )
                raise LabError(f"not within {timeout_s} s: {what}; holders {self.holders()}\n{logs}")
            time.sleep(0.1)
        return time.monotonic() - start


def missing_requirements() -> list[str]:
    missing = [
        f"{program} (Debian package {package})"
        for program, package in REQUIRED.items()
        if shutil.which(program) is None
    ]
    if os.geteuid() != 0:
        missing.append("root (network namespaces)")
    return missing


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise LabError(f"{' '.join(command)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def virtual_ip_lab(folder: Path) -> Iterator[Lab]:
    """The three control planes on one bridge, each running its API server stand-in, haproxy and
    keepalived with the rendered files; nothing is waited for."""
    missing = missing_requirements()
    if missing:
        raise LabError("the virtual IP lab needs: " + "; ".join(missing))
    cluster = load_cluster(CLUSTER_YAML)
    secrets = fixed_secrets()
    prefix = f"pcvip{os.getpid()}"
    plans = {plan.node: plan for plan in render_cluster(cluster, secrets)}
    planes = {
        node.name: Plane(node.name, node.address.ip, f"{prefix}-{node.name}", folder / node.name)
        for node in cluster.control_planes
    }
    lab = Lab(cluster, prefix, folder, planes, secrets.ca.public_pem)
    folder.mkdir(mode=0o755)
    with ExitStack() as cleanup:
        lan = f"{prefix}-lan"
        for netns in (lan, f"{prefix}-client", *(plane.netns for plane in planes.values())):
            _run("ip", "netns", "add", netns)
            cleanup.callback(subprocess.run, ["ip", "netns", "delete", netns], capture_output=True)
            _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", lan, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", lan, "link", "set", "br0", "up")
        hosts = [(plane.netns, ipaddress.IPv4Interface(f"{plane.address}/24")) for plane in planes.values()]
        for i, (netns, address) in enumerate([*hosts, (f"{prefix}-client", CLIENT)]):
            _run(
                "ip",
                "-n",
                lan,
                "link",
                "add",
                f"port{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                netns,
            )
            _run("ip", "-n", lan, "link", "set", f"port{i}", "master", "br0", "up")
            _run("ip", "-n", netns, "addr", "add", str(address), "dev", "eth0")
            _run("ip", "-n", netns, "link", "set", "eth0", "up")
        ca_key = load_pem_private_key(secrets.ca.key_pem, password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = (ca_key, x509.load_pem_x509_certificate(secrets.ca.public_pem))
        for plane in planes.values():
            _write_plane(plane, {str(e.path): e.data for e in plans[plane.name].files}, ca, lab.vip)
            for program in ("apiserver", "haproxy", "keepalived"):
                lab.start(plane.name, program)
            cleanup.callback(_stop_all, plane)
        yield lab


def _write_plane(
    plane: Plane,
    files: dict[str, bytes],
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    vip: ipaddress.IPv4Address,
) -> None:
    # keepalived's script security refuses a script in a folder others may write to
    plane.folder.mkdir(mode=0o755)
    check = plane.folder / "check-endpoint"
    check.write_bytes(files[CHECK_SCRIPT.lstrip("/")])
    check.chmod(0o755)
    (plane.folder / "cluster-ca.crt").write_bytes(files[CLUSTER_CA.lstrip("/")])
    keepalived = files["etc/keepalived/keepalived.conf"].decode()
    for card, here in ((CHECK_SCRIPT, check), (CLUSTER_CA, plane.folder / "cluster-ca.crt")):
        assert card in keepalived, f"the rendered keepalived.conf no longer names {card}"
        keepalived = keepalived.replace(card, str(here))
    (plane.folder / "keepalived.conf").write_text(keepalived)
    (plane.folder / "haproxy.cfg").write_bytes(files["etc/haproxy/haproxy.cfg"])
    cert_pem, key_pem = make_server_cert(ca, plane.address, vip)
    (plane.folder / "apiserver.crt").write_bytes(cert_pem)
    (plane.folder / "apiserver.key").write_bytes(key_pem)


def _stop_all(plane: Plane) -> None:
    for process in plane.processes.values():
        process.send_signal(signal.SIGKILL)
        process.wait()
    plane.processes.clear()


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        known = self.path in ("/healthz", "/readyz")
        body = b"ok" if known else b"404 page not found\n"
        self.send_response(200 if known else 404)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_api_standin(cert: str, key: str) -> None:
    """The API server stand-in, in the namespace it was started in, until killed."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", API_SERVER_PORT), _Healthz)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    serve_api_standin(*sys.argv[1:3])
