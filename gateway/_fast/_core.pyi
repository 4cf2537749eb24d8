"""Types of the compiled module gateway._fast._core (implemented in _core.pyx).

Import these names from ``gateway._fast``; ``gateway._fast.reference`` has the same API.
"""

from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

TOKEN_REASONS: Final[tuple[str, ...]]
OPENSSL_VERSION_TEXT: Final[str]

class TokenError(Exception):
    """A token was refused; ``reason`` is one of ``TOKEN_REASONS``."""

    reason: str
    def __init__(self, reason: str) -> None: ...

def b64url_decode(data: str | bytes | bytearray) -> bytes:
    """Strict unpadded base64url (RFC 7515 §2); raises ValueError on anything else."""

def b64url_encode(data: bytes | bytearray | memoryview) -> str: ...

class KeyRing:
    """The live verification keys, built from a JWKS-style document.

    Raises ValueError (or KeyError for a missing ``k``/``x``) on a key it cannot use.
    """

    def __init__(self, jwks: dict[str, Any]) -> None: ...
    def __len__(self) -> int: ...
    def kids(self) -> list[str]: ...
    def get(self, kid: str) -> tuple[str, bytes | Ed25519PublicKey] | None: ...

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

    ``iss`` must equal ``issuer`` unless it is None; neither exp - iat nor exp - now may
    exceed ``max_lifetime`` seconds unless it is None. Raises TokenError with one of
    TOKEN_REASONS.
    """

class IdempotencyCache:
    """Bounded map ``vote_id -> (content digest, first answer)``, least recently used out."""

    @property
    def capacity(self) -> int: ...
    def __init__(self, capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def get(self, vote_id: str) -> tuple[bytes, Any] | None: ...
    def put(self, vote_id: str, digest: bytes, answer: object) -> None: ...
    def discard(self, vote_id: str) -> None: ...

class RateLimiter:
    """Token buckets keyed by a string, bounded in count; ``acquire`` returns Retry-After."""

    @property
    def rate(self) -> float: ...
    @property
    def burst(self) -> float: ...
    @property
    def capacity(self) -> int: ...
    def __init__(self, rate: float, burst: float, capacity: int) -> None: ...
    def __len__(self) -> int: ...
    def acquire(self, key: str, now: float) -> float: ...

class EventSigner:
    """One event key (``core.keyset``): its kid and a keyed HMAC-SHA256 context."""

    @property
    def kid(self) -> str: ...
    def __init__(self, kid: str, secret: bytes) -> None: ...

def encode_event(
    vote_id: str,
    election_id: str,
    voter_id: str,
    choice: str,
    received_at_us: int,
    gateway_id: str,
    signer: EventSigner,
) -> bytes:
    """The signed msgpack event of docs/ARCHITECTURE.md (Event schema), byte-identical to
    ``core.event.seal``. Raises ValueError, in core.event's words, for a field the
    processor would refuse as malformed."""

def sign_receipt(
    key: bytes,
    vote_id: str,
    election_id: str,
    voter_id: str,
    choice: str,
    received_at_us: int,
) -> str:
    """``r1.<base64url HMAC-SHA256>`` over the vote's identity, fields joined by 0x1f."""

__all__ = [
    "OPENSSL_VERSION_TEXT",
    "TOKEN_REASONS",
    "EventSigner",
    "IdempotencyCache",
    "KeyRing",
    "RateLimiter",
    "TokenError",
    "b64url_decode",
    "b64url_encode",
    "encode_event",
    "sign_receipt",
    "verify_token",
]
