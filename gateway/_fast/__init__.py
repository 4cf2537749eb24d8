"""The gateway's compiled hot path: token verification, dedup, rate limits, encoding.

The names below are the public surface; they are implemented in the private extension
``gateway._fast._core`` (Cython over libcrypto), typed in ``_core.pyi``. The pure-Python
``gateway._fast.reference`` has the same API and is the test oracle, never a fallback:
without the compiled extension this package does not import.
"""

try:
    from gateway._fast._core import (
        OPENSSL_VERSION_TEXT,
        TOKEN_REASONS,
        EventSigner,
        IdempotencyCache,
        KeyRing,
        RateLimiter,
        TokenError,
        b64url_decode,
        b64url_encode,
        encode_event,
        sign_receipt,
        verify_token,
    )
except ImportError as exc:  # pragma: no cover - depends on the build
    raise ImportError(
        "gateway._fast: the compiled extension gateway._fast._core is missing or broken "
        f"({exc}). Build it from the repository root with `pip install -e .` "
        "(or `python setup.py build_ext --inplace`); it needs Cython and libssl-dev."
    ) from exc

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
