"""The cluster's secrets on disk: a git-ignored `.picluster/` folder next to cluster.yaml.

The folder is the cluster's identity: every card pins its CA, and a node built later joins only
if it carries the same secrets. So it is made once, when there is no folder (or an empty one),
all at once under a temporary name; afterwards it is only read, and read strictly: a missing,
damaged or foreign file, or a link, is an error that names it, never a reason to make new
secrets. Folder 0700, files 0600; its layout mirrors kubeadm's /etc/kubernetes/pki.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from builder.errors import SHOWN_PROBLEMS, UserError
from builder.files import write_atomic
from builder.secrets.pki import ClusterSecrets, KeyPair, make_secrets

STATE_DIR_NAME = ".picluster"
TOKEN_FILE = "bootstrap-token"
BOOTSTRAP_TOKEN = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
CAS = {
    "ca": ("pki/ca.crt", "pki/ca.key"),
    "front_proxy_ca": ("pki/front-proxy-ca.crt", "pki/front-proxy-ca.key"),
    "etcd_ca": ("pki/etcd/ca.crt", "pki/etcd/ca.key"),
}
SERVICE_ACCOUNT = ("pki/sa.pub", "pki/sa.key")
REQUIRED = (*(name for pair in CAS.values() for name in pair), *SERVICE_ACCOUNT, TOKEN_FILE)
"""Every file a complete state folder holds."""
RESTORE = (
    "restore the folder from your backup (picluster restore FILE); only if no node of this "
    "cluster has ever booted, move the folder away to start a new cluster"
)


def state_dir_for(cluster_file: Path) -> Path:
    """The folder beside cluster.yaml as named, a link not followed. Should it be new while the
    folder beside the link's target holds a cluster, that is an error: guessing either way could
    give the next card a new CA."""
    beside = Path(os.path.abspath(cluster_file)).parent / STATE_DIR_NAME
    target = cluster_file.resolve().parent / STATE_DIR_NAME
    if target != beside and is_new(beside) and not is_new(target):
        raise UserError(
            f"{cluster_file} is a link; the cluster's secrets are beside its target, in {target}, "
            f"and there are none in {beside}",
            f"pass -f {cluster_file.resolve()}, or move {target} beside the link",
        )
    return beside


def is_new(state_dir: Path) -> bool:
    """No cluster yet: no folder, or one without a single file in it. Anything else must load."""
    if state_dir.is_symlink() and not state_dir.exists():
        raise UserError(
            f"{state_dir} is a link to {os.readlink(state_dir)}, which does not exist",
            "mount or restore what it points to, or replace the link with the folder itself",
        )
    if not state_dir.exists():
        return True
    if not state_dir.is_dir():
        raise UserError(
            f"{state_dir} is not a folder", f"move it away; it is not the cluster's secrets. {RESTORE}"
        )
    try:
        return not any(path.is_file() or path.is_symlink() for path in state_dir.rglob("*"))
    except OSError as error:
        raise _unreadable(state_dir, error) from None


def load_or_create(state_dir: Path) -> ClusterSecrets:
    """Read the cluster's secrets, creating them only when there are none at all."""
    if is_new(state_dir):
        save(state_dir, make_secrets(datetime.now(UTC).replace(microsecond=0)))
    return load(state_dir)


def save(state_dir: Path, secrets: ClusterSecrets) -> None:
    """Write a new state folder whole (publish)."""

    def write(staging: Path) -> None:
        for name, data in secrets.pki_files().items():
            write_atomic(staging / "pki" / name, data, 0o600)
        write_atomic(staging / TOKEN_FILE, secrets.bootstrap_token.encode() + b"\n", 0o600)

    publish(state_dir, write)  # a first render racing another uses whichever secrets stand


