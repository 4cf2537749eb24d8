# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
# cython: cdivision=True
"""Compiled hot path of the gateway: token verification, dedup, rate limits, encoding.

Import it as ``gateway._fast``. ``reference.py`` beside this file is the pure-Python
oracle: every public name here has the same signature and the same observable behaviour
(tests/unit/test_fast_*.py run one body of tests against both and hypothesis checks that
they agree). Where they disagree, the reference is presumed right.

Threading: everything here runs with the GIL held and never releases it. A KeyRing owns
OpenSSL contexts that it re-initialises for every token, and sign_receipt keeps one HMAC
context per process; the GIL is what serialises them. The gateway runs one event loop per
worker process, so this costs nothing; do not release the GIL around these calls.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy, strlen

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# The module is one compilation unit made of these parts (as asyncpg and uvloop split
# theirs); the C declarations they share are in _core.pxd. Order matters only for
# module-level statements, which run top to bottom.
include "_openssl.pxi"
include "_base64.pxi"
include "_json.pxi"
include "_keys.pxi"
include "_token.pxi"
include "_lru.pxi"
include "_encoders.pxi"


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
