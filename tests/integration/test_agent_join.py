"""`picluster-agent join` and `run`, with kubeadm, kubelet and kubectl stood in by recording
programs (tests/support/agent.py) and the API server by an HTTPS stand-in on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from agent import packages
from agent.config import load_config
from agent.host import Host
from cryptography.hazmat.primitives.serialization import Encoding

from builder.secrets.pki import ca_cert_hash
from tests.support.agent import (
    HA_CLUSTER,
    agent_command,
    agent_env,
    api_server_standin,
    calls,
    cas_seen,
    install_standins,
    kube_calls,
    make_ca,
    make_server_cert,
    node_root,
    run_agent,
    run_until_phase,
    state,
)
from tests.support.host import serve_folder
from tests.support.project import fixed_secrets

pytestmark = pytest.mark.integration

IMAGE_PACKAGES = {"packages": {"install": "image"}}


def kubeadm_verbs(standins: Path) -> list[str]:
    return [" ".join(call[:2]) for call in calls(standins) if call[0] == "kubeadm"]


def test_init_applies_flannel_and_waits_for_ready(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert kube_calls(standins) == [
        ["kubeadm", "init", "--config", f"{root}/etc/picluster/kubeadm.yaml"],
        ["kubectl", "--kubeconfig", f"{root}/etc/kubernetes/admin.conf", "apply",
         "-f", f"{root}/etc/picluster/kube-flannel.yml"],
        ["kubectl", "--kubeconfig", f"{root}/etc/kubernetes/kubelet.conf", "get", "node", "cp1",
         "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}'],
    ]  # fmt: skip
    recorded = state(root)
    assert (recorded["phase"], recorded["attempts"], recorded["last_error"]) == ("joined", 1, None)
    # kubeadm init prints the join command with the bootstrap token; the journal must not get it
    assert "abcdef.0123456789abcdef" not in done.stdout
    assert "--token <token>" in done.stdout


def test_a_failed_join_is_reset_cleaned_and_retried(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    (standins / "fail-times").write_text("2")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert kubeadm_verbs(standins) == ["kubeadm init", "kubeadm reset", "kubeadm init", "kubeadm reset",
                                       "kubeadm init"]  # fmt: skip
    assert ["kubeadm", "reset", "-f"] in calls(standins)
    assert "attempt 2 failed" in done.stdout and "could not initialize a Kubernetes cluster" in done.stdout
    recorded = state(root)
    assert (recorded["phase"], recorded["attempts"], recorded["last_error"]) == ("joined", 3, None)


def test_a_failed_first_init_keeps_the_clusters_ca(tmp_path: Path) -> None:
    """kubeadm reset -f empties /etc/kubernetes/pki; the retried init must still find the CA
    every worker card pins, byte for byte, and not make a new one."""
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    (standins / "fail-times").write_text("1")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert kubeadm_verbs(standins) == ["kubeadm init", "kubeadm reset", "kubeadm init"]
    assert "[reset] Deleting contents of directories: [/etc/kubernetes/manifests /var/lib/kubelet " \
        "/etc/kubernetes/pki]" in done.stdout  # fmt: skip
    secrets = fixed_secrets()
    rendered = {name: hashlib.sha256(data).hexdigest() for name, data in secrets.pki_files().items()}
    for attempt in cas_seen(standins):
        assert attempt["found"] == {name: rendered[name] for name in attempt["found"]}
        assert set(attempt["found"]) == {"ca.crt", "ca.key", "etcd/ca.key", "front-proxy-ca.key", "sa.key"}
    assert len(cas_seen(standins)) == 2
    assert "[certs] Using existing ca certificate authority" in done.stdout
    assert '[certs] Generating "ca"' not in done.stdout
    # what the cluster now runs with is the CA a worker card pins
    in_use = (root / "etc/kubernetes/pki/ca.crt").read_bytes()
    worker = yaml.safe_load((node_root(tmp_path / "w1", "w1") / "etc/picluster/kubeadm.yaml").read_text())
    assert worker["discovery"]["bootstrapToken"]["caCertHashes"] == [ca_cert_hash(in_use)]
    assert (root / "etc/kubernetes/pki/ca.key").stat().st_mode & 0o777 == 0o600


def test_a_reset_that_fails_is_followed_by_another_before_init_succeeds(tmp_path: Path) -> None:
    """kubeadm reset stops before it empties anything when it cannot unmount under
    /var/lib/kubelet (cleanupnode.go); the next init then fails its preflight on the manifests
    left behind. The agent must get through that, still on the cluster's CA."""
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    (standins / "fail-times").write_text("1")
    (standins / "reset-fail-times").write_text("1")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert kubeadm_verbs(standins) == ["kubeadm init", "kubeadm reset", "kubeadm init", "kubeadm reset",
                                       "kubeadm init"]  # fmt: skip
    assert "kubeadm reset failed, going on" in done.stdout
    assert "[ERROR FileAvailable--etc-kubernetes-manifests-kube-apiserver.yaml]" in done.stdout
    rendered = hashlib.sha256(fixed_secrets().ca.key_pem).hexdigest()
    assert cas_seen(standins)[-1]["found"]["ca.key"] == rendered
    assert state(root)["phase"] == "joined"


