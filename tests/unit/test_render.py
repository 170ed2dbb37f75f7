"""Per-node rendering: parsed outputs carry the values from cluster.yaml and the cluster's secrets."""

from __future__ import annotations

import configparser
import hashlib
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml

from builder.render.node import render_cluster, render_node
from builder.render.plan import CARD_DISK_ID, FileEntry, NodePlan
from builder.secrets.pki import ClusterSecrets, make_secrets
from builder.secrets.tokens import Tokens
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.kubeadm_api import ENCRYPTION_ALGORITHMS, FIELDS, unknown_fields
from tests.support.project import BUNDLED, FIXED_TOKEN


@pytest.fixture
def cluster() -> Cluster:
    return load_cluster(BUNDLED)


def cluster_from(data: dict[str, Any], tmp_path: Path) -> Cluster:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def plan_for(cluster: Cluster, name: str, secrets: ClusterSecrets) -> NodePlan:
    (node,) = [n for n in cluster.nodes if n.name == name]
    return render_node(cluster, node, secrets)


def entry(plan: NodePlan, path: str, partition: str = "root") -> FileEntry:
    for item in plan.files:
        if item.partition == partition and item.path == PurePosixPath(path):
            return item
    raise AssertionError(f"{plan.node} has no {partition}:{path}")


def text(plan: NodePlan, path: str, partition: str = "root") -> str:
    return entry(plan, path, partition).data.decode()


def documents(plan: NodePlan, path: str) -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(text(plan, path)) if doc]
    return {f"{doc['kind']}/{doc.get('metadata', {}).get('name', '')}".rstrip("/"): doc for doc in docs}


# --- kubeadm ---------------------------------------------------------------------------------


def test_control_plane_init_configuration(cluster: Cluster, secrets: ClusterSecrets) -> None:
    plans = {plan.node: plan for plan in render_cluster(cluster, secrets)}
    docs = documents(plans["cp1"], "etc/picluster/kubeadm.yaml")
    assert set(docs) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration"}
    init, config = docs["InitConfiguration"], docs["ClusterConfiguration"]
    assert init["apiVersion"] == config["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    # every other node of the first build joins with a token of its own, which init makes for
    # the join window (90 days by default), so a card that waits weeks for its Pi still joins
    carried = [
        documents(plans[name], "etc/picluster/kubeadm.yaml")["JoinConfiguration"]["discovery"][
            "bootstrapToken"
        ]
        for name in ("w1", "w2")
    ]
    made = {token["token"]: token["ttl"] for token in init["bootstrapTokens"]}
    assert made == {carried[0]["token"]: "2160h0m0s", carried[1]["token"]: "2160h0m0s"}
    assert len(made) == 2 and FIXED_TOKEN not in made
    assert init["localAPIEndpoint"] == {"advertiseAddress": "192.168.50.10", "bindPort": 6443}
    registration = init["nodeRegistration"]
    assert registration["name"] == "cp1"
    assert registration["criSocket"] == "unix:///var/run/containerd/containerd.sock"
    assert registration["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.168.50.10"}]
    assert config["kubernetesVersion"] == "v1.34.2"
    assert config["controlPlaneEndpoint"] == "192.168.50.10:6443"
    assert config["networking"] == {
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    }
    assert config["encryptionAlgorithm"] in ENCRYPTION_ALGORITHMS
    assert docs["KubeletConfiguration"]["cgroupDriver"] == "systemd"


def test_worker_join_configuration(cluster: Cluster, secrets: ClusterSecrets) -> None:
    docs = documents(plan_for(cluster, "w2", secrets), "etc/picluster/kubeadm.yaml")
    assert set(docs) == {"JoinConfiguration"}
    join = docs["JoinConfiguration"]
    assert join["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert join["discovery"]["bootstrapToken"] == {
        "token": FIXED_TOKEN,
        "apiServerEndpoint": "192.168.50.10:6443",
        "caCertHashes": [secrets.ca_cert_hash],
    }
    assert join["nodeRegistration"]["kubeletExtraArgs"] == [{"name": "node-ip", "value": "192.168.50.12"}]
    assert "controlPlane" not in join


