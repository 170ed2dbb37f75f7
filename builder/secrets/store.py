"""The cluster's secrets on disk: a git-ignored `.picluster/` folder next to cluster.yaml.

The folder is the cluster's identity: every card pins its CA, and a node built later joins only
if it carries the same secrets. So it is made once, when there is no folder (or an empty one),
all at once under a temporary name; afterwards it is only read, and read strictly: a missing,
damaged or foreign file, a link, or a key others can read, is an error that names it, never a
reason to make new secrets or to change modes quietly. Folder 0700, files 0600; its layout
mirrors kubeadm's /etc/kubernetes/pki.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from builder.errors import SHOWN_PROBLEMS, UserError
from builder.files import remove_leftovers, scratch_prefix, write_atomic
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
CA_ENDING = timedelta(days=180)
TOKENS_FILE = "tokens.json"
"""Which bootstrap token each node's card carries (builder.secrets.tokens)."""
ADMIN_CONF = "admin.conf"
"""The admin kubeconfig `picluster kubeconfig` writes by default."""
RESTORE = (
    "restore the folder from your backup (picluster restore FILE); only if no node of this "
    "cluster has ever booted, move the folder away to start a new cluster"
)


def state_dir_for(cluster_file: Path) -> Path:
    """The folder beside cluster.yaml as named, a link not followed. cluster.yaml must be a file:
    beside a pipe (`-f /dev/stdin`) the secrets would land in /dev, a RAM filesystem, and be gone
    at the next boot. Should the folder be new while the folder beside the link's target holds a
    cluster, that is an error: guessing either way could give the next card a new CA."""
    beside = Path(os.path.abspath(cluster_file)).parent / STATE_DIR_NAME
    try:
        kind = cluster_file.stat().st_mode
    except OSError:
        kind = stat.S_IFREG  # missing or unreadable: reading it says so
    if not stat.S_ISREG(kind) and not stat.S_ISDIR(kind):
        raise UserError(
            f"{cluster_file} is not a regular file (a pipe or a device): the cluster's secrets are kept "
            f"beside cluster.yaml, which would put them in {beside}",
            "save it as a file in the folder where the cluster's secrets are to be kept, and pass that "
            "with -f",
        )
    target = cluster_file.resolve().parent / STATE_DIR_NAME
    if target != beside and is_new(beside) and not is_new(target):
        raise UserError(
            f"{cluster_file} is a link; the cluster's secrets are beside its target, in {target}, "
            f"and there are none in {beside}",
            f"pass -f {cluster_file.resolve()}, or move {target} beside the link",
        )
    return beside


def is_new(state_dir: Path) -> bool:
    """No cluster yet: no folder, or one without a single file in it. Anything else must load,
    and a folder this user cannot read is an error, never an empty one."""
    try:
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
        return not _holds_anything(state_dir)
    except OSError as error:
        raise _unreadable(state_dir, error) from None


def _holds_anything(folder: Path) -> bool:
    """Whether anything but empty folders is below folder; unlike a glob, says when it cannot look."""
    pending = [folder]
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    return True
                pending.append(Path(entry.path))
    return False


def load_or_create(state_dir: Path, record: Mapping[str, bytes] | None = None) -> ClusterSecrets:
    """Read the cluster's secrets, creating them only when there are none at all, with `record`
    (file name: bytes, the settings the cluster cannot change) written with them."""
    remove_leftovers(state_dir.resolve())  # a killed first render's copies of the keys
    if is_new(state_dir):
        save(state_dir, make_secrets(datetime.now(UTC).replace(microsecond=0)), record)
    return load(state_dir)


def save(state_dir: Path, secrets: ClusterSecrets, record: Mapping[str, bytes] | None = None) -> None:
    """Write a new state folder whole (publish)."""

    def write(staging: Path) -> None:
        for name, data in secrets.pki_files().items():
            write_atomic(staging / "pki" / name, data, 0o600)
        write_atomic(staging / TOKEN_FILE, secrets.bootstrap_token.encode() + b"\n", 0o600)
        for name, data in (record or {}).items():
            write_atomic(staging / name, data, 0o600)

    publish(state_dir, write)  # a first render racing another uses whichever secrets stand


def publish(state_dir: Path, write: Callable[[Path], None]) -> bool:
    """Make a state folder whole: `write` fills a folder under a temporary name beside it, which
    is then renamed into place (over an empty folder), so no half-made folder is ever left to be
    mistaken for a cluster. False when another picluster published one first: that one stands."""
    target = state_dir.resolve()  # the folder a link points to, for secrets kept elsewhere
    remove_leftovers(target)  # what a killed first render or restore left: copies of the keys
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=scratch_prefix(target, "new")))
    except OSError as error:
        raise UserError(
            f"cannot create the cluster's secrets in {target.parent}: {error.strerror}",
            "run picluster where that folder is writable, or copy cluster.yaml to one that is",
        ) from None
    try:
        write(staging)
        for folder, _, _ in os.walk(staging):  # mkdir follows the umask; the files were written 0600
            os.chmod(folder, 0o700)
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
    """The secrets, checked: every file there, none a link, none readable by others, every
    certificate a CA whose key matches it, the token well formed. Any problem is one error
    listing them all."""
    try:
        problems = _missing_or_linked(state_dir)
        if problems:
            raise _damaged(state_dir, problems)
        exposed = _exposed(state_dir)
        if exposed:
            raise _exposure(state_dir, exposed)
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


