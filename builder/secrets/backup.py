"""`picluster backup` and `picluster restore`: the state folder, the one thing that must never be
lost, copied off as a checked archive and put back only when it checks out.

The archive is a gzip'd tar of the folder's regular files plus MANIFEST.json (each file's
SHA-256, the cluster's name and CA pin). A backup is made only of a folder that loads cleanly;
a restore verifies every digest, refuses links, absolute paths and `..`, loads the secrets from a
scratch copy, and only then renames that copy into place, never over an existing cluster.

An archive to restore may be hostile: it is read from a regular file only (a pipe would block),
unpacked into memory no larger than MAX_UNPACKED before tar reads a header (tarfile reads a
whole PAX header at once, whatever size it declares), each name at most once, its cluster
name shown escaped, and its kubeconfig refused if it would run a program.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zlib
from pathlib import Path

import yaml

from builder.errors import UserError
from builder.files import NotRegularFile, open_regular, write_atomic
from builder.secrets import release, settings, snapshot, store, tokens
from builder.secrets.pki import ClusterSecrets

MANIFEST = "MANIFEST.json"
KEPT = (
    *store.REQUIRED, store.TOKENS_FILE, store.ADMIN_CONF, settings.SETTINGS_FILE, release.RELEASE_FILE,
    snapshot.SNAPSHOT_FILE, snapshot.RECORD_FILE,
)  # fmt: skip
"""What a backup holds: the secrets, the token record, the admin kubeconfig if there is one, the
records of the settings the cluster cannot change and of the release it runs, and the newest
etcd snapshot fetched, with its record."""
MAX_SNAPSHOT = 512 << 20
"""The largest etcd snapshot a backup holds (agent/snapshot.py MAX_SEND)."""
MAX_UNPACKED = MAX_SNAPSHOT + (1 << 20)
"""Besides the snapshot, a backup unpacks to a few KB; more means the archive is something else."""
BLOCK = 512
MAX_HEADER = 64 << 10
"""The largest PAX or GNU long-name header read: a backup's names are short."""
HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
CERTIFICATE_LOGIN = {"client-certificate-data", "client-key-data"}
"""How the kubeconfig picluster writes logs in; anything else (exec: runs a program) is foreign."""


def backup(state_dir: Path, secrets: ClusterSecrets, cluster_name: str, out: Path) -> int:
    """Write the archive of a state folder that loaded cleanly (`secrets`); returns the number of
    files kept."""
    check(state_dir, secrets)
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


def check(state_dir: Path, secrets: ClusterSecrets) -> None:
    """Refuse a folder whose records are damaged: no backup of it, not even a snapshot fetched."""
    tokens.load_tokens(state_dir, secrets)
    settings.load_record(state_dir)
    _check_snapshot(state_dir)


def restore(
    archive_path: Path, state_dir: Path, cluster_name: str, other_cluster: bool
) -> tuple[ClusterSecrets, str]:
    """Put a checked archive's folder in place; returns its secrets and the cluster's name as it
    may be shown. A backup of a cluster of another name only when `other_cluster`."""
    if not store.is_new(state_dir):
        raise UserError(
            f"{state_dir} already holds a cluster's secrets; restoring would replace them",
            f"move {state_dir} away first if it is really the wrong one (it may be the only copy)",
        )
    contents, manifest = _read_checked(archive_path)
    name = printable(str(manifest["cluster"]))
    if manifest["cluster"] != cluster_name and not other_cluster:
        raise UserError(
            f"{archive_path} is a backup of cluster {name}, not of {cluster_name}; nothing was restored",
            "restore it beside that cluster's cluster.yaml; if these are the secrets of the cluster "
            "this cluster.yaml describes under a new name, pass --other-cluster",
        )

    def write(staging: Path) -> None:
        for member, data in contents.items():
            write_atomic(staging / member, data, 0o600)
        secrets = store.load(staging)  # checked where nothing depends on it yet
        tokens.load_tokens(staging, secrets)
        settings.load_record(staging)
        _check_snapshot(staging)
        if secrets.ca_cert_hash != manifest.get("ca_cert_hash"):
            raise _not_a_backup(archive_path, "its CA is not the one its manifest names")

    if not store.publish(state_dir, write):
        raise UserError(f"{state_dir} was given a cluster's secrets while this ran; nothing was restored")
    return store.load(state_dir), name


