"""Talking to the cluster's API server from the build machine, with requests.

TLS is pinned to the cluster CA (from .picluster/), and picluster authenticates with an admin
client certificate it signs with that CA for the occasion, valid for minutes; nothing is read from
~/.kube. That certificate's key is never on disk: requests reads it, by a /proc/self/fd name, from
an anonymous file in this process's memory, which goes with the process however it ends.
"""

from __future__ import annotations

import base64
import errno
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from builder.errors import UserError
from builder.secrets.pki import ClusterSecrets, KeyPair, make_admin_client, make_etcd_client
from builder.secrets.tokens import token_id

TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
SECRETS = "/api/v1/namespaces/kube-system/secrets"
NODES = "/api/v1/nodes"
PODS = "/api/v1/pods"
DEADLINE_S = 15.0
"""The longest picluster waits for one whole answer: a server that accepts and then stalls, or
sends a byte now and then, never trips requests' own timeout, which counts each wait apart."""
WAIT_S = 5.0
"""requests' timeout: connecting, and each wait for the next bytes."""
CONNECT_FAILURES = {
    errno.ECONNREFUSED: "nothing listens there (connection refused)",
    errno.EHOSTUNREACH: "no route to that address (is the machine on its network?)",
    errno.ENETUNREACH: "no route to that network (is the machine on its network?)",
    errno.ETIMEDOUT: "no answer to the connection (timed out)",
    errno.ECONNRESET: "the connection was reset",
}
"""Why a connection failed, in words, by the errno beneath requests' and urllib3's wrappers."""
OLD_KEY_FILES = {"ca.crt", "admin.crt", "admin.key"}
OLD_KEY_FOLDER_AGE_S = 3600
CERTIFICATE_VALIDITY = timedelta(minutes=10)
"""Ample for one command's requests, and for a cluster whose clock runs a few minutes ahead."""


class Unreachable(Exception):
    """The API server did not answer (or not as the cluster's): the reason is the message."""


