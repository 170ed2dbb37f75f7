"""The repository's bundled project, secrets that are the same on every run, and a folder's files."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from builder.secrets.pki import ClusterSecrets, make_secrets

REPO = Path(__file__).resolve().parents[2]
AGENT_LIB = REPO / "overlays/common/usr/lib/picluster"
"""Where the agent's package, `agent`, lands on the node; tests/conftest.py puts it on sys.path."""
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


def file_contents(folder: Path) -> dict[str, bytes]:
    """Every regular file below a folder, by relative path: to show that nothing changed."""
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in found}
