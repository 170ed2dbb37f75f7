"""`picluster backup` and `picluster restore`: the state folder, the one thing that must never be
lost, copied off as a checked archive and put back only when it checks out.

The archive is a gzip'd tar of the folder's regular files plus MANIFEST.json (each file's
SHA-256, the cluster's name and CA pin). A backup is made only of a folder that loads cleanly;
a restore verifies every digest, refuses links, absolute paths and `..`, loads the secrets from a
scratch copy, and only then renames that copy into place, never over an existing cluster.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from builder.errors import UserError
from builder.files import write_atomic
from builder.secrets import store, tokens
from builder.secrets.pki import ClusterSecrets

MANIFEST = "MANIFEST.json"
KEPT = (*store.REQUIRED, tokens.TOKENS_FILE, "admin.conf")
"""What a backup holds: the secrets, the token record, the admin kubeconfig if there is one."""
MAX_MEMBER = 1 << 20
"""No secret file is near this size; a larger member means the archive is something else."""


def backup(state_dir: Path, secrets: ClusterSecrets, cluster_name: str, out: Path) -> int:
    """Write the archive of a state folder that loaded cleanly (`secrets`); returns the number of
    files kept."""
    tokens.load_tokens(state_dir, secrets)  # a damaged token record is no backup either
    contents = {name: (state_dir / name).read_bytes() for name in KEPT if (state_dir / name).is_file()}
    manifest = {
        "cluster": cluster_name,
        "ca_cert_hash": secrets.ca_cert_hash,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in {MANIFEST: json.dumps(manifest, indent=2).encode(), **contents}.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode = len(data), 0o600
            archive.addfile(member, io.BytesIO(data))
    try:
        write_atomic(out, buffer.getvalue(), 0o600)
    except OSError as error:
        raise UserError(
            f"cannot write {out}: {error.strerror}", "choose another place with -o FILE"
        ) from None
    return len(contents)


def restore(archive_path: Path, state_dir: Path) -> tuple[ClusterSecrets, str]:
    """Put a checked archive's folder in place; returns its secrets and the cluster's name."""
    if not store.is_new(state_dir):
        raise UserError(
            f"{state_dir} already holds a cluster's secrets; restoring would replace them",
            f"move {state_dir} away first if it is really the wrong one (it may be the only copy)",
        )
    contents, manifest = _read_checked(archive_path)

    def write(staging: Path) -> None:
        for name, data in contents.items():
            write_atomic(staging / name, data, 0o600)
        secrets = store.load(staging)  # checked where nothing depends on it yet
        tokens.load_tokens(staging, secrets)
        if secrets.ca_cert_hash != manifest.get("ca_cert_hash"):
            raise _not_a_backup(archive_path, "its CA is not the one its manifest names")

    if not store.publish(state_dir, write):
        raise UserError(f"{state_dir} was given a cluster's secrets while this ran; nothing was restored")
    return store.load(state_dir), str(manifest.get("cluster", "?"))


def _read_checked(archive_path: Path) -> tuple[dict[str, bytes], dict[str, object]]:
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            for member in archive:
                # only the files a backup holds, by name: no links, folders, paths of its own
                if not member.isfile() or member.name not in (*KEPT, MANIFEST) or member.size > MAX_MEMBER:
                    shown = member.name if len(member.name) < 80 else member.name[:77] + "..."
                    raise _not_a_backup(archive_path, f"it holds {shown!r}, which no backup holds")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file
                contents[member.name] = extracted.read()
    except (OSError, tarfile.TarError, EOFError) as error:
        raise _not_a_backup(archive_path, f"it cannot be read ({error})") from None
    try:
        manifest = json.loads(contents.pop(MANIFEST))
        listed: dict[str, str] = manifest["files"]
        if not all(isinstance(key, str) and isinstance(value, str) for key, value in listed.items()):
            raise TypeError
    except (KeyError, ValueError, TypeError, AttributeError):
        raise _not_a_backup(archive_path, f"it has no readable {MANIFEST}") from None
    if set(listed) != set(contents):
        raise _not_a_backup(archive_path, "its files are not the ones its manifest lists")
    damaged = sorted(
        name for name, data in contents.items() if hashlib.sha256(data).hexdigest() != listed[name]
    )
    if damaged:
        raise _not_a_backup(archive_path, f"these files changed since the backup: {', '.join(damaged)}")
    return contents, manifest


def _not_a_backup(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} is not a usable picluster backup: {why}",
        "use another copy of the backup; nothing was restored",
    )