def publish(state_dir: Path, write: Callable[[Path], None]) -> bool:
    """Make a state folder whole: `write` fills a folder under a temporary name beside it, which
    is then renamed into place (over an empty folder), so no half-made folder is ever left to be
    mistaken for a cluster. False when another picluster published one first: that one stands."""
    target = state_dir.resolve()  # the folder a link points to, for secrets kept elsewhere
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.new-"))
    except OSError as error:
        raise UserError(
            f"cannot create the cluster's secrets in {target.parent}: {error.strerror}",
            "run picluster where that folder is writable, or copy cluster.yaml to one that is",
        ) from None
    try:
        write(staging)
        _tighten(staging)
        # a folder with empty folders in it holds no cluster: rmdir, which takes only empty ones
        for empty in sorted(target.rglob("*") if target.is_dir() else [], key=lambda p: -len(p.parts)):
            empty.rmdir()
        os.rename(staging, target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if target.is_dir() and not is_new(target):
            return False
        raise UserError(
            f"cannot create the cluster's secrets in {target}: {error.strerror}", RESTORE
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def load(state_dir: Path) -> ClusterSecrets:
    """The secrets, checked: every file there, none a link, every certificate a CA whose key
    matches it, the token well formed. Any problem is one error listing them all."""
    problems = _missing_or_linked(state_dir)
    if problems:
        raise _damaged(state_dir, problems)
    _tighten(state_dir)
    try:
        pairs = {field: _pair(state_dir, *names, problems, ca=True) for field, names in CAS.items()}
        service_account = _pair(state_dir, *SERVICE_ACCOUNT, problems, ca=False)
        token = (state_dir / TOKEN_FILE).read_text(errors="replace").strip()
    except OSError as error:
        raise _unreadable(state_dir, error) from None
    if not BOOTSTRAP_TOKEN.fullmatch(token):
        problems.append(f"{TOKEN_FILE}: not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}})")
    if problems:
        raise _damaged(state_dir, problems)
    return ClusterSecrets(bootstrap_token=token, service_account=service_account, **pairs)


def _missing_or_linked(state_dir: Path) -> list[str]:
    problems = []
    for folder, folders, files in os.walk(state_dir):
        for name in folders + files:
            path = Path(folder, name)
            if path.is_symlink():
                # never followed: tightening modes through a link would change a file elsewhere
                relative, points_to = path.relative_to(state_dir), os.readlink(path)
                problems.append(f"{relative}: a link (to {points_to}); put the file itself in its place")
    for name in REQUIRED:
        path = state_dir / name
        if not path.is_symlink() and not path.is_file():
            problems.append(f"{name}: missing")
    return problems


def _pair(state_dir: Path, public: str, private: str, problems: list[str], ca: bool) -> KeyPair:
    public_pem, key_pem = (state_dir / public).read_bytes(), (state_dir / private).read_bytes()
    public_key: PublicKeyTypes
    try:
        if ca:
            certificate = x509.load_pem_x509_certificate(public_pem)
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
            if not constraints.value.ca:
                problems.append(f"{public}: not a CA certificate")
            public_key = certificate.public_key()
        else:
            public_key = serialization.load_pem_public_key(public_pem)
    except (ValueError, x509.ExtensionNotFound):
        problems.append(
            f"{public}: not a PEM {'CA certificate' if ca else 'public key'} (empty, truncated or damaged)"
        )
        return KeyPair(public_pem, key_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        problems.append(f"{private}: not an unencrypted PEM private key (empty, truncated or damaged)")
        return KeyPair(public_pem, key_pem)
    if _spki(key.public_key()) != _spki(public_key):
        problems.append(f"{private}: does not belong to {public} (a key from another cluster?)")
    return KeyPair(public_pem, key_pem)


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _unreadable(state_dir: Path, error: OSError) -> UserError:
    return UserError(
        f"cannot read the cluster's secrets in {state_dir}: {error.strerror} ({error.filename})",
        "run picluster as the user who owns the folder (or root)",
    )


def _damaged(state_dir: Path, problems: list[str]) -> UserError:
    shown = problems[:SHOWN_PROBLEMS]
    more = [f"... and {len(problems) - len(shown)} more"] if len(problems) > len(shown) else []
    listed = "".join(f"\n  {problem}" for problem in [*shown, *more])
    return UserError(
        f"the cluster's secrets in {state_dir} are incomplete or damaged, so no card can be "
        f"written that joins this cluster:{listed}",
        RESTORE,
    )


def _tighten(state_dir: Path) -> None:
    """Keep secrets private even if the folder was copied around with a loose umask (links were
    refused before this runs); a folder already private is left untouched, so it may be
    read-only."""
    for folder, _, files in os.walk(state_dir):
        for path, wanted in [(folder, 0o700), *((os.path.join(folder, name), 0o600) for name in files)]:
            if stat.S_IMODE(os.lstat(path).st_mode) == wanted:
                continue
            try:
                os.chmod(path, wanted)
            except OSError as error:
                raise UserError(
                    f"cannot make {path} private ({oct(wanted)}): {error.strerror}",
                    "fix its owner or modes (chmod -R go= .picluster), then run again",
                ) from None
