"""The cluster's secrets on disk: a git-ignored `.picluster/` folder next to cluster.yaml.

Created on first use (folder 0700, files 0600) and reused afterwards, so images built later join
the same cluster. Its layout mirrors kubeadm's /etc/kubernetes/pki.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from builder.errors import UserError
from builder.files import write_atomic
from builder.pki import ClusterSecrets, KeyPair, make_secrets

STATE_DIR_NAME = ".picluster"
TOKEN_FILE = "bootstrap-token"


def state_dir_for(cluster_file: Path) -> Path:
    return cluster_file.resolve().parent / STATE_DIR_NAME


def load_or_create(state_dir: Path) -> ClusterSecrets:
    """Read the cluster's secrets, creating them the first time."""
    if not (state_dir / "pki" / "ca.crt").exists():
        save(state_dir, make_secrets(datetime.now(UTC).replace(microsecond=0)))
    return load(state_dir)


def save(state_dir: Path, secrets: ClusterSecrets) -> None:
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in secrets.pki_files().items():
        folder = (state_dir / "pki" / name).parent
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(state_dir / "pki" / name, data, 0o600)
    write_atomic(state_dir / TOKEN_FILE, secrets.bootstrap_token.encode() + b"\n", 0o600)
    _tighten(state_dir)


def load(state_dir: Path) -> ClusterSecrets:
    _tighten(state_dir)
    pki = state_dir / "pki"
    try:
        return ClusterSecrets(
            ca=_pair(pki, "ca.crt", "ca.key"),
            front_proxy_ca=_pair(pki, "front-proxy-ca.crt", "front-proxy-ca.key"),
            etcd_ca=_pair(pki, "etcd/ca.crt", "etcd/ca.key"),
            service_account=_pair(pki, "sa.pub", "sa.key"),
            bootstrap_token=(state_dir / TOKEN_FILE).read_text().strip(),
        )
    except FileNotFoundError as missing:
        raise UserError(
            f"the cluster state in {state_dir} is incomplete: {missing.filename} is missing",
            "restore the folder from your backup; only if no node was ever booted, delete it "
            "to start a new cluster",
        ) from None


def _pair(folder: Path, public: str, key: str) -> KeyPair:
    return KeyPair((folder / public).read_bytes(), (folder / key).read_bytes())


def _tighten(state_dir: Path) -> None:
    """Keep secrets private even if the folder was copied around with a loose umask."""
    for folder, _, files in os.walk(state_dir):
        os.chmod(folder, 0o700)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o600)
