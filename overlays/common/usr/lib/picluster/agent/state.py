"""/var/lib/picluster/state.json: where the agent is, how many join attempts it made, the last
error, and the results of its last preflight and clean-links. Written atomically."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agent.host import Host, say

STATE_FILE = "/var/lib/picluster/state.json"

JOINED = "joined"
JOINING = "joining"
"""kubeadm init/join is running; found on start, it means the agent was killed mid-attempt."""
WAITING_READY = "waiting: node ready"
TOKEN_UNKNOWN = "token-unknown"
IMAGE_STATUSES = ("present", "imported", "pulled")
"""kubeadm's discovery found no signature for the card's bootstrap token: the cluster does not
know it. The agent keeps trying (the token may yet be made), but only a fresh card or token helps."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class State:
    phase: str = "new"
    attempts: int = 0
    last_error: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    joined_at: str | None = None
    preflight: list[dict[str, str]] = field(default_factory=list)
    links: list[dict[str, str]] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)
    """Each image found present or pulled before kubeadm, in order."""
    upgrade: dict[str, str] = field(default_factory=dict)
    """`picluster upgrade`'s steps on this node (agent.upgrade): the release, the steps done, and
    the one that failed with kubeadm's or apt's words."""
    certificates: dict[str, str] = field(default_factory=dict)
    """A control plane's last certificate check (agent.certs): when, which certificate expires
    first and when, when they were last renewed, and what failed."""
    snapshot: dict[str, str] = field(default_factory=dict)
    """A control plane's last etcd snapshot (agent.snapshot): when, its file, revision and keys,
    how many are kept, and the last failure."""

    @classmethod
    def load(cls, host: Host) -> State:
        path = host.path(STATE_FILE)
        if not path.exists():
            return cls(started_at=now())
        raw: dict[str, Any] = json.loads(path.read_text())
        return cls(**{key: raw[key] for key in cls.__dataclass_fields__ if key in raw})

    def enter(self, host: Host, phase: str, error: str | None = None) -> None:
        self.phase, self.last_error = phase, error
        self.save(host)

    def timer_failed(self, host: Host, job: str, section: str, stamp: str, why: str, fix: str) -> None:
        """A daily job's failure (certs, snapshot): recorded in its section with when (`stamp`)
        and why, and said with the fix."""
        setattr(self, section, {**getattr(self, section), stamp: now(), "error": why})
        self.save(host)
        say(f"{job}: failed: {why}; the timer tries again tomorrow. Fix: on this node, {fix}")

    def save(self, host: Host) -> None:
        if host.dry_run:
            return
        self.updated_at = now()
        path = host.path(STATE_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with partial.open("w") as sink:
            json.dump(asdict(self), sink, indent=2, sort_keys=True)
            sink.write("\n")
            sink.flush()
            os.fsync(sink.fileno())
        partial.replace(path)


def describe(state: State, node: str) -> str:
    """`picluster-agent status`, for people."""
    failed = [check for check in state.preflight if check["status"] == "failed"]
    lines = [
        f"node:        {node}",
        f"phase:       {state.phase}",
        f"attempts:    {state.attempts}",
        f"last error:  {state.last_error or 'none'}",
        f"started:     {state.started_at or '-'}",
        f"updated:     {state.updated_at or '-'}",
        f"joined:      {state.joined_at or '-'}",
    ]
    if state.preflight:
        counts = {word: sum(c["status"] == word for c in state.preflight) for word in ("ok", "fixed")}
        lines.append(f"preflight:   {counts['ok']} ok, {counts['fixed']} fixed, {len(failed)} failed")
        lines += [f"  failed {check['name']}: {check['detail']}" for check in failed]
    if state.links:
        lines.append("clean-links: " + "; ".join(f"{a['target']} {a['action']}" for a in state.links))
    if state.images:
        counts = {word: sum(i["status"] == word for i in state.images) for word in IMAGE_STATUSES}
        lines.append("images:      " + ", ".join(f"{counts[word]} {word}" for word in IMAGE_STATUSES))
    if state.upgrade:
        line = f"upgrade:     to {state.upgrade['to']}: done {state.upgrade['done'] or 'nothing'}"
        if "failed" in state.upgrade:
            line += f"; {state.upgrade['failed']} failed: {state.upgrade['error']}"
        lines.append(line)
    if state.certificates:
        certs = state.certificates
        line = f"certs:       checked {certs['checked_at']}"
        if "expires" in certs:
            line += f"; {certs['first_to_expire']} expires first, {certs['expires']}"
        if "renewed_at" in certs:
            line += f"; renewed {certs['renewed_at']}"
        lines.append(line)
        if "error" in certs:
            lines.append(f"  failed: {certs['error']}")
    if state.snapshot:
        snap = state.snapshot
        if "file" in snap:
            lines.append(
                f"etcd:        snapshot {snap['file']} taken {snap['taken_at']}, {snap['keys']} keys at "
                f"revision {snap['revision']}; {snap['kept']} kept"
            )
        if "error" in snap:
            lines.append(f"  snapshot failed {snap['failed_at']}: {snap['error']}")
    return "\n".join(lines)
