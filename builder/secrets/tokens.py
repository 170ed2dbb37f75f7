"""Which bootstrap token each node's card carries: `.picluster/tokens.json`, kept with the secrets.

Every node keeps the token it was first built with, so adding a node changes no other card. This
module only keeps the record; making a token the running cluster honours is
builder.cluster.bootstrap's job, and only `build` and `token` do it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import UserError
from builder.files import write_atomic
from builder.secrets.pki import ClusterSecrets
from builder.secrets.store import BOOTSTRAP_TOKEN
from builder.spec.model import Cluster

TOKENS_FILE = "tokens.json"


@dataclass(frozen=True)
class Tokens:
    current: str
    issued_at: datetime
    nodes: dict[str, str] = field(default_factory=dict)

    @property
    def current_id(self) -> str:
        return self.current.split(".")[0]


def load_tokens(state_dir: Path, secrets: ClusterSecrets) -> Tokens:
    """The token record; a state folder from before it existed starts from its one token."""
    path = state_dir / TOKENS_FILE
    if not path.exists():
        token_file = state_dir / "bootstrap-token"
        issued = (
            datetime.fromtimestamp(token_file.stat().st_mtime, UTC)
            if token_file.exists()
            else datetime.now(UTC)
        )
        return Tokens(secrets.bootstrap_token, issued)
    try:
        raw = json.loads(path.read_bytes())
        tokens = Tokens(raw["current"], datetime.fromisoformat(raw["issued_at"]), dict(raw["nodes"]))
        issued_at_is_utc = tokens.issued_at.utcoffset() is not None
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise _damaged(path, f"not the record picluster writes ({type(error).__name__}: {error})") from None
    wrong = [
        name for name, token in {"current": tokens.current, **tokens.nodes}.items()
        if not isinstance(token, str) or not BOOTSTRAP_TOKEN.fullmatch(token)
    ]  # fmt: skip
    if wrong or not issued_at_is_utc:
        what = f"malformed bootstrap token for {', '.join(wrong)}" if wrong else "issued_at has no time zone"
        raise _damaged(path, what)
    return tokens


def _damaged(path: Path, what: str) -> UserError:
    return UserError(
        f"{path} is damaged: {what}; it records which bootstrap token each node's card carries",
        "restore it from your backup of the state folder (picluster restore FILE)",
    )


def save_tokens(state_dir: Path, tokens: Tokens) -> None:
    text = json.dumps(
        {"current": tokens.current, "issued_at": tokens.issued_at.isoformat(), "nodes": tokens.nodes},
        indent=2,
        sort_keys=True,
    )
    write_atomic(state_dir / TOKENS_FILE, text.encode() + b"\n", 0o600)


def for_cards(cluster: Cluster, tokens: Tokens) -> tuple[dict[str, str], list[str]]:
    """The token each node's card carries as recorded, and the nodes that have none yet: those
    are shown with the current token, which `build` may yet replace by one the cluster honours."""
    new = [node.name for node in cluster.nodes if node.name not in tokens.nodes]
    return {**tokens.nodes, **dict.fromkeys(new, tokens.current)}, new