def test_second_control_plane_joins_as_control_plane(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    for node in bundled_data["nodes"]:
        node.update(role="control-plane", model="pi4")
    bundled_data["cluster"]["control_plane_endpoint"] = "cluster-api.lan:6443"
    cluster = cluster_from(bundled_data, tmp_path)
    plan = plan_for(cluster, "w1", secrets)
    join = documents(plan, "etc/picluster/kubeadm.yaml")["JoinConfiguration"]
    assert join["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "192.168.50.11"
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "cluster-api.lan:6443"
    assert entry(plan, "etc/picluster/pki/sa.key").data == secrets.service_account.key_pem
    init = documents(plan_for(cluster, "cp1", secrets), "etc/picluster/kubeadm.yaml")
    assert init["ClusterConfiguration"]["controlPlaneEndpoint"] == "cluster-api.lan:6443"


def test_a_replaced_first_control_plane_joins_with_its_own_token(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    """After `picluster replace cp1`: a second `kubeadm init` would start a second cluster with
    the same CA, so cp1's new card joins as the other control planes' do."""
    for node in bundled_data["nodes"]:
        node.update(role="control-plane", model="pi4")
    bundled_data["cluster"]["control_plane_endpoint"] = "cluster-api.lan:6443"
    cluster = cluster_from(bundled_data, tmp_path)
    made = {"cp1": "cpcpcp.0123456789abcdef", "w1": "wwwwww.0123456789abcdef", "w2": FIXED_TOKEN}
    plans = {p.node: p for p in render_cluster(cluster, secrets, Tokens(made, (), first_joins=True))}
    docs = documents(plans["cp1"], "etc/picluster/kubeadm.yaml")
    assert set(docs) == {"JoinConfiguration"}
    join = docs["JoinConfiguration"]
    assert join["discovery"]["bootstrapToken"]["token"] == "cpcpcp.0123456789abcdef"
    assert join["discovery"]["bootstrapToken"]["apiServerEndpoint"] == "cluster-api.lan:6443"
    assert join["controlPlane"]["localAPIEndpoint"]["advertiseAddress"] == "192.168.50.10"
    assert unknown_fields(join, FIELDS["JoinConfiguration"]) == []
    config = json.loads(text(plans["cp1"], "etc/picluster/node.json"))
    assert config["kubeadm"]["action"] == "join-control-plane"
    assert config["manifests"] == [], "flannel is the running cluster's already"
    assert entry(plans["cp1"], "etc/picluster/pki/ca.key").data == secrets.ca.key_pem
    first = documents(render_cluster(cluster, secrets, Tokens(made, ()))[0], "etc/picluster/kubeadm.yaml")
    assert "InitConfiguration" in first, "until then, cp1's card runs kubeadm init"


@pytest.mark.parametrize("node", ["cp1", "w1"])
def test_kubeadm_configs_use_only_fields_of_the_api(
    cluster: Cluster, secrets: ClusterSecrets, node: str
) -> None:
    for kind, doc in documents(plan_for(cluster, node, secrets), "etc/picluster/kubeadm.yaml").items():
        assert unknown_fields(doc, FIELDS[kind]) == [], kind


def test_the_field_check_can_fail() -> None:
    v1beta3_style = {"apiVersion": "x", "kind": "JoinConfiguration", "discovery": {"timeout": "5m"}}
    assert unknown_fields(v1beta3_style, FIELDS["JoinConfiguration"]) == ["discovery.timeout"]


def test_ca_hash_matches_openssl(secrets: ClusterSecrets, tmp_path: Path, allow_subprocess: None) -> None:
    cert = tmp_path / "ca.crt"
    cert.write_bytes(secrets.ca.public_pem)
    pubkey = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout", "-in", str(cert)], capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pubkey, capture_output=True, check=True
    ).stdout
    assert secrets.ca_cert_hash == "sha256:" + hashlib.sha256(der).hexdigest()


# --- flannel ---------------------------------------------------------------------------------


def test_flannel_manifest_is_arm_and_uses_the_cluster_interface(
    cluster: Cluster, secrets: ClusterSecrets
) -> None:
    docs = documents(plan_for(cluster, "cp1", secrets), "etc/picluster/kube-flannel.yml")
    daemonset = docs["DaemonSet/kube-flannel-ds-arm64"]
    assert [k for k in docs if k.startswith("DaemonSet")] == ["DaemonSet/kube-flannel-ds-arm64"]
    assert daemonset["apiVersion"] == "apps/v1"
    template = daemonset["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = template["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert pod["tolerations"] == [{"operator": "Exists", "effect": "NoSchedule"}]
    (flanneld,) = pod["containers"]
    assert flanneld["image"] == "localhost/picluster/flannel:v0.10.0-arm64", "no digest before it is built"
    assert "--iface=eth0" in flanneld["args"]
    assert "--kube-subnet-mgr" in flanneld["args"]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert init["install-cni-plugin"]["args"] == ["-f", "/flannel", "/opt/cni/bin/flannel"]
    assert init["install-cni"]["image"] == "localhost/picluster/flannel:v0.10.0-arm64"
    net_conf = json.loads(docs["ConfigMap/kube-flannel-cfg"]["data"]["net-conf.json"])
    assert net_conf == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    assert docs["ClusterRole/flannel"]["apiVersion"] == "rbac.authorization.k8s.io/v1"
    assert docs["ClusterRoleBinding/flannel"]["apiVersion"] == "rbac.authorization.k8s.io/v1"


def test_flannel_conflist_states_its_cni_version_and_keeps_portmap(
    cluster: Cluster, secrets: ClusterSecrets
) -> None:
    """Without cniVersion libcni reads the list as 0.1.0 (libcni/conf.go; pkg/types/create
    DecodeVersion): results come back without interfaces, and chaining (portmap after flannel)
    is only specified from 0.3.0. The flannel lab runs this conflist through the real libcni."""
    docs = documents(plan_for(cluster, "cp1", secrets), "etc/picluster/kube-flannel.yml")
    conflist = json.loads(docs["ConfigMap/kube-flannel-cfg"]["data"]["cni-conf.json"])
    assert conflist["cniVersion"] == "0.3.1"
    flannel, portmap = conflist["plugins"]
    assert flannel["type"] == "flannel" and flannel["delegate"]["isDefaultGateway"] is True
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}}


def test_flannel_is_node_critical(cluster: Cluster, secrets: ClusterSecrets) -> None:
    """A Pi under memory pressure evicts by priority; the network must go last."""
    docs = documents(plan_for(cluster, "cp1", secrets), "etc/picluster/kube-flannel.yml")
    pod = docs["DaemonSet/kube-flannel-ds-arm64"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"


def test_flannel_manifest_follows_pod_subnet_backend_and_interface(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    bundled_data["cluster"]["pod_subnet"] = "10.50.0.0/16"
    bundled_data["flannel"]["backend"] = "host-gw"
    bundled_data["flannel"]["iface"] = "eth1"
    cluster = cluster_from(bundled_data, tmp_path)
    plan = plan_for(cluster, "cp1", secrets)
    docs = documents(plan, "etc/picluster/kube-flannel.yml")
    pod = docs["DaemonSet/kube-flannel-ds-arm64"]["spec"]["template"]["spec"]
    assert "--iface=eth1" in pod["containers"][0]["args"]
    net_conf = json.loads(docs["ConfigMap/kube-flannel-cfg"]["data"]["net-conf.json"])
    assert net_conf == {"Network": "10.50.0.0/16", "Backend": {"Type": "host-gw"}}
    pod_subnet = documents(plan, "etc/picluster/kubeadm.yaml")["ClusterConfiguration"]["networking"][
        "podSubnet"
    ]
    assert pod_subnet == net_conf["Network"]
    assert "Name=eth1" in text(plan, "etc/systemd/network/10-cluster.network")


@pytest.mark.parametrize("version", ["1.31.0", "1.34.2", "1.37.0"])
def test_flannel_manifest_is_valid_for_the_kubernetes_version(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets, version: str
) -> None:
    bundled_data["cluster"]["kubernetes"] = version
    plan = plan_for(cluster_from(bundled_data, tmp_path), "cp1", secrets)
    for doc in documents(plan, "etc/picluster/kube-flannel.yml").values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_that_check_fails_a_manifest_modern_kubernetes_would_refuse(
    cluster: Cluster, secrets: ClusterSecrets
) -> None:
    """The validity check above can fail: the rendered DaemonSet with v0.10.0's own mistakes put
    back (no spec.selector, which apps/v1 requires; extensions/v1beta1, not served since 1.16)."""
    daemonset = documents(plan_for(cluster, "cp1", secrets), "etc/picluster/kube-flannel.yml")[
        "DaemonSet/kube-flannel-ds-arm64"
    ]
    without_selector = {**daemonset, "spec": {k: v for k, v in daemonset["spec"].items() if k != "selector"}}
    with pytest.raises(kubernetes_validate.utils.ValidationError, match="'selector' is a required property"):
        kubernetes_validate.validate(without_selector, "1.34.2", strict=True)
    with pytest.raises(kubernetes_validate.utils.SchemaNotFoundError):
        kubernetes_validate.validate({**daemonset, "apiVersion": "extensions/v1beta1"}, "1.34.2", strict=True)


def test_only_control_planes_carry_the_manifest_and_ca_key(cluster: Cluster, secrets: ClusterSecrets) -> None:
    plans = {plan.node: plan for plan in render_cluster(cluster, secrets)}
    cp_paths = {str(f.path) for f in plans["cp1"].files}
    assert "etc/picluster/kube-flannel.yml" in cp_paths
    key = entry(plans["cp1"], "etc/picluster/pki/ca.key")
    assert key.data == secrets.ca.key_pem
    assert key.mode == 0o600
    # `kubeadm reset -f` empties /etc/kubernetes/pki: the card keeps its CAs out of its reach
    assert not any(p.startswith("etc/kubernetes/") for p in cp_paths)
    config = json.loads(entry(plans["cp1"], "etc/picluster/node.json").data)
    assert config["kubeadm"]["pki_seed"] == "/etc/picluster/pki"
    for worker in ("w1", "w2"):
        paths = {str(f.path) for f in plans[worker].files}
        assert not any(p.startswith(("etc/kubernetes/pki", "etc/picluster/pki")) for p in paths)
        assert "etc/picluster/kube-flannel.yml" not in paths
        assert not any(secrets.ca.key_pem in f.data for f in plans[worker].files)
        assert entry(plans[worker], "etc/picluster/cluster-ca.crt").data == secrets.ca.public_pem


# --- boot partition --------------------------------------------------------------------------


def test_cmdline_has_cgroup_flags_root_label_and_stable_names(
    cluster: Cluster, secrets: ClusterSecrets
) -> None:
    cmdline = text(plan_for(cluster, "w2", secrets), "cmdline.txt", "boot")
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n"), "cmdline.txt is one line"
    args = cmdline.split()
    for flag in ("cgroup_enable=memory", "net.ifnames=0"):
        assert flag in args
    assert not {"cgroup_enable=cpuset", "cgroup_memory=1"} & set(args), "flags current Pi kernels ignore"
    assert "root=LABEL=RASPIROOT" in args
    assert "cma=64M" in args, "pi3 keeps the CMA reservation"


def test_config_txt_is_64_bit_for_arm64(cluster: Cluster, secrets: ClusterSecrets) -> None:
    lines = text(plan_for(cluster, "cp1", secrets), "config.txt", "boot").splitlines()
    assert "arm_64bit=1" in lines
    assert "kernel=vmlinuz" in lines
    assert "initramfs initrd.img followkernel" in lines
    assert "arm_boost=1" in lines, "pi4 setting"


def test_firmware_settings_survive_kernel_updates(cluster: Cluster, secrets: ClusterSecrets) -> None:
    """Debian's raspi-firmware hook rewrites cmdline.txt from these files on every kernel update."""
    plan = plan_for(cluster, "cp1", secrets)
    extra = text(plan, "etc/default/raspi-extra-cmdline").split()
    assert "cgroup_enable=memory" in extra
    assert "ROOTPART=LABEL=RASPIROOT" in text(plan, "etc/default/raspi-firmware").splitlines()


# --- root filesystem -------------------------------------------------------------------------


def test_node_identity_and_network(cluster: Cluster, secrets: ClusterSecrets) -> None:
    plan = plan_for(cluster, "w1", secrets)
    assert text(plan, "etc/hostname") == "w1\n"
    assert "192.168.50.11\tw1" in text(plan, "etc/hosts").splitlines()
    network = text(plan, "etc/systemd/network/10-cluster.network").splitlines()
    assert "Name=eth0" in network
    assert "Address=192.168.50.11/24" in network
    assert "Gateway=192.168.50.1" in network
    assert text(plan, "etc/resolv.conf").splitlines()[-1] == "nameserver 192.168.50.1"
    assert "NTP=pool.ntp.org" in text(plan, "etc/systemd/timesyncd.conf.d/picluster.conf").splitlines()
    assert entry(plan, "etc/localtime").link == "/usr/share/zoneinfo/Etc/UTC"


def test_kubernetes_prerequisites(cluster: Cluster, secrets: ClusterSecrets) -> None:
    plan = plan_for(cluster, "w1", secrets)
    sysctl = dict(
        line.replace(" ", "").split("=")
        for line in text(plan, "etc/sysctl.d/90-kubernetes.conf").splitlines()
        if line and not line.startswith("#")
    )
    assert sysctl["net.ipv4.ip_forward"] == "1"
    assert sysctl["net.bridge.bridge-nf-call-iptables"] == "1"
    modules = [
        m for m in text(plan, "etc/modules-load.d/kubernetes.conf").splitlines() if not m.startswith("#")
    ]
    # ip_tables, iptable_nat, iptable_filter: flannel v0.10.0's legacy iptables needs them loaded
    assert modules == ["overlay", "br_netfilter", "vxlan", "ip_tables", "iptable_nat", "iptable_filter"]
    containerd = text(plan, "etc/containerd/config.toml")
    assert "SystemdCgroup = true" in containerd
    assert 'sandbox_image = "registry.k8s.io/pause:3.10.1"' in containerd
    assert entry(plan, "etc/systemd/system/swap.target").link == "/dev/null"
    assert entry(plan, "opt/cni/bin/bridge").link == "/usr/lib/cni/bridge"


def card_entries(text: str) -> list[str]:
    """The entries of a modules-load.d or sysctl.d file, as systemd reads them."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("#", ";"))]


@pytest.mark.parametrize("flavour", ["debian", "raspios"])
def test_node_json_lists_what_the_card_applies_at_boot(
    flavour: str, bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    """The agent's preflight and the verify suite check node.json's kernel_needs, while the node
    boots with modules-load.d, sysctl.d and cmdline.txt: they must list the same."""
    if flavour == "raspios":
        bundled_data["base"]["image"] = {"url": "https://example.org/raspios.img.xz", "sha256": "a" * 64}
    cluster = cluster_from(bundled_data, tmp_path)
    assert cluster.flavour == flavour
    plan = plan_for(cluster, "w2", secrets)
    needs = json.loads(text(plan, "etc/picluster/node.json"))["kernel_needs"]
    assert card_entries(text(plan, "etc/modules-load.d/kubernetes.conf")) == needs["modules"]
    pairs = (entry.partition("=") for entry in card_entries(text(plan, "etc/sysctl.d/90-kubernetes.conf")))
    assert {key.strip(): value.strip() for key, _, value in pairs} == needs["sysctls"]
    cmdline = text(plan, "cmdline.txt", "boot").split()
    assert cmdline[-len(needs["args"]) :] == needs["args"], "picluster's arguments end the command line"
    assert text(plan, "etc/default/raspi-extra-cmdline").split() == needs["args"]


def test_ssh_access_is_key_only_for_the_configured_user(cluster: Cluster, secrets: ClusterSecrets) -> None:
    plan = plan_for(cluster, "w1", secrets)
    assert text(plan, "etc/ssh/picluster_authorized_keys").splitlines() == list(
        cluster.access.ssh_authorized_keys
    )
    sshd = text(plan, "etc/ssh/sshd_config.d/picluster.conf").splitlines()
    assert "PasswordAuthentication no" in sshd
    assert "Match User pi" in sshd
    assert "u pi - " in text(plan, "etc/sysusers.d/picluster.conf")
    assert entry(plan, "etc/sudoers.d/picluster").mode == 0o440


def test_agent_config(cluster: Cluster, secrets: ClusterSecrets) -> None:
    config = json.loads(text(plan_for(cluster, "cp1", secrets), "etc/picluster/node.json"))
    assert config["kubeadm"]["action"] == "init"
    assert config["node"] == {
        "name": "cp1",
        "role": "control-plane",
        "address": "192.168.50.10/24",
        "iface": "eth0",
    }
    assert config["cluster"]["pod_subnet"] == "10.244.0.0/16"
    assert config["packages"]["apt_repository"] == "https://pkgs.k8s.io/core:/stable:/v1.34/deb/"
    assert config["manifests"] == ["/etc/picluster/kube-flannel.yml"]
    worker = json.loads(text(plan_for(cluster, "w1", secrets), "etc/picluster/node.json"))
    assert worker["kubeadm"]["action"] == "join"
    assert worker["manifests"] == []


def test_agent_knows_when_the_cas_start_and_where_their_seed_is(
    cluster: Cluster, secrets: ClusterSecrets
) -> None:
    config = json.loads(text(plan_for(cluster, "cp1", secrets), "etc/picluster/node.json"))
    assert config["cluster"]["ca_not_before"] == int(secrets.ca_not_before.timestamp())
    assert config["kubeadm"]["pki_seed"] == "/etc/picluster/pki"
    worker = json.loads(text(plan_for(cluster, "w1", secrets), "etc/picluster/node.json"))
    assert worker["kubeadm"]["pki_seed"] is None


def test_secrets_are_not_world_readable(cluster: Cluster, secrets: ClusterSecrets) -> None:
    for plan in render_cluster(cluster, secrets):
        for item in plan.files:
            if FIXED_TOKEN.encode() in item.data or item.path.suffix == ".key":
                assert item.mode & 0o077 == 0, f"{plan.node}:{item.path} is {item.mode:o}"


def test_wifi_uplink_stores_the_derived_key(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    # IEEE 802.11i-2004 test vector H.4.1: passphrase "password", SSID "IEEE".
    bundled_data["network"]["wifi"] = {"ssid": "IEEE", "psk": "password", "country": "DE"}
    plan = plan_for(cluster_from(bundled_data, tmp_path), "w1", secrets)
    conf = entry(plan, "etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    assert conf.mode == 0o600
    lines = [line.strip() for line in conf.data.decode().splitlines()]
    assert "psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e" in lines
    assert "ssid=49454545" in lines
    assert b"password" not in conf.data
    wlan0 = configparser.ConfigParser()
    wlan0.read_string(text(plan, "etc/systemd/network/20-wlan0.network"))
    assert wlan0["DHCPv4"]["RouteMetric"] == "600"
    # an access point out of range must not hold up network-online.target (and so the agent)
    assert wlan0["Link"]["RequiredForOnline"] == "no"


def test_no_wifi_files_without_wifi(cluster: Cluster, secrets: ClusterSecrets) -> None:
    paths = {str(f.path) for f in plan_for(cluster, "w1", secrets).files}
    assert not any("wpa_supplicant" in p or "wlan0" in p for p in paths)


# --- booting headless -------------------------------------------------------------------------

UNIT_DIRS = ("etc/systemd/system/", "usr/lib/systemd/system/")
HARD_DEPENDENCIES = ("Requires", "Requisite", "BindsTo", "RequiresMountsFor", "OnFailure", "FailureAction")


def test_a_slow_or_missing_boot_partition_delays_and_fails_nothing(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    """A headless node has no keyboard for an emergency shell: the boot partition (which the
    firmware has read already) is mounted `nofail`, and no unit the card adds can stop the boot
    or wait on a mount or device."""
    bundled_data["network"]["wifi"] = {"ssid": "lab", "psk": "correct horse", "country": "DE"}
    for plan in render_cluster(cluster_from(bundled_data, tmp_path), secrets):
        mounts = {
            fields[1]: fields[3].split(",")
            for fields in (line.split() for line in text(plan, "etc/fstab").splitlines())
            if fields and not fields[0].startswith("#")
        }
        assert set(mounts) == {"/", "/boot/firmware"}
        assert "nofail" in mounts["/boot/firmware"]
        units = [f for f in plan.files if str(f.path).startswith(UNIT_DIRS) and f.link is None]
        assert units, "the card adds units"
        for unit in units:
            settings = [line.split("=", 1)[0].strip() for line in unit.data.decode().splitlines()]
            assert not set(settings) & set(HARD_DEPENDENCIES), f"{plan.node}:{unit.path}"
            assert b"emergency" not in unit.data and b"rescue" not in unit.data, f"{plan.node}:{unit.path}"


# --- determinism -----------------------------------------------------------------------------


def test_rendering_is_deterministic(cluster: Cluster, secrets: ClusterSecrets) -> None:
    first = render_cluster(cluster, secrets)
    again = render_cluster(load_cluster(BUNDLED), secrets)
    assert first == again
    assert [p.digest() for p in first] == [p.digest() for p in again]


def test_node_digest_changes_with_its_inputs(
    bundled_data: dict[str, Any], tmp_path: Path, cluster: Cluster, secrets: ClusterSecrets
) -> None:
    before = {p.node: p.digest() for p in render_cluster(cluster, secrets)}
    bundled_data["nodes"][2]["address"] = "192.168.50.99/24"
    after = {p.node: p.digest() for p in render_cluster(cluster_from(bundled_data, tmp_path), secrets)}
    assert after["w2"] != before["w2"]
    assert after["cp1"] == before["cp1"] and after["w1"] == before["w1"], "other nodes are untouched"


RASPIOS_IMAGE = {"url": "https://example.org/raspios.img.xz", "sha256": "a" * 64}
NM_CONNECTIONS = "etc/NetworkManager/system-connections"


def raspios_cluster(data: dict[str, Any], tmp_path: Path, wifi: bool = False) -> Cluster:
    data["base"]["image"] = RASPIOS_IMAGE
    data["nodes"][2]["model"] = "pi5"
    if wifi:
        data["network"]["wifi"] = {"ssid": "lab;west", "psk": "correct horse", "country": "DE"}
    return cluster_from(data, tmp_path)


def keyfile(plan: NodePlan, name: str) -> configparser.ConfigParser:
    parsed = configparser.ConfigParser(interpolation=None)
    parsed.read_string(text(plan, f"{NM_CONNECTIONS}/{name}"))
    return parsed


def test_a_raspberry_pi_os_base_gets_its_own_boot_conventions(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    plan = plan_for(raspios_cluster(bundled_data, tmp_path), "w2", secrets)
    config = text(plan, "config.txt", "boot").splitlines()
    assert "auto_initramfs=1" in config
    # the firmware picks the kernel, but a Pi 5 is told the 4 KiB-page one (base.pi5_page_size)
    assert [line for line in config if line.startswith(("kernel=", "upstream_kernel"))] == [
        "kernel=kernel8.img"
    ]
    pi4 = text(plan_for(raspios_cluster(bundled_data, tmp_path), "cp1", secrets), "config.txt", "boot")
    assert not any(line.startswith(("kernel=", "upstream_kernel")) for line in pi4.splitlines())
    args = text(plan, "cmdline.txt", "boot").split()
    # as Raspberry Pi OS names its root, with the disk id adopt pins (builder.image.raspios)
    assert f"root=PARTUUID={CARD_DISK_ID}-02" in args and "rootfstype=ext4" in args
    assert "cgroup_enable=memory" in args and "console=serial0,115200" in args
    # Raspberry Pi OS's own first-boot resizing is left out: picluster-grow-root does it
    assert not any(arg == "resize" or arg.startswith("init=") for arg in args)


def test_raspberry_pi_os_cluster_address_is_a_networkmanager_keyfile(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    plan = plan_for(raspios_cluster(bundled_data, tmp_path), "w2", secrets)
    assert entry(plan, f"{NM_CONNECTIONS}/picluster-cluster.nmconnection").mode == 0o600
    profile = keyfile(plan, "picluster-cluster.nmconnection")
    assert dict(profile["connection"]) == {
        "id": "picluster-cluster",
        "type": "ethernet",
        "interface-name": "eth0",
        "autoconnect-priority": "100",
    }
    assert dict(profile["ipv4"]) == {
        "method": "manual",
        "address1": "192.168.50.12/24,192.168.50.1",
        "dns": "192.168.50.1;",
        "route-metric": "100",
    }
    assert profile["ipv6"]["method"] == "disabled"
    paths = {str(f.path) for f in plan.files}
    assert not any(p.startswith(("etc/systemd/network/", "etc/wpa_supplicant/")) for p in paths), (
        "systemd-networkd's and wpa_supplicant's files are the Debian base's"
    )


def test_raspberry_pi_os_wifi_uplink_loses_the_default_route(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    plan = plan_for(raspios_cluster(bundled_data, tmp_path, wifi=True), "w2", secrets)
    connection = entry(plan, f"{NM_CONNECTIONS}/picluster-wlan0.nmconnection")
    assert connection.mode == 0o600 and b"correct horse" not in connection.data
    wifi, wired = (
        keyfile(plan, "picluster-wlan0.nmconnection"),
        keyfile(plan, "picluster-cluster.nmconnection"),
    )
    assert int(wifi["ipv4"]["route-metric"]) > int(wired["ipv4"]["route-metric"])
    assert wifi["ipv4"]["method"] == "auto" and wifi["ipv4"]["ignore-auto-dns"] == "true"
    assert bytes(int(b) for b in wifi["wifi"]["ssid"].rstrip(";").split(";")) == b"lab;west"
    derived = hashlib.pbkdf2_hmac("sha1", b"correct horse", b"lab;west", 4096, 32).hex()
    assert wifi["wifi-security"]["psk"] == derived
    assert "WirelessEnabled=true" in text(plan, "var/lib/NetworkManager/NetworkManager.state").splitlines()
    # as raspi-config's do_wifi_country sets the regulatory domain: on the command line
    assert "cfg80211.ieee80211_regdom=DE" in text(plan, "cmdline.txt", "boot").split()
    assert not any("wpa_supplicant" in str(f.path) for f in plan.files)


def test_debian_keeps_systemd_networkd_and_no_networkmanager(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    bundled_data["network"]["wifi"] = {"ssid": "lab", "psk": "correct horse", "country": "DE"}
    plan = plan_for(cluster_from(bundled_data, tmp_path), "w2", secrets)
    entry(plan, "etc/systemd/network/10-cluster.network")
    entry(plan, "etc/systemd/network/20-wlan0.network")
    assert not any("NetworkManager" in str(f.path) or "cloud" in str(f.path) for f in plan.files)
    assert not any("userconfig" in (f.link or "") + str(f.path) for f in plan.files)


def test_raspberry_pi_os_first_boot_needs_nobody_at_the_keyboard(
    bundled_data: dict[str, Any], tmp_path: Path, secrets: ClusterSecrets
) -> None:
    plan = plan_for(raspios_cluster(bundled_data, tmp_path), "w2", secrets)
    links = {str(f.path): f.link for f in plan.files if f.link}
    masked = {path for path, target in links.items() if target == "/dev/null"}
    assert {
        "etc/systemd/system/userconfig.service",  # userconf-pi's first-boot wizard
        "etc/systemd/system-generators/rpi-swap-generator",  # rpi-swap (trixie)
        "etc/systemd/system/dphys-swapfile.service",  # bookworm's swap file
        "etc/systemd/system/swap.target",
    } <= masked
    # published images ship SSH off; the wizard had taken the console login away
    assert (
        links["etc/systemd/system/multi-user.target.wants/ssh.service"]
        == "/usr/lib/systemd/system/ssh.service"
    )
    assert links["etc/systemd/system/getty.target.wants/getty@tty1.service"].endswith("/getty@.service")
    entry(plan, "etc/cloud/cloud-init.disabled")
    assert "Banner" not in text(plan, "etc/ssh/sshd_config.d/rename_user.conf")
    assert "PasswordAuthentication no" in text(plan, "etc/ssh/sshd_config.d/picluster.conf").splitlines()


# --- the control-plane endpoint's virtual IP --------------------------------------------------

VIRTUAL_IP_CASE = Path(__file__).parent / "golden" / "ha-virtual-ip" / "cluster.yaml"


def test_only_the_control_planes_serve_the_virtual_ip_and_the_workers_turn_it_off(
    secrets: ClusterSecrets,
) -> None:
    plans = {plan.node: plan for plan in render_cluster(load_cluster(VIRTUAL_IP_CASE), secrets)}
    for name in ("cp1", "cp2", "cp3"):
        assert "192.168.50.9/24 dev eth0" in text(plans[name], "etc/keepalived/keepalived.conf")
        assert entry(plans[name], "etc/keepalived/keepalived.conf").mode == 0o600
        assert "    bind *:8443\n" in text(plans[name], "etc/haproxy/haproxy.cfg")
    priorities = [text(plans[name], "etc/keepalived/keepalived.conf").split("priority ")[1].split()[0]
                  for name in ("cp1", "cp2", "cp3")]  # fmt: skip
    assert priorities == ["103", "102", "101"], "the first control plane is preferred"
    worker = plans["w1"]
    assert not any("keepalived" in str(item.path) and item.link != "/dev/null" for item in worker.files)
    assert entry(worker, "etc/systemd/system/keepalived.service").link == "/dev/null"
    assert entry(worker, "etc/systemd/system/haproxy.service").link == "/dev/null"


def test_the_vrrp_password_comes_from_the_cas_key(secrets: ClusterSecrets) -> None:
    cluster = load_cluster(VIRTUAL_IP_CASE)

    def password(of: ClusterSecrets) -> str:
        conf = text(plan_for(cluster, "cp2", of), "etc/keepalived/keepalived.conf")
        return conf.split("auth_pass ")[1].split()[0]

    other = make_secrets(datetime.now(UTC))
    assert password(secrets) == password(secrets)
    assert password(other) != password(secrets)
    assert password(secrets) not in VIRTUAL_IP_CASE.read_text()
