"""Bring the node into the cluster: kubeadm init on the first control plane, kubeadm join
everywhere else; retried with backoff after a reset, and a no-op once the node has joined.

The state file makes this safe to restart at any point: a start that finds the phase `joining`
knows the previous run died inside kubeadm, resets what it left and tries again.
"""

from __future__ import annotations

import os
import re
import time

from agent import api, packages, snapshot
from agent.config import NodeConfig
from agent.host import Backoff, CommandFailed, Host, say, utc
from agent.images import ensure_images, import_card_images
from agent.links import KUBELET_CONF, clean_links, is_member
from agent.state import JOINED, JOINING, TOKEN_UNKNOWN, WAITING_READY, State, now

ADMIN_CONF = "/etc/kubernetes/admin.conf"
PKI_DIR = "/etc/kubernetes/pki"
SHARED_PKI = ("ca.crt", "ca.key", "front-proxy-ca.crt", "front-proxy-ca.key", "etcd/ca.crt", "etcd/ca.key",
              "sa.pub", "sa.key")  # fmt: skip
"""What every control plane of a cluster shares, and a control-plane card therefore carries."""
WAITING_CLOCK = "waiting: clock"
UNKNOWN_TOKEN = re.compile(
    r'could not find a JWS signature in the cluster-info ConfigMap for token ID "([a-z0-9]{6})"'
    r'|token id "([a-z0-9]{6})" is invalid for this cluster or it has expired'
)
"""kubeadm's discovery failing for a token the cluster does not have: the first once the
discovery timeout passes with no signature in cluster-info, the second if it vanishes meanwhile
(cmd/kubeadm/app/discovery/token/token.go getClusterInfo, validateClusterInfoToken)."""
RESTORED_ETCD_CHECK = "DirAvailable--var-lib-etcd"
"""kubeadm init's preflight check that /var/lib/etcd is empty (cmd/kubeadm/app/preflight/checks.go
DirAvailableCheck, named for its path), which a restored etcd fails by design."""
READY_NAMESAKE = "already exists in the cluster. You must delete the existing Node"
"""kubeadm's refusal to join while a Node of this name is Ready (phases/join/kubelet.go)."""


def join(host: Host, config: NodeConfig, state: State) -> None:
    if state.phase == JOINED and is_member(host):
        say(f"{config.name} has joined the cluster ({state.joined_at}); nothing to do")
        return
    if state.phase == JOINING:
        say(f"attempt {state.attempts} was interrupted; resetting what it left")
        state.last_error = f"attempt {state.attempts} interrupted"
        _reset(host, config, state)
    if state.phase == WAITING_READY and is_member(host):
        _finish(host, config, state)
        return
    import_card_images(host, config, state)  # needs only containerd, and no network
    _ensure_packages(host, config, state)
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    while True:
        _wait_for_clock(host, config, state)  # before the API: TLS fails before the CA's start
        ensure_images(host, config, state)  # crictl comes with the packages; after a reset, all present
        if config.action != "init":
            _wait_for_api(host, config, state)
        state.attempts += 1
        state.enter(host, JOINING, state.last_error)
        try:
            restore_pki(host, config)
            if config.etcd_restore is not None:
                snapshot.restore(host, config)
            host.run(_kubeadm_command(host, config), timeout=1800)
        except CommandFailed as error:  # kubeadm's, or restoring the CAs or etcd
            state.last_error = error.summary + _fix_for(config, error.summary)
            say(f"attempt {state.attempts} failed: {state.last_error}")
            _reset(host, config, state)  # the phase stays `joining` until this is done
            delay = backoff.next()
            unknown = _unknown_token(config, error.output)
            if unknown:
                state.enter(host, TOKEN_UNKNOWN, unknown)
                say(f"{TOKEN_UNKNOWN}: {unknown}; retrying in {delay:.0f} s")
            else:
                state.enter(host, f"waiting: retry in {delay:.0f} s", state.last_error)
            host.sleep(delay)
            continue
        _finish(host, config, state)
        return


def _unknown_token(config: NodeConfig, output: str) -> str | None:
    """What a discovery failure for an unknown token means, and the fix; None for other failures."""
    found = UNKNOWN_TOKEN.search(output)
    if found is None:
        return None
    token_id = found.group(1) or found.group(2)
    return (
        f'the cluster does not know this card\'s bootstrap token "{token_id}": it expired or was revoked '
        f"(kubeadm: no signature for it in cluster-info). Fix: run `picluster build` and reflash this "
        f"card, or `picluster token {config.name}` and then rebuild and reflash it"
    )


def _fix_for(config: NodeConfig, failure: str) -> str:
    """What to do on the build machine, when the card alone cannot get past a failure."""
    if READY_NAMESAKE not in failure:
        return ""
    return (
        f" (if this card replaces the old {config.name}, power that one off and run "
        f"`picluster replace {config.name}` on the build machine; this card keeps trying)"
    )


def _kubeadm_command(host: Host, config: NodeConfig) -> list[str]:
    verb = "init" if config.action == "init" else "join"
    command = ["kubeadm", verb, "--config", str(host.path(config.kubeadm_config))]
    if config.etcd_restore is not None:  # the restored data is what init must start from
        command.append(f"--ignore-preflight-errors={RESTORED_ETCD_CHECK}")
    return command


