"""Shared fixtures: the repository's bundled cluster.yaml and a deterministic cluster state; the
tiers' rules; the agent's package and the upstream sources where every tier finds them."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest
import yaml

from builder import upstream
from builder.secrets.pki import ClusterSecrets
from tests.support.project import AGENT_LIB, BUNDLED, fixed_secrets
from tests.support.tiers import (  # noqa: F401  the rules of `make test`'s tiers, as hooks of this conftest
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_makereport,
    pytest_terminal_summary,
)
from tests.support.upstream import SHARED

sys.path.insert(0, str(AGENT_LIB))  # the agent's package, `agent`, where it lands on the node
if SHARED.is_dir():
    # the upstream archives picluster builds from, here and in CI beside the clone
    os.environ.setdefault(upstream.LOCAL, str(SHARED))


@pytest.fixture
def secrets() -> ClusterSecrets:
    return fixed_secrets()


@pytest.fixture
def bundled_data() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(BUNDLED.read_text())
    return data
