"""cluster.packages: firstboot. kubeadm, kubelet, kubectl and cri-tools from the Kubernetes apt
repository of the cluster's minor release, pinned to its exact version and held.

The repository's key comes from `<repository>/Release.key` over HTTPS (the installation method
Kubernetes documents) and goes inline into the source entry, so apt trusts it for that
repository only.
"""

from __future__ import annotations

import shutil

import requests

from agent.config import NodeConfig
from agent.host import Host

PACKAGES = ("kubeadm", "kubelet", "kubectl", "cri-tools")
PINNED = ("kubeadm", "kubelet", "kubectl")
SOURCES = "/etc/apt/sources.list.d/kubernetes.sources"
PREFERENCES = "/etc/apt/preferences.d/kubernetes"


def installed() -> bool:
    return all(shutil.which(tool) for tool in PINNED)


def install(host: Host, config: NodeConfig) -> None:
    """Raises requests' errors or CommandFailed; the caller records them and retries."""
    use_repository(host, config.apt_repository, config.kubernetes_version)
    apt_install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    host.run(apt_install, timeout=1800)
    host.run(["apt-mark", "hold", *PINNED])


def use_repository(host: Host, repository: str, version: str, only_it: bool = False) -> None:
    """The source entry names the repository with its key inline, the pin names the release,
    and apt reads them: every source, or `only_it` (an upgrade, whose other packages stay as
    they are: it needs no Debian mirror, and a Pi's update is the faster). Raises requests'
    errors, ValueError or CommandFailed."""
    response = requests.get(repository + "Release.key", timeout=30)
    response.raise_for_status()
    key = response.text.strip()
    if not key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----"):
        raise ValueError(f"{repository}Release.key is not an armored OpenPGP key")
    signed_by = "\n".join(f" {line}" if line.strip() else " ." for line in key.splitlines())
    source = f"Types: deb\nURIs: {repository}\nSuites: /\nSigned-By:\n{signed_by}\n"
    pin = f"Package: {' '.join(PINNED)}\nPin: version {version}-*\nPin-Priority: 1001\n"
    if not host.dry_run:
        host.path(SOURCES).write_text(source)
        host.path(PREFERENCES).write_text(pin)
    # SourceList is read under Dir::Etc (/etc/apt/); SourceParts /dev/null reads no folder
    alone = ["-o", f"Dir::Etc::SourceList={SOURCES.removeprefix('/etc/apt/')}",
             "-o", "Dir::Etc::SourceParts=/dev/null", "-o", "APT::Get::List-Cleanup=0"]  # fmt: skip
    host.run(["apt-get", "update", *(alone if only_it else [])], timeout=600)