def check_current(state_dir: Path, secrets: ClusterSecrets, now: datetime) -> list[str]:
    """Refuse CAs outside their validity: one past its end signs nothing a node accepts, and one
    not valid yet says a clock is wrong, here or where the folder was made. What to say of CAs
    that end within CA_ENDING: nothing renews a CA, so it needs planning."""
    expired, early, ending = [], [], []
    for field, (certificate, _) in CAS.items():
        loaded = x509.load_pem_x509_certificate(getattr(secrets, field).public_pem)
        if now + CA_ENDING > loaded.not_valid_after_utc >= now:
            days = (loaded.not_valid_after_utc - now).days
            ending.append(
                f"note: {state_dir / certificate} ends on {loaded.not_valid_after_utc:%Y-%m-%d} (in {days} "
                "days), and with it every certificate it signed; picluster cannot extend a CA: plan a "
                "manual CA rotation (Kubernetes documents one) or a new cluster before then"
            )
        if now > loaded.not_valid_after_utc:
            expired.append(f"{certificate}: expired on {loaded.not_valid_after_utc:%Y-%m-%d}")
        elif now < loaded.not_valid_before_utc:
            early.append(f"{certificate}: not valid before {loaded.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if expired:
        raise UserError(
            f"the cluster's CAs in {state_dir} are past their end, so no node accepts what they sign:"
            + _listed(expired),
            "picluster cannot extend a CA: if the cluster still runs, renew these certificates with "
            "their own keys by hand (Kubernetes documents a manual CA rotation) and put them in their "
            f"place; otherwise start a new cluster with a new state folder (move {state_dir} away)",
        )
    if early:
        raise UserError(
            f"the cluster's CAs in {state_dir} are not valid yet by this machine's clock "
            f"({now:%Y-%m-%d %H:%M} UTC):" + _listed(early),
            "set this machine's clock right (timedatectl); if it is right, the folder was made on a "
            "machine whose clock was ahead, and no node would accept these CAs before then",
        )
    return ending


SECRET = (
    *(key for _, key in CAS.values()), SERVICE_ACCOUNT[1], TOKEN_FILE, TOKENS_FILE, ADMIN_CONF
)  # fmt: skip
"""The files in the folder that must stay private (certificates and sa.pub are public)."""


def _exposed(state_dir: Path) -> dict[str, str]:
    """Each secret file others can read, and who, by its mode and those of the folders to it."""
    found = {}
    for name in SECRET:
        path = state_dir / name
        if not path.is_file():
            continue  # tokens.json and admin.conf come later, if at all
        file = path.stat()
        folders = [os.stat(state_dir / parent) for parent in Path(name).parents]
        if file.st_mode & stat.S_IROTH and all(folder.st_mode & stat.S_IXOTH for folder in folders):
            readers = "every user"
        elif file.st_mode & stat.S_IRGRP and all(
            folder.st_mode & (stat.S_IXGRP if folder.st_gid == file.st_gid else stat.S_IXOTH)
            for folder in folders
        ):
            readers = f"group {_group(file.st_gid)}"
        else:
            continue
        found[name] = f"{name} (mode {stat.S_IMODE(file.st_mode):04o}): readable by {readers}"
    return found


def _exposure(state_dir: Path, exposed: dict[str, str]) -> UserError:
    names = set(exposed)
    # the chmod first: every picluster command refuses the folder until it is private
    advice = [f"make the folder private: chmod -R go= {state_dir} (picluster leaves modes as they are)"]
    if names - {TOKEN_FILE, TOKENS_FILE}:
        advice.append(
            "whoever read a CA key, sa.key or admin.conf can act as the cluster's admin: if anyone may "
            "have, start a new cluster with a new state folder (picluster cannot rotate CAs; Kubernetes "
            "documents a manual CA rotation)"
        )
    if names & {TOKEN_FILE, TOKENS_FILE}:
        advice.append(
            "whoever read a bootstrap token can join a machine of theirs: then delete it on the cluster "
            "(kubeadm token delete ID) and make a new one for each node whose card carried it "
            "(picluster token NODE)"
        )
    return UserError(
        f"the cluster's secrets in {state_dir} could be read by others:" + _listed(list(exposed.values())),
        "; ".join(advice),
    )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def _missing_or_linked(state_dir: Path) -> list[str]:
    problems = []
    for folder, folders, files in os.walk(state_dir, onerror=_raise):
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


def _raise(error: OSError) -> None:
    raise error


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
    """Never "no secrets": someone else's folder is a cluster this user cannot read."""
    blocked = Path(error.filename or state_dir)
    try:
        info = blocked.stat()
        owner = _user(info.st_uid)
        whose = (
            f"; it is owned by {owner} (mode {stat.S_IMODE(info.st_mode):04o}) and picluster runs as "
            f"{_user(os.geteuid())}"
        )
        hint = f"run picluster as {owner}, who made the cluster"
    except OSError:
        whose, hint = "", "run picluster as the user who made the cluster"
    return UserError(
        f"cannot read the cluster's secrets in {state_dir}: {blocked}: {error.strerror}{whose}", hint
    )


def _listed(problems: list[str]) -> str:
    shown = problems[:SHOWN_PROBLEMS]
    more = [f"... and {len(problems) - len(shown)} more"] if len(problems) > len(shown) else []
    return "".join(f"\n  {problem}" for problem in [*shown, *more])


def _damaged(state_dir: Path, problems: list[str]) -> UserError:
    return UserError(
        f"the cluster's secrets in {state_dir} are incomplete or damaged, so no card can be "
        "written that joins this cluster:" + _listed(problems),
        RESTORE,
    )
