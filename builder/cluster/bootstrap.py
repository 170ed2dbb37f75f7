"""Each node's bootstrap token, kept honoured by the running cluster while the node has not
joined (`build`), made anew for one node (`token`), and deleted there once its node has left
cluster.yaml.

The first build gives every node a token of its own, which the first control plane's `kubeadm
init` makes, each valid for the join window (builder.secrets.tokens). From then on, when a node
was added or removed or a token may lapse within a day (by the record: a build with nothing to
renew needs no network), `build` asks the API server which nodes have joined and, for every other
one, whether the cluster still honours its token for a day yet; a node added since, or whose
token has expired, was deleted or expires within a day, gets a new one made there, valid for the
join window, and so a new card.
The token of a node no longer in cluster.yaml is deleted on the cluster: its card no longer
joins. A joined node keeps its record. When the API server cannot be reached, every recorded
node keeps its token (nothing can be checked); a node that has none stops the build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from builder.cluster import api
from builder.errors import UserError
from builder.secrets.pki import ClusterSecrets, new_bootstrap_token
from builder.secrets.tokens import Tokens, first_build, token_id
from builder.spec.model import Cluster

RENEW_WITHIN = timedelta(days=1)
"""A token with less left than this is renewed: time for a card written now to be flashed,
booted and joined."""

ALL_JOINED = datetime.max.replace(tzinfo=UTC)
"""When to ask the cluster again once every node has joined: never, unless cluster.yaml changes."""

Say = Callable[[str], None]


@dataclass(frozen=True)
class Waiting:
    """A node of cluster.yaml that has not joined, and its card's token as the cluster knows it."""

    node: str
    token_id: str
    expiry: datetime | None
    """None: the cluster does not know the token (it expired and was cleaned up, or was deleted)."""

    def lapses(self, now: datetime) -> bool:
        """The cluster will not honour the token a day from now."""
        return self.expiry is None or self.expiry <= now + RENEW_WITHIN

    def describe(self, now: datetime) -> str:
        if self.expiry is None:
            state = "the cluster does not know it (expired or revoked)"
        elif self.expiry <= now:
            state = f"it expired {self.expiry:%Y-%m-%d %H:%M} UTC"
        else:
            state = f"it expires {self.expiry:%Y-%m-%d %H:%M} UTC"
        return f"{self.node} has not joined and its card's bootstrap token {self.token_id}: {state}"


def waiting(server: api.ClusterAPI, cluster: Cluster, tokens: Tokens) -> list[Waiting]:
    """The nodes with a recorded token that have not joined, but the first control plane while
    its card runs `kubeadm init`."""
    joined = {api.node_name(item) for item in api.list_nodes(server)}
    return [
        Waiting(
            node.name, token_id(tokens.nodes[node.name]), api.token_expiry(server, tokens.nodes[node.name])
        )
        for node in cluster.nodes
        if node.name in tokens.nodes and node.name != tokens.runs_init(cluster) and node.name not in joined
    ]


def lapsing(server: api.ClusterAPI, cluster: Cluster, tokens: Tokens, now: datetime) -> list[Waiting]:
    """The nodes not joined whose token will not let them join a day from now."""
    return [item for item in waiting(server, cluster, tokens) if item.lapses(now)]


def assign_tokens(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    now: datetime,
    connect: api.Connect = api.connect,
    say: Say = lambda text: None,
) -> Tokens:
    """Every node in cluster.yaml with a token the cluster honours, or will make at init. The
    cluster is asked only when a node was added or removed, or a token may lapse within a day:
    a build with nothing to renew needs no network."""
    if not tokens.nodes:
        return replace(first_build(cluster, secrets), recheck_at=now + cluster.join_window)
    new = [node.name for node in cluster.nodes if node.name not in tokens.nodes]
    removed = set(tokens.nodes) - {node.name for node in cluster.nodes}
    if not new and not removed and tokens.recheck_at is not None and tokens.recheck_at > now + RENEW_WITHIN:
        return tokens
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            tokens = _revoke_removed(server, cluster, tokens, say)
            nodes = waiting(server, cluster, tokens)
            renew = [item for item in nodes if item.lapses(now)]
            for name in new + [item.node for item in renew]:
                tokens = _make_token(server, cluster, tokens, name, now)
            for item in renew:
                say(f"{item.describe(now)}; made it a new one: reflash {item.node} once it is built")
            if new:
                say(f"made bootstrap tokens on the cluster for {', '.join(new)}")
            made = [now + cluster.join_window] if new or renew else []
            kept = [item.expiry for item in nodes if item.expiry is not None and not item.lapses(now)]
            return replace(tokens, recheck_at=min(made + kept, default=ALL_JOINED))
    except api.Unreachable as why:
        if new:
            raise UserError(
                f"{', '.join(new)} {'needs' if len(new) == 1 else 'need'} a bootstrap token made on the "
                f"cluster, and the API server cannot be asked: {why}",
                f"run the build where https://{cluster.api_endpoint} is reachable; no card that could not "
                "join was written. If no node of this cluster has booted yet, remove "
                ".picluster/tokens.json instead: the first control plane's card then makes every token",
            ) from None
        say(f"the API server did not answer ({why}); every card keeps its bootstrap token unchecked")
        return tokens


def _revoke_removed(server: api.ClusterAPI, cluster: Cluster, tokens: Tokens, say: Say) -> Tokens:
    """Delete on the cluster the token of every node no longer in cluster.yaml (but one a node
    that stays still carries, as a record from before per-node tokens shares one)."""
    kept = {node.name: tokens.nodes[node.name] for node in cluster.nodes if node.name in tokens.nodes}
    for name, token in sorted(tokens.nodes.items()):
        if name not in kept and token not in kept.values():
            api.delete_token(server, token)
            say(f"deleted bootstrap token {token_id(token)} on the cluster: {name} left cluster.yaml")
    return replace(tokens, nodes=kept)


def _make_token(server: api.ClusterAPI, cluster: Cluster, tokens: Tokens, node: str, now: datetime) -> Tokens:
    """A new token for `node`, made on the cluster for the join window; the one it replaces is
    deleted there unless another node carries it."""
    token = new_bootstrap_token()
    api.create_token(server, token, node, cluster.join_window, now)
    old = tokens.nodes.get(node)
    nodes = {**tokens.nodes, node: token}
    if old is not None and old not in nodes.values():
        api.delete_token(server, old)
    return replace(tokens, nodes=nodes)


def issue_token(
    cluster: Cluster,
    secrets: ClusterSecrets,
    tokens: Tokens,
    node: str,
    now: datetime,
    connect: api.Connect = api.connect,
) -> Tokens:
    """`picluster token NODE`: a new token for the node, made on the cluster; its card is then
    rebuilt with it."""
    try:
        with connect(cluster.api_endpoint, secrets) as server:
            return _make_token(server, cluster, tokens, node, now)
    except api.Unreachable as why:
        raise UserError(
            f"cannot reach the API server: {why}", f"run it where https://{cluster.api_endpoint} is reachable"
        ) from None