@dataclass(frozen=True)
class ClusterAPI:
    endpoint: str
    ca: str
    certificate: tuple[str, str]
    """Where requests reads the admin certificate and its key."""
    deadline: float
    budget: float | None = None
    """All the answers of one command within this many seconds (`status`), None: no limit."""
    started: float = field(default_factory=time.monotonic)

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str | None = None
    ) -> requests.Response:
        """The server's whole answer within the deadline; it is awaited in a thread of its own,
        left behind (a daemon, holding nothing but its socket) when the server stalls."""
        url = f"https://{self.endpoint}{path}"
        answers: list[requests.Response | BaseException] = []

        def ask() -> None:
            try:
                answers.append(self._ask(method, url, body, content_type))
            except BaseException as error:  # raised again in the caller's thread
                answers.append(error)

        wait = self.deadline
        spent = f"the answers took {self.budget or 0:g} s in all (the server is slow)"
        if self.budget is not None:
            wait = min(wait, self.budget - (time.monotonic() - self.started))
            if wait <= 0:
                raise Unreachable(f"{url}: not asked: {spent}")
        asking = threading.Thread(target=ask, daemon=True)
        asking.start()
        asking.join(wait)
        if not answers and wait < self.deadline:
            raise Unreachable(f"{url}: no answer before {spent}")
        if not answers:
            raise Unreachable(f"{url}: no whole answer within {wait:g} s (the server stalls)")
        (answer,) = answers
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _ask(
        self, method: str, url: str, body: dict[str, Any] | None, content_type: str | None
    ) -> requests.Response:
        headers = {"Content-Type": content_type} if content_type else None
        try:
            return requests.request(
                method, url, json=body, headers=headers, verify=self.ca, cert=self.certificate, timeout=WAIT_S
            )
        except requests.exceptions.RequestException as error:
            raise Unreachable(f"{url}: {why_failed(error)}") from None

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when there is none."""
        response = self.request("GET", path)
        if response.status_code == 404:
            return None
        _check(response)
        try:
            result = response.json()
        except ValueError:
            raise Unreachable(
                f"{response.url}: the answer is not JSON (not a Kubernetes API server?)"
            ) from None
        if not isinstance(result, dict):
            raise Unreachable(f"{response.url}: the answer is not a Kubernetes object")
        return result


def why_failed(error: BaseException) -> str:
    """A failed request's cause in words: the first cause beneath the wrappers that has a
    meaning of its own, else the wrapper's name."""
    seen: list[BaseException] = []
    cause: object = error
    while isinstance(cause, BaseException) and cause not in seen:
        seen.append(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS failed: the server's certificate is not this cluster's ({cause.verify_message})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS failed (not this cluster's API server?): {cause.reason or cause}"
        if isinstance(cause, socket.gaierror):
            return "its name does not resolve"
        if isinstance(cause, requests.exceptions.Timeout | TimeoutError):
            return CONNECT_FAILURES[errno.ETIMEDOUT]
        if isinstance(cause, OSError) and cause.errno in CONNECT_FAILURES:
            return CONNECT_FAILURES[cause.errno]
        cause = (
            getattr(cause, "reason", None)
            or cause.__cause__
            or cause.__context__
            or (cause.args[0] if cause.args else None)
        )
    return type(error).__name__


def _check(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise UserError(
            f"the API server refused {response.request.method} {response.url}: "
            f"{response.status_code} {response.text.strip()[:200]}",
            "check that .picluster/ belongs to this cluster",
        )


Connect = Callable[[str, ClusterSecrets], AbstractContextManager[ClusterAPI]]
"""How picluster reaches a server of the cluster (host:port): tests put a stand-in's address in."""


@contextmanager
def connect(
    endpoint: str, secrets: ClusterSecrets, now: datetime | None = None, budget: float | None = None
) -> Iterator[ClusterAPI]:
    """A client for the API server, its admin key in memory only, each answer awaited
    DEADLINE_S at most, and all of them `budget` seconds at most when given."""
    admin = make_admin_client(secrets.ca, now or datetime.now(UTC), CERTIFICATE_VALIDITY)
    with _connect(endpoint, secrets.ca, admin) as server:
        yield replace(server, budget=budget, started=time.monotonic())


@contextmanager
def connect_etcd(endpoint: str, secrets: ClusterSecrets) -> Iterator[ClusterAPI]:
    """A client for a control plane's etcd (its JSON gateway, host:2379), TLS pinned to the etcd
    CA, with a client certificate that CA signs, its key in memory only."""
    client = make_etcd_client(secrets.etcd_ca, datetime.now(UTC), CERTIFICATE_VALIDITY)
    with _connect(endpoint, secrets.etcd_ca, client) as server:
        yield server


@contextmanager
def _connect(endpoint: str, ca: KeyPair, client: KeyPair) -> Iterator[ClusterAPI]:
    remove_old_key_folders(Path(tempfile.gettempdir()))
    with (
        _in_memory("ca.crt", ca.public_pem) as ca_file,
        _in_memory("client.crt", client.public_pem) as certificate,
        _in_memory("client.key", client.key_pem) as key,
    ):
        yield ClusterAPI(endpoint, ca_file, (certificate, key), DEADLINE_S)


def remove_old_key_folders(temporary: Path) -> None:
    """Remove what earlier picluster versions left when killed while they talked to the API
    server: a folder in /tmp holding the CA certificate and a year-long admin key. One younger
    than an hour may be in use by such a version still running."""
    for folder in temporary.glob("picluster-api-*"):
        if folder.is_symlink() or not folder.is_dir():
            continue
        about = folder.lstat()
        if about.st_uid != os.getuid() or time.time() - about.st_mtime < OLD_KEY_FOLDER_AGE_S:
            continue
        files = list(folder.iterdir())
        if {file.name for file in files} <= OLD_KEY_FILES and not any(file.is_symlink() for file in files):
            shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _in_memory(name: str, data: bytes) -> Iterator[str]:
    """A path for `data` that lies in this process's memory: an anonymous file (memfd, closed on
    exec, so no program picluster starts holds it) named through /proc/self/fd."""
    with os.fdopen(os.memfd_create(name), "w+b") as handle:
        handle.write(data)
        handle.flush()
        yield f"/proc/self/fd/{handle.fileno()}"


def token_secret(token: str, node: str, ttl: timedelta, now: datetime) -> dict[str, Any]:
    """A bootstrap token as kubeadm stores one: a bootstrap.kubernetes.io/token Secret."""
    public, private = token.split(".")
    expiration = (now + ttl).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{public}", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": f"picluster: lets {node} join",
            "token-id": public,
            "token-secret": private,
            "expiration": expiration,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": TOKEN_GROUP,
        },
    }


def token_expiry(api: ClusterAPI, token: str) -> datetime | None:
    """When the cluster will drop this token; None when it does not know it."""
    path = _token_path(token)
    secret = api.get(path)
    if secret is None:
        return None
    data = secret.get("data") or {}
    encoded = data.get("expiration") if isinstance(data, dict) else None
    if encoded is None:
        return datetime.max.replace(tzinfo=UTC)
    try:
        expiration = base64.b64decode(encoded).decode()
        return datetime.strptime(expiration, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        raise Unreachable(f"https://{api.endpoint}{path}: its expiration is not a time") from None


def create_token(api: ClusterAPI, token: str, node: str, ttl: timedelta, now: datetime) -> None:
    _check(api.request("POST", SECRETS, token_secret(token, node, ttl, now)))


def delete_token(api: ClusterAPI, token: str) -> None:
    """Revoke a token: the tokencleaner would delete its Secret once it expired; this is sooner."""
    _delete(api, _token_path(token))


def _token_path(token: str) -> str:
    return f"{SECRETS}/bootstrap-token-{token_id(token)}"


def _delete(api: ClusterAPI, path: str) -> None:
    """Delete an object; one already gone (404) is as good."""
    response = api.request("DELETE", path)
    if response.status_code != 404:
        _check(response)


def node_name(item: Any) -> str | None:
    metadata = item.get("metadata") if isinstance(item, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def list_nodes(api: ClusterAPI) -> list[Any]:
    """The cluster's node objects, as they came: status.add_cluster_view reads what it can of each."""
    items = (api.get(NODES) or {}).get("items") or []
    if not isinstance(items, list):
        raise Unreachable(f"https://{api.endpoint}{NODES}: the answer is not a list of nodes")
    return items


def get_node(api: ClusterAPI, name: str) -> dict[str, Any] | None:
    return api.get(f"{NODES}/{name}")


def delete_node(api: ClusterAPI, name: str) -> None:
    _delete(api, f"{NODES}/{name}")


def server_version(api: ClusterAPI) -> str:
    """The release the API server answering runs, as /version's gitVersion says ("v1.34.2")."""
    answer = api.get("/version") or {}
    version = answer.get("gitVersion")
    if not isinstance(version, str):
        raise Unreachable(f"https://{api.endpoint}/version: no gitVersion in the answer")
    return version


def serving_certificate_expiry(api: ClusterAPI) -> datetime:
    """When the API server's own certificate expires, as it shows it in the TLS handshake (pinned
    to the cluster CA): kubeadm signs it for a year, and the control planes renew it."""
    host, port = api.endpoint.rsplit(":", 1)
    context = ssl.create_default_context(cafile=api.ca)
    context.check_hostname = False  # pinned to the cluster's own CA; cards name it by address
    try:
        with (
            socket.create_connection((host, int(port)), timeout=WAIT_S) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            shown = tls.getpeercert()
    except (OSError, ssl.SSLError) as error:
        raise Unreachable(f"https://{api.endpoint}: TLS handshake: {why_failed(error)}") from None
    expires = shown.get("notAfter") if shown else None
    if not isinstance(expires, str):
        raise Unreachable(f"https://{api.endpoint}: the server's certificate shows no expiry")
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(expires), UTC)


def set_unschedulable(api: ClusterAPI, name: str, unschedulable: bool) -> None:
    """Cordon or uncordon a node as kubectl does: a merge patch of spec.unschedulable."""
    patch = {"spec": {"unschedulable": True if unschedulable else None}}
    _check(api.request("PATCH", f"{NODES}/{name}", patch, "application/merge-patch+json"))


def pods_on(api: ClusterAPI, node: str) -> list[dict[str, Any]]:
    """Every pod bound to the node, in every namespace."""
    items = (api.get(f"{PODS}?fieldSelector=spec.nodeName%3D{node}") or {}).get("items") or []
    if not isinstance(items, list):
        raise Unreachable(f"https://{api.endpoint}{PODS}: the answer is not a list of pods")
    return [item for item in items if isinstance(item, dict)]


def evict(api: ClusterAPI, namespace: str, name: str) -> bool:
    """Ask for a pod's eviction (policy/v1), as kubectl drain does; False when a disruption
    budget refuses it for now (429), True when it is under way or the pod is gone."""
    body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": namespace}}
    response = api.request("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body)
    if response.status_code == 429:
        return False
    if response.status_code != 404:
        _check(response)
    return True
