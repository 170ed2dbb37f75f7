"""A project: one cluster.yaml, read and checked, and the state folder beside it.

Every command starts from one, made once by the command line. What lies in the state folder is
read only when a command asks for it (`validate` reads only the record of the settings a running
cluster cannot change), and only `build`, `token` and `replace` may ask the running cluster for anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from builder.cluster import bootstrap
from builder.errors import ConfigError, Problem, UserError
from builder.secrets import release, settings, snapshot, store, tokens
from builder.secrets.pki import ClusterSecrets
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from builder.spec.releases import Release, refuse_move

Say = Callable[[str], None]


@dataclass(frozen=True)
class Project:
    file: Path
    cluster: Cluster
    state_dir: Path

    @classmethod
    def open(cls, file: Path) -> Project:
        """Find cluster.yaml's state folder (without reading it); read and check cluster.yaml."""
        state_dir = store.state_dir_for(file)  # first: it refuses a pipe before reading from it
        return cls(file, load_cluster(file), state_dir)

    def secrets(self, say: Say) -> ClusterSecrets:
        """The cluster's secrets, made on first use (`render`, `build`) with the record of the
        settings that cannot change; says when it made either."""
        new = store.is_new(self.state_dir)
        secrets = store.load_or_create(
            self.state_dir, {settings.SETTINGS_FILE: settings.encoded(self.cluster)}
        )
        if new:
            say(
                f"created the cluster's CA and bootstrap token in {self.state_dir} (keep it, and a "
                "backup of it: nodes built later need it to join; see picluster backup)"
            )
        for note in store.check_current(self.state_dir, secrets, datetime.now(UTC)):
            say(note)
        recorded = settings.load_record(self.state_dir)
        if recorded is None:  # a state folder from before the record: this cluster.yaml is the best guess
            settings.record(self.state_dir, self.cluster)
            listed = ", ".join(
                f"{field} {value}" for field, value in settings.settings_of(self.cluster).items()
            )
            say(
                f"note: recorded {listed} in {self.state_dir / settings.SETTINGS_FILE}: a running cluster "
                "cannot change them, so picluster refuses a cluster.yaml that does"
            )
        else:
            settings.check(str(self.file), self.cluster, recorded, self.state_dir)
        return secrets

    def check_settings(self) -> str | None:
        """`validate`: refuse a cluster.yaml that changes a setting the cluster cannot, or names a
        release no upgrade reaches from the one it runs; say when it names one an upgrade does."""
        if store.is_new(self.state_dir):
            return None
        recorded = settings.load_record(self.state_dir)
        if recorded is not None:
            settings.check(str(self.file), self.cluster, recorded, self.state_dir)
        running, wanted = self.running_release(), self.wanted_release
        if running is None or running == wanted:
            return None
        self._refuse_move(running, wanted)
        return f"cluster.kubernetes is {wanted}, the cluster runs {running}: picluster upgrade moves it"

    @property
    def wanted_release(self) -> Release:
        return Release.of(self.cluster.cluster.kubernetes)

    def running_release(self) -> Release | None:
        """The release the cluster runs, as recorded; None before the first build."""
        return release.load(self.state_dir)

    def release_for_cards(self, say: Say) -> None:
        """`build`: cards are built for the release the cluster runs, which the first build
        records; a cluster.yaml naming another is refused until `picluster upgrade` has run."""
        running, wanted = self.running_release(), self.wanted_release
        path = self.state_dir / release.RELEASE_FILE
        if running is None:
            release.record(self.state_dir, wanted)
            if (self.state_dir / store.TOKENS_FILE).exists():  # cards were built before the record
                say(
                    f"note: recorded Kubernetes {wanted} in {path} as the release the cluster runs: "
                    "cards are built for it, and picluster upgrade moves it"
                )
            return
        if running == wanted:
            return
        self._refuse_move(running, wanted)
        raise UserError(
            f"cluster.kubernetes is {wanted}, but the cluster runs {running} (as {path} records): a card "
            f"built for {wanted} would run a kubelet newer than the cluster's API server, which Kubernetes "
            "does not support",
            f"run picluster upgrade to move the running cluster to {wanted} first (build then writes "
            f"cards for it), or set cluster.kubernetes back to {running}; if no card of this cluster has "
            f"ever booted, delete {path} instead",
        )

    def _refuse_move(self, running: Release, wanted: Release) -> None:
        refusal = refuse_move(running, wanted)
        if refusal is not None:
            raise ConfigError(str(self.file), [Problem("cluster.kubernetes", refusal.problem, refusal.fix)])

    def existing_secrets(self, command: str, current: bool = True) -> ClusterSecrets:
        """The secrets for a command that works on a cluster: never made anew here (a user who
        forgot to restore would get a new cluster identity). `current`: refuse CAs outside their
        validity, which sign nothing a node accepts (a backup keeps them all the same)."""
        if store.is_new(self.state_dir):
            raise UserError(
                f"there are no cluster secrets in {self.state_dir}: `picluster {command}` works on a "
                "cluster picluster has made",
                "bring them back with picluster restore FILE, or make them with picluster render or build",
            )
        secrets = store.load(self.state_dir)
        if current:  # a command that acts on the cluster, which the recorded settings describe
            store.check_current(self.state_dir, secrets, datetime.now(UTC))
            self.check_settings()
        return secrets

    def recorded_tokens(self, secrets: ClusterSecrets) -> tokens.Tokens:
        """The tokens the cards carry as recorded, without asking the cluster or writing anything
        (`render`, `status`, `flash`); a node added since the last build shows a stand-in."""
        carried, _ = tokens.for_cards(self.cluster, secrets, tokens.load_tokens(self.state_dir, secrets))
        return carried

    def tokens_to_build(self, secrets: ClusterSecrets, say: Say) -> tokens.Tokens:
        """`build`: give each node not joined a token the running cluster honours for a day yet
        (asking it, making them there if need be), revoke those of nodes removed, and record it."""
        loaded = tokens.load_tokens(self.state_dir, secrets)
        assigned = bootstrap.assign_tokens(self.cluster, secrets, loaded, datetime.now(UTC), say=say)
        if assigned != loaded:
            tokens.save_tokens(self.state_dir, assigned)
        return assigned

    def new_token(self, secrets: ClusterSecrets, node: str) -> None:
        """`token NODE`: a new token for the node made on the cluster and recorded."""
        loaded = self.tokens_for_new(secrets, node)
        issued = bootstrap.issue_token(self.cluster, secrets, loaded, node, datetime.now(UTC))
        tokens.save_tokens(self.state_dir, issued)

    def restore_snapshot(self) -> bytes | None:
        """The etcd snapshot the first control plane's cards restore, once `replace` made them
        restore one (the only control plane died); checked against its record."""
        taken = snapshot.load(self.state_dir)
        return snapshot.data(self.state_dir, taken) if taken is not None and taken.restore else None

    def first_joins(self, secrets: ClusterSecrets) -> None:
        """Record that the first control plane's cards join the running cluster from now on."""
        loaded = tokens.load_tokens(self.state_dir, secrets)
        if not loaded.first_joins:
            tokens.save_tokens(self.state_dir, replace(loaded, first_joins=True))

    def tokens_for_new(self, secrets: ClusterSecrets, node: str, replacing: bool = False) -> tokens.Tokens:
        """The token record a new token for `node` goes into; refused before the cluster is asked
        for a node that cannot have one, or a record that cannot be read."""
        if node not in {n.name for n in self.cluster.nodes}:
            names = ", ".join(n.name for n in self.cluster.nodes)
            raise UserError(f"{node} is not a node of {self.file}", f"choose from {names}")
        loaded = tokens.load_tokens(self.state_dir, secrets)
        if node == loaded.runs_init(self.cluster) and not replacing:
            raise UserError(
                f"{node} runs `kubeadm init`: it joins with no bootstrap token", "name another node"
            )
        if not loaded.nodes:
            raise UserError(
                f"no card of {self.file} has been built yet: the first control plane's card makes every "
                "node's token",
                "run picluster build",
            )
        return loaded

    def tokens_note(self, secrets: ClusterSecrets) -> str | None:
        """What `render` says of nodes with no token recorded yet: `build` settles theirs."""
        _, new = tokens.for_cards(self.cluster, secrets, tokens.load_tokens(self.state_dir, secrets))
        if not new:
            return None
        return (
            f"{', '.join(new)}: shown with a stand-in bootstrap token; `picluster build` makes "
            f"{'its' if len(new) == 1 else 'their'} own on the cluster"
        )
