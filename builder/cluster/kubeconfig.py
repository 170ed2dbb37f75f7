"""An admin kubeconfig for the cluster: its CA, the API endpoint, and a client certificate
signed by the cluster CA; as a file of its own, or merged into a kubeconfig the user keeps.

A file of its own is replaced only while it is exactly as picluster writes one: a kubeconfig that
holds other clusters, or that kubectl has rewritten, holds things picluster must not drop."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import yaml
from cryptography import x509

from builder.errors import UserError
from builder.secrets.pki import ADMIN_VALIDITY, ClusterSecrets, make_admin_client
from builder.spec.model import Cluster

LISTS = ("clusters", "users", "contexts")
KEYS = {"apiVersion", "kind", "preferences", "current-context", "extensions", *LISTS}
"""A kubeconfig's top-level keys (k8s.io/client-go/tools/clientcmd/api/v1 types.go, Config)."""


def admin_kubeconfig(cluster: Cluster, secrets: ClusterSecrets, now: datetime) -> str:
    """A year's admin kubeconfig, or one until the CA ends, if sooner: a certificate that outlives
    the CA that signed it is refused from that day on anyway."""
    ca_end = x509.load_pem_x509_certificate(secrets.ca.public_pem).not_valid_after_utc
    admin = make_admin_client(secrets.ca, now, min(ADMIN_VALIDITY, ca_end - now))
    return _dump(
        _config(
            cluster.cluster.name,
            f"https://{cluster.api_endpoint}",
            _encoded(secrets.ca.public_pem),
            _encoded(admin.public_pem),
            _encoded(admin.key_pem),
        )
    )


def _encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _config(name: str, server: str, ca: str, certificate: str, key: str) -> dict[str, Any]:
    user = f"picluster-admin@{name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"client-certificate-data": certificate, "client-key-data": key}}],
        "contexts": [{"name": user, "context": {"cluster": name, "user": user}}],
        "current-context": user,
    }


def _dump(config: dict[str, Any]) -> str:
    return yaml.safe_dump(config, sort_keys=False)


def written_by_picluster(data: bytes) -> bool:
    """Whether `data` is byte for byte a kubeconfig as admin_kubeconfig writes one (for any
    cluster, endpoint and certificate)."""
    try:
        config = yaml.safe_load(data)
        (entry,), (user,) = config["clusters"], config["users"]
        rebuilt = _config(
            entry["name"],
            entry["cluster"]["server"],
            entry["cluster"]["certificate-authority-data"],
            user["user"]["client-certificate-data"],
            user["user"]["client-key-data"],
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError, RecursionError):
        return False
    return isinstance(rebuilt["clusters"][0]["name"], str) and _dump(rebuilt).encode() == data


def merged_kubeconfig(existing: bytes, ours: str, source: str) -> str:
    """`existing` with this cluster's cluster, user and context entries from `ours` in place of
    its own (or added after the others); every other entry, current-context (unless it has none),
    preferences and extensions are kept as they were. `source` names the file in errors."""
    config = _kubeconfig(existing, source)
    mine = yaml.safe_load(ours)
    for key in ("apiVersion", "kind"):
        config.setdefault(key, mine[key])
    (cluster,) = mine["clusters"]
    name, ca = cluster["name"], cluster["cluster"]["certificate-authority-data"]
    same_name = [kept.get("cluster") for kept in config.get("clusters") or [] if kept.get("name") == name]
    if any(not isinstance(kept, dict) or kept.get("certificate-authority-data") != ca for kept in same_name):
        raise UserError(
            f"{source} already has a cluster named {name} with another CA; merging would "
            "replace it, and its contexts would then reach this cluster",
            f"rename that cluster in {source}, or write a file of its own (-o FILE without --merge)",
        )
    for key in LISTS:
        (entry,) = mine[key]
        entries = config.get(key) or []
        at = next((i for i, kept in enumerate(entries) if kept.get("name") == entry["name"]), len(entries))
        config[key] = [*entries[:at], entry, *entries[at + 1 :]]
    if not config.get("current-context"):
        config["current-context"] = mine["current-context"]
    return _dump(config)


def _kubeconfig(data: bytes, source: str) -> dict[str, Any]:
    """An existing kubeconfig, read; a file that is not one is refused without quoting it (it
    may hold credentials)."""

    def refuse(why: str) -> UserError:
        return UserError(
            f"{source} is not a kubeconfig: {why}; it is left as it is",
            "name a kubeconfig to merge into, or a new file",
        )

    try:
        config = yaml.safe_load(data)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise refuse("not YAML" + (f" (line {mark.line + 1})" if mark else "")) from None
    except RecursionError:
        raise refuse("nested deeper than any kubeconfig") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise refuse("not a mapping")
    if "kind" in config and config["kind"] != "Config":
        raise refuse("its kind is not Config")
    if set(config) - KEYS:  # cluster.yaml, say, which kubectl would read as an empty kubeconfig
        raise refuse("it has keys no kubeconfig has")
    if not set(config) & {"kind", *LISTS}:
        raise refuse("it has neither kind: Config nor clusters, users or contexts")
    for key in LISTS:
        entries = config.get(key) or []
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise refuse(f"{key} is not a list of entries")
    return config
