"""The command line as a careless or unlucky user meets it: nothing it was handed destroys the
cluster's secrets or a file of the user's, and every mistake is a one-screen error, exit 2."""

from __future__ import annotations

import contextlib
import grp
import hashlib
import io
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import stat
import sys
import tarfile
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.cli import main
from builder.image.bmap import digest_image
from builder.secrets import store, tokens
from builder.secrets.pki import CA_VALIDITY, make_secrets
from builder.spec.load import load_cluster
from tests.support.kubeconfigs import multi_cluster
from tests.support.project import BUNDLED, file_contents


def refused(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize(
    "argv",
    [
        ["kubeconfig", "-o", ".picluster/pki/ca.key"],
        ["backup", "-o", ".picluster/pki/ca.key"],
        ["backup", "-o", "cluster.yaml"],
        ["kubeconfig", "-o", "cluster.yaml"],
    ],
    ids=["kubeconfig over the CA key", "backup over the CA key", "backup over cluster.yaml",
         "kubeconfig over cluster.yaml"],
)  # fmt: skip
def test_an_output_never_lands_on_the_secrets_or_a_file_of_the_users(
    site: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(site)
    before = file_contents(site)
    assert main([*argv, "-f", "cluster.yaml"]) == 2
    refused(capsys)
    assert file_contents(site) == before


def test_an_output_through_a_link_is_refused(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "usb").mkdir()
    (site / "backup.tgz").symlink_to(tmp_path / "usb/backup.tgz")
    assert (
        main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(site / "backup.tgz")])
        == 2
    )
    refused(capsys, "is a link")
    assert (site / "backup.tgz").is_symlink()


def test_render_into_the_state_folder_is_refused(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = file_contents(site / ".picluster")
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(site / ".picluster")]) == 2
    refused(capsys, "inside the cluster's state folder")
    assert file_contents(site / ".picluster") == before


def test_a_refused_node_folder_stops_render_before_it_writes_any(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fresh"
    (out / "w1").mkdir(parents=True)
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(out)]) == 2
    refused(capsys, "w1 exists and is not a folder picluster render wrote")
    assert sorted(path.name for path in out.iterdir()) == ["w1"]


def test_render_leaves_a_users_folder_named_like_its_old_trees(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path / "out")
    Path(".w2.old").mkdir()
    Path(".w2.old/notes").write_text("precious\n")
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", "."]) == 0
    assert Path(".w2.old/notes").read_text() == "precious\n"


def test_a_linked_cluster_yaml_never_gets_a_new_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the secrets beside the link's target and none beside the link, either guess could
    give the next card a new CA: it is an error that names both."""
    (tmp_path / "dotfiles").mkdir()
    shutil.copy(BUNDLED, tmp_path / "dotfiles/cluster.yaml")
    assert main(["render", "-f", str(tmp_path / "dotfiles/cluster.yaml"), "-o", str(tmp_path / "a")]) == 0
    (tmp_path / "work").mkdir()
    (tmp_path / "work/cluster.yaml").symlink_to(tmp_path / "dotfiles/cluster.yaml")
    capsys.readouterr()
    assert main(["render", "-f", str(tmp_path / "work/cluster.yaml"), "-o", str(tmp_path / "b")]) == 2
    refused(capsys, "the cluster's secrets are beside its target")
    assert not (tmp_path / "work/.picluster").exists()


@pytest.mark.parametrize(
    ("node", "words"),
    [
        (
            "cp1",
            ["cp1 is the cluster's only control plane", "holds no etcd snapshot to restore it from"],
        ),
        ("w9", ["w9 is not a node of this cluster.yaml", "choose from cp1, w1, w2"]),
    ],
    ids=["the only control plane", "a node cluster.yaml lacks"],
)
def test_replace_refuses_what_no_new_card_can_fix_before_asking_the_cluster(
    site: Path, node: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_contents(site)
    assert main(["replace", node, "-f", str(site / "cluster.yaml")]) == 2  # the API server is not there
    refused(capsys, *words)
    assert file_contents(site) == before


def test_replacing_the_first_control_plane_of_a_cluster_that_does_not_answer_records_nothing(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its cards may join only once a running cluster has answered: before that, joining would
    leave a cluster nobody initialises."""
    data = yaml.safe_load((site / "cluster.yaml").read_text())
    data["cluster"]["control_plane_endpoint"] = "192.168.50.9:8443"
    for node in data["nodes"]:
        node.update(role="control-plane", model="pi4")
    (site / "cluster.yaml").write_text(yaml.safe_dump(data))
    (site / ".picluster/settings.json").unlink()  # as a state folder made for this cluster.yaml
    built = tokens.first_build(load_cluster(site / "cluster.yaml"), store.load(site / ".picluster"))
    tokens.save_tokens(site / ".picluster", built)  # as after the first build
    before = file_contents(site)
    assert main(["replace", "cp1", "--dead", "-f", str(site / "cluster.yaml")]) == 2  # nothing listens
    refused(capsys, "cannot reach the API server")
    assert file_contents(site) == before


