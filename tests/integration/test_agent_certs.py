"""`picluster-agent certs`, the daily check that renews kubeadm's certificates on a control plane
before they expire: kubeadm stood in (tests/support/standins.py: real certificates signed by the card's
CAs, `certs check-expiration -o json` and `certs renew all` as upstream's do them), the clock moved
by the real libfaketime."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from tests.support.agent import (
    AGENT_LAUNCHER,
    agent_command,
    agent_env,
    calls,
    install_standins,
    node_root,
    run_agent,
    state,
)

pytestmark = pytest.mark.integration

MANIFESTS = Path("etc/kubernetes/manifests")
HELD = Path("etc/kubernetes/picluster-held-manifests")


@pytest.fixture
def control_plane(tmp_path: Path) -> tuple[Path, Path]:
    """cp1's root once kubeadm init has made its certificates and static pods."""
    if shutil.which("faketime") is None:
        pytest.fail("faketime is missing: make test installs Debian's faketime")
    root = node_root(tmp_path, "cp1", packages={"install": "image"})
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    joined = run_agent(root, standins, "join")
    assert joined.returncode == 0, joined.stdout + joined.stderr
    return root, standins


def api_server_expiry(root: Path) -> datetime:
    return x509.load_pem_x509_certificate(
        (root / "etc/kubernetes/pki/apiserver.crt").read_bytes()
    ).not_valid_after_utc


def certs_at(root: Path, standins: Path, days_later: int) -> subprocess.CompletedProcess[str]:
    """`picluster-agent certs` with every clock it and kubeadm read moved `days_later` days on."""
    return subprocess.run(
        ["faketime", "-f", f"+{days_later}d", *agent_command(root, "certs")],
        env=agent_env(standins, root), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_a_year_out_nothing_is_renewed(control_plane: tuple[Path, Path]) -> None:
    root, standins = control_plane
    manifests = {path.name: path.read_bytes() for path in (root / MANIFESTS).iterdir()}
    done = run_agent(root, standins, "certs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to renew" in done.stdout
    assert ["kubeadm", "certs", "renew", "all"] not in calls(standins)
    assert {path.name: path.read_bytes() for path in (root / MANIFESTS).iterdir()} == manifests
    recorded = state(root)["certificates"]
    expires = datetime.strptime(recorded["expires"], "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    assert timedelta(days=364) < expires - datetime.now(UTC) <= timedelta(days=365)
    assert "renewed_at" not in recorded


def test_eleven_months_on_every_certificate_is_renewed_and_the_static_pods_restarted(
    control_plane: tuple[Path, Path],
) -> None:
    root, standins = control_plane
    before = api_server_expiry(root)
    manifests = {path.name: path.read_bytes() for path in (root / MANIFESTS).iterdir()}
    done = certs_at(root, standins, 340)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ["kubeadm", "certs", "renew", "all"] in calls(standins)
    assert api_server_expiry(root) - before > timedelta(days=339), "renewed for a year from the moved clock"
    lines = done.stdout.splitlines()
    held = next(
        i for i, line in enumerate(lines) if "held in /etc/kubernetes/picluster-held-manifests" in line
    )
    back = [line for line in lines[held:] if "back in /etc/kubernetes/manifests" in line]
    assert len(back) == 4, "each static pod's manifest went out and came back"
    assert {path.name: path.read_bytes() for path in (root / MANIFESTS).iterdir()} == manifests
    assert not (root / HELD).exists()
    recorded = state(root)["certificates"]
    assert recorded["renewed_at"] and "error" not in recorded
    assert recorded["expires"].startswith(str((before + timedelta(days=340)).year))


def test_manifests_held_by_a_killed_run_go_back(control_plane: tuple[Path, Path]) -> None:
    root, standins = control_plane
    (root / HELD).mkdir()
    (root / MANIFESTS / "kube-apiserver.yaml").rename(root / HELD / "kube-apiserver.yaml")
    done = run_agent(root, standins, "certs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / MANIFESTS / "kube-apiserver.yaml").exists() and not (root / HELD).exists()
    assert "kube-apiserver.yaml back in /etc/kubernetes/manifests" in done.stdout


def test_the_agent_at_boot_puts_back_what_a_killed_certs_run_held(control_plane: tuple[Path, Path]) -> None:
    """The timer runs 15 minutes after boot; the agent, which starts with the node, does not wait."""
    root, standins = control_plane
    (root / HELD).mkdir()
    (root / MANIFESTS / "etcd.yaml").rename(root / HELD / "etcd.yaml")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (root / MANIFESTS / "etcd.yaml").exists() and not (root / HELD).exists()


def test_a_failed_renewal_is_recorded_with_the_fix(control_plane: tuple[Path, Path]) -> None:
    root, standins = control_plane
    (root / "etc/kubernetes/pki/ca.key").unlink()  # kubeadm cannot sign without it
    done = certs_at(root, standins, 340)
    assert done.returncode == 1
    assert "sudo kubeadm certs renew all" in done.stdout
    assert "kubeadm certs renew all exited with 1" in state(root)["certificates"]["error"]
    assert not (root / HELD).exists(), "no static pod is stopped when nothing was renewed"


def test_a_worker_has_nothing_to_renew(tmp_path: Path) -> None:
    root = node_root(tmp_path, "w1")
    standins = install_standins(tmp_path / "bin", "kubeadm")
    done = run_agent(root, standins, "certs")
    assert done.returncode == 0 and "a worker has no kubeadm certificate" in done.stdout
    assert calls(standins) == []


def test_only_control_plane_cards_carry_the_daily_timer(tmp_path: Path) -> None:
    wants = "etc/systemd/system/timers.target.wants/picluster-certs.timer"
    control = node_root(tmp_path / "cp", "cp1")
    assert os.readlink(control / wants) == "/usr/lib/systemd/system/picluster-certs.timer"
    timer = (control / "usr/lib/systemd/system/picluster-certs.timer").read_text()
    assert "OnCalendar=daily" in timer and "Persistent=true" in timer
    service = (control / "usr/lib/systemd/system/picluster-certs.service").read_text()
    assert f"ExecStart=/usr/sbin/{AGENT_LAUNCHER.name} certs" in service
    worker = node_root(tmp_path / "w", "w1")
    assert (
        not (worker / wants).is_symlink()
        and not (worker / "usr/lib/systemd/system/picluster-certs.timer").exists()
    )
