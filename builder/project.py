"""A project: one cluster.yaml, read and checked, and the state folder beside it.

Every command starts from one, made once by the command line. What lies in the state folder is
read only when a command asks for it, so `validate` never opens it, and only `build` and
`token` may ask the running cluster for anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from builder.cluster import bootstrap
from builder.errors import UserError
from builder.secrets import store, tokens
from builder.secrets.pki import ClusterSecrets
from builder.spec.load import load_cluster
from builder.spec.model import Cluster

Say = Callable[[str], None]


@dataclass(frozen=True)
class Project:
    file: Path
    cluster: Cluster
    state_dir: Path

    @classmethod
    def open(cls, file: Path) -> Project:
        """Read and check cluster.yaml; find its state folder (without reading it)."""
        return cls(file, load_cluster(file), store.state_dir_for(file))

    def secrets(self, say: Say) -> ClusterSecrets:
        """The cluster's secrets, made on first use (`render`, `build`); says when it made them."""
        new = store.is_new(self.state_dir)
        secrets = store.load_or_create(self.state_dir)
        if new:
            say(
                f"created the cluster's CA and bootstrap token in {self.state_dir} (keep it, and a "
                "backup of it: nodes built later need it to join; see picluster backup)"
            )
        return secrets

    def existing_secrets(self, command: str) -> ClusterSecrets:
        """The secrets for a command that works on a cluster: never made anew here (a user who
        forgot to restore would get a new cluster identity)."""
        if store.is_new(self.state_dir):
            raise UserError(
                f"there are no cluster secrets in {self.state_dir}: `picluster {command}` works on a "
                "cluster picluster has made",
                "bring them back with picluster restore FILE, or make them with picluster render or build",
            )
        return store.load(self.state_dir)

    def recorded_tokens(self, secrets: ClusterSecrets) -> dict[str, str]:
        """The token each card carries as recorded, without asking the cluster or writing
        anything (`render`, `status`, `flash`); a node not built yet shows the current token."""
        carried, _ = tokens.for_cards(self.cluster, tokens.load_tokens(self.state_dir, secrets))
        return carried

    def tokens_to_build(self, secrets: ClusterSecrets, say: Say) -> dict[str, str]:
        """`build`: give each new node a token the running cluster honours (asking it, making one
        there if need be) and record it; return the token each card carries."""
        loaded = tokens.load_tokens(self.state_dir, secrets)
        assigned = bootstrap.assign_tokens(self.cluster, secrets, loaded, datetime.now(UTC), say=say)
        if assigned != loaded:
            tokens.save_tokens(self.state_dir, assigned)
        return assigned.nodes

    def new_token(self, secrets: ClusterSecrets) -> tokens.Tokens:
        """`token`: a new token made on the cluster and recorded; nodes built from now on carry it."""
        loaded = tokens.load_tokens(self.state_dir, secrets)
        issued = bootstrap.issue_token(self.cluster, secrets, loaded, datetime.now(UTC))
        tokens.save_tokens(self.state_dir, issued)
        return issued

    def tokens_note(self, secrets: ClusterSecrets) -> str | None:
        """What `render` says of nodes with no token recorded yet: `build` settles theirs."""
        recorded = tokens.load_tokens(self.state_dir, secrets)
        _, new = tokens.for_cards(self.cluster, recorded)
        if not new or not recorded.nodes:
            return None  # a first build: every card carries the token kubeadm init makes
        return (
            f"{', '.join(new)}: shown with bootstrap token {recorded.current_id}; `picluster build` asks "
            "the cluster whether it still honours it and makes a new one there if not"
        )
