"""cluster.yaml validation: the bundled file passes, and each mistake is named with a fix."""

from __future__ import annotations

import base64
import copy
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from builder.cli import main
from builder.errors import ConfigError, Problem
from builder.render.node import render_node
from builder.spec.load import load_cluster
from builder.spec.model import Cluster
from tests.support.config_edits import EVERY_FIELD, Edit, problems_for, set_at, string_fields, value_at
from tests.support.project import BUNDLED, fixed_secrets


def loaded(data: dict[str, Any], tmp_path: Path) -> Cluster:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_cluster(path)


def test_bundled_cluster_is_valid() -> None:
    cluster = load_cluster(BUNDLED)
    assert [node.name for node in cluster.nodes] == ["cp1", "w1", "w2"]
    assert cluster.api_endpoint == "192.168.50.10:6443"


def _rename_key(section: str, old: str, new: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        data[section][new] = data[section].pop(old)

    return edit


def _pi3_control_plane(data: dict[str, Any]) -> None:
    data["nodes"][0]["model"] = "pi3"


def _all_workers(data: dict[str, Any]) -> None:
    for node in data["nodes"]:
        node["role"] = "worker"


def _two_control_planes(data: dict[str, Any]) -> None:
    data["nodes"][1]["role"] = "control-plane"


def _three_control_planes(data: dict[str, Any]) -> None:
    for node in data["nodes"]:
        node.update(role="control-plane", model="pi4")


def _two_control_planes_with_endpoint(data: dict[str, Any]) -> None:
    _two_control_planes(data)
    data["cluster"]["control_plane_endpoint"] = "192.168.50.9:8443"


CASES: list[tuple[str, Edit, str, str]] = [
    # (case, edit, field path reported, text the message must contain)
    ("typo in a key", _rename_key("cluster", "pod_subnet", "pod_subnt"), "cluster.pod_subnt", "unknown key"),
    ("missing key", lambda d: d["cluster"].pop("pod_subnet"), "cluster.pod_subnet", "missing"),
    ("duplicate node name", set_at("nodes.1.name", "cp1"), "nodes[1].name", "already the name of nodes[0]"),
    (
        "duplicate address",
        set_at("nodes.2.address", "192.168.50.11/24"),
        "nodes[2].address",
        "already the address of nodes[1]",
    ),
    ("upper-case host name", set_at("nodes.1.name", "Worker1"), "nodes[1].name", "RFC 1123"),
    ("host name with underscore", set_at("nodes.1.name", "w_1"), "nodes[1].name", "RFC 1123"),
    (
        "address outside the gateway's subnet",
        set_at("nodes.2.address", "192.168.51.12/24"),
        "nodes[2].address",
        "outside 192.168.50.0/24 (gateway 192.168.50.1)",
    ),
    ("network address", set_at("nodes.1.address", "192.168.50.0/24"), "nodes[1].address", "network address"),
    (
        "broadcast address",
        set_at("nodes.1.address", "192.168.50.255/24"),
        "nodes[1].address",
        "broadcast address",
    ),
    ("gateway address", set_at("nodes.1.address", "192.168.50.1/24"), "nodes[1].address", "gateway"),
    (
        "pod and service subnets overlap",
        set_at("cluster.service_subnet", "10.244.128.0/17"),
        "cluster.service_subnet",
        "overlaps pod_subnet",
    ),
    (
        "pod subnet overlaps the LAN",
        set_at("cluster.pod_subnet", "192.168.0.0/16"),
        "cluster.pod_subnet",
        "overlaps the node LAN",
    ),
    (
        "service subnet overlaps the LAN",
        set_at("cluster.service_subnet", "192.168.48.0/20"),
        "cluster.service_subnet",
        "overlaps the node LAN",
    ),
    (
        "pod subnet too small for a /24 per node",
        set_at("cluster.pod_subnet", "10.244.0.0/23"),
        "cluster.pod_subnet",
        "holds 2 node /24 ranges but the cluster has 3 nodes",
    ),
    ("pod subnet with host bits", set_at("cluster.pod_subnet", "10.244.0.1/16"), "cluster.pod_subnet", ""),
    ("no control plane", _all_workers, "nodes", "no node has role control-plane"),
    (
        "several control planes without endpoint",
        _two_control_planes,
        "cluster.control_plane_endpoint",
        "2 control-plane nodes",
    ),
    (
        "an even number of control planes",
        _two_control_planes_with_endpoint,
        "nodes",
        "their etcd needs 2 of them up",
    ),
    (
        "a virtual IP that is a node's address",
        set_at("cluster.control_plane_endpoint", "192.168.50.11:8443"),
        "cluster.control_plane_endpoint",
        "the address of w1",
    ),
    (
        "a virtual IP that is the gateway's",
        set_at("cluster.control_plane_endpoint", "192.168.50.1:8443"),
        "cluster.control_plane_endpoint",
        "the gateway's address",
    ),
    (
        "a virtual IP on the API server's port",
        set_at("cluster.control_plane_endpoint", "192.168.50.9:6443"),
        "cluster.control_plane_endpoint",
        "port 6443",
    ),
    (
        "a virtual IP on the kubelet's port",
        set_at("cluster.control_plane_endpoint", "192.168.50.9:10250"),
        "cluster.control_plane_endpoint",
        "each control plane's kubelet listens there",
    ),
    ("flannel other than v0.10.0", set_at("flannel.version", "v0.11.0"), "flannel.version", "pins v0.10.0"),
    (
        "Kubernetes too old",
        set_at("cluster.kubernetes", "1.30.4"),
        "cluster.kubernetes",
        "supported range 1.31 to 1.37",
    ),
    (
        "Kubernetes too new for trixie's containerd 1.7",
        set_at("cluster.kubernetes", "1.38.0"),
        "cluster.kubernetes",
        "supported range 1.31 to 1.37: from 1.38 kubelet needs the CRI RuntimeConfig call",
    ),
    ("Kubernetes not a version", set_at("cluster.kubernetes", "latest"), "cluster.kubernetes", "release"),
    (
        "32-bit ARM, which Kubernetes no longer builds",
        set_at("base.arch", "armhf"),
        "base.arch",
        "no 32-bit ARM kubeadm or kubelet packages or control-plane images since 1.27",
    ),
    (
        "a Pi 3 as control plane: kubeadm wants 1700 MB",
        _pi3_control_plane,
        "nodes[0].role",
        "at most 1024 MB of memory; kubeadm refuses a control plane with less than 1700 MB",
    ),
    (
        "flannel's UDP backend, built for amd64 only",
        set_at("flannel.backend", "udp"),
        "flannel.backend",
        "UDP backend is not supported on this architecture",
    ),
    ("unknown model", set_at("nodes.1.model", "pi9"), "nodes[1].model", "not a supported model"),
    ("no SSH keys", set_at("access.ssh_authorized_keys", []), "access.ssh_authorized_keys", "at least 1"),
    (
        "a key that is not a public key",
        set_at("access.ssh_authorized_keys", ["-----BEGIN OPENSSH PRIVATE KEY-----"]),
        "access.ssh_authorized_keys[0]",
        "not an SSH public key",
    ),
    ("wlan0 as cluster interface", set_at("flannel.iface", "wlan0"), "flannel.iface", "cannot carry"),
    ("unknown time zone", set_at("timezone", "Mars/Olympus"), "timezone", "not a time zone on the card"),
    (
        "wifi passphrase too short",
        set_at("network.wifi", {"ssid": "lab", "psk": "short", "country": "DE"}),
        "network.wifi.psk",
        "8 to 63",
    ),
    ("root as login user", set_at("access.user", "root"), "access.user", "refuses root logins"),
    ("login user not a Unix name", set_at("access.user", "Root!"), "access.user", "Unix user name"),
    (
        "endpoint port above 65535",
        set_at("cluster.control_plane_endpoint", "192.168.50.9:99999"),
        "cluster.control_plane_endpoint",
        "port 99999 is outside 1 to 65535",
    ),
    (
        "endpoint port 0",
        set_at("cluster.control_plane_endpoint", "kube.lab:0"),
        "cluster.control_plane_endpoint",
        "port 0 is outside 1 to 65535",
    ),
    (
        "endpoint host a dotted number that is no address",
        set_at("cluster.control_plane_endpoint", "192.168.50.999:6443"),
        "cluster.control_plane_endpoint",
        "not an IPv4 address",
    ),
    (
        "service subnet of one address: CoreDNS takes the 10th",
        set_at("cluster.service_subnet", "10.96.0.0/32"),
        "cluster.service_subnet",
        "holds 1 address; kubeadm gives CoreDNS the 10th after 10.96.0.0",
    ),
    (
        "service subnet of 8 addresses",
        set_at("cluster.service_subnet", "10.96.0.0/29"),
        "cluster.service_subnet",
        "holds 8 addresses",
    ),
    (
        "service subnet larger than kubeadm takes",
        set_at("cluster.service_subnet", "100.64.0.0/10"),
        "cluster.service_subnet",
        "kubeadm refuses a service subnet larger than /12",
    ),
    (
        "an SSID of 32 characters but 64 bytes",
        set_at("network.wifi", {"ssid": "ä" * 32, "psk": "correct horse", "country": "DE"}),
        "network.wifi.ssid",
        "64 bytes in UTF-8; an SSID has at most 32",
    ),
    (
        "a country the regulatory database does not know",
        set_at("network.wifi", {"ssid": "lab", "psk": "correct horse", "country": "ZZ"}),
        "network.wifi.country",
        "'ZZ' is not a country the Wi-Fi regulatory database on the card knows",
    ),
    (
        "a WPA passphrase with a character other than printable ASCII",
        set_at("network.wifi", {"ssid": "lab", "psk": "correct horse\tbattery", "country": "DE"}),
        "network.wifi.psk",
        "printable ASCII",
    ),
    (
        "a bootstrap token lifetime of true, which pydantic would read as 1",
        set_at("cluster.token_ttl_hours", True),
        "cluster.token_ttl_hours",
        "valid integer",
    ),
    (
        "a join window of true, which pydantic would read as 1",
        set_at("cluster.join_window_days", True),
        "cluster.join_window_days",
        "valid integer",
    ),
    (
        "a join window longer than a year",
        set_at("cluster.join_window_days", 400),
        "cluster.join_window_days",
        "less than or equal to 365",
    ),
    (
        "the deprecated token lifetime beside the join window that replaces it",
        lambda data: data["cluster"].update(token_ttl_hours=24, join_window_days=30),
        "cluster.token_ttl_hours",
        "is set beside cluster.join_window_days, which replaces it",
    ),
    (
        "an image mirror while the nodes pull their images themselves",
        set_at("cluster.image_mirror", "http://192.168.50.2:5000"),
        "cluster.image_mirror",
        "with images: pull the nodes pull from the registries themselves",
    ),
    (
        "an image mirror that is not a URL",
        set_at("cluster.image_mirror", "192.168.50.2:5000"),
        "cluster.image_mirror",
        "http(s) URL",
    ),
    (
        "images neither pulled nor on the card",
        set_at("cluster.images", "usb"),
        "cluster.images",
        "'pull' or 'card'",
    ),
    ("a multicast gateway", set_at("network.gateway", "224.0.0.1"), "network.gateway", "multicast"),
    ("a loopback DNS server", set_at("network.dns", ["127.0.0.53"]), "network.dns[0]", "loopback"),
    ("DNS server 0.0.0.0", set_at("network.dns", ["0.0.0.0"]), "network.dns[0]", "never a destination"),
    ("a broadcast DNS server", set_at("network.dns", ["255.255.255.255"]), "network.dns[0]", "broadcast"),
    (
        "the LAN's broadcast address as DNS server",
        set_at("network.dns", ["9.9.9.9", "192.168.50.255"]),
        "network.dns[1]",
        "192.168.50.255 is the broadcast address of 192.168.50.0/24",
    ),
    (
        "the LAN's network address as gateway",
        set_at("network.gateway", "192.168.50.0"),
        "network.gateway",
        "192.168.50.0 is the network address of 192.168.50.0/24",
    ),
    ("a reserved NTP server", set_at("network.ntp", ["240.0.0.1"]), "network.ntp[0]", "reserved"),
    (
        "an endpoint on the LAN's broadcast address",
        set_at("cluster.control_plane_endpoint", "192.168.50.255:6443"),
        "cluster.control_plane_endpoint",
        "192.168.50.255 is the broadcast address of 192.168.50.0/24",
    ),
    (
        "a multicast endpoint",
        set_at("cluster.control_plane_endpoint", "239.1.1.1:6443"),
        "cluster.control_plane_endpoint",
        "multicast",
    ),
    ("a loopback node address", set_at("nodes.1.address", "127.0.0.11/24"), "nodes[1].address", "loopback"),
]


@pytest.mark.parametrize(("edit", "path", "text"), [case[1:] for case in CASES], ids=[c[0] for c in CASES])
def test_each_mistake_is_named(
    bundled_data: dict[str, Any], tmp_path: Path, edit: Edit, path: str, text: str
) -> None:
    data = copy.deepcopy(bundled_data)
    edit(data)
    problems = problems_for(data, tmp_path)
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}; got {problems}"
    assert text in matching[0].message
    assert matching[0].hint, "every problem says how to fix it"
    assert matching[0].line is not None, "every problem points at a line of cluster.yaml"


