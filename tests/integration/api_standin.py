"""STAND-IN for the Kubernetes API server (which cannot run here): HTTPS on 127.0.0.1 with a
certificate from the cluster CA, client certificates required and checked against that CA, and
just the calls picluster makes: list nodes, get a bootstrap-token Secret, create one. It records
every request and the client certificate's subject."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from builder.pki import ClusterSecrets
from tests.agent_support import make_server_cert

SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets"


@dataclass
class APIStandin:
    port: int
    nodes: list[dict[str, Any]] = field(default_factory=list)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def add_token(self, token: str, expiration: str) -> None:
        token_id, secret = token.split(".")
        data = {"token-id": token_id, "token-secret": secret, "expiration": expiration}
        self.secrets[f"bootstrap-token-{token_id}"] = {
            "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
        }


@contextmanager
def api_standin(cluster_secrets: ClusterSecrets, folder: Path) -> Iterator[APIStandin]:
    ca_key = load_pem_private_key(cluster_secrets.ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = (ca_key, x509.load_pem_x509_certificate(cluster_secrets.ca.public_pem))
    cert_pem, key_pem = make_server_cert(ca)
    (folder / "apiserver.crt").write_bytes(cert_pem)
    (folder / "apiserver.key").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "apiserver.crt", folder / "apiserver.key")
    context.verify_mode = ssl.CERT_REQUIRED  # like kube-apiserver's --client-ca-file, and stricter
    context.load_verify_locations(cadata=cluster_secrets.ca.public_pem.decode())
    state = APIStandin(port=0)

    class Handler(http.server.BaseHTTPRequestHandler):
        def _client(self) -> None:
            peer = self.connection.getpeercert()  # type: ignore[attr-defined]
            state.clients.append(",".join(f"{k}={v}" for rdn in peer["subject"] for k, v in rdn))

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._client()
            if self.path == "/api/v1/nodes":
                self._answer(200, {"kind": "NodeList", "items": state.nodes})
            elif self.path.startswith(SECRETS_PATH + "/") and self.path.split("/")[-1] in state.secrets:
                self._answer(200, state.secrets[self.path.split("/")[-1]])
            else:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})

        def do_POST(self) -> None:
            self._client()
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != SECRETS_PATH:
                self._answer(404, {"kind": "Status", "reason": "NotFound"})
                return
            state.created.append(body)
            data = body.get("stringData", {})
            state.secrets[body["metadata"]["name"]] = {
                "data": {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            }
            self._answer(201, body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
