"""Which Kubernetes release the cluster runs, which moves kubeadm makes from it, and cards that
follow the running release rather than cluster.yaml's next one."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from builder.cli import main
from builder.spec.releases import Release, refuse_move
from tests.support.project import BUNDLED


@pytest.mark.parametrize(
    ("running", "wanted"),
    [
        ("1.33.6", "1.34.2"),
        ("1.33.4", "1.33.13"),
        ("1.34.2", "1.34.3"),
        ("1.31.0", "1.32.13"),
        ("1.36.5", "1.37.1"),
    ],
)
def test_kubeadm_makes_these_moves(running: str, wanted: str) -> None:
    assert refuse_move(Release.of(running), Release.of(wanted)) is None


def test_a_skipped_minor_is_refused_naming_the_release_between() -> None:
    refusal = refuse_move(Release.of("1.33.6"), Release.of("1.35.0"))
    assert refusal is not None
    assert "skips a minor release" in refusal.problem
    assert refusal.fix.startswith("set cluster.kubernetes to 1.34.12 and run picluster upgrade")


def test_a_downgrade_is_refused() -> None:
    refusal = refuse_move(Release.of("1.34.2"), Release.of("1.34.1"))
    assert refusal is not None and "does not downgrade" in refusal.problem


def test_etcd_3_6_needs_the_newest_3_5_first() -> None:
    """1.33.0-1.33.5 run etcd 3.5.21; 1.34 runs 3.6, which needs 3.5.24 (the newest kubeadm
    pins) on every member first: the newest 1.33 patch is the step between."""
    refusal = refuse_move(Release.of("1.33.5"), Release.of("1.34.2"))
    assert refusal is not None
    assert "3.5.21-0 to 3.6.5-0" in refusal.problem
    assert refusal.fix.startswith("set cluster.kubernetes to 1.33.13 and run picluster upgrade")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copy(BUNDLED, tmp_path / "cluster.yaml")
    assert main(["render", "-f", str(tmp_path / "cluster.yaml"), "-o", str(tmp_path / "out")]) == 0
    return tmp_path


def runs(workdir: Path, version: str) -> None:
    (workdir / ".picluster/release.json").write_text(json.dumps({"kubernetes": version}))


def test_build_refuses_cards_newer_than_the_cluster(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs(workdir, "1.34.1")  # the bundled cluster.yaml names 1.34.2
    images = workdir / "images"
    assert main(["build", "-f", str(workdir / "cluster.yaml"), "-o", str(images)]) == 2
    err = capsys.readouterr().err
    assert "cluster.kubernetes is 1.34.2, but the cluster runs 1.34.1" in err
    assert "run picluster upgrade" in err
    assert not images.exists()


def test_build_refuses_a_downgrade(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs(workdir, "1.35.0")
    assert main(["build", "-f", str(workdir / "cluster.yaml"), "-o", str(workdir / "images")]) == 2
    assert "does not downgrade" in capsys.readouterr().err


def test_validate_names_an_upgrade_and_refuses_a_skip(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = workdir / "cluster.yaml"
    runs(workdir, "1.33.13")
    assert main(["validate", "-f", str(cluster)]) == 0
    assert "the cluster runs 1.33.13: picluster upgrade moves it" in capsys.readouterr().err
    runs(workdir, "1.32.4")
    assert main(["validate", "-f", str(cluster)]) == 2
    err = capsys.readouterr().err
    assert "cluster.kubernetes" in err and "set cluster.kubernetes to 1.33.13" in err


@pytest.mark.parametrize("text", ['{"kubernetes": "1.34.2\\n"}', "[]", '{"kubernetes": "1.30.1"}', "{"])
def test_a_damaged_record_names_the_file(
    workdir: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / ".picluster/release.json").write_text(text)
    assert main(["validate", "-f", str(workdir / "cluster.yaml")]) == 2
    err = capsys.readouterr().err
    assert "release.json is damaged" in err and "Traceback" not in err


def test_upgrade_plan_names_each_node_in_order_the_repository_and_the_images(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs(workdir, "1.33.13")
    assert main(["upgrade", "-f", str(workdir / "cluster.yaml"), "--plan"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "upgrade Kubernetes 1.33.13 -> 1.34.2: the apt repository moves from "
        "https://pkgs.k8s.io/core:/stable:/v1.33/deb/ to https://pkgs.k8s.io/core:/stable:/v1.34/deb/"
    )
    assert lines[1:4] == [
        "  1. cp1 (first control plane): kubeadm 1.34.2, kubeadm upgrade apply v1.34.2, drain, "
        "kubelet and kubectl 1.34.2, restart, uncordon, Ready at v1.34.2",
        "  2. w1 (worker): kubeadm 1.34.2, drain, kubeadm upgrade node, kubelet and kubectl 1.34.2, "
        "restart, uncordon, Ready at v1.34.2",
        "  3. w2 (worker): kubeadm 1.34.2, drain, kubeadm upgrade node, kubelet and kubectl 1.34.2, "
        "restart, uncordon, Ready at v1.34.2",
    ]
    assert "    registry.k8s.io/etcd:3.6.5-0" in lines and "    registry.k8s.io/kube-proxy:v1.34.2" in lines


def test_upgrade_refuses_before_contacting_anything(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = str(workdir / "cluster.yaml")
    assert main(["upgrade", "-f", cluster]) == 2  # the render made no card: nothing runs
    assert "no card of this cluster has been built" in capsys.readouterr().err
    runs(workdir, "1.34.2")
    assert main(["upgrade", "-f", cluster]) == 0
    assert "runs Kubernetes 1.34.2 already: nothing to upgrade" in capsys.readouterr().out
    runs(workdir, "1.32.13")
    assert main(["upgrade", "-f", cluster]) == 2
    assert "skips a minor release" in capsys.readouterr().err
    runs(workdir, "1.34.1")
    (workdir / ".picluster/upgrade.json").write_text(
        json.dumps({"from": "1.34.1", "to": "1.34.3", "done": {}})
    )
    assert main(["upgrade", "-f", cluster]) == 2
    err = capsys.readouterr().err
    assert "an upgrade to 1.34.3 is under way" in err and "set cluster.kubernetes to 1.34.3" in err


@pytest.mark.parametrize("kind", ["truncated", "fifo"])
def test_a_damaged_progress_record_is_named_with_its_fix(
    workdir: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    runs(workdir, "1.34.1")
    record = workdir / ".picluster/upgrade.json"
    if kind == "fifo":
        os.mkfifo(record)  # read as it was, it would block the command for ever
    else:
        record.write_text('{"from": "1.34.1", "to": ')
    assert main(["upgrade", "-f", str(workdir / "cluster.yaml"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "upgrade.json is damaged" in err and "delete it and run picluster upgrade again" in err
    assert "Traceback" not in err