def _reported(dotted: str) -> str:
    """The path a problem reports for a dotted path: 'nodes.1.name' is 'nodes[1].name'."""
    return "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in dotted.split(".")).lstrip(".")


def test_the_file_with_every_setting_given_is_valid(tmp_path: Path) -> None:
    assert loaded(EVERY_FIELD, tmp_path).network.wifi is not None


@pytest.mark.parametrize("where", string_fields(EVERY_FIELD))
@pytest.mark.parametrize("ending", ["\n", "\r\n", "\x00", "\x85"], ids=["newline", "crlf", "nul", "nel"])
def test_a_control_character_after_any_text_is_refused(tmp_path: Path, where: str, ending: str) -> None:
    """A regular expression's `$` matches before a final newline: "pi" and a newline passed as a user."""
    data = copy.deepcopy(EVERY_FIELD)
    set_at(where, value_at(data, where) + ending)(data)
    assert _reported(where) in {p.path for p in problems_for(data, tmp_path)}


NOT_PLAIN_NUMBERS = {
    "leading zeros": ("cluster.kubernetes", "1.034.02"),
    "a leading zero in the major": ("cluster.kubernetes", "01.34.2"),
    "Devanagari digits": ("cluster.kubernetes", "1.\u0969\u096a.2"),
    "a full-width digit": ("cluster.kubernetes", "1.34.\uff12"),
    "a full-width port digit": ("cluster.control_plane_endpoint", "kube.lab:\uff16443"),
    "a port with a leading zero": ("cluster.control_plane_endpoint", "kube.lab:06443"),
}


