"""picluster-agent [--config PATH] [--root DIR] [--dry-run] COMMAND"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection
from dataclasses import asdict
from pathlib import Path

from agent.certs import put_back, renew_certs
from agent.config import DEFAULT_CONFIG, NodeConfig, load_config
from agent.host import Backoff, Host, say
from agent.join import join
from agent.links import clean_links
from agent.preflight import CHECKS, preflight
from agent.snapshot import take_snapshot
from agent.state import State, describe
from agent.upgrade import STEPS, upgrade

WAITING_PREFLIGHT = "waiting: preflight"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    host = Host(root=args.root, dry_run=args.dry_run)
    config_path = args.config or host.path(DEFAULT_CONFIG)
    try:
        config = load_config(config_path)
    except (OSError, ValueError, KeyError) as error:
        print(f"picluster-agent: cannot read {config_path}: {error}", file=sys.stderr)
        return 2
    state = State.load(host)
    if args.command == "status":
        print(
            json.dumps(asdict(state), indent=2, sort_keys=True) if args.json else describe(state, config.name)
        )
        return 0
    if args.command == "certs":
        return renew_certs(host, config, state)
    if args.command == "snapshot":
        return take_snapshot(host, config, state, send=args.send)
    if args.command in ("run", "join"):
        put_back(host)  # a certs run killed while the kubelet had them out: the control plane first
    if args.command == "upgrade":
        return upgrade(host, config, state, args.to, args.repository, args.step)
    if args.command == "preflight" and run_preflight(host, config, state):
        return 1
    if args.command == "run" and not wait_for_preflight(host, config, state):
        return 1
    if args.command in ("clean-links", "run"):
        run_clean_links(host, config, state)
    if args.command in ("join", "run"):
        join(host, config, state)
    return 0


def run_preflight(host: Host, config: NodeConfig, state: State, only: Collection[str] = ()) -> list[str]:
    """Prints a line per check; returns the names of the failed checks that block the join."""
    if not only:
        state.enter(host, "preflight", state.last_error)
    results = preflight(host, config, only)
    for result in results:
        say(result.line)
    rechecked = {result.name for result in results}
    kept = [record for record in state.preflight if record["name"] not in rechecked]
    state.preflight = sorted(
        [*kept, *(result.record() for result in results)],
        key=lambda record: list(CHECKS).index(record["name"]),
    )
    blocking = [r for r in results if r.status == "failed" and r.blocking]
    if blocking:
        state.enter(host, "preflight failed", "; ".join(f"{r.name}: {r.detail}" for r in blocking))
    else:
        state.save(host)
    return [r.name for r in blocking]


def wait_for_preflight(host: Host, config: NodeConfig, state: State) -> bool:
    """`run`: while a check that blocks the join fails, wait and check it again, with backoff,
    saying what the node waits for. A headless node has nobody to restart the agent, and what
    fails may clear by itself (a cable plugged in, containerd coming up); exiting would only
    hand the wait to systemd's restart loop. False only under --dry-run."""
    backoff = Backoff(config.timing.retry_initial, config.timing.retry_max)
    failing = run_preflight(host, config, state)
    while failing:
        if host.dry_run:
            return False
        state.enter(host, WAITING_PREFLIGHT, state.last_error)
        say(f"{WAITING_PREFLIGHT}: {state.last_error}")
        host.sleep(backoff.next())
        failing = run_preflight(host, config, state, failing)
    return True


def run_clean_links(host: Host, config: NodeConfig, state: State) -> None:
    actions = clean_links(host, config)
    for action in actions:
        say(action.line)
    if not actions:
        say("clean-links: nothing stale")
    state.links = [action.record() for action in actions]
    state.save(host)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="picluster-agent",
        description="Prepare this node and bring it into its Kubernetes cluster.",
    )
    parser.add_argument("--config", type=Path, help=f"the node's configuration (default {DEFAULT_CONFIG})")
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="the node's filesystem (default /)",
    )
    parser.add_argument("--dry-run", action="store_true", help="say what would change; change nothing")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("preflight", help="check and fix what kubeadm needs")
    commands.add_parser("clean-links", help="remove stale flannel.1, cni0 and their leases")
    commands.add_parser("join", help="kubeadm init or join, retried; nothing once joined")
    commands.add_parser("run", help="preflight, clean-links, join (what the unit runs)")
    commands.add_parser(
        "certs", help="renew kubeadm's certificates when one expires within 30 days (a daily timer runs it)"
    )
    snapshot = commands.add_parser(
        "snapshot", help="save this control plane's etcd, keep the newest 3 (a daily timer runs it)"
    )
    snapshot.add_argument(
        "--send", action="store_true", help="then print the newest as JSON, for picluster backup"
    )
    step = commands.add_parser("upgrade", help="one step of picluster upgrade on this node")
    step.add_argument("--to", required=True, metavar="X.Y.Z", help="the Kubernetes release")
    step.add_argument("--repository", required=True, metavar="URL", help="that release's apt repository")
    step.add_argument("step", choices=STEPS)
    status = commands.add_parser("status", help="what the agent did and where it is")
    status.add_argument("--json", action="store_true", help="the state file as JSON")
    return parser
