"""Which bootstrap token each node's card carries: `.picluster/tokens.json`, kept with the secrets.

Every node has a token of its own, which the cluster honours for the join window
(cluster.join_window_days) and `build` renews while the node has not joined: so a card joins
whenever it is first booted, and removing a node from cluster.yaml revokes its token alone. The
first build's tokens are made by `kubeadm init` on the first control plane (listed in its
InitConfiguration, `at_init`); a node added later gets one made on the running cluster. Every node
keeps its token until it is renewed, so adding a node changes no other card. This module only
keeps the record; making and deleting tokens on the running cluster is
builder.cluster.bootstrap's job, and only `build` and `token` do it.

A record from before per-node tokens (`current`, `issued_at`, every node on one shared token)
still loads: its nodes keep the shared token, which the first control plane's card still makes;
`current` and `issued_at` are dropped when the record is next written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from builder.errors import UserError
from builder.files import NotRegularFile, open_regular, write_atomic
from builder.secrets.pki import TOKEN_ALPHABET, ClusterSecrets
from builder.secrets.store import BOOTSTRAP_TOKEN, TOKENS_FILE
from builder.spec.model import DNS_LABEL, Cluster

FIRST_JOINS = "first_control_plane_joins"


@dataclass(frozen=True)
class Tokens:
    nodes: dict[str, str] = field(default_factory=dict)
    """Each node's bootstrap token, as its card carries it."""
    at_init: tuple[str, ...] = ()
    """The tokens the first control plane's `kubeadm init` makes: the first build's nodes'."""
    recheck_at: datetime | None = None
    """When the first token of a node not joined may lapse, as last known (datetime.max: every
    node has joined); `build` asks the cluster only from a day before. None: not known."""
    first_joins: bool = False
    """The first control plane's card joins the running cluster as another control plane would:
    its first card was replaced (`picluster replace`), and `kubeadm init` again would start a
    second cluster with the same CA."""

    def runs_init(self, cluster: Cluster) -> str | None:
        return init_node_name(cluster, self.first_joins)


def init_node_name(cluster: Cluster, first_joins: bool) -> str | None:
    """The node whose card runs `kubeadm init`, if one still does: none once the first control
    plane's cards join (Tokens.first_joins)."""
    return None if first_joins else cluster.init_node.name


def token_id(token: str) -> str:
    """The public half of a token: what messages name it by."""
    return token.split(".")[0]


def first_build(cluster: Cluster, secrets: ClusterSecrets) -> Tokens:
    """The tokens of a cluster no node of which has booted: one per node, derived from the
    cluster's secret token and the node's name, so `render` shows what `build` will record. The
    first control plane runs `kubeadm init` and needs none; its card makes the others'."""
    nodes = {node.name: _derived_token(secrets, node.name) for node in cluster.nodes}
    return Tokens(nodes, tuple(nodes[n.name] for n in cluster.nodes if n.name != cluster.init_node.name))


def _derived_token(secrets: ClusterSecrets, name: str) -> str:
    digest = hmac.new(secrets.bootstrap_token.encode(), name.encode(), hashlib.sha256).digest()
    number, letters = int.from_bytes(digest), []
    for _ in range(22):
        number, digit = divmod(number, len(TOKEN_ALPHABET))
        letters.append(TOKEN_ALPHABET[digit])
    return f"{''.join(letters[:6])}.{''.join(letters[6:])}"


def load_tokens(state_dir: Path, secrets: ClusterSecrets) -> Tokens:
    """The token record; empty before the first build (or in a state folder from before it)."""
    path = state_dir / TOKENS_FILE
    if not path.exists():
        return Tokens()
    try:
        with open_regular(path) as handle:  # a FIFO would block, a folder is no record
            raw = json.loads(handle.read())
    except NotRegularFile as error:
        raise _damaged(path, str(error).removeprefix(f"{path} is ")) from None
    except json.JSONDecodeError as error:
        raise _damaged(path, f"not JSON (line {error.lineno}, column {error.colno})") from None
    except OSError as error:
        raise UserError(
            f"cannot read {path}: {error.strerror}", "run picluster as the state folder's owner"
        ) from None
    except (ValueError, RecursionError):  # not UTF-8; nested deeper than any record
        raise _damaged(path, "not JSON") from None
    if not isinstance(raw, dict):
        raise _damaged(path, "not the JSON object picluster writes")
    # name the field, never its value: a damaged record may hold a token anywhere
    problems = _shared_token_problems(raw) if "at_init" not in raw else []
    at_init = raw.get("at_init", [secrets.bootstrap_token])
    if not isinstance(at_init, list) or not all(_is_token(token) for token in at_init):
        problems.append("at_init: not a list of bootstrap tokens")
    nodes = raw.get("nodes")
    if not isinstance(nodes, dict):
        problems.append("nodes: not a mapping of node names to bootstrap tokens")
    else:
        named = [name for name, token in nodes.items() if DNS_LABEL.fullmatch(name) and not _is_token(token)]
        problems += [f"nodes.{name}: not a bootstrap token" for name in named]
        unnamed = sum(not DNS_LABEL.fullmatch(name) for name in nodes)
        if unnamed:
            problems.append(f"nodes: {unnamed} {'entry' if unnamed == 1 else 'entries'} under no node name")
    recheck_at = _utc_time(raw.get("recheck_at"))
    if "recheck_at" in raw and recheck_at is None:
        problems.append("recheck_at: not an ISO 8601 time with a time zone")
    first_joins = raw.get(FIRST_JOINS, False)
    if not isinstance(first_joins, bool):
        problems.append(f"{FIRST_JOINS}: not true or false")
    if problems:
        raise _damaged(path, "; ".join(problems))
    assert isinstance(nodes, dict)  # else it would have been a problem
    return Tokens(nodes, tuple(at_init), recheck_at, first_joins)


def _shared_token_problems(raw: dict[str, object]) -> list[str]:
    """A record from before per-node tokens: its shared token and when it was made."""
    problems = [] if _is_token(raw.get("current")) else ["current: not a bootstrap token"]
    if _utc_time(raw.get("issued_at")) is None:
        problems.append("issued_at: not an ISO 8601 time with a time zone")
    return problems


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
    record: dict[str, object] = {"nodes": tokens.nodes, "at_init": list(tokens.at_init)}
    if tokens.recheck_at is not None:
        record["recheck_at"] = tokens.recheck_at.isoformat()
    if tokens.first_joins:
        record[FIRST_JOINS] = True
    text = json.dumps(record, indent=2, sort_keys=True)
    write_atomic(state_dir / TOKENS_FILE, text.encode() + b"\n", 0o600)


def for_cards(cluster: Cluster, secrets: ClusterSecrets, tokens: Tokens) -> tuple[Tokens, list[str]]:
    """The tokens the cards carry as recorded, and the nodes that have none yet. Before the first
    build, every node is shown with the token it will get; after it, a node added since is shown
    with a stand-in that `build` replaces by one made on the cluster."""
    if not tokens.nodes:
        return first_build(cluster, secrets), []
    new = [node.name for node in cluster.nodes if node.name not in tokens.nodes]
    shown = first_build(cluster, secrets).nodes
    return replace(tokens, nodes={**tokens.nodes, **{name: shown[name] for name in new}}), new
