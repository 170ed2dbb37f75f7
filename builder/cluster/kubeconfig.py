"""An admin kubeconfig for the cluster: its CA, the API endpoint, and a client certificate
signed by the cluster CA."""

from __future__ import annotations

import base64
from datetime import datetime

import yaml

from builder.secrets.pki import ClusterSecrets, make_admin_client
from builder.spec.model import Cluster


def admin_kubeconfig(cluster: Cluster, secrets: ClusterSecrets, now: datetime) -> str:
    admin = make_admin_client(secrets.ca, now)
    name = cluster.cluster.name
    user = f"picluster-admin@{name}"

    def encoded(data: bytes) -> str:
        return base64.b64encode(data).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": f"https://{cluster.api_endpoint}",
                    "certificate-authority-data": encoded(secrets.ca.public_pem),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": encoded(admin.public_pem),
                    "client-key-data": encoded(admin.key_pem),
                },
            }
        ],
        "contexts": [{"name": user, "context": {"cluster": name, "user": user}}],
        "current-context": user,
    }
    return yaml.safe_dump(config, sort_keys=False)
