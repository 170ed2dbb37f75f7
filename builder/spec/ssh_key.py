"""SSH public keys read the way sshd on the card reads them, so a key it would refuse fails here.

A line is `TYPE BASE64 [COMMENT]`; the base64 is the SSH wire format (RFC 4253 section 6.6): length-
prefixed fields, the first repeating TYPE, then the key itself. OpenSSH ignores a line it cannot
parse, and with password login disabled a card with only such lines lets nobody in.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable

from builder.errors import FieldError

MIN_RSA_BITS = 2048
"""picluster's floor; OpenSSH 9's own is 1024 bits (SSH_RSA_MINIMUM_MODULUS_SIZE), no longer safe."""

GENERATE = "generate a key with ssh-keygen -t ed25519 and paste the line of ~/.ssh/id_ed25519.pub"
RECOPY = "paste the whole line of the .pub file again, as ssh-keygen wrote it"
ED25519_BYTES = 32
EC_POINT_BYTES = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
"""An uncompressed point (0x04, x, y), the only form OpenSSH reads."""


class _Truncated(Exception):
    pass


class _Fields:
    """Reads the wire format's length-prefixed fields, in order."""

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._at = 0

    def take(self) -> bytes:
        start = self._at + 4
        if start > len(self._blob):
            raise _Truncated
        end = start + int.from_bytes(self._blob[self._at : start], "big")
        if end > len(self._blob):
            raise _Truncated
        self._at = end
        return self._blob[start:end]

    @property
    def left(self) -> int:
        return len(self._blob) - self._at


def check_authorized_key(line: str) -> str:
    """Return line if it is a public key OpenSSH would accept; raise FieldError saying why not."""
    if re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]", line):
        # one entry of the list becomes one line of authorized_keys; a line break would add another
        raise FieldError("contains a line break or control character", "paste the key as one line")
    kind, encoded, comment = [*re.split(r"[ \t]+", line.strip(" \t"), maxsplit=2), "", ""][:3]
    if kind not in _KEY_DATA:
        raise FieldError(f"{kind[:40]!r} is not an SSH public key type ({', '.join(_KEY_DATA)})", GENERATE)
    name = f"{kind} key {comment[:40]!r}" if comment else f"the {kind} key"
    try:
        fields = _Fields(base64.b64decode(encoded, validate=True))
    except binascii.Error:
        raise FieldError(f"{name} is not valid base64", RECOPY) from None
    try:
        inner = fields.take()
        if inner != kind.encode():
            shown = inner.decode(errors="replace")[:40]
            raise FieldError(f"{name} holds {shown} key data: the type at the start does not match", RECOPY)
        _KEY_DATA[kind](fields, name)
    except _Truncated:
        raise FieldError(f"{name} ends early: the key data is cut short", RECOPY) from None
    if fields.left:
        raise FieldError(
            f"{name} has {fields.left} byte{'s' if fields.left != 1 else ''} after the key", RECOPY
        )
    return line


def _ed25519(fields: _Fields, name: str) -> None:
    size = len(fields.take())
    if size != ED25519_BYTES:
        raise FieldError(f"{name} is {size} bytes long, not {ED25519_BYTES}", GENERATE)


def _rsa(fields: _Fields, name: str) -> None:
    fields.take()  # the public exponent
    bits = int.from_bytes(fields.take(), "big").bit_length()
    if bits < MIN_RSA_BITS:
        raise FieldError(
            f"{name} has {bits} bits; OpenSSH refuses RSA keys under 1024 bits and picluster "
            f"wants at least {MIN_RSA_BITS}",
            f"{GENERATE} (or use ssh-keygen -t rsa -b 4096)",
        )


def _ecdsa(curve: str) -> Callable[[_Fields, str], None]:
    def check(fields: _Fields, name: str) -> None:
        named = fields.take().decode(errors="replace")
        if named != curve:
            raise FieldError(f"{name} names the curve {named[:20]!r}, not {curve!r}", RECOPY)
        point = fields.take()
        if len(point) != EC_POINT_BYTES[curve] or point[0] != 4:
            raise FieldError(f"{name} is not a point on {curve}", GENERATE)

    return check


def _security_key(check: Callable[[_Fields, str], None]) -> Callable[[_Fields, str], None]:
    """A FIDO key's public part is the plain key followed by its application, e.g. "ssh:"."""

    def check_with_application(fields: _Fields, name: str) -> None:
        check(fields, name)
        fields.take()

    return check_with_application


_KEY_DATA: dict[str, Callable[[_Fields, str], None]] = {
    "ssh-ed25519": _ed25519,
    "ssh-rsa": _rsa,
    "ecdsa-sha2-nistp256": _ecdsa("nistp256"),
    "ecdsa-sha2-nistp384": _ecdsa("nistp384"),
    "ecdsa-sha2-nistp521": _ecdsa("nistp521"),
    "sk-ssh-ed25519@openssh.com": _security_key(_ed25519),
    "sk-ecdsa-sha2-nistp256@openssh.com": _security_key(_ecdsa("nistp256")),
}
"""The key types sshd accepts by default, each with the check of what follows the type."""