def restore_pki(host: Host, config: NodeConfig) -> None:
    """Put the card's CAs where kubeadm looks for them, before every init or control-plane join.

    kubeadm uses a CA it finds in /etc/kubernetes/pki ("[certs] Using existing ca certificate
    authority") and makes a new one otherwise (cmd/kubeadm/app/phases/certs/certs.go); `kubeadm
    reset -f` empties that folder. Without this, the retry after a failed first init would give
    the cluster a CA no worker card pins, and a joining control plane would have none to share.
    """
    if config.pki_seed is None:
        return
    seed, target = host.path(config.pki_seed), host.path(PKI_DIR)
    argv = ["restore-pki", config.pki_seed, PKI_DIR]
    verb = "would restore" if host.dry_run else "restoring"
    say(f"{verb} the cluster's CAs: {config.pki_seed} -> {PKI_DIR}")
    try:
        sources = sorted(path for path in seed.rglob("*") if path.is_file())
        missing = sorted(set(SHARED_PKI) - {path.relative_to(seed).as_posix() for path in sources})
        if missing:  # a CA certificate without its key would make kubeadm take it for an external CA
            damaged = f"{config.pki_seed} lacks {', '.join(missing)}: the card is damaged; reflash it"
            raise CommandFailed(argv, 1, damaged)
        for source in [] if host.dry_run else sources:
            destination = target / source.relative_to(seed)
            destination.parent.mkdir(parents=True, exist_ok=True)
            partial = destination.with_name(f".{destination.name}.partial")
            mode = source.stat().st_mode & 0o777  # the keys stay 0600, from the first byte on
            partial.unlink(missing_ok=True)
            with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as sink:
                sink.write(source.read_bytes())
            os.replace(partial, destination)
    except OSError as error:
        raise CommandFailed(argv, 1, f"{type(error).__name__}: {error}") from None


def _wait_for_clock(host: Host, config: NodeConfig, state: State) -> None:
    """A Pi has no real-time clock. Before the CA's start every TLS handshake with the cluster
    fails, in ways that look like network faults: wait for NTP rather than run kubeadm."""
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max / 5)
    while not host.dry_run and time.time() < config.ca_not_before:
        reason = (
            f"the clock ({utc(time.time())}) is before the cluster's CA became valid "
            f"({utc(config.ca_not_before)}); waiting for NTP to set it (`timedatectl timesync-status`)"
        )
        say(f"{WAITING_CLOCK}: {reason}")
        state.enter(host, WAITING_CLOCK, reason)
        host.sleep(backoff.next())


def _reset(host: Host, config: NodeConfig, state: State) -> None:
    """What a failed attempt leaves behind: kubeadm's files, then stale links and leases."""
    try:
        host.run(["kubeadm", "reset", "-f"], timeout=600)
    except CommandFailed as error:
        say(f"kubeadm reset failed, going on: {error.summary}")
    state.links = [action.record() for action in clean_links(host, config)]
    state.save(host)


def _ensure_packages(host: Host, config: NodeConfig, state: State) -> None:
    if config.packages_install != "firstboot" or packages.installed():
        return
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    while True:
        if state.phase != "waiting: packages":  # a retry stays `waiting`, with the new reason
            state.enter(host, "installing: packages", state.last_error)
        try:
            packages.install(host, config)
            return
        except (OSError, ValueError, CommandFailed) as error:  # requests' errors are OSErrors
            reason = error.summary if isinstance(error, CommandFailed) else f"{type(error).__name__}: {error}"
            state.enter(host, "waiting: packages", f"installing kubeadm, kubelet, kubectl: {reason}")
            say(f"waiting: packages ({reason})")
            host.sleep(backoff.next())


def _wait_for_api(host: Host, config: NodeConfig, state: State) -> None:
    def waiting(reason: str) -> None:
        say(f"waiting for the API server: {reason}")
        state.enter(host, "waiting: api-server", reason)

    if host.dry_run:
        say(f"would wait for https://{config.api_endpoint}/readyz")
        return
    backoff = Backoff(min(2.0, config.timing.retry_initial), config.timing.retry_max / 5)
    ca_file = host.path(config.ca_cert)
    api.wait_until_ready(config.api_endpoint, ca_file, backoff, sleep=host.sleep, on_wait=waiting)


def _finish(host: Host, config: NodeConfig, state: State) -> None:
    """After kubeadm: the first control plane applies the cluster's manifests (flannel); every
    node then waits until it reports Ready."""
    state.enter(host, WAITING_READY, state.last_error)
    backoff = Backoff(config.timing.ready_poll, config.timing.retry_max)
    applied = not config.manifests
    while True:
        try:
            if not applied:
                for manifest in config.manifests:
                    host.run(["kubectl", "--kubeconfig", str(host.path(ADMIN_CONF)), "apply",
                              "-f", str(host.path(manifest))], timeout=300)  # fmt: skip
                applied = True
            if host.dry_run or _ready(host, config):
                break
            reason = f"{config.name} is not Ready yet"
        except CommandFailed as error:
            reason = error.summary
        state.enter(host, WAITING_READY, reason)
        host.sleep(backoff.next())
    state.joined_at = now()
    state.enter(host, JOINED, None)
    say(f"{config.name} joined the cluster and is Ready")


def _ready(host: Host, config: NodeConfig) -> bool:
    jsonpath = '{.status.conditions[?(@.type=="Ready")].status}'
    kubeconfig = str(host.path(KUBELET_CONF))
    status = host.run(
        ["kubectl", "--kubeconfig", kubeconfig, "get", "node", config.name, "-o", f"jsonpath={jsonpath}"],
        changes=False,
        timeout=60,
    )
    return status.strip() == "True"
