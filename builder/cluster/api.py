"""Talking to the cluster's API server from the build machine, with requests.

TLS is pinned to the cluster CA (from .picluster/), and picluster authenticates with an admin
client certificate it signs with that CA for the occasion; nothing is read from ~/.kube.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from builder.errors import UserError
from builder.secrets.pki import ClusterSecrets, make_admin_client

TOKEN_GROUP = "system:bootstrappers:kubeadm:default-node-token"
SECRETS = "/api/v1/namespaces/kube-system/secrets"


class Unreachable(Exception):
    """The API server did not answer (or not as the cluster's): the reason is the message."""


@dataclass(frozen=True)
class ClusterAPI:
    endpoint: str
    files: Path  # ca.crt, admin.crt, admin.key
    timeout: float = 5.0

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
        url = f"https://{self.endpoint}{path}"
        try:
            return requests.request(
                method,
                url,
                json=body,
                verify=str(self.files / "ca.crt"),
                cert=(str(self.files / "admin.crt"), str(self.files / "admin.key")),
                timeout=self.timeout,
            )
        except requests.exceptions.SSLError as error:
            raise Unreachable(f"{url}: TLS failed (not this cluster's API server?): {error}") from None
        except requests.exceptions.RequestException as error:
            raise Unreachable(f"{url}: {type(error).__name__}") from None

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None when there is none."""
        response = self.request("GET", path)
        if response.status_code == 404:
            return None
        _check(response)
        result: dict[str, Any] = response.json()
        return result


def _check(response: requests.Response) -> None:
    if response.status_code >= 400:
        raise UserError(
            f"the API server refused {response.request.method} {response.url}: "
            f"{response.status_code} {response.text.strip()[:200]}",
            "check that .picluster/ belongs to this cluster",
        )


@contextmanager
def connect(endpoint: str, secrets: ClusterSecrets, now: datetime | None = None) -> Iterator[ClusterAPI]:
    """A client for the API server; its key material lives in a private temporary folder."""
    admin = make_admin_client(secrets.ca, now or datetime.now(UTC))
    with tempfile.TemporaryDirectory(prefix="picluster-api-") as scratch:
        folder = Path(scratch)
        (folder / "ca.crt").write_bytes(secrets.ca.public_pem)
        (folder / "admin.crt").write_bytes(admin.public_pem)
        (folder / "admin.key").write_bytes(admin.key_pem)
        (folder / "admin.key").chmod(0o600)
        yield ClusterAPI(endpoint, folder)


def token_secret(token: str, ttl: timedelta, now: datetime) -> dict[str, Any]:
    """A bootstrap token as kubeadm stores one: a bootstrap.kubernetes.io/token Secret."""
    token_id, token_secret_part = token.split(".")
    expiration = (now + ttl).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "type": "bootstrap.kubernetes.io/token",
        "stringData": {
            "description": "made by picluster for nodes joining later",
            "token-id": token_id,
            "token-secret": token_secret_part,
            "expiration": expiration,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": TOKEN_GROUP,
        },
    }


def token_expiry(api: ClusterAPI, token: str) -> datetime | None:
    """When the cluster will drop this token; None when it does not know it."""
    secret = api.get(f"{SECRETS}/bootstrap-token-{token.split('.')[0]}")
    if secret is None:
        return None
    encoded = secret.get("data", {}).get("expiration")
    if encoded is None:
        return datetime.max.replace(tzinfo=UTC)
    return datetime.strptime(base64.b64decode(encoded).decode(), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def create_token(api: ClusterAPI, token: str, ttl: timedelta, now: datetime) -> None:
    _check(api.request("POST", SECRETS, token_secret(token, ttl, now)))


def list_nodes(api: ClusterAPI) -> list[dict[str, Any]]:
    nodes = api.get("/api/v1/nodes")
    return list((nodes or {}).get("items", []))
