"""The cluster's etcd snapshot on the build machine: fetched by `picluster backup` (what the
agent sends, checked), kept in the state folder and the backup archive, and restored by the card
that replaces the only control plane (`picluster replace`, then the card's files). The agent's
side, with the real etcd, is tests/integration/test_etcd_snapshots.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from builder.cli import main
from builder.cluster import api, ssh
from builder.cluster import snapshot as cluster_snapshot
from builder.cluster.replace import restore_only_control_plane
from builder.cluster.ssh import NodeFailed
from builder.errors import UserError
from builder.render.node import ETCD_SNAPSHOT, render_cluster
from builder.secrets import snapshot
from builder.secrets.pki import ClusterSecrets
from builder.spec.load import load_cluster
from builder.spec.model import Node
from tests.support.project import BUNDLED, fixed_secrets

DATA = b"etcd snapshot bytes\n" * 100
HA = Path(__file__).parent / "golden/ha-wifi/cluster.yaml"


def sent(data: bytes = DATA, **changes: Any) -> str:
    """What `picluster-agent snapshot --send` prints: its journal lines, then the JSON."""
    record = {"node": "cp1", "file": "etcd-20261203T000000Z.db", "taken_at": "2026-12-03T00:00:00Z",
              "fresh": True, "revision": 4242, "keys": 321, "sha256": hashlib.sha256(data).hexdigest(),
              "data": base64.b64encode(data).decode(), **changes}  # fmt: skip
    return "+ etcdctl ... snapshot save ...\n    Snapshot saved at ...\n" + json.dumps(record) + "\n"


def shell_of(answers: dict[str, str | Exception]) -> ssh.NodeShell:
    def run(node: Node, command: list[str]) -> str:
        assert command == ["picluster-agent", "snapshot", "--send"]
        answer = answers[node.name]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return run


def test_backup_fetches_the_snapshot_and_the_archive_holds_it(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ssh, "ssh_shell", lambda *args, **kwargs: shell_of({"cp1": sent()}))
    archive = tmp_path / "b.tgz"
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    said = capsys.readouterr().out
    assert "taken on cp1 at 2026-12-03T00:00:00Z: 321 keys at revision 4242" in said
    assert "every Secret, in clear" in said
    state = site / ".picluster"
    assert (state / snapshot.SNAPSHOT_FILE).read_bytes() == DATA
    assert stat.S_IMODE((state / snapshot.SNAPSHOT_FILE).stat().st_mode) == 0o600
    with tarfile.open(archive) as opened:
        assert {snapshot.SNAPSHOT_FILE, snapshot.RECORD_FILE} <= set(opened.getnames())
    (site / ".picluster").rename(tmp_path / "old-state")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 0
    restored = snapshot.load(state)
    assert restored is not None and snapshot.data(state, restored) == DATA


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (NodeFailed("ssh: connect to host 192.168.50.10 port 22: No route to host"), "No route to host"),
        (sent(sha256="0" * 64), "arrived damaged"),
        ("snapshot: no etcd runs here yet; kubeadm init or join starts it\n", "did not send a snapshot"),
        (sent()[:-40] + "\n", "did not send a snapshot"),
    ],
    ids=["unreachable", "damaged", "no etcd", "cut short"],
)
def test_a_snapshot_that_does_not_arrive_whole_is_not_kept(
    tmp_path: Path, answer: str | Exception, said: str
) -> None:
    with pytest.raises(cluster_snapshot.NoSnapshot, match=said):
        cluster_snapshot.fetch(load_cluster(BUNDLED), shell_of({"cp1": answer}), tmp_path, print)
    assert not (tmp_path / snapshot.SNAPSHOT_FILE).exists()


def test_the_next_control_plane_is_asked_when_one_does_not_answer(tmp_path: Path) -> None:
    cluster = load_cluster(HA)
    first, second, *_ = [plane.name for plane in cluster.control_planes]
    answers: dict[str, str | Exception] = {first: NodeFailed("timed out"), second: sent()}
    taken = cluster_snapshot.fetch(cluster, shell_of(answers), tmp_path, print)
    assert taken.node == second and snapshot.data(tmp_path, taken) == DATA


def test_backup_without_a_control_plane_says_what_the_archive_lacks(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ssh, "ssh_shell", lambda *args, **kwargs: shell_of({"cp1": NodeFailed("timed out")}))
    assert main(["backup", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "b.tgz")]) == 0
    err = capsys.readouterr().err
    assert "no control plane sent an etcd snapshot (cp1: timed out)" in err
    assert "the cluster's objects are not in it" in err


def test_a_damaged_snapshot_in_the_state_folder_is_no_backup(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    taken = snapshot.Snapshot("cp1", "2026-12-03T00:00:00Z", 1, 2, hashlib.sha256(DATA).hexdigest())
    snapshot.save(site / ".picluster", taken, DATA)
    (site / ".picluster" / snapshot.SNAPSHOT_FILE).write_bytes(DATA[:-1])
    argv = ["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "b.tgz")]
    assert main(argv) == 2
    assert "etcd-snapshot.db is damaged" in capsys.readouterr().err
    assert not (tmp_path / "b.tgz").exists()


@pytest.mark.parametrize("killed_at", ["record", "rename"])
def test_a_save_killed_midway_leaves_a_pair_that_matches(
    site: Path, monkeypatch: pytest.MonkeyPatch, killed_at: str
) -> None:
    """A kill between the snapshot and its record (or before the snapshot takes its name) leaves
    the previous pair, or the new one finished by the next load: never a mismatch that every
    command refuses, and the restore mark goes with the record it is in."""
    state = site / ".picluster"
    old = snapshot.Snapshot(
        "cp1", "2026-12-02T00:00:00Z", 1, 2, hashlib.sha256(DATA).hexdigest(), restore=True
    )
    snapshot.save(state, old, DATA)
    newer = DATA + b"newer\n"
    taken = snapshot.Snapshot(
        "cp1", "2026-12-03T00:00:00Z", 3, 4, hashlib.sha256(newer).hexdigest(), restore=True
    )

    real_replace = os.replace
    killed_before = snapshot.RECORD_FILE if killed_at == "record" else snapshot.SNAPSHOT_FILE

    def replace(source: str | Path, target: str | Path) -> None:
        if Path(target).name == killed_before:
            raise KeyboardInterrupt  # the kill, as the save renames that file into place
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        snapshot.save(state, taken, newer)
    monkeypatch.undo()
    loaded = snapshot.load(state)
    assert loaded == (old if killed_at == "record" else taken)
    assert snapshot.data(state, loaded) == (DATA if killed_at == "record" else newer)
    assert loaded.restore
    assert not (state / snapshot.PENDING_FILE).exists()


@contextmanager
def unreachable(endpoint: str, secrets: ClusterSecrets) -> Iterator[api.ClusterAPI]:
    raise api.Unreachable(f"https://{endpoint}: No route to host")
    yield  # pragma: no cover


class Answering:
    def __init__(self, endpoint: str, secrets: ClusterSecrets) -> None:
        pass

    def __enter__(self) -> Answering:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_replacing_the_only_control_plane_makes_its_cards_restore_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, secrets = load_cluster(BUNDLED), fixed_secrets()
    with pytest.raises(UserError, match="holds no etcd snapshot"):
        restore_only_control_plane(cluster, secrets, "cp1", tmp_path, unreachable)
    taken = snapshot.Snapshot("cp1", "2026-12-03T00:00:00Z", 4242, 321, hashlib.sha256(DATA).hexdigest())
    snapshot.save(tmp_path, taken, DATA)
    monkeypatch.setattr(api, "get_node", lambda server, name: {"metadata": {"name": name}})
    with pytest.raises(UserError, match="answers: cp1 is running") as refused:
        restore_only_control_plane(cluster, secrets, "cp1", tmp_path, Answering)  # type: ignore[arg-type]
    assert "would roll the cluster back" in str(refused.value)
    assert snapshot.load(tmp_path) == taken
    marked = restore_only_control_plane(cluster, secrets, "cp1", tmp_path, unreachable)
    assert marked.restore and snapshot.load(tmp_path) == marked

    plans = {plan.node: plan for plan in render_cluster(cluster, secrets, etcd_snapshot=DATA)}
    carried = {entry.path: entry for entry in plans["cp1"].files}
    assert carried[ETCD_SNAPSHOT].data == DATA and carried[ETCD_SNAPSHOT].mode == 0o600
    config = json.loads(carried[PurePosixPath("etc/picluster/node.json")].data)
    assert config["kubeadm"] == {**config["kubeadm"], "action": "init", "etcd_restore": f"/{ETCD_SNAPSHOT}"}
    for node in ("w1", "w2"):
        assert ETCD_SNAPSHOT not in {entry.path for entry in plans[node].files}
    plain = {plan.node: plan for plan in render_cluster(cluster, secrets)}["cp1"]
    assert ETCD_SNAPSHOT not in {entry.path for entry in plain.files}
    assert (
        "etcd_restore"
        not in json.loads(next(entry.data for entry in plain.files if entry.path.name == "node.json"))[
            "kubeadm"
        ]
    )
