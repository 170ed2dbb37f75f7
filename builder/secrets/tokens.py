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
from builder.secrets.store import BOOTSTRAP_TOKEN, TOKENS_FILE
from builder.spec.model import DNS_LABEL, Cluster


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
    except json.JSONDecodeError as error:
        raise _damaged(path, f"not JSON (line {error.lineno}, column {error.colno})") from None
    except (ValueError, RecursionError):  # not UTF-8; nested deeper than any record
        raise _damaged(path, "not JSON") from None
    if not isinstance(raw, dict):
        raise _damaged(path, "not the JSON object picluster writes")
    # name the field, never its value: a damaged record may hold a token anywhere
    problems = [] if _is_token(raw.get("current")) else ["current: not a bootstrap token"]
    issued_at = _utc_time(raw.get("issued_at"))
    if issued_at is None:
        problems.append("issued_at: not an ISO 8601 time with a time zone")
    nodes = raw.get("nodes")
    if not isinstance(nodes, dict):
        problems.append("nodes: not a mapping of node names to bootstrap tokens")
    else:
        named = [name for name, token in nodes.items() if DNS_LABEL.fullmatch(name) and not _is_token(token)]
        problems += [f"nodes.{name}: not a bootstrap token" for name in named]
        unnamed = sum(not DNS_LABEL.fullmatch(name) for name in nodes)
        if unnamed:
            problems.append(f"nodes: {unnamed} {'entry' if unnamed == 1 else 'entries'} under no node name")
    if problems:
        raise _damaged(path, "; ".join(problems))
    assert issued_at is not None and isinstance(nodes, dict)  # either would have been a problem
    return Tokens(raw["current"], issued_at, nodes)


def _is_token(value: object) -> bool:
    return isinstance(value, str) and BOOTSTRAP_TOKEN.fullmatch(value) is not None


def _utc_time(value: object) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    return parsed if parsed is not None and parsed.utcoffset() is not None else None


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
