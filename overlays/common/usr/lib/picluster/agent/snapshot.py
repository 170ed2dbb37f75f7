"""A control plane's etcd, saved on the card on a timer and restored onto a fresh card.

`picluster-agent snapshot` (a daily timer on every control plane) saves the node's etcd with
etcdctl, as etcd's recovery guide and Kubernetes' both show it (etcd-io/website content/en/docs/
v3.5/op-guide/recovery.md; kubernetes/website content/en/docs/tasks/administer-cluster/
configure-upgrade-etcd.md), through kubeadm's healthcheck client certificate, which the etcd CA
signed for exactly this kind of client (cmd/kubeadm/app/constants/constants.go). etcdctl writes
`<file>.part` (0600), fsyncs it and renames it into place (client/v3/snapshot/v3_snapshot.go), so
a killed run never leaves a half snapshot under a snapshot's name; the .part is removed here on
the next run. Each snapshot is then read back with `etcdutl snapshot status`, KEEP are kept, and
the result is recorded in the agent's state. `snapshot --send` does the same and then prints the
newest snapshot for `picluster backup`, which fetches it over SSH.

On the card that replaces a cluster's only control plane, `restore` puts a snapshot into
/var/lib/etcd before `kubeadm init` (agent.join): `etcdutl snapshot restore` with this node's
name and peer URL as kubeadm's etcd manifest gives them (a member restored with etcd's defaults
keeps a localhost peer URL, kubernetes/kubeadm#2071), and with --bump-revision and
--mark-compacted, which etcd's guide asks for when Kubernetes runs on the restored data: its
watchers see the revision move on and refill their caches instead of missing what changed.
etcdctl comes from Debian's etcd-client and etcdutl from etcd-server, on every card; etcd 3.6
removed `etcdctl snapshot restore|status` (etcd-io/etcd CHANGELOG-3.6.md), so etcdutl does those.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from agent.config import NodeConfig
from agent.host import CommandFailed, Host, say
from agent.state import State, now

SNAPSHOTS = Path("/var/lib/picluster/etcd-snapshots")
KEEP = 3
PKI = Path("/etc/kubernetes/pki/etcd")
ETCD_MANIFEST = Path("/etc/kubernetes/manifests/etcd.yaml")
ETCD_DATA = Path("/var/lib/etcd")
"""kubeadm's etcd data folder (etcd-server's package makes it, empty); etcdutl restores into an
empty or new folder only ("data-dir %q not empty", etcdutl/snapshot/v3_snapshot.go Restore)."""
BUMP_REVISION = 1_000_000_000
"""etcd's recovery guide's example: more revisions than a cluster makes between two snapshots."""
MAX_SEND = 512 << 20
"""The largest snapshot `picluster backup` takes (its archive is read into memory)."""


class Damaged(Exception):
    pass


def save_command(host: Host, target: Path) -> list[str]:
    """The snapshot, taken from this node's etcd member."""
    return [
        "etcdctl",
        "--endpoints=https://127.0.0.1:2379",
        f"--cacert={host.path(PKI / 'ca.crt')}",
        f"--cert={host.path(PKI / 'healthcheck-client.crt')}",
        f"--key={host.path(PKI / 'healthcheck-client.key')}",
        "--dial-timeout=10s",
        "snapshot",
        "save",
        str(target),
    ]


def restore_command(config: NodeConfig, snapshot: Path, data_dir: Path) -> list[str]:
    """The restore into a new data folder, as a member named and addressed as kubeadm's etcd
    manifest names it (cmd/kubeadm/app/phases/etcd/local.go: --name, https://<address>:2380)."""
    peer = f"https://{config.address.ip}:2380"
    return [
        "etcdutl",
        "snapshot",
        "restore",
        str(snapshot),
        f"--data-dir={data_dir}",
        f"--name={config.name}",
        f"--initial-cluster={config.name}={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--bump-revision={BUMP_REVISION}",
        "--mark-compacted",
    ]


def status(host: Host, snapshot: Path) -> dict[str, Any]:
    """etcdutl's reading of a snapshot file: hash, revision, totalKey, totalSize."""
    try:
        output = host.run(
            ["etcdutl", "snapshot", "status", str(snapshot), "-w", "json"], changes=False, timeout=300
        )
        found = json.loads(output)
        return {key: int(found[key]) for key in ("hash", "revision", "totalKey", "totalSize")}
    except CommandFailed as error:
        raise Damaged(f"etcdutl cannot read {snapshot.name}: {error.summary}") from None
    except (ValueError, KeyError, TypeError):
        raise Damaged(f"etcdutl snapshot status {snapshot.name}: not the JSON etcdutl writes") from None