@pytest.mark.parametrize(("where", "value"), NOT_PLAIN_NUMBERS.values(), ids=NOT_PLAIN_NUMBERS)
def test_numbers_in_text_are_plain_ascii_digits(
    bundled_data: dict[str, Any], tmp_path: Path, where: str, value: str
) -> None:
    set_at(where, value)(bundled_data)
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == where


@pytest.mark.parametrize(
    ("zone", "why"),
    [
        ("localtime", "not a time zone"),
        ("posixrules", "not a time zone"),
        ("right/UTC", "not a time zone"),
        ("US/Eastern", "tzdata-legacy"),
    ],
)
def test_a_time_zone_the_card_lacks_is_refused(
    bundled_data: dict[str, Any], tmp_path: Path, zone: str, why: str
) -> None:
    bundled_data["timezone"] = zone
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "timezone"
    assert f"{zone!r} is not a time zone on the card" in problem.message
    assert "Debian trixie's tzdata" in problem.message
    assert why in problem.message + problem.hint


def test_a_misspelt_time_zone_is_answered_with_the_closest(
    bundled_data: dict[str, Any], tmp_path: Path
) -> None:
    bundled_data["timezone"] = "Europe/Berln"
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.hint == "did you mean 'Europe/Berlin'?"


@pytest.mark.parametrize("zone", ["Europe/Amsterdam", "UTC", "Etc/UTC", "America/Argentina/Buenos_Aires"])
def test_the_zones_of_the_card_are_accepted(bundled_data: dict[str, Any], tmp_path: Path, zone: str) -> None:
    bundled_data["timezone"] = zone
    assert loaded(bundled_data, tmp_path).timezone == zone


