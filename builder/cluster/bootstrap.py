"""A bootstrap token the running cluster honours, for each node that has none yet (`build`), or
made anew (`token`).

The first build gives every node the token `kubeadm init` will create (valid for
cluster.token_ttl_hours from the first boot). For a node added later, picluster asks the API
server whether the cluster still honours the current token for a while yet, and if not creates
a new one there (a bootstrap.kubernetes.io/token Secret). When the API server cannot be reached,
the current token is used while it is surely valid by its age; past that, the build stops
before writing a card that could not join.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from builder.cluster import api
from builder.errors import UserError
from builder.secrets.pki import ClusterSecrets, new_bootstrap_token
from builder.secrets.tokens import Tokens
from builder.spec.model import Cluster

MARGIN = timedelta(hours=1)
"""Time left on a token for a card written now to be flashed, booted and joined."""


def assign_tokens(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    now: datetime,
    connect: api.Connect = api.connect,
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
    connect: api.Connect,
    say: Callable[[str], None],
) -> Tokens:
    """The current token if the cluster honours it long enough, else a new one made there."""
    ttl = timedelta(hours=cluster.cluster.token_ttl_hours)
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            expiry = api.token_expiry(server, tokens.current)
            if expiry is not None and expiry > now + MARGIN:
                return tokens
            made = _make_token(server, cluster, tokens, now)
    except api.Unreachable as why:
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


def _make_token(server: api.ClusterAPI, cluster: Cluster, tokens: Tokens, now: datetime) -> Tokens:
    """A new token, created on the cluster, becomes the current one."""
    token = new_bootstrap_token()
    api.create_token(server, token, timedelta(hours=cluster.cluster.token_ttl_hours), now)
    return Tokens(token, now, tokens.nodes)


def issue_token(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    now: datetime,
    connect: api.Connect = api.connect,
) -> Tokens:
    """`picluster token`: a new token on the cluster, carried by nodes built from now on."""
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            return _make_token(server, cluster, tokens, now)
    except api.Unreachable as why:
        raise UserError(
            f"cannot reach the API server: {why}", f"run it where https://{cluster.api_endpoint} is reachable"
        ) from None
