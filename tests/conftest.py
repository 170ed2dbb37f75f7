"""Shared fixtures: the repository's bundled cluster.yaml and a deterministic cluster state."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from builder.secrets.pki import ClusterSecrets, make_secrets
from tests.tiers import (  # noqa: F401  the rules of `make test`'s tiers, as hooks of this conftest
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)

REPO = Path(__file__).resolve().parent.parent
AGENT_LIB = REPO / "overlays/common/usr/lib/picluster"
sys.path.insert(0, str(AGENT_LIB))  # the agent's package, `agent`, where it lands on the node
BUNDLED = REPO / "cluster.yaml"
FIXED_TIME = datetime(2026, 1, 1, tzinfo=UTC)
FIXED_TOKEN = "abcdef.0123456789abcdef"


def fixed_secrets() -> ClusterSecrets:
    """Secrets that are the same on every run: derived keys, fixed time, deterministic signatures."""
    seeds = iter(range(1001, 1100))
    return make_secrets(
        FIXED_TIME,
        key_factory=lambda: ec.derive_private_key(next(seeds) * 7919, ec.SECP256R1()),
        token=FIXED_TOKEN,
    )


@pytest.fixture
def secrets() -> ClusterSecrets:
    return fixed_secrets()


@pytest.fixture
def bundled_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BUNDLED.read_text())
    return data


def file_contents(folder: Path) -> dict[str, bytes]:
    """Every regular file below a folder, by relative path: to show that nothing changed."""
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in found}