def printable(text: str, limit: int = 80) -> str:
    """Text from an archive as a terminal may show it: control characters escaped (an escape
    sequence could rewrite the screen), clipped."""
    escaped = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def _read_checked(archive_path: Path) -> tuple[dict[str, bytes], dict[str, object]]:
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(_unpacked(archive_path)), mode="r:") as archive:
            for member in archive:
                # only the files a backup holds, by name, once: no links, folders, paths of its own
                if not member.isfile() or member.name not in (*KEPT, MANIFEST):
                    raise _not_a_backup(
                        archive_path, f"it holds '{printable(member.name)}', which no backup holds"
                    )
                if member.name in contents:
                    raise _not_a_backup(archive_path, f"it holds {member.name} twice")
                extracted = archive.extractfile(member)
                assert extracted is not None  # a regular file
                contents[member.name] = extracted.read()
    except (OSError, tarfile.TarError, EOFError) as error:
        raise _not_a_backup(archive_path, f"it cannot be read ({printable(str(error))})") from None
    try:
        manifest = json.loads(contents.pop(MANIFEST))
        listed: dict[str, str] = manifest["files"]
        if not isinstance(manifest["cluster"], str) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in listed.items()
        ):
            raise TypeError
    except (KeyError, ValueError, TypeError, AttributeError, RecursionError):
        raise _not_a_backup(archive_path, f"it has no readable {MANIFEST}") from None
    if set(listed) != set(contents):
        raise _not_a_backup(archive_path, "its files are not the ones its manifest lists")
    damaged = sorted(
        name for name, data in contents.items() if hashlib.sha256(data).hexdigest() != listed[name]
    )
    if damaged:
        raise _not_a_backup(archive_path, f"these files changed since the backup: {', '.join(damaged)}")
    if store.ADMIN_CONF in contents:
        _check_kubeconfig(archive_path, contents[store.ADMIN_CONF])
    return contents, manifest


def _check_snapshot(state_dir: Path) -> None:
    """The etcd snapshot and its record agree, or there is neither."""
    taken = snapshot.load(state_dir)
    if taken is not None:
        snapshot.data(state_dir, taken)


def _unpacked(archive_path: Path) -> bytes:
    """The archive's tar stream, read from a regular file only, never more than MAX_UNPACKED,
    and no header larger than MAX_HEADER read at all (tarfile reads one whole, whatever size it
    declares)."""
    try:
        handle = open_regular(archive_path)
    except NotRegularFile:
        raise _not_a_backup(archive_path, "it is not a regular file (a pipe, a device or a folder)") from None
    except OSError as error:
        raise _not_a_backup(archive_path, f"it cannot be read ({error.strerror})") from None
    with handle:
        try:
            with gzip.GzipFile(fileobj=handle) as unzipped:
                return _bounded_tar(archive_path, unzipped)
        except (OSError, EOFError, zlib.error) as error:
            raise _not_a_backup(archive_path, f"it is not a gzip'd tar ({printable(str(error))})") from None


def _bounded_tar(archive_path: Path, stream: gzip.GzipFile) -> bytes:
    """The tar stream, header by header: each member's size is read from its header before its
    body is, so a hostile size is refused unread. What does not parse is left to tarfile."""
    chunks: list[bytes] = []
    total = 0
    while True:
        header = stream.read(BLOCK)
        chunks.append(header)
        total += len(header)
        try:
            size = int(header[124:136].strip(b"\0 ") or b"0", 8) if len(header) == BLOCK else 0
        except ValueError:
            size = MAX_UNPACKED + 1  # base-256 or garbage: no backup member is that large
        if len(header) < BLOCK or header == bytes(BLOCK):
            chunks.append(stream.read(MAX_UNPACKED + 1 - total))  # the end blocks, or a truncation
            break
        if header[156:157] in HEADERS and size > MAX_HEADER:
            raise _not_a_backup(archive_path, f"it holds a header of {size} bytes; a backup's are short")
        body = -(-size // BLOCK) * BLOCK
        if total + body > MAX_UNPACKED:
            raise _not_a_backup(archive_path, f"it unpacks to more than {MAX_UNPACKED >> 20} MiB")
        chunks.append(stream.read(body))
        total += body
    data = b"".join(chunks)
    if len(data) > MAX_UNPACKED:
        raise _not_a_backup(archive_path, f"it unpacks to more than {MAX_UNPACKED >> 20} MiB")
    return data


def _check_kubeconfig(archive_path: Path, data: bytes) -> None:
    """kubectl runs a kubeconfig's `exec:` command: a forged backup could choose it."""
    try:
        users = yaml.safe_load(data)["users"]
        logins = [user["user"] for user in users]
        if not isinstance(users, list) or not all(isinstance(login, dict) for login in logins):
            raise TypeError
    except (yaml.YAMLError, RecursionError, TypeError, KeyError):
        raise _not_a_backup(
            archive_path, f"its {store.ADMIN_CONF} is not a kubeconfig picluster writes"
        ) from None
    for index, login in enumerate(map(set, logins)):
        if login != CERTIFICATE_LOGIN:
            foreign = ", ".join(printable(str(key)) for key in sorted(login - CERTIFICATE_LOGIN, key=str))
            raise _not_a_backup(
                archive_path,
                f"{store.ADMIN_CONF}: users[{index}] authenticates by {foreign or 'nothing'}, not by the "
                "client certificate picluster writes (exec: would run a program)",
            )


def _not_a_backup(path: Path, why: str) -> UserError:
    return UserError(
        f"{path} is not a usable picluster backup: {why}",
        "use another copy of the backup; nothing was restored",
    )