def test_a_card_missing_one_of_its_cas_keys_never_runs_kubeadm(tmp_path: Path) -> None:
    """kubeadm would take a CA certificate without its key for an external CA and fail, or
    worse; the agent says which file is missing and retries, never running kubeadm on it."""
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    (root / "etc/picluster/pki/front-proxy-ca.key").unlink()
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    agent = subprocess.Popen(agent_command(root, "join"), env=agent_env(standins, root),
                             stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for_state(root, lambda recorded: recorded["attempts"] >= 2, "a second attempt")
        assert agent.poll() is None, "the agent exited instead of trying again"
    finally:
        agent.kill()
        agent.wait()
    assert "lacks front-proxy-ca.key: the card is damaged; reflash it" in state(root)["last_error"]
    assert [verb for verb in kubeadm_verbs(standins) if verb != "kubeadm reset"] == []


def test_a_control_plane_join_retried_after_a_reset_still_has_the_cas(tmp_path: Path) -> None:
    """Without the CAs restored, the real kubeadm refuses a control-plane join ("One or more
    conditions for hosting a new control plane instance is not satisfied")."""
    ca = make_ca("cluster CA")
    with api_server_standin(*make_server_cert(ca), tmp_path) as port:
        endpoint = {"api_endpoint": f"127.0.0.1:{port}"}
        root = node_root(tmp_path, "cp-b", HA_CLUSTER, cluster=endpoint, **IMAGE_PACKAGES)
        (root / "etc/picluster/cluster-ca.crt").write_bytes(ca[1].public_bytes(Encoding.PEM))
        standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
        (standins / "fail-times").write_text("1")
        done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert kubeadm_verbs(standins) == ["kubeadm join", "kubeadm reset", "kubeadm join"]
    rendered = hashlib.sha256(fixed_secrets().ca.key_pem).hexdigest()
    assert [attempt["found"]["ca.key"] for attempt in cas_seen(standins)] == [rendered, rendered]
    assert state(root)["phase"] == "joined"


def test_a_control_plane_joining_while_another_is_a_learner_tries_again_until_it_can(tmp_path: Path) -> None:
    """Two control-plane cards booted together: etcd holds one learner at a time, so the second
    join fails at control-plane-join/etcd (tests/support/standins.py) and is reset and retried, and joins
    once the first member is promoted."""
    ca = make_ca("cluster CA")
    with api_server_standin(*make_server_cert(ca), tmp_path) as port:
        root = node_root(tmp_path, "cp-b", HA_CLUSTER, cluster={"api_endpoint": f"127.0.0.1:{port}"},
                         **IMAGE_PACKAGES)  # fmt: skip
        (root / "etc/picluster/cluster-ca.crt").write_bytes(ca[1].public_bytes(Encoding.PEM))
        standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
        (standins / "etcd-learner").write_text("cp-c\n")
        agent = subprocess.Popen(agent_command(root, "join"), env=agent_env(standins, root),
                                 stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert agent.stdout is not None
        try:
            failed = next(line for line in agent.stdout if line.startswith("attempt 1 failed"))
            (standins / "etcd-learner").unlink()  # the other control plane's learner is promoted
            assert agent.wait(30) == 0
        finally:
            agent.kill()
    assert "etcdserver: too many learner members in cluster" in failed
    assert kubeadm_verbs(standins)[:3] == ["kubeadm join", "kubeadm reset", "kubeadm join"]
    assert state(root)["phase"] == "joined"


def test_the_agent_waits_for_a_clock_before_the_cas_start(tmp_path: Path) -> None:
    """Before the CA's NotBefore every TLS handshake fails; kubeadm must not run, and the agent
    says why it waits (a Pi has no real-time clock and NTP may be late)."""
    root = node_root(tmp_path, "cp1", cluster={"ca_not_before": time.time() + 3600}, **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    recorded = run_until_phase(root, standins, "waiting: clock", says="waiting: clock")
    assert "before the cluster's CA became valid" in recorded["last_error"]
    assert kube_calls(standins) == []


def test_the_agent_goes_on_once_the_clock_passes_the_cas_start(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", cluster={"ca_not_before": time.time() + 1.5}, **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert "waiting: clock" in done.stdout
    assert kubeadm_verbs(standins) == ["kubeadm init"]


def test_a_joined_node_does_nothing(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    assert run_agent(root, standins, "join").returncode == 0
    before = calls(standins)
    again = run_agent(root, standins, "join")
    assert again.returncode == 0
    assert "nothing to do" in again.stdout
    assert calls(standins) == before


def test_killed_mid_join_it_resets_and_finishes_when_started_again(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    (standins / "hang").touch()
    agent = subprocess.Popen(
        agent_command(root, "join"), env=agent_env(standins, root), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while kubeadm_verbs(standins) != ["kubeadm init"]:
        assert time.monotonic() < deadline, "the agent never started kubeadm init"
        time.sleep(0.05)
    os.killpg(agent.pid, signal.SIGKILL)  # the agent and the kubeadm it started, as a power cut would
    agent.wait()
    assert (state(root)["phase"], state(root)["attempts"]) == ("joining", 1)

    (standins / "hang").unlink()
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert "attempt 1 was interrupted" in done.stdout
    assert kubeadm_verbs(standins) == ["kubeadm init", "kubeadm reset", "kubeadm init"]
    assert (state(root)["phase"], state(root)["attempts"]) == ("joined", 2)

    again = run_agent(root, standins, "join")
    assert kubeadm_verbs(standins) == ["kubeadm init", "kubeadm reset", "kubeadm init"]
    assert "nothing to do" in again.stdout


@contextmanager
def worker_and_api_server(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Worker w1's root, pinned to a CA whose API server (/readyz) answers, and the stand-ins'
    folder; while the server runs."""
    ca = make_ca("cluster CA")
    with api_server_standin(*make_server_cert(ca), tmp_path) as port:
        root = node_root(tmp_path, "w1", cluster={"api_endpoint": f"127.0.0.1:{port}"}, **IMAGE_PACKAGES)
        (root / "etc/picluster/cluster-ca.crt").write_bytes(ca[1].public_bytes(Encoding.PEM))
        yield root, install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")


def test_a_worker_waits_for_the_api_server_pinned_to_the_cluster_ca(tmp_path: Path) -> None:
    with worker_and_api_server(tmp_path) as (root, standins):
        done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    assert [call[:2] for call in kube_calls(standins)] == [["kubeadm", "join"], ["kubectl", "--kubeconfig"]]
    assert state(root)["phase"] == "joined"


def test_a_worker_records_why_it_waits_for_the_api_server(tmp_path: Path) -> None:
    root = node_root(tmp_path, "w1", cluster={"api_endpoint": "127.0.0.1:9"}, **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    recorded = run_until_phase(root, standins, "waiting: api-server", says="waiting for the API server")
    assert "https://127.0.0.1:9/readyz" in recorded["last_error"]
    assert kube_calls(standins) == []


def test_a_replacement_card_records_why_kubeadm_refuses_and_the_fix(tmp_path: Path) -> None:
    """The old card's Node is still Ready: kubeadm refuses the join (tests/support/standins.py), and the
    agent keeps trying, recording kubeadm's words and what to run on the build machine."""
    ca = make_ca("cluster CA")
    with api_server_standin(*make_server_cert(ca), tmp_path) as port:
        root = node_root(tmp_path, "w1", cluster={"api_endpoint": f"127.0.0.1:{port}"}, **IMAGE_PACKAGES)
        (root / "etc/picluster/cluster-ca.crt").write_bytes(ca[1].public_bytes(Encoding.PEM))
        standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
        (standins / "ready-nodes").write_text("w1\n")
        recorded = run_until_phase(root, standins, None, says="attempt", retries=2)
    assert 'a Node with name "w1" and status "Ready" already exists in the cluster' in recorded["last_error"]
    assert "run `picluster replace w1` on the build machine" in recorded["last_error"]
    assert not (root / "etc/kubernetes/bootstrap-kubelet.conf").exists()  # kubeadm removes it however it ends
    assert kubeadm_verbs(standins)[:3] == ["kubeadm join", "kubeadm reset", "kubeadm join"]


def test_firstboot_without_the_repository_waits_for_packages_and_keeps_trying(tmp_path: Path) -> None:
    root = node_root(
        tmp_path, "cp1", packages={"install": "firstboot", "apt_repository": "https://127.0.0.1:9/"}
    )
    standins = install_standins(tmp_path / "bin")  # no kubeadm, kubelet or kubectl: not installed
    recorded = run_until_phase(root, standins, "waiting: packages", says="waiting: packages")
    assert "Release.key" in recorded["last_error"] and "Connection" in recorded["last_error"]
    assert recorded["attempts"] == 0


def wait_for_state(root: Path, done: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not ((root / "var/lib/picluster/state.json").exists() and done(state(root))):
        assert time.monotonic() < deadline, f"no {what} within 30 s"
        time.sleep(0.05)


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    done = run_agent(root, standins, "--dry-run", "join")
    assert done.returncode == 0, done.stderr
    assert f"would run kubeadm init --config {root}/etc/picluster/kubeadm.yaml" in done.stdout
    assert "would run crictl --runtime-endpoint unix:///var/run/containerd/containerd.sock pull " \
        "registry.k8s.io/kube-apiserver:v1.34.2" in done.stdout  # fmt: skip
    assert {call[3] for call in calls(standins)} == {"inspecti"}, "it only looked"
    assert not (root / "var/lib/picluster/state.json").exists()


def test_status_reads_the_state_file(tmp_path: Path) -> None:
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    run_agent(root, standins, "join")
    human = run_agent(root, standins, "status").stdout
    assert "phase:       joined" in human and "last error:  none" in human
    machine = json.loads(run_agent(root, standins, "status", "--json").stdout)
    assert machine["phase"] == "joined" and machine["attempts"] == 1


def test_firstboot_installs_the_pinned_tools_from_the_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ0stand+in\n-----END PGP PUBLIC KEY BLOCK-----\n"
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/Release.key").write_text(key)
    standins = install_standins(tmp_path / "bin", "apt-get", "apt-mark")
    with serve_folder(tmp_path / "repo") as url:
        root = node_root(tmp_path, "w1", packages={"install": "firstboot", "apt_repository": f"{url}/"})
        (root / "etc/apt/sources.list.d").mkdir(parents=True)
        (root / "etc/apt/preferences.d").mkdir(parents=True)
        monkeypatch.setenv("PATH", agent_env(standins, root)["PATH"])
        monkeypatch.setenv("STANDIN_NODE_ROOT", str(root))
        packages.install(Host(root), load_config(root / "etc/picluster/node.json"))
    assert calls(standins) == [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "kubeadm", "kubelet", "kubectl", "cri-tools"],
        ["apt-mark", "hold", "kubeadm", "kubelet", "kubectl"],
    ]
    source = (root / "etc/apt/sources.list.d/kubernetes.sources").read_text()
    assert source.startswith(f"Types: deb\nURIs: {url}/\nSuites: /\nSigned-By:\n")
    assert " -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n mDMEZ0stand+in\n" in source
    assert (root / "etc/apt/preferences.d/kubernetes").read_text() == (
        "Package: kubeadm kubelet kubectl\nPin: version 1.34.2-*\nPin-Priority: 1001\n"
    )


def test_a_card_whose_token_the_cluster_does_not_know_says_so_and_keeps_trying(tmp_path: Path) -> None:
    with worker_and_api_server(tmp_path) as (root, standins):
        (standins / "cluster-tokens").write_text("")  # the token was never made, or was deleted
        (standins / "discovery-timeout").write_text("0.1")
        kubeadm = yaml.safe_load((root / "etc/picluster/kubeadm.yaml").read_text())
        token = kubeadm["discovery"]["bootstrapToken"]["token"]
        token_id = token.split(".")[0]
        agent = subprocess.Popen(
            agent_command(root, "join"), env=agent_env(standins, root), stdout=subprocess.PIPE, text=True
        )
        try:
            wait_for_state(
                root, lambda s: s["phase"] == "token-unknown" and s["attempts"] >= 2, "token-unknown twice"
            )
            recorded = state(root)
            (standins / "cluster-tokens").write_text(f"{token_id}\n")  # `picluster token w1`, say
            output, _ = agent.communicate(timeout=30)
        finally:
            agent.kill()
    assert agent.returncode == 0
    assert f'bootstrap token "{token_id}"' in recorded["last_error"]
    assert "expired or was revoked" in recorded["last_error"]
    assert "picluster build" in recorded["last_error"] and "picluster token w1" in recorded["last_error"]
    assert token not in recorded["last_error"] + output
    assert state(root)["phase"] == "joined"


def test_every_image_is_pulled_one_at_a_time_before_kubeadm_runs(tmp_path: Path) -> None:
    """kubeadm then finds them all present, and a slow link never uses up its 30 minutes."""
    root = node_root(tmp_path, "cp1", **IMAGE_PACKAGES)
    listed = json.loads((root / "etc/picluster/node.json").read_text())["images"]
    assert len(listed) == 9 and "registry.k8s.io/etcd:3.6.5-0" in listed
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    done = run_agent(root, standins, "join")
    assert done.returncode == 0, done.stderr
    endpoint = ["--runtime-endpoint", "unix:///var/run/containerd/containerd.sock"]
    pulls = [[verb, image] for image in listed for verb in ("inspecti", "pull")]
    everything = [[call[0], *call[3:]] if call[0] == "crictl" else call[:2] for call in calls(standins)]
    expected = [
        ["crictl", "inspecti", "-q", i] if v == "inspecti" else ["crictl", "pull", i] for v, i in pulls
    ]
    assert everything[: len(pulls)] == expected
    assert everything[len(pulls)] == ["kubeadm", "init"]
    assert all(call[1:3] == endpoint for call in calls(standins) if call[0] == "crictl")
    assert state(root)["images"] == [{"image": image, "status": "pulled"} for image in listed]
    assert "images:      0 present, 0 imported, 9 pulled" in run_agent(root, standins, "status").stdout


def test_a_failed_pull_is_recorded_and_retried_from_the_image_it_failed_on(tmp_path: Path) -> None:
    root = node_root(tmp_path, "w1", **IMAGE_PACKAGES)
    listed = json.loads((root / "etc/picluster/node.json").read_text())["images"]
    assert listed[0] == "registry.k8s.io/kube-proxy:v1.34.2"
    assert not [image for image in listed if "apiserver" in image or "etcd" in image], "a worker's"
    standins = install_standins(tmp_path / "bin", "kubeadm", "kubelet", "kubectl")
    (standins / "images").write_text(f"{listed[0]}\n{listed[1]}\n")  # as after an earlier boot
    (standins / "pull-fail-times").write_text("100")
    recorded = run_until_phase(root, standins, "waiting: images", says="waiting: images")
    assert recorded["last_error"].startswith(f"pulling {listed[2]}: ")
    assert "Temporary failure in name resolution" in recorded["last_error"]
    assert kube_calls(standins) == [], "kubeadm waits for the images"
    pulled = [call[-1] for call in calls(standins) if call[0] == "crictl" and call[3] == "pull"]
    assert set(pulled) == {listed[2]}, "each retry goes on from the image that failed"
