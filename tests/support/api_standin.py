"""STAND-IN for the Kubernetes API server (which cannot run here): HTTPS with a certificate from
the cluster CA, client certificates required and checked against that CA, and just the calls
picluster and flanneld make. It records every request's client certificate subject.

picluster's calls: /version, list nodes, get one, delete one (`replace`), get a bootstrap-token Secret,
create one, delete one (404 when there is none, as kube-apiserver answers). flanneld v0.10.0's
(subnet/kube/kube.go in shared/upstream/flannel-v0.10.0.tar.xz, with the vendored client-go of
Kubernetes 1.6): list nodes, watch them (a chunked stream of JSON watch events that stays open),
and a strategic-merge patch of nodes/<name>/status that sets its annotations. Nodes get a
spec.podCIDR as kube-controller-manager's node IPAM gives them (register_nodes).

On demand it misbehaves as a broken or foreign server may: it stalls, dribbles its answer, or
answers a list of the nodes with whatever bytes a test gives it.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import ctypes
import http.server
import ipaddress
import json
import os
import socketserver
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from builder.secrets.pki import ClusterSecrets
from tests.support.agent import LOCALHOST, make_server_cert

SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets"
NODES_PATH = "/api/v1/nodes"
ATTACH_DETACH = "volumes.kubernetes.io/controller-managed-attach-detach"
NODE_CIDR_PREFIX = 24
"""kube-controller-manager's node CIDR size when nothing sets one (defaultNodeMaskCIDRIPv4 in
cmd/kube-controller-manager/app/core.go); kubeadm sets none."""
CLONE_NEWNET = 0x40000000
BUILDER = ipaddress.IPv4Address("192.168.50.9")
"""The build machine on the bundled cluster's LAN, where tests serve the cluster's endpoint."""
SLOW_FOR_S = 30
DRIBBLE_S = 0.5
T = TypeVar("T")


@dataclass
class APIStandin:
    address: ipaddress.IPv4Address
    port: int
    nodes: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    version: int = 0
    """The last resourceVersion handed out; every node change takes the next one."""
    events: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    stopped: bool = False
    slow: Literal["", "silent", "dribble"] = ""
    lag: float = 0.0
    """Seconds each GET waits before its answer: a slow server that never stalls."""
    """How it answers a GET or POST, when it misbehaves: "silent" reads the request and says nothing,
    "dribble" sends the headers and then a byte of body every DRIBBLE_S; for SLOW_FOR_S at most."""
    nodes_body: bytes | None = None
    """What it answers to a list of the nodes instead of the list, to try odd answers."""
    pods: list[dict[str, Any]] = field(default_factory=list)
    """Pods as GET /api/v1/pods lists them; an eviction removes one at once (no grace period)."""
    evicted: list[str] = field(default_factory=list)
    unschedulable: list[tuple[str, bool]] = field(default_factory=list)
    """Every cordon (True) and uncordon (False), in order."""
    git_version: str = "v1.34.2"
    """The release /version names, as kube-apiserver answers it (the bundled cluster.yaml's)."""

    @property
    def endpoint(self) -> str:
        return f"{self.address}:{self.port}"

    def add_token(self, token: str, expiration: str) -> None:
        token_id, secret = token.split(".")
        data = {"token-id": token_id, "token-secret": secret, "expiration": expiration}
        self.secrets[f"bootstrap-token-{token_id}"] = {
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        }

    def register_nodes(self, names: Iterable[str], cluster_configuration: dict[str, Any]) -> None:
        """Nodes as their kubelets register them, in this order, each given a spec.podCIDR as
        kube-controller-manager's node IPAM does: the next free /24 of its --cluster-cidr
        (pkg/controller/nodeipam/ipam/range_allocator.go). kubeadm passes --allocate-node-cidrs
        and --cluster-cidr only when the ClusterConfiguration has networking.podSubnet
        (cmd/kubeadm/app/phases/controlplane/manifests.go, getControllerManagerCommand);
        without it no node gets a podCIDR."""
        pod_subnet = cluster_configuration.get("networking", {}).get("podSubnet")
        cidrs = ipaddress.ip_network(pod_subnet).subnets(new_prefix=NODE_CIDR_PREFIX) if pod_subnet else None
        for name in names:
            node = {
                "kind": "Node",
                "apiVersion": "v1",
                # kubelet always annotates its node; flannel v0.10.0 writes into the annotation
                # map it decodes without making one (kube.go, AcquireLease)
                "metadata": {"name": name, "annotations": {ATTACH_DETACH: "true"}},
                "spec": {"podCIDR": str(next(cidrs))} if cidrs else {},
            }
            self.nodes.append(node)
            self._changed("ADDED", node)

    def node(self, name: str) -> dict[str, Any]:
        return next(node for node in self.nodes if node["metadata"]["name"] == name)

    def named(self, name: str) -> dict[str, Any] | None:
        return next((node for node in self.nodes if node["metadata"]["name"] == name), None)

    def delete_node(self, name: str) -> dict[str, Any]:
        with self.changed:
            node = self.node(name)
            self.nodes.remove(node)
            self._changed("DELETED", node)
            return node

    def _changed(self, kind: str, node: dict[str, Any]) -> None:
        with self.changed:
            self.version += 1
            node["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, {"type": kind, "object": copy.deepcopy(node)}))
            self.changed.notify_all()

    def events_after(self, version: int) -> tuple[int, list[dict[str, Any]]]:
        """The watch events after `version`, waiting a little for one; (the last version, events)."""
        with self.changed:
            self.changed.wait_for(lambda: self.stopped or self.version > version, timeout=1)
            return self.version, [event for seen, event in self.events if seen > version]

    def patch_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A strategic-merge patch of nodes/<name>/status; annotations are a map, so the patch's
        keys replace the node's and a null removes one. flanneld patches nothing else; the
        caller refuses any other field."""
        with self.changed:
            node = self.node(name)
            annotations = node["metadata"].setdefault("annotations", {})
            for key, value in patch["metadata"]["annotations"].items():
                if value is None:
                    annotations.pop(key, None)
                else:
                    annotations[key] = value
            self._changed("MODIFIED", node)
            return copy.deepcopy(node)

    def node_list(self) -> dict[str, Any]:
        with self.changed:  # not while a patch changes a node
            listed = {"resourceVersion": str(self.version)}
            return {
                "kind": "NodeList",
                "apiVersion": "v1",
                "metadata": listed,
                "items": copy.deepcopy(self.nodes),
            }

    def wait_stopped(self, seconds: float) -> bool:
        """Wait `seconds` at most for the stand-in to stop; whether it has."""
        with self.changed:
            return self.changed.wait_for(lambda: self.stopped, timeout=seconds)

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


class Server(http.server.ThreadingHTTPServer):
    def server_bind(self) -> None:
        # HTTPServer's looks its address up in DNS (socket.getfqdn), which in a lab's network
        # namespace waits for resolvers it cannot reach; the name is never used
        socketserver.TCPServer.server_bind(self)


def _enter_netns(path: str) -> None:
    """setns(2): this thread, and what it starts from now on, into the network namespace at path."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(path) as namespace:
        if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns into {path}: {os.strerror(error)}")


@contextmanager
def on_a_lan_of_its_own() -> Iterator[ipaddress.IPv4Address]:
    """The test, and every thread and program it starts, in a network namespace of its own where
    BUILDER is the address of a LAN link: the stand-in serves there as the cluster's endpoint,
    since cluster.yaml names an address on the nodes' LAN (a loopback endpoint is refused), and
    whatever is sent to the LAN's other addresses stays in the namespace."""
    name = f"picluster-lan-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for command in (
            ["link", "set", "lo", "up"],
            ["link", "add", "lan0", "type", "veth", "peer", "name", "lan1"],  # a LAN nobody else is on
            ["addr", "add", f"{BUILDER}/24", "dev", "lan0"],
            ["link", "set", "lan0", "up"],
            ["link", "set", "lan1", "up"],
        ):
            subprocess.run(["ip", "-n", name, *command], check=True)
        home = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
        with open(home) as before:
            _enter_netns(f"/run/netns/{name}")
            try:
                yield BUILDER
            finally:
                _enter_netns(f"/proc/self/fd/{before.fileno()}")
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def in_netns(netns: str | None, make: Callable[[], T]) -> T:
    """`make()` run in a network namespace: a socket it opens stays there. Only a thread of its
    own enters the namespace (setns(2) changes the calling thread alone), so the test's threads
    stay where they are."""
    if netns is None:
        return make()
    made: list[T] = []
    failed: list[BaseException] = []

    def enter() -> None:
        try:
            _enter_netns(f"/run/netns/{netns}")
            made.append(make())
        except BaseException as error:
            failed.append(error)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


@contextmanager
def api_standin(
    cluster_secrets: ClusterSecrets,
    folder: Path,
    address: ipaddress.IPv4Address = LOCALHOST,
    port: int = 0,
    netns: str | None = None,
    certificate_days: float = 365,
) -> Iterator[APIStandin]:
    """Serves on `address`, in the network namespace `netns` when given (the lab's control plane),
    with a serving certificate valid `certificate_days` more days."""
    ca_key = load_pem_private_key(cluster_secrets.ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = (ca_key, x509.load_pem_x509_certificate(cluster_secrets.ca.public_pem))
    cert_pem, key_pem = make_server_cert(ca, address, days=certificate_days)
    (folder / "apiserver.crt").write_bytes(cert_pem)
    (folder / "apiserver.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "apiserver.crt", folder / "apiserver.key")
    context.verify_mode = ssl.CERT_REQUIRED  # like kube-apiserver's --client-ca-file, and stricter
    context.load_verify_locations(cadata=cluster_secrets.ca.public_pem.decode())
    state = APIStandin(address=address, port=port)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # a watch is a chunked response, which HTTP/1.0 lacks

        def _client(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            state.clients.append(",".join(f"{k}={v}" for rdn in peer["subject"] for k, v in rdn))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode())

        def _send(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _slow(self) -> None:
            self.close_connection = True
            if state.slow == "silent":
                state.wait_stopped(SLOW_FOR_S)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(SLOW_FOR_S * 10))  # more than it will send
            self.end_headers()
            with contextlib.suppress(OSError):  # the client gave up
                for _ in range(int(SLOW_FOR_S / DRIBBLE_S)):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    if state.wait_stopped(DRIBBLE_S):
                        return

        def _body(self) -> Any:
            return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

        def do_GET(self) -> None:
            self._client()
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            state.wait_stopped(state.lag)
            if state.slow:
                self._slow()
            elif url.path == "/api/v1/pods":
                wanted = query.get("fieldSelector", [""])[0].removeprefix("spec.nodeName=")
                items = [pod for pod in state.pods if pod["spec"]["nodeName"] == wanted]
                self._answer(200, {"kind": "PodList", "apiVersion": "v1", "items": copy.deepcopy(items)})
            elif url.path == "/version":
                major, minor, _ = state.git_version.removeprefix("v").split(".")
                self._answer(200, {"major": major, "minor": minor, "gitVersion": state.git_version})
            elif url.path == NODES_PATH and query.get("watch") == ["true"]:
                self._watch(int(query.get("resourceVersion", ["0"])[0] or 0))
            elif url.path == NODES_PATH and state.nodes_body is not None:
                self._send(200, state.nodes_body)
            elif url.path == NODES_PATH:
                self._answer(200, state.node_list())
            elif url.path.startswith(NODES_PATH + "/") and state.named(url.path.split("/")[-1]):
                self._answer(200, state.node(url.path.split("/")[-1]))
            elif url.path.startswith(SECRETS_PATH + "/") and url.path.split("/")[-1] in state.secrets:
                self._answer(200, state.secrets[url.path.split("/")[-1]])
            else:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})

        def _watch(self, version: int) -> None:
            """Events as newline-separated JSON in HTTP chunks until the stand-in stops, as
            kube-apiserver streams a watch (client-go's StreamWatcher reads one object at a time)."""
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.close_connection = True
            try:
                while not state.stopped:
                    version, events = state.events_after(version)
                    for event in events:
                        data = json.dumps(event).encode() + b"\n"
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except OSError:  # ssl.SSLError among them
                pass  # the client went away: flanneld stopped

        def do_PATCH(self) -> None:
            self._client()
            patch = self._body()
            parts = urlsplit(self.path).path.split("/")
            names = [node["metadata"]["name"] for node in state.nodes]
            if parts[:4] == NODES_PATH.split("/") and parts[5:] == [] and parts[4] in names:
                self._cordon(parts[4], patch)
            elif parts[:4] != NODES_PATH.split("/") or parts[5:] != ["status"] or parts[4] not in names:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})
            elif self.headers["Content-Type"] != "application/strategic-merge-patch+json":
                self._answer(415, {"kind": "Status", "reason": "UnsupportedMediaType"})
            elif set(patch) != {"metadata"} or set(patch["metadata"]) != {"annotations"}:
                self._answer(422, {"kind": "Status", "reason": "Invalid",
                                   "message": "the stand-in applies annotation changes only"})  # fmt: skip
            else:
                self._answer(200, state.patch_status(parts[4], patch))

        def _cordon(self, name: str, patch: dict[str, Any]) -> None:
            """kubectl cordon's merge patch of spec.unschedulable (null removes it)."""
            if self.headers["Content-Type"] != "application/merge-patch+json":
                self._answer(415, {"kind": "Status", "reason": "UnsupportedMediaType"})
            elif set(patch) != {"spec"} or set(patch["spec"]) != {"unschedulable"}:
                self._answer(422, {"kind": "Status", "reason": "Invalid",
                                   "message": "the stand-in applies spec.unschedulable only"})  # fmt: skip
            else:
                value = bool(patch["spec"]["unschedulable"])
                state.unschedulable.append((name, value))
                with state.changed:
                    node = state.node(name)
                    node["spec"]["unschedulable"] = value
                    if not value:
                        node["spec"].pop("unschedulable")
                    state._changed("MODIFIED", node)
                self._answer(200, copy.deepcopy(state.node(name)))

        def do_DELETE(self) -> None:
            """kube-apiserver answers a deleted Secret with a Status and a deleted Node with the
            object as it was (200), a missing one with 404 NotFound
            (staging/src/k8s.io/apiserver/pkg/endpoints/handlers/delete.go)."""
            self._client()
            path = urlsplit(self.path).path
            secret = path.removeprefix(SECRETS_PATH + "/")
            node = path.removeprefix(NODES_PATH + "/")
            if secret != path and "/" not in secret and state.secrets.pop(secret, None) is not None:
                state.deleted.append(secret)
                self._answer(200, {"kind": "Status", "status": "Success"})
            elif node != path and "/" not in node and state.named(node):
                self._answer(200, state.delete_node(node))
            else:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})

        def do_POST(self) -> None:
            self._client()
            body = self._body()
            if state.slow:
                self._slow()
                return
            if self.path.endswith("/eviction"):
                self._evict(body)
                return
            if self.path != SECRETS_PATH:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})
                return
            state.created.append(body)
            data = body.get("stringData", {})
            state.secrets[body["metadata"]["name"]] = {
                "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            }
            self._answer(201, body)

        def _evict(self, eviction: dict[str, Any]) -> None:
            """policy/v1 Eviction: 201 and the pod gone; 404 for a pod there is none of."""
            where = (eviction["metadata"]["namespace"], eviction["metadata"]["name"])
            pod = next(
                (p for p in state.pods if (p["metadata"]["namespace"], p["metadata"]["name"]) == where), None
            )
            if pod is None:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})
                return
            state.pods.remove(pod)
            state.evicted.append("/".join(where))
            self._answer(201, {"kind": "Status", "status": "Success"})

        def log_message(self, *args: Any) -> None:
            pass

    server = in_netns(netns, lambda: Server((str(address), port), Handler))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        state.stop()
        server.shutdown()
        server.server_close()
