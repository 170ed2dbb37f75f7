"""Which bootstrap token each node's card carries, and a fresh one when a new node needs it.

Every node keeps the token it was first built with, so adding a node changes no other card.
The first build gives every node the token `kubeadm init` will create (valid for
cluster.token_ttl_hours from the first boot). For a node added later, picluster asks the API
server whether the cluster still honours the current token for a while yet, and if not creates
a new one there (a bootstrap.kubernetes.io/token Secret). When the API server cannot be reached,
the current token is used while it is surely valid by its age; past that, the build stops
before writing a card that could not join.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from builder import cluster_api
from builder.errors import UserError
from builder.files import write_atomic
from builder.model import Cluster
from builder.pki import ClusterSecrets, new_bootstrap_token
from builder.state import BOOTSTRAP_TOKEN

TOKENS_FILE = "tokens.json"
MARGIN = timedelta(hours=1)
"""Time left on a token for a card written now to be flashed, booted and joined."""

Connect = Callable[[str, ClusterSecrets], AbstractContextManager[cluster_api.ClusterAPI]]


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


def assign_tokens(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    now: datetime,
    connect: Connect = cluster_api.connect,
    say: Callable[[str], None] = lambda text: None,
) -> Tokens:
    """Give every node in cluster.yaml a token; only nodes without one get one."""
    new = [node.name for node in cluster.nodes if node.name not in tokens.nodes]
    if not new:
        return tokens
    if tokens.nodes:  # a cluster may be running: the new nodes need a token it honours
        tokens = _live_token(cluster, secrets, tokens, new, now, connect, say)
    return replace(tokens, nodes={**tokens.nodes, **dict.fromkeys(new, tokens.current)})


def _live_token(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    new: list[str],
    now: datetime,
    connect: Connect,
    say: Callable[[str], None],
) -> Tokens:
    """The current token if the cluster honours it long enough, else a new one made there."""
    ttl = timedelta(hours=cluster.cluster.token_ttl_hours)
    try:
        with connect(cluster.api_endpoint, secrets) as api:
            expiry = cluster_api.token_expiry(api, tokens.current)
            if expiry is not None and expiry > now + MARGIN:
                return tokens
            made = _make_token(api, cluster, tokens, now)
    except cluster_api.Unreachable as why:
        if now + MARGIN <= tokens.issued_at + ttl:
            say(f"the API server did not answer ({why}); {', '.join(new)} carry token {tokens.current_id}, "
                f"valid until {(tokens.issued_at + ttl):%Y-%m-%d %H:%M} UTC at the latest")  # fmt: skip
            return tokens
        age = int((now - tokens.issued_at).total_seconds() // 3600)
        raise UserError(
            f"{', '.join(new)} would join with bootstrap token {tokens.current_id}, made {age} h ago, "
            f"past its {cluster.cluster.token_ttl_hours} h lifetime, and the API server cannot be "
            f"asked for a new one: {why}",
            f"run the build where https://{cluster.api_endpoint} is reachable (or `picluster token` "
            "there first); no card that could not join was written. If no node of this cluster has "
            "booted yet, remove .picluster/tokens.json instead: kubeadm init makes the token anew",
        ) from None
    say(f"made bootstrap token {made.current_id} on the cluster for {', '.join(new)}")
    return made


def _make_token(api: cluster_api.ClusterAPI, cluster: Cluster, tokens: Tokens, now: datetime) -> Tokens:
    """A new token, created on the cluster, becomes the current one."""
    token = new_bootstrap_token()
    cluster_api.create_token(api, token, timedelta(hours=cluster.cluster.token_ttl_hours), now)
    return Tokens(token, now, tokens.nodes)


def issue_token(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    now: datetime,
    connect: Connect = cluster_api.connect,
) -> Tokens:
    """`picluster token`: a new token on the cluster, carried by nodes built from now on."""
    try:
        with connect(cluster.api_endpoint, secrets) as api:
            return _make_token(api, cluster, tokens, now)
    except cluster_api.Unreachable as why:
        raise UserError(
            f"cannot reach the API server: {why}", f"run it where https://{cluster.api_endpoint} is reachable"
        ) from None