def take_snapshot(host: Host, config: NodeConfig, state: State, send: bool = False) -> int:
    """Save, check, keep KEEP, record; with `send`, print the newest snapshot (a fresh one, or the
    newest kept if etcd does not answer) as JSON on the last line. 0 when one was taken (or sent)."""
    if config.role != "control-plane":
        say("snapshot: a worker runs no etcd member")
        return 1 if send else 0
    if not host.path(ETCD_MANIFEST).exists():
        say("snapshot: no etcd runs here yet; kubeadm init or join starts it")
        return 1 if send else 0
    folder = host.path(SNAPSHOTS)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    for partial in folder.glob("*.part"):  # etcdctl's, left by a run killed while saving
        partial.unlink()
        say(f"snapshot: removed {partial.name}, left by an interrupted run")
    target = folder / time.strftime("etcd-%Y%m%dT%H%M%SZ.db", time.gmtime())
    try:
        host.run(save_command(host, target), timeout=900)
        target.chmod(0o600)
        found = status(host, target)
    except (CommandFailed, Damaged) as error:
        target.unlink(missing_ok=True)
        why = error.summary if isinstance(error, CommandFailed) else str(error)
        fix = "`sudo crictl ps --name etcd` (is etcd running?) and `sudo picluster-agent snapshot`"
        state.timer_failed(host, "snapshot", "snapshot", "failed_at", why, fix)
        return _send_newest(host, config, None) if send else 1
    kept = sorted(folder.glob("etcd-*.db"))
    for old in kept[:-KEEP]:
        old.unlink()
    record = {
        "taken_at": now(),
        "file": target.name,
        "revision": str(found["revision"]),
        "keys": str(found["totalKey"]),
        "bytes": str(found["totalSize"]),
        "kept": str(min(len(kept), KEEP)),
    }
    state.snapshot = record
    state.save(host)
    say(f"snapshot: {target} ({found['totalKey']} keys, revision {found['revision']}); {record['kept']} kept")
    return _send_newest(host, config, (target, found)) if send else 0


def _send_newest(host: Host, config: NodeConfig, fresh: tuple[Path, dict[str, int]] | None) -> int:
    """Print the newest kept snapshot as JSON; `fresh`: the one just taken and etcdutl's reading of
    it (None: taking one failed, and the newest kept one is read)."""
    kept = sorted(host.path(SNAPSHOTS).glob("etcd-*.db"))
    if not kept:
        say("snapshot: none kept on this node to send")
        return 1
    newest = kept[-1]
    data = newest.read_bytes()
    if len(data) > MAX_SEND:
        say(f"snapshot: {newest.name} is {len(data) >> 20} MiB, over the {MAX_SEND >> 20} MiB a backup takes")
        return 1
    try:
        found = fresh[1] if fresh and fresh[0] == newest else status(host, newest)
    except Damaged as error:
        say(f"snapshot: {error}")
        return 1
    taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest.stat().st_mtime))
    sent = {
        "node": config.name,
        "file": newest.name,
        "taken_at": taken,
        "fresh": fresh is not None,
        "revision": found["revision"],
        "keys": found["totalKey"],
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": base64.b64encode(data).decode(),
    }
    print(json.dumps(sent, sort_keys=True), flush=True)
    return 0


def restore(host: Host, config: NodeConfig) -> None:
    """/var/lib/etcd made from the card's snapshot, before each `kubeadm init` of a restore card
    (`kubeadm reset` after a failed attempt empties it again). Raises CommandFailed."""
    assert config.etcd_restore is not None
    snapshot = host.path(config.etcd_restore)
    argv = ["restore-etcd", config.etcd_restore, str(ETCD_DATA)]
    if host.dry_run:
        say(f"would restore etcd from {config.etcd_restore} into {ETCD_DATA}")
        return
    say(f"restoring etcd from {config.etcd_restore} into {ETCD_DATA}")
    try:
        found = status(host, snapshot)
    except Damaged as error:
        raise CommandFailed(
            argv, 1, f"{error}: the card's snapshot is damaged; build the card again"
        ) from None
    say(f"the snapshot holds {found['totalKey']} keys at revision {found['revision']}")
    data = host.path(ETCD_DATA)
    try:
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in data.iterdir():  # a failed attempt's: etcd itself starts only after init
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    except OSError as error:
        raise CommandFailed(argv, 1, f"{type(error).__name__}: {error}") from None
    host.run(restore_command(config, snapshot, data), timeout=900)
