"""A project as picluster leaves it once its cards are built (cluster.yaml, and the state folder
with its tokens), and a node as the API server lists it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from builder.secrets import store
from builder.secrets.tokens import TOKENS_FILE
from tests.support.project import BUNDLED, FIXED_TOKEN, fixed_secrets

OLD_TOKEN = FIXED_TOKEN


def project(tmp_path: Path, endpoint: str, record: dict[str, Any] | None = None) -> Path:
    """A cluster.yaml with three nodes already built, and its .picluster/ with `record` as its
    tokens.json (by default one from before per-node tokens: every node on one shared token)."""
    folder = tmp_path / "project"
    folder.mkdir()
    data = yaml.safe_load(BUNDLED.read_text())
    data["cluster"]["control_plane_endpoint"] = endpoint
    (folder / "cluster.yaml").write_text(yaml.safe_dump(data))
    store.save(folder / ".picluster", fixed_secrets())
    shared = {
        "current": OLD_TOKEN,
        "issued_at": (datetime.now(UTC) - timedelta(days=3)).isoformat(),
        "nodes": dict.fromkeys(["cp1", "w1", "w2"], OLD_TOKEN),
    }
    (folder / ".picluster" / TOKENS_FILE).write_text(json.dumps(record or shared))
    return folder / "cluster.yaml"


def node_item(name: str, ready: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": ready}],
            "nodeInfo": {"kubeletVersion": "v1.34.2"},
            "addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}],
        },
    }