@pytest.mark.parametrize("command", ["status", "token", "kubeconfig", "backup", "replace"])
def test_commands_that_work_on_a_cluster_never_make_one(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    extra = {"backup": ["-o", str(tmp_path / "backup.tgz")], "token": ["w1"], "replace": ["w1"]}.get(
        command, []
    )
    assert main([command, "-f", str(tmp_path / "cluster.yaml"), *extra]) == 2
    refused(capsys, "no cluster secrets in")
    assert not (tmp_path / ".picluster").exists()


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ("w9", ["w9 is not a node of", "choose from cp1, w1, w2"]),
        ("cp1", ["cp1 runs `kubeadm init`: it joins with no bootstrap token", "name another node"]),
        ("w1", ["no card of", "has been built yet", "run picluster build"]),
    ],
    ids=["no such node", "the first control plane", "before any build"],
)
def test_token_for_a_node_that_cannot_have_one_is_refused_before_asking_the_cluster(
    site: Path, node: str, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = file_contents(site / ".picluster")
    assert main(["token", "-f", str(site / "cluster.yaml"), node]) == 2
    refused(capsys, *words)
    assert file_contents(site / ".picluster") == before


def test_a_backup_holds_only_the_clusters_files_and_restores(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / ".picluster/MANIFEST.json").write_text('{"files": {}}')  # a backup once unpacked here
    (site / ".picluster/notes.bin").write_bytes(b"\0" * (2 << 20))
    archive = tmp_path / "b.tgz"
    assert main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    with tarfile.open(archive) as held:
        assert "notes.bin" not in held.getnames()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(BUNDLED, elsewhere / "cluster.yaml")
    assert main(["restore", "-f", str(elsewhere / "cluster.yaml"), str(archive)]) == 0


@pytest.mark.parametrize(
    "members",
    [
        {"MANIFEST.json": json.dumps({"files": ["pki/ca.crt"]}).encode()},
        {".": b"x", "MANIFEST.json": b"{}"},
        {"pki": b"x", "MANIFEST.json": b"{}"},
        {"x" * 300: b"x", "MANIFEST.json": b"{}"},
    ],
    ids=["files as a list", "a member named .", "a file named pki", "a 300-character name"],
)
def test_odd_archives_are_refused_in_one_screen(
    tmp_path: Path, members: dict[str, bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    archive = tmp_path / "odd.tgz"
    with tarfile.open(archive, "w:gz") as odd:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            odd.addfile(info, io.BytesIO(data))
    assert main(["restore", "-f", str(tmp_path / "cluster.yaml"), str(archive)]) == 2
    refused(capsys, "is not a usable picluster backup")
    assert not (tmp_path / ".picluster").exists()


@pytest.mark.parametrize("value", ["²", "99999999999999999999", "١٢٣"])
def test_a_source_date_epoch_python_would_choke_on_is_refused(
    tmp_path: Path, value: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    refused(capsys, "SOURCE_DATE_EPOCH")
    assert not (tmp_path / ".picluster").exists(), "refused before any secret was made"


@pytest.mark.parametrize("record", [b"", b"[1]", b"{not json"])
def test_a_damaged_build_record_is_a_stale_image(
    site: Path, tmp_path: Path, record: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "cp1.img").write_bytes(b"junk")
    (images / "cp1.img.json").write_bytes(record)
    assert main(["status", "-f", str(site / "cluster.yaml"), "-i", str(images), "--json"]) == 0
    statuses = {node["name"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
    assert statuses["cp1"]["image"] == "stale" and "cp1.img.json is damaged" in statuses["cp1"]["why"][0]


def test_a_state_folder_without_a_single_file_is_a_new_one(tmp_path: Path) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    (tmp_path / ".picluster/pki").mkdir(parents=True)
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / ".picluster/pki/ca.key").is_file()


def kubectl_touched(site: Path) -> bytes:
    """A kubeconfig picluster wrote, after `kubectl config set-context --current --namespace
    apps`: kubectl writes it back in its own form, with the user's change."""
    assert main(["kubeconfig", "-f", str(site / "cluster.yaml"), "-o", str(site / "x.conf")]) == 0
    data = yaml.safe_load((site / "x.conf").read_text())
    (site / "x.conf").unlink()
    data["contexts"][0]["context"]["namespace"] = "apps"
    return yaml.safe_dump({**data, "preferences": {}}, sort_keys=True).encode()


@pytest.mark.parametrize(
    "contents",
    [lambda site: multi_cluster(site).encode(), kubectl_touched],
    ids=["several clusters, flattened", "picluster's, changed by kubectl"],
)
def test_kubeconfig_never_replaces_a_kubeconfig_the_user_keeps(
    site: Path, contents: Callable[[Path], bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    config = site / "config"
    config.write_bytes(contents(site))
    before = config.read_bytes()
    assert main(["kubeconfig", "-f", str(site / "cluster.yaml"), "-o", str(config)]) == 2
    refused(capsys, f"{config} exists and is not a kubeconfig picluster wrote", "--merge")
    assert config.read_bytes() == before


def test_a_cluster_yaml_that_is_no_regular_file_gets_no_state_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cat cluster.yaml | picluster render -f /dev/stdin` made the cluster's CA in /dev, a RAM
    filesystem: the secrets live beside cluster.yaml, so it has to be a file somewhere lasting."""
    pipe = tmp_path / "cluster.yaml"
    os.mkfifo(pipe)
    feeder = threading.Thread(target=lambda: pipe.write_bytes(BUNDLED.read_bytes()), daemon=True)
    feeder.start()
    assert main(["render", "-f", str(pipe), "-o", str(tmp_path / "out")]) == 2
    refused(capsys, f"{pipe} is not a regular file", "save it as a file")
    assert not (tmp_path / ".picluster").exists()
    if feeder.is_alive():  # refused before reading it: let the feeder finish
        pipe.read_bytes()


@pytest.mark.parametrize(
    "argv",
    [["render", "-o", "sl"], ["render", "-o", "sl/nodes"], ["backup", "-o", "sl/b.tgz"],
     ["kubeconfig", "-o", "sl/admin2.conf"]],
    ids=["render", "render below", "backup", "kubeconfig"],
)  # fmt: skip
def test_an_output_that_reaches_the_state_folder_through_a_link_is_refused(
    site: Path, argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ln -s .picluster sl; picluster render -o sl` wrote the nodes' trees, links and all, into
    the secrets, after which every command said they were damaged."""
    monkeypatch.chdir(site)
    Path("sl").symlink_to(".picluster")
    before = file_contents(site / ".picluster")
    assert main([*argv, "-f", "cluster.yaml"]) == 2
    refused(capsys, "inside the cluster's state folder")
    assert file_contents(site / ".picluster") == before
    assert main(["status", "-f", "cluster.yaml", "-i", "images"]) == 0


def killed_at(call: str, nth: int, argv: list[str]) -> None:
    """Run picluster in a child process killed outright (SIGKILL: no cleanup of any kind, as a
    power cut or the OOM killer) at its nth call of os.<call>."""
    pid = os.fork()
    if pid == 0:
        try:
            calls, real = itertools.count(1), getattr(os, call)

            def die_at_nth(*args: Any, **kwargs: Any) -> Any:
                if next(calls) == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(*args, **kwargs)

            setattr(os, call, die_at_nth)
            main(argv)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), "the child was killed where it was meant to be"


def hidden(folder: Path, start: str) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name.startswith(start))


def test_what_a_killed_render_left_is_cleaned_up_by_the_next(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between moving cp1's old tree aside and moving the new one in, render left both,
    each with the cluster's CA keys, under hidden names no later run removed."""
    monkeypatch.chdir(tmp_path / "out")
    Path(".w2.old").mkdir()  # a user's, however much it looks like picluster's
    Path(".cp1.old-1").write_text("precious\n")
    argv = ["render", "-f", str(site / "cluster.yaml"), "-o", "."]
    killed_at("rename", 2, argv)
    assert len(hidden(Path(), ".cp1.")) == 3, "the old tree, the new one, and the user's file"
    assert main(argv) == 0
    assert sorted(os.listdir()) == [".cp1.old-1", ".w2.old", "cp1", "w1", "w2"]
    assert Path(".cp1.old-1").read_text() == "precious\n"


def test_what_a_killed_backup_left_is_cleaned_up_by_the_next(site: Path, tmp_path: Path) -> None:
    argv = ["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "usb/b3.tgz")]
    killed_at("replace", 1, argv)
    assert len(hidden(tmp_path / "usb", ".b3.tgz.")) == 1, "a copy of the CA keys"
    running = tmp_path / f"usb/.b3.tgz.tmp-{os.getpid()}-abcd1234"  # a backup still being written
    running.write_bytes(b"")
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path / "usb")) == [running.name, "b3.tgz"]


def test_what_a_killed_restore_left_is_cleaned_up_by_the_next(site: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tgz"
    assert main(["backup", "--secrets-only", "-f", str(site / "cluster.yaml"), "-o", str(archive)]) == 0
    shutil.rmtree(site / ".picluster")
    argv = ["restore", "-f", str(site / "cluster.yaml"), str(archive)]
    killed_at("rename", 1, argv)
    assert len(hidden(site, ".picluster.")) == 1, "a copy of the CA keys"
    assert main(argv) == 0
    assert hidden(site, ".picluster") == [".picluster"]


NOBODY = 65534


def as_another_user(argv: list[str], folder: Path) -> tuple[int, str]:
    """picluster run by a user other than the one who made the cluster: as root, in a child
    process that drops to nobody (root reads everything); otherwise with the folder mode 000."""
    if os.geteuid() != 0:
        folder.chmod(0)
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                return main(argv), err.getvalue()
        finally:
            folder.chmod(0o700)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(read)
            sys.stderr = os.fdopen(write, "w")
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            code = main(argv)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as child_err:
        err = child_err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), err


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A cluster folder others may enter (tmp_path's parents keep them out), with its secrets."""
    folder = Path(tempfile.mkdtemp())
    try:
        folder.chmod(0o755)
        shutil.copy(BUNDLED, folder / "cluster.yaml")
        (folder / "cluster.yaml").chmod(0o644)
        assert main(["render", "-f", str(folder / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
        (folder / "out").mkdir(mode=0o777)
        (folder / "out").chmod(0o777)
        yield folder
    finally:
        shutil.rmtree(folder)


@pytest.mark.parametrize("command", ["render", "status"])
def test_a_state_folder_another_user_cannot_read_is_named_with_its_owner(shared: Path, command: str) -> None:
    """Told there were no secrets, render went on to make a new CA."""
    before = file_contents(shared / ".picluster")
    extra = ["-o", str(shared / "out")] if command == "render" else ["-i", str(shared / "out")]
    code, err = as_another_user([command, "-f", str(shared / "cluster.yaml"), *extra], shared / ".picluster")
    owner = pwd.getpwuid((shared / ".picluster").stat().st_uid).pw_name
    assert code == 2 and err.startswith("error: "), err
    assert f"cannot read the cluster's secrets in {shared / '.picluster'}" in err, err
    assert f"owned by {owner}" in err and "no cluster secrets" not in err, err
    assert file_contents(shared / ".picluster") == before
    assert os.listdir(shared / "out") == []


TOKEN = "qrstuv.0123456789qrstuv"
SECRET_PART = TOKEN.split(".")[1]


@pytest.mark.parametrize(
    ("record", "named"),
    [
        ({"current": TOKEN, "issued_at": TOKEN, "nodes": {}}, "issued_at"),
        ({"current": TOKEN, "issued_at": "2026-01-01T00:00:00+00:00", "nodes": {TOKEN: "cp1"}}, "nodes"),
        ({"current": TOKEN, "issued_at": "2026-01-01T00:00:00+00:00", "nodes": [[TOKEN, TOKEN, 1]]},
         "nodes"),
        ({"current": TOKEN.upper(), "issued_at": "2026-01-01T00:00:00+00:00", "nodes": {}}, "current"),
        ({"current": {TOKEN: 1}, "issued_at": "2026-01-01T00:00:00+00:00", "nodes": {}}, "current"),
    ],
    ids=["token as the time", "token as a node name", "nodes as a list", "upper-case token", "a mapping"],
)  # fmt: skip
def test_a_damaged_token_record_never_shows_a_token(
    site: Path, tmp_path: Path, record: dict[str, Any], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (site / ".picluster/tokens.json").write_text(json.dumps(record))
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    err = refused(capsys, "tokens.json is damaged", named)
    assert SECRET_PART not in err.lower(), err


@pytest.mark.parametrize("where", ["tokens.json", "backup manifest"])
def test_deeply_nested_json_is_damage_not_a_traceback(
    site: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = b'{"current": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    if where == "tokens.json":
        (site / ".picluster/tokens.json").write_bytes(nested)
        assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
        refused(capsys, "tokens.json is damaged")
        return
    archive = tmp_path / "b.tgz"
    with tarfile.open(archive, "w:gz") as nasty:
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(nested)
        nasty.addfile(info, io.BytesIO(nested))
    shutil.rmtree(site / ".picluster")
    assert main(["restore", "-f", str(site / "cluster.yaml"), str(archive)]) == 2
    refused(capsys, "is not a usable picluster backup", "MANIFEST.json")


@pytest.mark.parametrize(
    ("made", "said"),
    [
        (datetime(2000, 1, 1, tzinfo=UTC), "expired on 2009-12-29"),
        (datetime(2100, 1, 1, tzinfo=UTC), "not valid before 2100-01-01"),
    ],
    ids=["expired", "not yet valid"],
)
@pytest.mark.parametrize("command", ["render", "kubeconfig"])
def test_a_ca_outside_its_validity_is_refused(
    tmp_path: Path, made: datetime, said: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    store.save(tmp_path / ".picluster", make_secrets(made))
    out = tmp_path / ("out" if command == "render" else "admin.conf")
    assert main([command, "-f", str(tmp_path / "cluster.yaml"), "-o", str(out)]) == 2
    refused(capsys, f"pki/ca.crt: {said}", "fix: ")
    assert not out.is_file() and not (out / "cp1").exists()


def edited(site: Path, change: Callable[[dict[str, Any]], object]) -> None:
    data = yaml.safe_load((site / "cluster.yaml").read_text())
    change(data)
    (site / "cluster.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def swap_roles(data: dict[str, Any]) -> None:
    cp1, w1 = data["nodes"][0], data["nodes"][1]
    cp1["role"], w1["role"] = w1["role"], cp1["role"]


def set_in_cluster(**changes: str) -> Callable[[dict[str, Any]], object]:
    return lambda data: data["cluster"].update(changes)


FIXED = [
    ("cluster.pod_subnet", set_in_cluster(pod_subnet="10.245.0.0/16"), "10.244.0.0/16", "10.245.0.0/16"),
    ("cluster.name", set_in_cluster(name="lab"), "homelab", "lab"),
    ("cluster.control_plane_endpoint", set_in_cluster(control_plane_endpoint="192.168.50.9:8443"), "(none)",
     "192.168.50.9:8443"),
    ("the first control plane", swap_roles, "cp1", "w1"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "change", "was", "now"), FIXED, ids=[fixed[0] for fixed in FIXED])
@pytest.mark.parametrize("command", ["validate", "render", "build"])
def test_a_setting_a_running_cluster_cannot_change_is_refused_once_it_has_secrets(
    site: Path,
    tmp_path: Path,
    command: str,
    field: str,
    change: Callable[[dict[str, Any]], object],
    was: str,
    now: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Swapping cp1's and w1's roles made w1 run a second `kubeadm init` with the same CA."""
    edited(site, change)
    before = file_contents(tmp_path / "out")
    extra = {
        "validate": [],
        "render": ["-o", str(tmp_path / "out")],
        "build": ["-o", str(tmp_path / "images"), "--cache", str(tmp_path / "cache")],
    }[command]
    assert main([command, "-f", str(site / "cluster.yaml"), *extra]) == 2
    refused(capsys, f"{field}: was {was} when the cluster's secrets were made, now {now}", "cannot",
            "fix: put it back", "new state folder")  # fmt: skip
    assert file_contents(tmp_path / "out") == before
    assert not (tmp_path / "images").exists()


def three_control_planes_behind_an_endpoint(data: dict[str, Any]) -> None:
    for node in data["nodes"]:
        node.update(role="control-plane", model="pi4")
    data["cluster"]["control_plane_endpoint"] = "192.168.50.9:8443"


def test_a_cluster_made_with_one_control_plane_and_no_endpoint_is_told_it_needs_a_new_cluster_to_grow(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """kubeadm join --control-plane refuses a cluster without a stable controlPlaneEndpoint, and
    kubeadm cannot add one after init: putting the endpoint back to none cannot be the whole fix."""
    edited(site, three_control_planes_behind_an_endpoint)
    assert main(["validate", "-f", str(site / "cluster.yaml")]) == 2
    refused(capsys, "cluster.control_plane_endpoint: was (none)",
            "more need a new cluster with the endpoint set from the start")  # fmt: skip


def test_a_state_folder_from_before_the_record_gets_one_and_says_so_once(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = site / ".picluster/settings.json"
    record.unlink()
    argv = ["render", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "out")]
    capsys.readouterr()
    assert main(argv) == 0
    assert "recorded cluster.name homelab, cluster.pod_subnet 10.244.0.0/16" in capsys.readouterr().err
    assert record.stat().st_mode & 0o777 == 0o600
    assert main(argv) == 0
    assert "recorded" not in capsys.readouterr().err
    edited(site, lambda d: d["cluster"].update(name="lab"))
    assert main(argv) == 2


def test_exposed_keys_are_named_with_who_could_read_them_and_left_as_they_are(
    site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A world-readable .picluster was quietly made private again, as if nobody had read it."""
    folder = site / ".picluster"
    folder.chmod(0o755)
    (folder / "pki").chmod(0o755)
    (folder / "pki/ca.key").chmod(0o644)
    (folder / "pki/sa.key").chmod(0o640)
    (folder / "pki/ca.crt").chmod(0o644)  # a certificate is no secret
    assert main(["render", "-f", str(site / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 2
    group = grp.getgrgid((folder / "pki/sa.key").stat().st_gid).gr_name
    err = refused(
        capsys,
        "pki/ca.key (mode 0644): readable by every user",
        f"pki/sa.key (mode 0640): readable by group {group}",
        "rotate",
        "chmod -R go= ",
    )
    assert "ca.crt" not in err
    assert "fix: make the folder private: chmod -R go= " in err, "first: until then every command refuses"
    modes = [stat.S_IMODE((folder / name).stat().st_mode) for name in ("", "pki", "pki/ca.key", "pki/sa.key")]
    assert modes == [0o755, 0o755, 0o644, 0o640], "left as they were"


def made_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def made_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def linked_to_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


def edited_bmap(old: str, new: str) -> Callable[[Path], None]:
    """An edit to the .bmap with its checksum made anew, as a hand edit or another tool might."""

    def edit(path: Path) -> None:
        text = path.read_text().replace(old, new)
        stored = re.search(r"<BmapFileChecksum> (\w+) ", text)
        assert stored and old in path.read_text()
        zeroed = text.replace(stored.group(1), "0" * 64)
        path.write_text(zeroed.replace("0" * 64, hashlib.sha256(zeroed.encode()).hexdigest()))

    return edit


BINARY = bytes(range(256))
DAMAGES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "empty .sha256": (".sha256", lambda p: p.write_bytes(b""), "cp1.img.sha256 is damaged (no SHA-256"),
    "binary .sha256": (".sha256", lambda p: p.write_bytes(BINARY), "cp1.img.sha256 is damaged (not text)"),
    ".sha256 a folder": (".sha256", made_folder, "cp1.img.sha256 is a folder, not a regular file"),
    ".sha256 a FIFO": (".sha256", made_fifo, "cp1.img.sha256 is a FIFO, not a regular file"),
    "empty .bmap": (".bmap", lambda p: p.write_bytes(b""), "cp1.img.bmap is damaged (its checksum"),
    "binary .bmap": (".bmap", lambda p: p.write_bytes(BINARY), "cp1.img.bmap is damaged (not text)"),
    ".bmap a folder": (".bmap", made_folder, "cp1.img.bmap is a folder, not a regular file"),
    ".bmap a FIFO": (".bmap", made_fifo, "cp1.img.bmap is a FIFO, not a regular file"),
    "negative BlockSize": (".bmap", edited_bmap("<BlockSize> 4096", "<BlockSize> -4096"), "BlockSize -4096"),
    "zero BlockSize": (".bmap", edited_bmap("<BlockSize> 4096", "<BlockSize> 0"), "BlockSize 0"),
    "not XML": (".bmap", edited_bmap("</BlockMap>", "</BlockMop>"), "cp1.img.bmap is damaged (mismatched"),
    "a range without its SHA-256": (".bmap", edited_bmap('chksum="', 'sum="'), "range 0 has no SHA-256"),
    "ranges out of order": (".bmap", edited_bmap("> 0 <", "> 300 <"), "range 300 is empty, out of order"),
    "image a FIFO": ("", made_fifo, "cp1.img is a FIFO, not a regular file"),
    "image a link to /dev/zero": ("", linked_to_dev_zero, "is a character device (a link to /dev/zero)"),
    "image a folder": ("", made_folder, "cp1.img is a folder, not a regular file"),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_flash_refuses_a_damaged_image_set_in_one_screen(
    site: Path,
    tmp_path: Path,
    damage: tuple[str, Callable[[Path], None], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    image = images / "cp1.img"
    with image.open("wb") as handle:
        handle.write(b"boot sector " * 100)
        handle.seek(300 * 4096)
        handle.write(b"root " * 100)
        handle.truncate(2**20)
    digests = digest_image(image)
    (images / "cp1.img.sha256").write_text(f"{digests.sha256}  cp1.img\n")
    (images / "cp1.img.bmap").write_text(digests.bmap)
    suffix, spoil, words = damage
    spoil(images / f"cp1.img{suffix}")
    card = tmp_path / "card"
    assert (
        main(
            [
                "flash",
                "cp1",
                "--device",
                str(card),
                "--yes",
                "-i",
                str(images),
                "-f",
                str(site / "cluster.yaml"),
            ]
        )
        == 2
    )
    refused(capsys, words)
    assert not card.exists()


@pytest.mark.parametrize("name", ["cp1.img.json", "cp1.img.sha256", "cp1.img.bmap"])
@pytest.mark.parametrize(
    "spoil", [made_fifo, linked_to_dev_zero, made_folder], ids=["FIFO", "/dev/zero", "folder"]
)
def test_status_reads_no_fifo_or_device_in_the_images_folder(
    site: Path, tmp_path: Path, name: str, spoil: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for made in ("cp1.img", "cp1.img.sha256", "cp1.img.bmap"):
        (images / made).write_bytes(b"junk")
    (images / "cp1.img.json").write_text("{}")
    spoil(images / name)
    assert main(["status", "-f", str(site / "cluster.yaml"), "-i", str(images), "--json"]) == 0
    statuses = {node["name"]: node for node in json.loads(capsys.readouterr().out)["nodes"]}
    assert statuses["cp1"]["image"] == "stale"


def test_kubeconfig_merges_into_no_file_that_is_not_a_kubeconfig(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cluster.yaml is a YAML mapping too: merging would bury it under an admin key."""
    deep = site / "deep.conf"
    deep.write_text("[" * 50_000 + "]" * 50_000)
    before = file_contents(site)
    for target in (site / "cluster.yaml", deep):
        assert main(["kubeconfig", "--merge", "-f", str(site / "cluster.yaml"), "-o", str(target)]) == 2
        refused(capsys, f"{target} is not a kubeconfig")
    assert file_contents(site) == before


def test_a_kubeconfig_merged_into_is_made_private(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = site / "config"
    config.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    config.chmod(0o644)
    assert main(["kubeconfig", "--merge", "-f", str(site / "cluster.yaml"), "-o", str(config)]) == 0
    assert stat.S_IMODE(config.stat().st_mode) == 0o600, "it holds an admin key now"
    assert "its mode is now 0600, was 0644" in capsys.readouterr().out


def _run_into(codes: list[int], argv: list[str]) -> None:
    codes.append(main(argv))


@pytest.mark.parametrize("record", ["tokens.json", "settings.json"])
@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_state_record_that_is_no_file_is_refused_without_waiting(
    site: Path, record: str, kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A FIFO blocks a reader until someone writes to it; a folder is no record."""
    monkeypatch.chdir(site)
    path = site / ".picluster" / record
    path.unlink(missing_ok=True)
    path.mkdir() if kind == "folder" else os.mkfifo(path)
    commands = [["render", "-o", "out2"], ["backup", "-o", "b.tgz"], ["token", "w1"], ["validate"]]
    for argv in commands[:3] if record == "tokens.json" else commands:  # validate reads no tokens
        codes: list[int] = []
        waiting = threading.Thread(target=_run_into, args=(codes, [*argv, "-f", "cluster.yaml"]), daemon=True)
        waiting.start()
        waiting.join(30)
        assert codes == [2], f"{argv}: {codes or 'still waiting'}"
        refused(capsys, f"{path} is")


def test_replace_reads_the_state_folder_before_it_asks_the_cluster(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record it cannot read, or a cluster.yaml the recorded settings refuse, stops replace
    before it deletes anything on the cluster (the API server is not there: asking it first would
    say so instead)."""
    cluster_file = str(site / "cluster.yaml")
    (site / ".picluster/tokens.json").write_text('{"nodes": [')
    assert main(["replace", "w1", "-f", cluster_file]) == 2
    refused(capsys, "tokens.json is damaged")
    (site / ".picluster/tokens.json").unlink()
    data = yaml.safe_load((site / "cluster.yaml").read_text())
    data["cluster"]["pod_subnet"] = "10.200.0.0/16"
    (site / "cluster.yaml").write_text(yaml.safe_dump(data))
    for argv in (["replace", "w1"], ["token", "w1"], ["kubeconfig", "-o", str(site / "k.conf")]):
        assert main([*argv, "-f", cluster_file]) == 2
        refused(capsys, "cluster.pod_subnet", "a running cluster cannot change it")


def test_a_ca_that_ends_within_half_a_year_is_named_with_what_to_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    store.save(tmp_path / ".picluster", make_secrets(datetime.now(UTC) - CA_VALIDITY + timedelta(days=60)))
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "pki/ca.crt ends on" in err and "(in 59 days)" in err and "plan a manual CA rotation" in err
    (tmp_path / "fresh").mkdir()
    store.save(tmp_path / "fresh/.picluster", make_secrets(datetime.now(UTC)))
    shutil.copy(BUNDLED, tmp_path / "fresh/cluster.yaml")
    assert main(["render", "-f", str(tmp_path / "fresh/cluster.yaml"), "-o", str(tmp_path / "out2")]) == 0
    assert "ends on" not in capsys.readouterr().err
