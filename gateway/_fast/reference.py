"""Pure-Python reference of ``gateway._fast`` — the test oracle for the compiled core.

Every public name here has the same signature and the same observable behaviour as the
one in ``_core.pyx``; ``tests/unit/test_fast_*.py`` run one body of tests against both
and hypothesis checks that they agree on arbitrary input. Keep this module obvious rather
than fast: when the two disagree, this one is presumed right.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
from collections import OrderedDict
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core import event, keyset

# Why a token was refused; also the label of vote_token_rejections_total{reason}.
TOKEN_REASONS = (
    "malformed",  # not three base64url parts / header or claims not a JSON object
    "unsupported_alg",  # alg is none or not HS256/EdDSA, or a crit header is present
    "unknown_kid",  # no live key with that kid
    "alg_mismatch",  # alg does not match the kind of the key named by kid
    "bad_signature",
    "missing_claim",  # sub, aud, exp or jti absent or of the wrong type
    "wrong_audience",  # aud does not name this election
    "expired",  # now > exp + leeway
    "not_yet_valid",  # now < nbf - leeway
    "wrong_issuer",  # iss absent or not the configured issuer
    "issued_in_future",  # iat > now + leeway
    "lifetime_too_long",  # exp - iat or exp - now longer than the configured maximum
)

_ALG_FOR_KTY = {"oct": "HS256", "OKP": "EdDSA"}

# A compact token longer than this is refused as malformed before any work is done. Real
# tokens are a few hundred bytes; the bound also keeps every JSON integer in a token far
# below Python's int_max_str_digits (4300), so json.loads never refuses one for length.
MAX_TOKEN_LENGTH = 4096
# Objects/arrays nested deeper than this in a header or claims set are malformed. JSON from
# an identity service is flat; the bound keeps both implementations away from recursion
# limits (json.loads raises RecursionError near 1000, depending on the caller's stack).
MAX_JSON_DEPTH = 32


class TokenError(Exception):
    """A token was refused; ``reason`` is one of ``TOKEN_REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64url_decode(data: str | bytes) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); raises ValueError on anything else."""
    if isinstance(data, str):
        try:
            data = data.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("non-ascii base64url") from None
    if len(data) % 4 == 1 or b"=" in data:
        raise ValueError("bad base64url length or padding")
    # b64decode(altchars=b"-_") maps "-_" onto "+/" but leaves "+" and "/" valid: without
    # this a token would have several spellings that all verify.
    if b"+" in data or b"/" in data:
        raise ValueError("'+' and '/' are not base64url")
    try:
        return base64.b64decode(data + b"=" * (-len(data) % 4), altchars=b"-_", validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class KeyRing:
    """The live verification keys, built from a JWKS-style document.

    ``{"keys": [{"kid", "kty": "oct", "k"} | {"kid", "kty": "OKP", "crv": "Ed25519", "x"}]}``
    Several kids may be live at once (rotation). A key's optional ``alg`` must agree with
    its kind; unknown kinds are refused at load so a bad file fails at start, not per vote.
    """

    def __init__(self, jwks: dict[str, Any]) -> None:
        self._keys: dict[str, tuple[str, Any]] = {}
        for jwk in jwks.get("keys", []):
            kid = jwk.get("kid")
            kty = jwk.get("kty")
            if not isinstance(kid, str) or not kid:
                raise ValueError("every key needs a non-empty kid")
            if kty not in _ALG_FOR_KTY:
                raise ValueError(f"key {kid!r}: unsupported kty {kty!r}")
            alg = _ALG_FOR_KTY[kty]
            if jwk.get("alg", alg) != alg:
                raise ValueError(f"key {kid!r}: alg {jwk['alg']!r} does not fit kty {kty}")
            if kty == "oct":
                secret = b64url_decode(jwk["k"])
                if len(secret) < 32:
                    raise ValueError(f"key {kid!r}: HS256 secret shorter than 32 bytes")
                material: Any = secret
            else:
                if jwk.get("crv") != "Ed25519":
                    raise ValueError(f"key {kid!r}: only crv Ed25519 is supported")
                raw = b64url_decode(jwk["x"])
                if len(raw) != 32:
                    raise ValueError(f"key {kid!r}: Ed25519 x must be 32 bytes")
                material = Ed25519PublicKey.from_public_bytes(raw)
            self._keys[kid] = (alg, material)

    def __len__(self) -> int:
        return len(self._keys)

    def kids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, kid: str) -> tuple[str, Any] | None:
        return self._keys.get(kid)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _deeper_than(value: Any, limit: int) -> bool:
    if isinstance(value, dict):
        children: Any = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return limit == 0 or any(_deeper_than(child, limit - 1) for child in children)


def _json_object(segment: str) -> dict[str, Any]:
    """RFC 8259 JSON text in UTF-8 (RFC 7515 §5.2) whose top level is an object.

    Stricter than bare ``json.loads(bytes)``: no UTF-16/32 or BOM, no NaN/Infinity, no
    nesting deeper than MAX_JSON_DEPTH. Duplicate names: the last one wins.
    """
    try:
        value = json.loads(b64url_decode(segment).decode("utf-8"), parse_constant=_reject_constant)
        if not isinstance(value, dict) or _deeper_than(value, MAX_JSON_DEPTH):
            raise TokenError("malformed")
    except (ValueError, RecursionError):
        raise TokenError("malformed") from None
    return value


def _is_number(value: Any) -> bool:
    """A JSON number that is a finite float (1e400 and 10**400 are not)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def verify_token(
    token: str,
    keys: KeyRing,
    audience: str,
    now: float,
    leeway: float,
    issuer: str | None = None,
    max_lifetime: float | None = None,
) -> tuple[str, str, int]:
    """Verify a compact JWS and its claims; return ``(sub, jti, exp)``.

    Checks in this order, so the cheap refusals come first and an attacker learns
    nothing from timing: shape, header (alg/kid/crit), signature (constant time),
    then claims (sub, jti, exp, aud, iss unless ``issuer`` is None, then nbf and iat
    with ``leeway`` seconds of clock skew, then the lifetime: neither exp - iat nor
    exp - now may exceed ``max_lifetime`` seconds, unless it is None).
    Times are compared as floats (seconds since the epoch).
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH or token.count(".") != 2:
        raise TokenError("malformed")
    header_b64, claims_b64, sig_b64 = token.split(".")
    header = _json_object(header_b64)
    alg = header.get("alg")
    if alg not in ("HS256", "EdDSA") or "crit" in header:
        raise TokenError("unsupported_alg")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenError("unknown_kid")
    key = keys.get(kid)
    if key is None:
        raise TokenError("unknown_kid")
    key_alg, material = key
    if alg != key_alg:
        raise TokenError("alg_mismatch")
    try:
        signature = b64url_decode(sig_b64)
    except ValueError:
        raise TokenError("malformed") from None
    signing_input = f"{header_b64}.{claims_b64}".encode("ascii", "replace")
    if alg == "HS256":
        expected = hmac.new(material, signing_input, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            raise TokenError("bad_signature")
    else:
        try:
            material.verify(signature, signing_input)
        except InvalidSignature:
            raise TokenError("bad_signature") from None
    claims = _json_object(claims_b64)
    sub = claims.get("sub")
    jti = claims.get("jti")
    exp = claims.get("exp")
    aud = claims.get("aud")
    if not isinstance(sub, str) or not sub or not isinstance(jti, str) or not _is_number(exp):
        raise TokenError("missing_claim")
    if isinstance(aud, str):
        aud_ok = aud == audience
    elif isinstance(aud, list):
        aud_ok = audience in aud
    else:
        raise TokenError("missing_claim")
    if not aud_ok:
        raise TokenError("wrong_audience")
    if issuer is not None:
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise TokenError("missing_claim")
        if iss != issuer:
            raise TokenError("wrong_issuer")
    now = float(now)
    leeway = float(leeway)
    if now > float(exp) + leeway:
        raise TokenError("expired")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not _is_number(nbf):
            raise TokenError("missing_claim")
        if now < float(nbf) - leeway:
            raise TokenError("not_yet_valid")
    iat = claims.get("iat")
    if iat is not None:
        if not _is_number(iat):
            raise TokenError("missing_claim")
        if float(iat) > now + leeway:
            raise TokenError("issued_in_future")
    if max_lifetime is not None:
        if float(exp) - now > float(max_lifetime) + leeway:
            raise TokenError("lifetime_too_long")
        if iat is not None and float(exp) - float(iat) > float(max_lifetime):
            raise TokenError("lifetime_too_long")
    return sub, jti, int(exp)


class IdempotencyCache:
    """Bounded map ``vote_id -> (content digest, first answer)``, least recently used out.

    A retry with the same digest gets the stored answer back; the same vote_id with
    another digest is a conflict (409). Bounded so a flood of fresh vote_ids costs a
    fixed amount of memory; an evicted vote_id is still deduplicated by the processor.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._entries: OrderedDict[str, tuple[bytes, object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, vote_id: str) -> tuple[bytes, object] | None:
        entry = self._entries.get(vote_id)
        if entry is not None:
            self._entries.move_to_end(vote_id)
        return entry

    def put(self, vote_id: str, digest: bytes, answer: object) -> None:
        """Store the first answer for vote_id; a later put for the same id is ignored."""
        if vote_id in self._entries:
            return
        self._entries[vote_id] = (digest, answer)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def discard(self, vote_id: str) -> None:
        self._entries.pop(vote_id, None)


class RateLimiter:
    """Token buckets keyed by a string (client address or voter id), bounded in count.

    Each key may spend ``burst`` requests at once and regains ``rate`` per second.
    ``acquire`` returns 0.0 when the request may go ahead, otherwise the seconds until
    one token is back (the ``Retry-After``). Least recently seen keys are dropped past
    ``capacity``: a dropped key starts again with a full bucket, which errs on letting a
    voter in rather than locking one out.
    """

    def __init__(self, rate: float, burst: float, capacity: int) -> None:
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate must be > 0, burst >= 1, capacity >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.capacity = capacity
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def acquire(self, key: str, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = [self.burst, now]
            self._buckets[key] = bucket
            if len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            elapsed = now - bucket[1]
            if elapsed > 0:
                bucket[0] = min(self.burst, bucket[0] + elapsed * self.rate)
                bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / self.rate


def _msgpack_str(value: str) -> bytes:
    data = value.encode("utf-8")
    n = len(data)
    if n < 32:
        return bytes((0xA0 | n,)) + data
    if n < 0x100:
        return b"\xd9" + bytes((n,)) + data
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + data
    return b"\xdb" + n.to_bytes(4, "big") + data


def _msgpack_uint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    if value < 0x100:
        return b"\xcc" + bytes((value,))
    if value < 0x10000:
        return b"\xcd" + value.to_bytes(2, "big")
    if value < 0x100000000:
        return b"\xce" + value.to_bytes(4, "big")
    return b"\xcf" + value.to_bytes(8, "big")


class EventSigner:
    """One event key (``core.keyset``): its kid and its secret."""

    def __init__(self, kid: str, secret: bytes) -> None:
        problem = keyset.kid_problem(kid)
        if problem is not None:
            raise ValueError(problem)
        if len(secret) < keyset.MIN_SECRET_BYTES:
            raise ValueError(f"event key {kid!r}: shorter than {keyset.MIN_SECRET_BYTES} bytes")
        self.kid = kid
        self._secret = bytes(secret)


def encode_event(
    vote_id: str,
    election_id: str,
    voter_id: str,
    choice: str,
    received_at_us: int,
    gateway_id: str,
    signer: EventSigner,
) -> bytes:
    """The signed msgpack event of docs/ARCHITECTURE.md (Event schema), byte-identical
    to ``core.event.seal``: the MAC under ``signer``'s key covers every byte before it.

    Raises ValueError, with ``core.event``'s words, for a field the processor would refuse
    as malformed, so the gateway never acknowledges a vote that cannot be counted.
    """
    fields = (vote_id, election_id, voter_id, choice, gateway_id)
    for name, value in zip(event.TEXT_FIELDS, fields, strict=True):
        problem = event.field_problem(name, value)
        if problem is not None:
            raise ValueError(problem)
    problem = event.received_at_problem(received_at_us)
    if problem is not None:
        raise ValueError(problem)
    body = b"".join(
        (
            b"\x89",
            _msgpack_str("v"),
            b"\x02",
            _msgpack_str("vote_id"),
            _msgpack_str(vote_id),
            _msgpack_str("election_id"),
            _msgpack_str(election_id),
            _msgpack_str("voter_id"),
            _msgpack_str(voter_id),
            _msgpack_str("choice"),
            _msgpack_str(choice),
            _msgpack_str("received_at_us"),
            _msgpack_uint(received_at_us),
            _msgpack_str("gateway_id"),
            _msgpack_str(gateway_id),
            _msgpack_str("kid"),
            _msgpack_str(signer.kid),
            _msgpack_str("mac"),
            b"\xc4\x20",
        )
    )
    return body + hmac.new(signer._secret, body, hashlib.sha256).digest()


def sign_receipt(
    key: bytes,
    vote_id: str,
    election_id: str,
    voter_id: str,
    choice: str,
    received_at_us: int,
) -> str:
    """``r1.<base64url HMAC-SHA256>`` over the vote's identity, fields joined by 0x1f.

    0x1f (unit separator) cannot occur in any field the gateway accepts, so two
    different votes cannot share a signed message.
    """
    message = "\x1f".join((election_id, vote_id, voter_id, choice, str(received_at_us))).encode(
        "utf-8"
    )
    return "r1." + b64url_encode(hmac.new(key, message, hashlib.sha256).digest())
