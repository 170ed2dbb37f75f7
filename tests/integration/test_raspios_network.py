"""The NetworkManager keyfiles render writes for a Raspberry Pi OS base, read by NetworkManager
itself: the stand-in's own nmcli (Debian trixie's NetworkManager, on which Raspberry Pi OS trixie
builds), run under qemu-user in its root tree. `nmcli --offline connection modify` parses a keyfile
from its input as NetworkManager's keyfile plugin does, and prints the profile it understood; a
file it cannot take whole fails."""

from __future__ import annotations

import configparser
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from builder.image import debian
from builder.image.raspios import fetch_image, read_layout
from builder.render.node import render_node
from builder.run import Runner
from builder.spec.load import load_cluster
from builder.spec.model import ImageSource
from tests.support.project import BUNDLED, fixed_secrets

pytestmark = pytest.mark.integration

CONNECTIONS = "etc/NetworkManager/system-connections"


@pytest.fixture(scope="module")
def standin_root(raspios_standin_source: ImageSource, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("standin")
    image = fetch_image(raspios_standin_source, folder / "downloads")
    root = folder / "root"
    root.mkdir()
    subprocess.run(["debugfs", "-R", f"rdump / {root}", read_layout(image, Runner()).root_target(image)],
                   check=True, capture_output=True)  # fmt: skip
    image.unlink()
    debian.ensure_binfmt(Runner())
    return root


def nmcli(root: Path, *args: str, keyfile: bytes = b"") -> configparser.ConfigParser:
    """The keyfile nmcli writes, offline: for `connection add`, a new profile; for `connection
    modify`, the one it read from `keyfile`."""
    result = subprocess.run(["chroot", str(root), "nmcli", "--offline", "connection", *args], input=keyfile,
                            capture_output=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    profile = configparser.ConfigParser(interpolation=None)
    profile.read_string(result.stdout.decode())
    return profile


def keyfiles(tmp_path: Path) -> dict[str, bytes]:
    data: dict[str, Any] = yaml.safe_load(BUNDLED.read_text())
    data["base"]["image"] = {"url": "https://example.org/raspios.img.xz", "sha256": "a" * 64}
    data["network"]["dns"] = ["192.168.50.1", "9.9.9.9"]
    data["network"]["wifi"] = {"ssid": "lab;west", "psk": "correct horse", "country": "DE"}
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump(data))
    cluster = load_cluster(tmp_path / "cluster.yaml")
    plan = render_node(cluster, cluster.nodes[1], fixed_secrets())
    return {f.path.name: f.data for f in plan.files if str(f.path).startswith(CONNECTIONS)}


def test_networkmanager_reads_the_cluster_address_as_written(standin_root: Path, tmp_path: Path) -> None:
    keyfile = keyfiles(tmp_path)["picluster-cluster.nmconnection"]
    profile = nmcli(standin_root, "modify", "connection.autoconnect", "yes", keyfile=keyfile)
    assert profile["connection"]["interface-name"] == "eth0"
    assert dict(profile["ipv4"]) == {
        "address1": "192.168.50.11/24",
        "dns": "192.168.50.1;9.9.9.9;",
        "gateway": "192.168.50.1",
        "method": "manual",
        "route-metric": "100",
    }
    assert profile["ipv6"]["method"] == "disabled"


def test_networkmanager_reads_the_wifi_uplink_as_written(standin_root: Path, tmp_path: Path) -> None:
    keyfile = keyfiles(tmp_path)["picluster-wlan0.nmconnection"]
    profile = nmcli(standin_root, "modify", "connection.autoconnect", "yes", keyfile=keyfile)
    own = nmcli(standin_root, "add", "type", "wifi", "ifname", "wlan0", "con-name", "x", "ssid", "lab;west")
    assert profile["wifi"]["ssid"] == own["wifi"]["ssid"], "the name's bytes read as the name"
    assert profile["wifi-security"]["key-mgmt"] == "wpa-psk"
    assert len(profile["wifi-security"]["psk"]) == 64
    assert profile["ipv4"]["route-metric"] == "600" and profile["ipv4"]["ignore-auto-dns"] == "true"


def test_a_keyfile_networkmanager_cannot_take_fails(standin_root: Path) -> None:
    broken = b"[connection]\nid=x\ntype=ethernet\n[ipv4]\nmethod=manual\naddress1=not-an-address\n"
    result = subprocess.run(
        ["chroot", str(standin_root), "nmcli", "--offline", "connection", "modify", "connection.id", "x"],
        input=broken, capture_output=True, check=False,
    )  # fmt: skip
    assert result.returncode != 0