def test_an_ssid_of_32_bytes_is_accepted(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["network"]["wifi"] = {"ssid": "ä" * 16, "psk": "correct horse", "country": "DE"}
    assert loaded(bundled_data, tmp_path).network.wifi is not None


SECRET_PSKS = {
    # (how the passphrase is written in cluster.yaml: the text that must never be printed)
    "an unquoted number": ("123456789", "123456789"),
    "an unquoted decimal": ("12345678.75", "12345678.75"),
    "a list": ("[hunter2hunter2]", "hunter2hunter2"),
    "a mapping": ("{hunter2hunter2: 1}", "hunter2hunter2"),
    "too long": ("hunter2" * 10, "hunter2"),
    "an integer tag": ("!!int hunter2hunter2", "hunter2hunter2"),
    "a timestamp tag": ("!!timestamp hunter2hunter2", "hunter2hunter2"),
    "a float tag": ("!!float 1e9x", "1e9x"),
    "an unknown tag": ("!secret hunter2hunter2", "hunter2hunter2"),
    "a control character": ('"hunter2\\bhunter2"', "hunter2"),
}


@pytest.mark.parametrize(("written", "secret"), SECRET_PSKS.values(), ids=SECRET_PSKS)
def test_no_message_shows_the_wifi_passphrase(tmp_path: Path, written: str, secret: str) -> None:
    text = BUNDLED.read_text().replace("  # wifi:", "  wifi:").replace("  #   ", "    ")
    text = text.replace('"correct horse battery staple"', written)
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    shown = caught.value.render()
    assert secret not in shown
    (problem,) = caught.value.problems
    assert problem.path in ("network.wifi.psk", "(yaml)")
    assert "psk:" in text.splitlines()[(problem.line or 0) - 1], "the problem points at the passphrase"


@pytest.mark.parametrize(
    ("others", "suggested"),
    [("/24", "192.168.50.11/24"), ("/16", "192.168.50.11/16")],
    ids=["like the other nodes, /24", "like the other nodes, /16"],
)
def test_an_address_without_prefix_asks_for_the_prefix_once(
    bundled_data: dict[str, Any], tmp_path: Path, others: str, suggested: str
) -> None:
    for node in bundled_data["nodes"]:
        node["address"] = node["address"].replace("/24", others)
    bundled_data["nodes"][1]["address"] = "192.168.50.11"
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "nodes[1].address"
    assert "no prefix length" in problem.message
    assert f"e.g. {suggested}" in problem.hint


def test_the_suggested_prefix_is_that_of_the_gateways_network(
    bundled_data: dict[str, Any], tmp_path: Path
) -> None:
    bundled_data["nodes"][0]["address"] = "10.0.0.5/8"
    bundled_data["nodes"][1]["address"] = "192.168.50.11"
    bundled_data["nodes"][2]["address"] = "192.168.50.12/22"
    (problem,) = problems_for(bundled_data, tmp_path)
    assert "e.g. 192.168.50.11/22" in problem.hint


@pytest.mark.parametrize(
    ("where", "value", "path"),
    [
        ("cluster.pod_subnet", 12345, "cluster.pod_subnet"),
        ("network.gateway", 3232248321, "network.gateway"),
        ("network.dns", [True], "network.dns[0]"),
        ("network.ntp", [3232248321], "network.ntp[0]"),
        ("nodes.1.address", 3232248331, "nodes[1].address"),
    ],
)
def test_a_number_is_not_read_as_an_address(
    bundled_data: dict[str, Any], tmp_path: Path, where: str, value: Any, path: str
) -> None:
    set_at(where, value)(bundled_data)
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == path
    assert "YAML read it as" in problem.message


def test_a_lone_address_without_prefix_is_given_a_24(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["nodes"] = bundled_data["nodes"][:1]
    bundled_data["nodes"][0]["address"] = "192.168.50.10"
    (problem,) = problems_for(bundled_data, tmp_path)
    assert "e.g. 192.168.50.10/24" in problem.hint


def _nodes(count: int) -> list[dict[str, str]]:
    """count nodes in 192.168.0.0/16 (the bundled gateway's /16), the first a control plane."""
    return [
        {
            "name": f"n{i}",
            "role": "control-plane" if i == 0 else "worker",
            "model": "pi4",
            "address": f"192.168.{50 + i // 200}.{10 + i % 200}/16",
        }
        for i in range(count)
    ]


@pytest.mark.parametrize(
    ("pod_subnet", "nodes", "suggested"),
    [
        ("10.244.0.0/23", 3, "10.244.0.0/22"),
        ("10.244.0.0/25", 3, "10.244.0.0/22"),
        ("10.244.0.0/16", 300, "10.244.0.0/15"),
    ],
)
def test_a_small_pod_subnet_is_answered_with_one_that_fits(
    bundled_data: dict[str, Any], tmp_path: Path, pod_subnet: str, nodes: int, suggested: str
) -> None:
    bundled_data["nodes"] = _nodes(nodes)
    bundled_data["cluster"]["pod_subnet"] = pod_subnet
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "cluster.pod_subnet"
    assert f"but the cluster has {nodes} nodes" in problem.message
    assert f"e.g. {suggested}" in problem.hint


def _wire(*fields: bytes) -> bytes:
    """The SSH wire format: each field a 4-byte big-endian length and its bytes."""
    return b"".join(len(field).to_bytes(4, "big") + field for field in fields)


def _mpint(value: int) -> bytes:
    return value.to_bytes(value.bit_length() // 8 + 1, "big")


def _line(kind: str, blob: bytes, comment: str = "ops@laptop") -> str:
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


def _openssh(key: ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


ED25519_KEY = bytes(range(32))
ED25519_BLOB = _wire(b"ssh-ed25519", ED25519_KEY)
P256_POINT = b"\x04" + bytes(64)
SSH_KEYS = {
    "ed25519": _openssh(ed25519.Ed25519PrivateKey.generate().public_key()) + " me@laptop",
    "rsa 2048": _openssh(rsa.generate_private_key(65537, 2048).public_key()),
    "ecdsa p256": _openssh(ec.generate_private_key(ec.SECP256R1()).public_key()),
    "ecdsa p384": _openssh(ec.generate_private_key(ec.SECP384R1()).public_key()),
    "ecdsa p521": _openssh(ec.generate_private_key(ec.SECP521R1()).public_key()),
    "ed25519 on a security key": _line(
        "sk-ssh-ed25519@openssh.com", _wire(b"sk-ssh-ed25519@openssh.com", ED25519_KEY, b"ssh:")
    ),
    "ecdsa on a security key": _line(
        "sk-ecdsa-sha2-nistp256@openssh.com",
        _wire(b"sk-ecdsa-sha2-nistp256@openssh.com", b"nistp256", P256_POINT, b"ssh:"),
    ),
    "separated by tabs": "ssh-ed25519\t" + base64.b64encode(ED25519_BLOB).decode(),
}


@pytest.mark.parametrize("key", SSH_KEYS.values(), ids=SSH_KEYS)
def test_each_kind_of_ssh_key_is_accepted(bundled_data: dict[str, Any], tmp_path: Path, key: str) -> None:
    bundled_data["access"]["ssh_authorized_keys"].append(key)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(bundled_data))
    assert load_cluster(path).access.ssh_authorized_keys[1] == key


BAD_SSH_KEYS: list[tuple[str, str, str, str]] = [
    # (case, key line, text the message must contain, text the hint must contain)
    (
        "ssh-rsa holding an ed25519 key",
        _line("ssh-rsa", ED25519_BLOB),
        "ssh-rsa key 'ops@laptop' holds ssh-ed25519 key data",
        "as ssh-keygen wrote it",
    ),
    (
        "base64 that does not decode",
        _line("ssh-ed25519", ED25519_BLOB)[:-12] + " ops@laptop",
        "is not valid base64",
        "whole line",
    ),
    ("a truncated key", _line("ssh-ed25519", ED25519_BLOB[:-4]), "ends early", "whole line"),
    (
        "an RSA key of 1024 bits",
        _line("ssh-rsa", _wire(b"ssh-rsa", _mpint(65537), _mpint(2**1023 + 1))),
        "1024 bits; OpenSSH refuses RSA keys under 1024 bits and picluster wants at least 2048",
        "ssh-keygen -t ed25519",
    ),
    (
        "an ed25519 key of 31 bytes",
        _line("ssh-ed25519", _wire(b"ssh-ed25519", bytes(31))),
        "31 bytes long, not 32",
        "ssh-keygen -t ed25519",
    ),
    (
        "ecdsa on the wrong curve",
        _line("ecdsa-sha2-nistp256", _wire(b"ecdsa-sha2-nistp256", b"nistp384", P256_POINT)),
        "names the curve 'nistp384', not 'nistp256'",
        "as ssh-keygen wrote it",
    ),
    ("bytes after the key", _line("ssh-ed25519", ED25519_BLOB + b"\0"), "1 byte after the key", "whole line"),
    (
        "a second line in the comment",
        _line("ssh-ed25519", ED25519_BLOB, "me\nssh-ed25519 AAAA intruder"),
        "line break",
        "one line",
    ),
    ("DSA, which OpenSSH dropped", _line("ssh-dss", _wire(b"ssh-dss")), "'ssh-dss' is not", "ssh-keygen"),
]


@pytest.mark.parametrize(
    ("key", "message", "hint"), [case[1:] for case in BAD_SSH_KEYS], ids=[c[0] for c in BAD_SSH_KEYS]
)
def test_an_ssh_key_openssh_would_refuse_is_named_with_a_fix(
    bundled_data: dict[str, Any], tmp_path: Path, key: str, message: str, hint: str
) -> None:
    bundled_data["access"]["ssh_authorized_keys"].append(key)
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "access.ssh_authorized_keys[1]"
    assert message in problem.message
    assert hint in problem.hint


def test_all_problems_are_reported_together(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["cluster"]["kubernetes"] = "1.20.0"
    bundled_data["flannel"]["ifce"] = "eth0"
    bundled_data["nodes"][2]["model"] = "pi9"
    paths = {p.path for p in problems_for(bundled_data, tmp_path)}
    assert paths == {"cluster.kubernetes", "flannel.ifce", "nodes[2].model"}


def test_cross_field_problems_are_reported_together(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["nodes"][1]["name"] = "cp1"
    bundled_data["nodes"][2]["address"] = "192.168.51.12/24"
    bundled_data["cluster"]["service_subnet"] = "10.244.0.0/20"
    paths = {p.path for p in problems_for(bundled_data, tmp_path)}
    assert paths == {"nodes[1].name", "nodes[2].address", "cluster.service_subnet"}


def test_typo_suggests_the_known_key(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["flannel"]["ifce"] = bundled_data["flannel"].pop("iface")
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.hint == "did you mean 'iface'?"


def test_yaml_syntax_error_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text("cluster:\n  name: homelab\n  pod_subnet: [10.244.0.0/16\nnodes: []\n")
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    (problem,) = caught.value.problems
    assert problem.path == "(yaml)"
    assert problem.line == 4
    assert "column" in problem.message


HOSTILE_YAML = {
    "a tag for Python objects": "cluster: !!python/object:os.system x\n",
    "an unknown tag": "cluster: !secret homelab\n",
    "a date that does not exist": "cluster: 2020-99-99\n",
    "an integer tag on text": "cluster: !!int homelab\n",
    "a merge of a scalar": "base: &b trixie\ncluster: {<<: *b}\n",
    "a mapping as a key": "cluster:\n  {a: 1}: homelab\n",
    "a number as a key": "cluster:\n  1: homelab\n",
    "a timestamp tag on text": "cluster: !!timestamp x\n",
    "a boolean tag on text": "cluster: !!bool x\n",
    "an integer tag on nothing": 'cluster: !!int ""\n',
    "a float tag on nothing": 'cluster: !!float ""\n',
    "a timestamp tag deep inside": "nodes:\n  - name: !!timestamp x\n",
    "half of a UTF-16 pair": 'cluster:\n  name: "\\ud800\\udc00"\n',
}


def the_problem_with(text: str, tmp_path: Path) -> Problem:
    """The one problem load_cluster finds in a cluster.yaml of text."""
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    (problem,) = caught.value.problems
    return problem


@pytest.mark.parametrize("text", HOSTILE_YAML.values(), ids=HOSTILE_YAML)
def test_yaml_that_builds_no_settings_is_a_located_problem(tmp_path: Path, text: str) -> None:
    problem = the_problem_with(text, tmp_path)
    assert problem.line is not None
    assert problem.hint


def billion_laughs(levels: int) -> str:
    """About 1 KB of YAML whose aliases expand to 9**levels strings."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, levels + 1):
        below = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"l{level}: &l{level} [{below}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    start = time.monotonic()
    problem = the_problem_with(billion_laughs(8), tmp_path)
    assert time.monotonic() - start < 0.5
    assert "aliases" in problem.message
    assert problem.line is not None
    assert problem.hint


def test_a_few_aliases_are_fine(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    text = BUNDLED.read_text().replace("dns: [192.168.50.1]", "dns: &lan [192.168.50.1]")
    path.write_text(text.replace("ntp: [pool.ntp.org]", "ntp: *lan"))
    assert [str(a) for a in load_cluster(path).network.ntp] == ["192.168.50.1"]


RUNAWAY_YAML = {
    "an alias inside its own anchor": "cluster: &c {name: *c}\n",
    "a list inside itself": "nodes: &n [*n]\n",
    "lists nested 10,000 deep": "nodes: " + "[" * 10_000 + "]" * 10_000 + "\n",
}


@pytest.mark.parametrize("text", RUNAWAY_YAML.values(), ids=RUNAWAY_YAML)
def test_runaway_structures_are_refused(tmp_path: Path, text: str) -> None:
    problem = the_problem_with(text, tmp_path)
    assert problem.path == "(yaml)"
    assert problem.line == 1
    assert problem.hint


def test_aliases_do_not_nest_deeper_than_values_written_out(tmp_path: Path) -> None:
    """Each line nests 30 lists around an alias of the line above: 25 lines nest 750 deep, which
    took the key check past Python's recursion limit when the call stack was already deep."""
    lines = ["l0: &l0 " + "[" * 30 + "x" + "]" * 30]
    lines += [f"l{i}: &l{i} " + "[" * 30 + f"*l{i - 1}" + "]" * 30 for i in range(1, 25)]
    problem = the_problem_with("\n".join(lines) + "\n", tmp_path)
    assert problem.path == "(yaml)"
    assert "nest more than 32 levels deep" in problem.message
    assert problem.line == 2, "the first alias that nests too deep"


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        BUNDLED.read_text().replace("  domain: cluster.local\n", "  domain: a.b\n  domain: c.d\n")
    )
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    (problem,) = caught.value.problems
    assert problem.path == "cluster.domain"
    assert "twice" in problem.message


def test_problem_lines_point_at_the_offending_entry(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["nodes"][2]["address"] = "10.9.9.9/24"
    (problem,) = problems_for(bundled_data, tmp_path)
    text = (tmp_path / "cluster.yaml").read_text().splitlines()
    assert problem.line is not None
    assert "10.9.9.9/24" in text[problem.line - 1]


def test_pi5_on_debian_base_is_an_error_that_names_base_image(
    bundled_data: dict[str, Any], tmp_path: Path
) -> None:
    bundled_data["nodes"][2]["model"] = "pi5"
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "nodes[2].model"
    assert "Debian's kernel does not run this model" in problem.message
    assert "base.image" in problem.hint and "Raspberry Pi OS Lite arm64" in problem.hint
    assert "url and sha256" in problem.hint


@pytest.mark.parametrize("arch", ["armhf", "amd64"])
def test_a_downloaded_base_must_be_arm64(bundled_data: dict[str, Any], tmp_path: Path, arch: str) -> None:
    bundled_data["base"] = {
        "arch": arch,
        "image": {"url": "https://example.org/os.img.xz", "sha256": "0" * 64},
    }
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "base.arch"
    assert "Raspberry Pi OS Lite images base.image takes" in problem.hint


def test_several_control_planes_with_endpoint_are_valid(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    _three_control_planes(bundled_data)
    bundled_data["cluster"]["control_plane_endpoint"] = "192.168.50.9:8443"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(bundled_data))
    cluster = load_cluster(path)
    assert [n.name for n in cluster.control_planes] == ["cp1", "w1", "w2"]
    assert cluster.init_node.name == "cp1"
    assert cluster.api_endpoint == "192.168.50.9:8443"


@pytest.mark.parametrize(
    ("endpoint", "served"),
    [("192.168.50.9:8443", True), ("kube.lab:6443", False), ("10.20.0.5:6443", False)],
    ids=["an address of the LAN", "a DNS name", "an address elsewhere"],
)
def test_only_an_endpoint_in_the_lan_is_a_virtual_ip(
    bundled_data: dict[str, Any], tmp_path: Path, endpoint: str, served: bool
) -> None:
    """A load balancer the user runs may listen on 6443; a virtual IP the control planes serve may not."""
    bundled_data["cluster"]["control_plane_endpoint"] = endpoint
    cluster = loaded(bundled_data, tmp_path)
    assert (cluster.virtual_ip is not None) == served


@pytest.mark.parametrize(
    ("hours", "written"),
    [(48, "join_window_days: 2 instead"), (30, "join_window_days: 2 instead (30 h rounded up")],
)
def test_the_deprecated_token_lifetime_still_works_and_validate_says_how_to_write_it(
    bundled_data: dict[str, Any], tmp_path: Path, hours: int, written: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bundled_data["cluster"]["token_ttl_hours"] = hours
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(bundled_data))
    assert main(["validate", "-f", str(tmp_path / "cluster.yaml")]) == 0
    out, err = capsys.readouterr()
    assert ": ok: cluster homelab" in out
    assert f"note: cluster.token_ttl_hours is deprecated: write cluster.{written}" in err
    assert load_cluster(tmp_path / "cluster.yaml").join_window.total_seconds() == hours * 3600


def test_bookworm_is_refused_with_what_breaks(bundled_data: dict[str, Any], tmp_path: Path) -> None:
    bundled_data["base"] = {"suite": "bookworm"}
    (problem,) = problems_for(bundled_data, tmp_path)
    assert problem.path == "base.suite"
    assert "containerd is 1.6.20" in problem.message and "no etcdutl" in problem.message
    assert "use trixie" in problem.message


def test_a_pi5_on_raspberry_pi_os_boots_the_4k_page_kernel_unless_told(tmp_path: Path) -> None:
    golden = Path(__file__).parent / "golden/raspios-pi5/cluster.yaml"
    data = yaml.safe_load(golden.read_text())
    node = next(node["name"] for node in data["nodes"] if node["model"] == "pi5")
    for size, line in ((None, True), (16, False)):
        if size is not None:
            data["base"]["pi5_page_size"] = size
        path = tmp_path / "cluster.yaml"
        path.write_text(yaml.safe_dump(data))
        cluster = load_cluster(path)
        chosen = next(n for n in cluster.nodes if n.name == node)
        plan = render_node(cluster, chosen, fixed_secrets())
        config = next(e.data.decode() for e in plan.files if e.path.name == "config.txt")
        assert ("kernel=kernel8.img" in config.splitlines()) is line, config
