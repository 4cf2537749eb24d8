"""Symmetric key sets with ids and a lifecycle, read from a JSON file (0600).

The event keys (the gateway signs each event, the processor checks it) and the receipt
keys use this one format, which ``python -m gateway.admin init-keys`` writes::

    {"keys": [{"kid": "ev-1", "k": "<base64url, >= 32 bytes>", "status": "active"}, ...]}

``status`` is ``active`` (may sign; the newest active key signs) or ``retired`` (no longer
signs, still verifies what it signed). A revoked key is removed from the file: nothing it
signed verifies any more. ``FileWatch`` tells a service when the file changed, so keys are
reloaded without a restart (docs/ARCHITECTURE.md, Trust boundaries).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass

ACTIVE = "active"
RETIRED = "retired"
STATUSES = (ACTIVE, RETIRED)
# HMAC-SHA256 keys shorter than the digest weaken it; refuse them at load.
MIN_SECRET_BYTES = 32


class KeyFileError(ValueError):
    """A key file that cannot be used: the service refuses to start (or keeps its keys)."""


@dataclass(frozen=True, slots=True)
class Key:
    kid: str
    secret: bytes
    status: str


@dataclass(frozen=True, slots=True)
class KeySet:
    """The keys of one file, in file order (the last active key is the newest)."""

    keys: tuple[Key, ...]

    def get(self, kid: str) -> bytes | None:
        """The secret of ``kid`` if it may verify (active or retired), else None."""
        for key in self.keys:
            if key.kid == kid:
                return key.secret
        return None

    def signing(self) -> Key:
        """The newest active key."""
        for key in reversed(self.keys):
            if key.status == ACTIVE:
                return key
        raise KeyFileError("no active key")


def kid_problem(kid: object) -> str | None:
    """Why ``kid`` cannot name a key, or None: 1-64 printable ASCII characters without
    '.' (receipts use '.' to separate the kid from the signature)."""
    if (
        not isinstance(kid, str)
        or not 0 < len(kid) <= 64
        or not kid.isascii()
        or not kid.isprintable()
        or "." in kid
    ):
        return f"a kid is 1-64 printable ASCII characters without '.', not {kid!r:.80}"
    return None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse(document: object, what: str = "key file") -> KeySet:
    """A KeySet from the decoded JSON document; KeyFileError names what is wrong."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f"{what}: expected {{'keys': [...]}}")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict):
            raise KeyFileError(f"{what}: every key is an object")
        kid, k, status = entry.get("kid"), entry.get("k"), entry.get("status", ACTIVE)
        problem = kid_problem(kid)
        if problem is not None:
            raise KeyFileError(f"{what}: {problem}")
        if status not in STATUSES:
            raise KeyFileError(f"{what}: key {kid!r} has unknown status {status!r}")
        if any(key.kid == kid for key in keys):
            raise KeyFileError(f"{what}: kid {kid!r} appears twice")
        try:
            secret = base64.urlsafe_b64decode(str(k) + "=" * (-len(str(k)) % 4))
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{what}: key {kid!r} is not base64url") from None
        if not isinstance(k, str) or len(secret) < MIN_SECRET_BYTES:
            raise KeyFileError(f"{what}: key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes")
        keys.append(Key(kid, secret, status))
    return KeySet(tuple(keys))


def load(path: str) -> KeySet:
    """The key set in ``path``; KeyFileError if it is missing or unusable."""
    try:
        with open(path, "rb") as fh:
            document = json.load(fh)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} not found: run `python -m gateway.admin init-keys` first"
        ) from None
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    return parse(document, path)


def read_secret(path: str) -> bytes:
    """A raw secret key file (the receipt key); KeyFileError if missing or too short."""
    try:
        with open(path, "rb") as fh:
            secret = fh.read()
    except OSError as exc:
        raise KeyFileError(f"{path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"{path}: the key is shorter than {MIN_SECRET_BYTES} bytes"
            " (HMAC-SHA256 needs at least 32)"
        )
    return secret


def key_id(prefix: str, secret: bytes) -> str:
    """An id for a raw secret key, derived from it (as a JWK thumbprint is): a receipt names
    the key that signed it without a key file of ids. Ten base64url characters of a hash
    of the secret reveal nothing a verifier could use to forge."""
    digest = hashlib.sha256(b"vote key id\x00" + secret).digest()
    return f"{prefix}-{b64url(digest)[:10]}"


class FileWatch:
    """Whether a file changed since the last look (inode, size and mtime)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return True
