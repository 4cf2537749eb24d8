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


cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyBytes_Check(object o)
    bint PyUnicode_IS_ASCII(object o)
    void *PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int PyUnicode_READY(object o) except -1
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    const char *PyUnicode_AsUTF8AndSize(object o, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    object PyUnicode_AsEncodedString(object o, const char *encoding, const char *errors)
    object PyLong_FromString(const char *s, char **pend, int base)
    object PyLong_FromDouble(double v)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    unsigned long long PyLong_AsUnsignedLongLong(object o) except? -1
    double PyOS_string_to_double(const char *s, char **endptr, PyObject *overflow) except? -1.0
    PyObject *PyDict_GetItemWithError(object d, object key) except? NULL
    int PyDict_SetItem(object d, object key, object value) except -1
    int PyDict_DelItem(object d, object key) except -1
    int PyDict_Contains(object d, object key) except -1
    bint Py_IS_FINITE(double x)


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
)

# Indexes into TOKEN_REASONS, as returned by _verify.
cdef enum:
    MALFORMED = 0
    UNSUPPORTED_ALG = 1
    UNKNOWN_KID = 2
    ALG_MISMATCH = 3
    BAD_SIGNATURE = 4
    MISSING_CLAIM = 5
    WRONG_AUDIENCE = 6
    EXPIRED = 7
    NOT_YET_VALID = 8


class TokenError(Exception):
    """A token was refused; ``reason`` is one of ``TOKEN_REASONS``."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


_ALG_FOR_KTY = {"oct": "HS256", "OKP": "EdDSA"}


# ---------------------------------------------------------------------------------------
# OpenSSL

cdef EVP_MAC *_HMAC = EVP_MAC_fetch(NULL, b"HMAC", NULL)
if _HMAC == NULL:
    raise ImportError("gateway._fast: libcrypto has no HMAC (EVP_MAC_fetch failed)")

#: The libcrypto this module is linked against at run time, e.g. "OpenSSL 3.0.13 30 Jan 2024".
OPENSSL_VERSION_TEXT = OpenSSL_version(OPENSSL_VERSION).decode()


cdef EVP_MAC_CTX *_hmac_sha256_new(const unsigned char *key, size_t keylen) noexcept nogil:
    """A new HMAC-SHA256 context keyed with ``key``, or NULL."""
    cdef EVP_MAC_CTX *ctx = EVP_MAC_CTX_new(_HMAC)
    cdef OSSL_PARAM params[2]
    if ctx == NULL:
        return NULL
    params[0] = OSSL_PARAM_construct_utf8_string(b"digest", <char *>b"SHA256", 0)
    params[1] = OSSL_PARAM_construct_end()
    if EVP_MAC_init(ctx, key, keylen, params) != 1:
        EVP_MAC_CTX_free(ctx)
        return NULL
    return ctx


cdef int _hmac_sha256(EVP_MAC_CTX *ctx, const unsigned char *data, size_t n,
                      unsigned char *out) except -1:
    """out = HMAC-SHA256(the context's key, data), re-using the keyed context."""
    cdef size_t outl = 0
    if (EVP_MAC_init(ctx, NULL, 0, NULL) != 1
            or EVP_MAC_update(ctx, data, n) != 1
            or EVP_MAC_final(ctx, out, &outl, SHA256_LEN) != 1
            or outl != SHA256_LEN):
        ERR_clear_error()
        raise RuntimeError("libcrypto HMAC-SHA256 failed")
    return 0


# ---------------------------------------------------------------------------------------
# base64url

cdef const char *_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
cdef signed char _B64URL_VALUE[256]


cdef void _init_b64() noexcept:
    cdef int i
    for i in range(256):
        _B64URL_VALUE[i] = -1
    for i in range(64):
        _B64URL_VALUE[<unsigned char>_B64URL[i]] = i


_init_b64()


cdef Py_ssize_t _b64url_decode(const unsigned char *s, Py_ssize_t n,
                               unsigned char *out) noexcept nogil:
    """Strict unpadded base64url into ``out`` (room for n * 3 // 4); its length, or -1.

    Like reference.b64url_decode: the alphabet A-Z a-z 0-9 - _ only, no padding, a length
    of 1 mod 4 refused, and (as Python's binascii does) the unused low bits of the last
    character are ignored rather than required to be zero.
    """
    cdef Py_ssize_t i = 0, o = 0
    cdef int a, b, c, d
    if n % 4 == 1:
        return -1
    while i + 4 <= n:
        a = _B64URL_VALUE[s[i]]
        b = _B64URL_VALUE[s[i + 1]]
        c = _B64URL_VALUE[s[i + 2]]
        d = _B64URL_VALUE[s[i + 3]]
        if (a | b | c | d) < 0:
            return -1
        out[o] = <unsigned char>((a << 2) | (b >> 4))
        out[o + 1] = <unsigned char>((b << 4) | (c >> 2))
        out[o + 2] = <unsigned char>((c << 6) | d)
        i += 4
        o += 3
    if n - i >= 2:
        a = _B64URL_VALUE[s[i]]
        b = _B64URL_VALUE[s[i + 1]]
        if (a | b) < 0:
            return -1
        out[o] = <unsigned char>((a << 2) | (b >> 4))
        o += 1
        if n - i == 3:
            c = _B64URL_VALUE[s[i + 2]]
            if c < 0:
                return -1
            out[o] = <unsigned char>((b << 4) | (c >> 2))
            o += 1
    return o


cdef void _b64url_encode(const unsigned char *s, Py_ssize_t n, unsigned char *out) noexcept nogil:
    """Unpadded base64url of s into out (room for (4 * n + 2) // 3)."""
    cdef Py_ssize_t i = 0, o = 0
    cdef unsigned int v
    while i + 3 <= n:
        v = (<unsigned int>s[i] << 16) | (<unsigned int>s[i + 1] << 8) | s[i + 2]
        out[o] = _B64URL[v >> 18]
        out[o + 1] = _B64URL[(v >> 12) & 63]
        out[o + 2] = _B64URL[(v >> 6) & 63]
        out[o + 3] = _B64URL[v & 63]
        i += 3
        o += 4
    if n - i == 1:
        v = <unsigned int>s[i] << 16
        out[o] = _B64URL[v >> 18]
        out[o + 1] = _B64URL[(v >> 12) & 63]
    elif n - i == 2:
        v = (<unsigned int>s[i] << 16) | (<unsigned int>s[i + 1] << 8)
        out[o] = _B64URL[v >> 18]
        out[o + 1] = _B64URL[(v >> 12) & 63]
        out[o + 2] = _B64URL[(v >> 6) & 63]


cdef inline Py_ssize_t _b64url_encoded_len(Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t rem = n % 3
    return (n // 3) * 4 + (rem + 1 if rem else 0)


def b64url_decode(data):
    """Strict unpadded base64url (RFC 7515 §2); raises ValueError on anything else."""
    cdef const unsigned char *s
    cdef Py_ssize_t n
    cdef Py_buffer view
    if PyUnicode_Check(data):
        PyUnicode_READY(data)
        if not PyUnicode_IS_ASCII(data):
            raise ValueError("non-ascii base64url")
        s = <const unsigned char *>PyUnicode_DATA(data)
        n = PyUnicode_GET_LENGTH(data)
    elif PyBytes_Check(data) or isinstance(data, bytearray):
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return _b64url_decode_buffer(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
    else:
        raise TypeError(f"b64url_decode() wants str or bytes, not {type(data).__name__}")
    return _b64url_decode_buffer(s, n)


cdef bytes _b64url_decode_buffer(const unsigned char *s, Py_ssize_t n):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n * 3 // 4)
    cdef Py_ssize_t m = _b64url_decode(s, n, <unsigned char *>PyBytes_AS_STRING(out))
    if m < 0:
        raise ValueError("invalid base64url")
    if m == PyBytes_GET_SIZE(out):
        return out
    return out[:m]


def b64url_encode(data):
    """Unpadded base64url of a bytes-like object, as str."""
    cdef Py_buffer view
    cdef object out
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyUnicode_New(_b64url_encoded_len(view.len), 127)
        _b64url_encode(<const unsigned char *>view.buf, view.len,
                       <unsigned char *>PyUnicode_DATA(out))
        return out
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------------------------------
# JSON: a strict, allocation-free scanner for the header and claims objects.
#
# It accepts exactly what reference._json_object accepts: UTF-8 JSON text (RFC 8259) whose
# top level is an object, no NaN/Infinity, at most MAX_JSON_DEPTH levels of nesting,
# duplicate names allowed (the last one wins). It only records where the members it was
# asked for are; strings are compared as WTF-8 (UTF-8 that lets lone surrogates through,
# as json.loads does with "\ud800"), which is how KeyRing stores its kids.

cdef inline bint _is_ws(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13


cdef inline void _skip_ws(JParser *p) noexcept nogil:
    while p.i < p.n and _is_ws(p.s[p.i]):
        p.i += 1


cdef inline int _hex(unsigned char c) noexcept nogil:
    if 48 <= c <= 57:
        return c - 48
    if 97 <= c <= 102:
        return c - 87
    if 65 <= c <= 70:
        return c - 55
    return -1


cdef inline int _hex4(const unsigned char *s) noexcept nogil:
    """The value of four hex digits, or -1."""
    cdef int a = _hex(s[0]), b = _hex(s[1]), c = _hex(s[2]), d = _hex(s[3])
    if (a | b | c | d) < 0:
        return -1
    return (a << 12) | (b << 8) | (c << 4) | d


cdef inline int _utf8_seq(const unsigned char *s, Py_ssize_t avail) noexcept nogil:
    """Length of the valid UTF-8 sequence starting with a byte >= 0x80, or 0.

    Valid means what Python's strict decoder accepts: no overlong forms, no surrogates,
    nothing above U+10FFFF.
    """
    cdef unsigned char c = s[0], lo = 0x80, hi = 0xBF
    if c < 0xC2:
        return 0
    if c < 0xE0:
        if avail >= 2 and 0x80 <= s[1] <= 0xBF:
            return 2
        return 0
    if c < 0xF0:
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
        if avail >= 3 and lo <= s[1] <= hi and 0x80 <= s[2] <= 0xBF:
            return 3
        return 0
    if c < 0xF5:
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
        if (avail >= 4 and lo <= s[1] <= hi and 0x80 <= s[2] <= 0xBF
                and 0x80 <= s[3] <= 0xBF):
            return 4
        return 0
    return 0


cdef int _string(JParser *p, JValue *v) noexcept nogil:
    """Scan the string whose opening quote is at p.i; 0, or -1 if it is not valid."""
    cdef const unsigned char *s = p.s
    cdef Py_ssize_t n = p.n, i = p.i + 1
    cdef unsigned char c, e
    cdef int k
    cdef bint escaped = False
    v.start = i
    while True:
        if i >= n:
            return -1
        c = s[i]
        if c == 34:  # "
            break
        if c == 92:  # backslash
            escaped = True
            if i + 1 >= n:
                return -1
            e = s[i + 1]
            if e == 117:  # u: four hex digits follow
                if i + 5 >= n or _hex4(s + i + 2) < 0:
                    return -1
                i += 6
            elif (e == 34 or e == 92 or e == 47 or e == 98 or e == 102 or e == 110
                    or e == 114 or e == 116):
                i += 2
            else:
                return -1
        elif c < 0x20:
            return -1  # a raw control character (json.loads is strict about these)
        elif c < 0x80:
            i += 1
        else:
            k = _utf8_seq(s + i, n - i)
            if k == 0:
                return -1
            i += k
    v.kind = J_STRING
    v.end = i
    v.escaped = escaped
    p.i = i + 1
    return 0


cdef inline Py_ssize_t _put_wtf8(unsigned char *out, unsigned int cp) noexcept nogil:
    if cp < 0x80:
        out[0] = <unsigned char>cp
        return 1
    if cp < 0x800:
        out[0] = <unsigned char>(0xC0 | (cp >> 6))
        out[1] = <unsigned char>(0x80 | (cp & 0x3F))
        return 2
    if cp < 0x10000:
        out[0] = <unsigned char>(0xE0 | (cp >> 12))
        out[1] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
        out[2] = <unsigned char>(0x80 | (cp & 0x3F))
        return 3
    out[0] = <unsigned char>(0xF0 | (cp >> 18))
    out[1] = <unsigned char>(0x80 | ((cp >> 12) & 0x3F))
    out[2] = <unsigned char>(0x80 | ((cp >> 6) & 0x3F))
    out[3] = <unsigned char>(0x80 | (cp & 0x3F))
    return 4


cdef Py_ssize_t _unescape(const unsigned char *s, Py_ssize_t i, Py_ssize_t end,
                          unsigned char *out) noexcept nogil:
    """Decode the body s[i:end] of a string _string accepted into WTF-8; its length.

    As json.loads: a \\u escape of a high surrogate directly followed by one of a low
    surrogate is one code point; any other surrogate escape stays a lone surrogate.
    The output is never longer than the input.
    """
    cdef Py_ssize_t o = 0
    cdef unsigned char c, e
    cdef int cp, cp2
    while i < end:
        c = s[i]
        if c != 92:
            out[o] = c
            o += 1
            i += 1
            continue
        e = s[i + 1]
        if e == 117:
            cp = _hex4(s + i + 2)
            i += 6
            if (0xD800 <= cp <= 0xDBFF and i + 6 <= end and s[i] == 92
                    and s[i + 1] == 117):
                cp2 = _hex4(s + i + 2)
                if 0xDC00 <= cp2 <= 0xDFFF:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (cp2 - 0xDC00)
                    i += 6
            o += _put_wtf8(out + o, <unsigned int>cp)
            continue
        if e == 98:
            c = 8
        elif e == 102:
            c = 12
        elif e == 110:
            c = 10
        elif e == 114:
            c = 13
        elif e == 116:
            c = 9
        else:
            c = e  # " \ /
        out[o] = c
        o += 1
        i += 2
    return o


cdef bint _str_eq(JParser *p, const JValue *v, const unsigned char *t,
                  Py_ssize_t tn) noexcept nogil:
    """Whether the string v equals the WTF-8 text t."""
    cdef Py_ssize_t m
    if not v.escaped:
        return v.end - v.start == tn and memcmp(p.s + v.start, t, tn) == 0
    if v.end - v.start < tn:
        return False  # unescaping only shrinks
    m = _unescape(p.s, v.start, v.end, p.scratch)
    return m == tn and memcmp(p.scratch, t, tn) == 0


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef int _number(JParser *p, JValue *v) noexcept nogil:
    """Scan -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? at p.i (json's grammar)."""
    cdef const unsigned char *s = p.s
    cdef Py_ssize_t n = p.n, i = p.i, j
    v.start = i
    v.kind = J_INT
    if s[i] == 45:  # -
        i += 1
        if i >= n:
            return -1
    if s[i] == 48:
        i += 1
    elif 49 <= s[i] <= 57:
        i += 1
        while i < n and _is_digit(s[i]):
            i += 1
    else:
        return -1
    if i + 1 < n and s[i] == 46 and _is_digit(s[i + 1]):
        v.kind = J_FLOAT
        i += 2
        while i < n and _is_digit(s[i]):
            i += 1
    if i < n and (s[i] == 101 or s[i] == 69):
        j = i + 1
        if j < n and (s[j] == 43 or s[j] == 45):
            j += 1
        if j < n and _is_digit(s[j]):
            v.kind = J_FLOAT
            i = j + 1
            while i < n and _is_digit(s[i]):
                i += 1
        # else the number ends before the "e", which the caller then refuses
    v.end = i
    p.i = i
    return 0


cdef inline int _literal(JParser *p, const char *word, Py_ssize_t n) noexcept nogil:
    if p.i + n > p.n or memcmp(p.s + p.i, word, n) != 0:
        return -1
    p.i += n
    return 0


cdef int _value(JParser *p, JValue *v, int depth, bint match_aud) noexcept nogil:
    """Scan one value at p.i inside a container at ``depth``."""
    cdef unsigned char c
    if p.i >= p.n:
        return -1
    c = p.s[p.i]
    if c == 34:
        return _string(p, v)
    if c == 123:
        v.kind = J_OBJECT
        return _object(p, depth + 1, NULL, 0, NULL, -1)
    if c == 91:
        v.kind = J_ARRAY
        return _array(p, depth + 1, v, match_aud)
    if c == 110:
        v.kind = J_NULL
        return _literal(p, b"null", 4)
    if c == 116:
        v.kind = J_BOOL
        return _literal(p, b"true", 4)
    if c == 102:
        v.kind = J_BOOL
        return _literal(p, b"false", 5)
    if c == 45 or _is_digit(c):
        return _number(p, v)
    return -1  # including NaN, Infinity, -Infinity


cdef int _array(JParser *p, int depth, JValue *v, bint match_aud) noexcept nogil:
    cdef JValue elem
    if depth > MAX_JSON_DEPTH:
        return -1
    v.has_audience = False
    p.i += 1
    _skip_ws(p)
    if p.i < p.n and p.s[p.i] == 93:
        p.i += 1
        return 0
    while True:
        elem.kind = J_ABSENT
        elem.escaped = False
        if _value(p, &elem, depth, False) < 0:
            return -1
        if (match_aud and elem.kind == J_STRING
                and _str_eq(p, &elem, p.aud, p.aud_len)):
            v.has_audience = True
        _skip_ws(p)
        if p.i >= p.n:
            return -1
        if p.s[p.i] == 93:
            p.i += 1
            return 0
        if p.s[p.i] != 44:
            return -1
        p.i += 1
        _skip_ws(p)


cdef int _object(JParser *p, int depth, const char **names, int count, JValue *slots,
                 int aud_slot) noexcept nogil:
    """Scan an object; the value of a member named names[k] is recorded in slots[k]."""
    cdef JValue key, val
    cdef int k, slot
    if depth > MAX_JSON_DEPTH:
        return -1
    p.i += 1
    _skip_ws(p)
    if p.i < p.n and p.s[p.i] == 125:
        p.i += 1
        return 0
    while True:
        if p.i >= p.n or p.s[p.i] != 34:
            return -1
        if _string(p, &key) < 0:
            return -1
        _skip_ws(p)
        if p.i >= p.n or p.s[p.i] != 58:
            return -1
        p.i += 1
        _skip_ws(p)
        slot = -1
        for k in range(count):
            if _str_eq(p, &key, <const unsigned char *>names[k], strlen(names[k])):
                slot = k
                break
        val.kind = J_ABSENT
        val.escaped = False
        val.has_audience = False
        if _value(p, &val, depth, slot >= 0 and slot == aud_slot) < 0:
            return -1
        if slot >= 0:
            slots[slot] = val  # a later duplicate overwrites: the last one wins
        _skip_ws(p)
        if p.i >= p.n:
            return -1
        if p.s[p.i] == 125:
            p.i += 1
            return 0
        if p.s[p.i] != 44:
            return -1
        p.i += 1
        _skip_ws(p)


cdef int _document(JParser *p, const char **names, int count, JValue *slots,
                   int aud_slot) noexcept nogil:
    """Scan a whole JSON text that must be one object; 0, or -1 if malformed."""
    cdef int k
    for k in range(count):
        slots[k].kind = J_ABSENT
    _skip_ws(p)
    if p.i >= p.n or p.s[p.i] != 123:
        return -1
    if _object(p, 1, names, count, slots, aud_slot) < 0:
        return -1
    _skip_ws(p)
    return 0 if p.i == p.n else -1


cdef const char *_HEADER_NAMES[3]
_HEADER_NAMES[0] = b"alg"
_HEADER_NAMES[1] = b"kid"
_HEADER_NAMES[2] = b"crit"
cdef enum:
    H_ALG = 0
    H_KID = 1
    H_CRIT = 2

cdef const char *_CLAIM_NAMES[5]
_CLAIM_NAMES[0] = b"sub"
_CLAIM_NAMES[1] = b"jti"
_CLAIM_NAMES[2] = b"exp"
_CLAIM_NAMES[3] = b"aud"
_CLAIM_NAMES[4] = b"nbf"
cdef enum:
    C_SUB = 0
    C_JTI = 1
    C_EXP = 2
    C_AUD = 3
    C_NBF = 4


cdef object _str_value(JParser *p, const JValue *v):
    """The Python str of a scanned JSON string."""
    cdef Py_ssize_t m
    if not v.escaped:
        return PyUnicode_DecodeUTF8(<const char *>p.s + v.start, v.end - v.start, NULL)
    m = _unescape(p.s, v.start, v.end, p.scratch)
    return PyUnicode_DecodeUTF8(<const char *>p.scratch, m, b"surrogatepass")


cdef inline int64_t _small_int(const unsigned char *s, Py_ssize_t n) noexcept nogil:
    """The value of an integer literal of at most 18 characters (it fits int64)."""
    cdef int64_t acc = 0
    cdef Py_ssize_t i
    for i in range(1 if s[0] == 45 else 0, n):
        acc = acc * 10 + (s[i] - 48)
    return -acc if s[0] == 45 else acc


cdef bint _number_value(JParser *p, const JValue *v, double *out) except -1:
    """float(the number v) in out; False unless v is a number and that is finite."""
    cdef Py_ssize_t n = v.end - v.start
    cdef const unsigned char *s = p.s + v.start
    cdef double x
    if v.kind == J_INT and n <= 18:
        # int64 -> double rounds to nearest even, exactly as float(int) does
        out[0] = <double>_small_int(s, n)
        return True
    if v.kind != J_INT and v.kind != J_FLOAT:
        return False
    # Correctly rounded like float(int(text)) and float(text); huge values become inf.
    memcpy(p.scratch, s, n)
    p.scratch[n] = 0
    x = PyOS_string_to_double(<const char *>p.scratch, NULL, NULL)
    out[0] = x
    return Py_IS_FINITE(x)


cdef object _exp_value(JParser *p, const JValue *v, double value):
    """int(exp) for the number v whose float value is ``value``."""
    cdef Py_ssize_t n = v.end - v.start
    if v.kind == J_FLOAT:
        return PyLong_FromDouble(value)
    if n <= 18:
        return PyLong_FromLongLong(_small_int(p.s + v.start, n))
    memcpy(p.scratch, p.s + v.start, n)
    p.scratch[n] = 0
    return PyLong_FromString(<const char *>p.scratch, NULL, 10)


# ---------------------------------------------------------------------------------------
# Keys

cdef class KeyRing:
    """The live verification keys, built from a JWKS-style document.

    ``{"keys": [{"kid", "kty": "oct", "k"} | {"kid", "kty": "OKP", "crv": "Ed25519", "x"}]}``
    Several kids may be live at once (rotation). A key's optional ``alg`` must agree with
    its kind; unknown kinds are refused at load so a bad file fails at start, not per vote.

    Each key holds a ready OpenSSL context (a keyed HMAC, or an Ed25519 EVP_PKEY with its
    own verify context) that verify_token re-initialises for every token. Not thread-safe
    without the GIL; build one per worker process.
    """

    def __cinit__(self):
        self._keys = {}
        self._kid_bytes = []
        self._ring = NULL
        self._count = 0

    def __init__(self, jwks):
        keys = {}
        raw = {}
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
                material = secret
                raw[kid] = secret
            else:
                if jwk.get("crv") != "Ed25519":
                    raise ValueError(f"key {kid!r}: only crv Ed25519 is supported")
                x = b64url_decode(jwk["x"])
                if len(x) != 32:
                    raise ValueError(f"key {kid!r}: Ed25519 x must be 32 bytes")
                material = Ed25519PublicKey.from_public_bytes(x)
                raw[kid] = x
            keys[kid] = (alg, material)
        self._build(keys, raw)

    cdef _build(self, dict keys, dict raw):
        cdef Key *ring
        cdef Key *key
        cdef bytes kid_bytes, material
        cdef Py_ssize_t i = 0
        self._free()
        ring = <Key *>PyMem_Calloc(max(len(keys), 1), sizeof(Key))
        if ring == NULL:
            raise MemoryError()
        self._ring = ring
        self._keys = keys
        self._kid_bytes = []
        for kid, (alg, _) in keys.items():
            key = &ring[i]
            kid_bytes = kid.encode("utf-8", "surrogatepass")
            self._kid_bytes.append(kid_bytes)
            key.kid = PyBytes_AS_STRING(kid_bytes)
            key.kid_len = PyBytes_GET_SIZE(kid_bytes)
            material = raw[kid]
            self._count = i + 1  # from here on _free() releases this key's contexts
            if alg == "HS256":
                key.alg = ALG_HS256
                key.mac = _hmac_sha256_new(
                    <const unsigned char *>PyBytes_AS_STRING(material),
                    PyBytes_GET_SIZE(material))
                if key.mac == NULL:
                    ERR_clear_error()
                    raise ValueError(f"key {kid!r}: libcrypto refused the HS256 secret")
            else:
                key.alg = ALG_EDDSA
                key.pkey = EVP_PKEY_new_raw_public_key(
                    EVP_PKEY_ED25519, NULL,
                    <const unsigned char *>PyBytes_AS_STRING(material), 32)
                # One verify context per key: OpenSSL 3.0 keeps the EVP_PKEY_CTX of the
                # first EVP_DigestVerifyInit in a reused EVP_MD_CTX, so sharing one context
                # between two Ed25519 keys would verify every token with the first key.
                key.md = EVP_MD_CTX_new()
                if key.pkey == NULL or key.md == NULL:
                    ERR_clear_error()
                    raise ValueError(f"key {kid!r}: libcrypto refused the Ed25519 key")
            i += 1

    cdef void _free(self) noexcept:
        cdef Py_ssize_t i
        if self._ring != NULL:
            for i in range(self._count):
                if self._ring[i].mac != NULL:
                    EVP_MAC_CTX_free(self._ring[i].mac)
                if self._ring[i].md != NULL:
                    EVP_MD_CTX_free(self._ring[i].md)
                if self._ring[i].pkey != NULL:
                    EVP_PKEY_free(self._ring[i].pkey)
            PyMem_Free(self._ring)
        self._ring = NULL
        self._count = 0

    def __dealloc__(self):
        self._free()

    def __len__(self):
        return len(self._keys)

    def kids(self):
        return sorted(self._keys)

    def get(self, kid):
        return self._keys.get(kid)

    cdef const Key *_find(self, const unsigned char *kid, Py_ssize_t kid_len) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self._count):
            if (self._ring[i].kid_len == kid_len
                    and memcmp(self._ring[i].kid, kid, kid_len) == 0):
                return &self._ring[i]
        return NULL


# ---------------------------------------------------------------------------------------
# verify_token

def verify_token(token, KeyRing keys not None, str audience not None, double now,
                 double leeway):
    """Verify a compact JWS and its claims; return ``(sub, jti, exp)``.

    Checks in this order, so the cheap refusals come first and an attacker learns
    nothing from timing: shape, header (alg/kid/crit), signature (constant time),
    then claims (sub, jti, exp, aud, nbf with ``leeway`` seconds of clock skew).
    Times are compared as floats (seconds since the epoch).
    """
    cdef const unsigned char *tok
    cdef const unsigned char *dot
    cdef Py_ssize_t n, d1, d2, hn, cn, sn
    cdef bytes replaced
    cdef unsigned char hbuf[SEG_MAX]
    cdef unsigned char cbuf[SEG_MAX]
    cdef unsigned char sbuf[SEG_MAX]
    cdef unsigned char scratch[SEG_MAX]
    cdef unsigned char mac[SHA256_LEN]
    cdef JValue header[3]
    cdef JValue claims[5]
    cdef JParser p
    cdef const Key *key
    cdef const unsigned char *kid
    cdef Py_ssize_t kid_len
    cdef Alg alg
    cdef int ok
    cdef double exp, nbf
    cdef bytes audience_wtf8

    if not PyUnicode_Check(token):
        raise TokenError("malformed")
    PyUnicode_READY(token)
    n = PyUnicode_GET_LENGTH(token)
    if n > MAX_TOKEN_LENGTH:
        raise TokenError("malformed")
    if PyUnicode_IS_ASCII(token):
        tok = <const unsigned char *>PyUnicode_DATA(token)
    else:
        # One "?" per non-ASCII character: positions stay put, base64url refuses the "?"
        # and the signing input is the reference's .encode("ascii", "replace").
        replaced = PyUnicode_AsEncodedString(token, b"ascii", b"replace")
        tok = <const unsigned char *>PyBytes_AS_STRING(replaced)

    # Shape: exactly two dots.
    dot = <const unsigned char *>memchr(tok, 46, n)
    if dot == NULL:
        raise TokenError("malformed")
    d1 = dot - tok
    dot = <const unsigned char *>memchr(tok + d1 + 1, 46, n - d1 - 1)
    if dot == NULL:
        raise TokenError("malformed")
    d2 = dot - tok
    if memchr(tok + d2 + 1, 46, n - d2 - 1) != NULL:
        raise TokenError("malformed")

    # Header.
    hn = _b64url_decode(tok, d1, hbuf)
    if hn < 0:
        raise TokenError("malformed")
    p.s = hbuf
    p.n = hn
    p.i = 0
    p.aud = NULL
    p.aud_len = 0
    p.scratch = scratch
    if _document(&p, _HEADER_NAMES, 3, header, -1) < 0:
        raise TokenError("malformed")
    if header[H_ALG].kind != J_STRING or header[H_CRIT].kind != J_ABSENT:
        raise TokenError("unsupported_alg")
    if _str_eq(&p, &header[H_ALG], <const unsigned char *>b"HS256", 5):
        alg = ALG_HS256
    elif _str_eq(&p, &header[H_ALG], <const unsigned char *>b"EdDSA", 5):
        alg = ALG_EDDSA
    else:
        raise TokenError("unsupported_alg")
    if header[H_KID].kind != J_STRING:
        raise TokenError("unknown_kid")
    if header[H_KID].escaped:
        kid_len = _unescape(hbuf, header[H_KID].start, header[H_KID].end, scratch)
        kid = scratch
    else:
        kid_len = header[H_KID].end - header[H_KID].start
        kid = hbuf + header[H_KID].start
    key = keys._find(kid, kid_len)
    if key == NULL:
        raise TokenError("unknown_kid")
    if key.alg != alg:
        raise TokenError("alg_mismatch")

    # Signature over "header.claims", as sent.
    sn = _b64url_decode(tok + d2 + 1, n - d2 - 1, sbuf)
    if sn < 0:
        raise TokenError("malformed")
    if alg == ALG_HS256:
        _hmac_sha256(key.mac, tok, <size_t>d2, mac)
        if sn != SHA256_LEN or CRYPTO_memcmp(mac, sbuf, SHA256_LEN) != 0:
            raise TokenError("bad_signature")
    else:
        if EVP_DigestVerifyInit(key.md, NULL, NULL, NULL, key.pkey) != 1:
            ERR_clear_error()
            raise RuntimeError("libcrypto EVP_DigestVerifyInit(Ed25519) failed")
        ok = EVP_DigestVerify(key.md, sbuf, <size_t>sn, tok, <size_t>d2)
        if ok != 1:
            ERR_clear_error()
            raise TokenError("bad_signature")

    # Claims.
    cn = _b64url_decode(tok + d1 + 1, d2 - d1 - 1, cbuf)
    if cn < 0:
        raise TokenError("malformed")
    p.s = cbuf
    p.n = cn
    p.i = 0
    PyUnicode_READY(audience)
    if PyUnicode_IS_ASCII(audience):
        p.aud = <const unsigned char *>PyUnicode_DATA(audience)
        p.aud_len = PyUnicode_GET_LENGTH(audience)
    else:  # WTF-8, as the parser decodes strings (lone surrogates pass through)
        audience_wtf8 = audience.encode("utf-8", "surrogatepass")
        p.aud = <const unsigned char *>PyBytes_AS_STRING(audience_wtf8)
        p.aud_len = PyBytes_GET_SIZE(audience_wtf8)
    if _document(&p, _CLAIM_NAMES, 5, claims, C_AUD) < 0:
        raise TokenError("malformed")
    if (claims[C_SUB].kind != J_STRING or claims[C_SUB].end == claims[C_SUB].start
            or claims[C_JTI].kind != J_STRING
            or not _number_value(&p, &claims[C_EXP], &exp)):
        raise TokenError("missing_claim")
    if claims[C_AUD].kind == J_STRING:
        ok = _str_eq(&p, &claims[C_AUD], p.aud, p.aud_len)
    elif claims[C_AUD].kind == J_ARRAY:
        ok = claims[C_AUD].has_audience
    else:
        raise TokenError("missing_claim")
    if not ok:
        raise TokenError("wrong_audience")
    if now > exp + leeway:
        raise TokenError("expired")
    if claims[C_NBF].kind != J_ABSENT and claims[C_NBF].kind != J_NULL:
        if not _number_value(&p, &claims[C_NBF], &nbf):
            raise TokenError("missing_claim")
        if now < nbf - leeway:
            raise TokenError("not_yet_valid")
    return (_str_value(&p, &claims[C_SUB]), _str_value(&p, &claims[C_JTI]),
            _exp_value(&p, &claims[C_EXP], exp))


# ---------------------------------------------------------------------------------------
# Bounded LRU maps

# no_gc: the cyclic collector never sees the entries. A full cache holds a million of
# them, and traversing those in every full collection would stall every request in
# flight. An entry cannot sit in a cycle that outlives it: it refers to its key
# (a str) and its value (bytes, or a pending marker that is discarded as soon as its vote
# is decided), and its links to other entries are borrowed pointers.
@cython.final
@cython.no_gc
@cython.freelist(256)
cdef class _Entry:
    pass


@cython.no_gc_clear
cdef class _LRU:
    """A dict of _Entry kept in recency order by a doubly linked list; O(1) everything."""

    def __cinit__(self, *args, **kwargs):
        self._map = {}
        self._oldest = NULL
        self._newest = NULL
        self.capacity = 1

    def __len__(self):
        return len(self._map)

    cdef void _unlink(self, _Entry e) noexcept:
        if e.older != NULL:
            (<_Entry>e.older).newer = e.newer
        else:
            self._oldest = e.newer
        if e.newer != NULL:
            (<_Entry>e.newer).older = e.older
        else:
            self._newest = e.older
        e.older = NULL
        e.newer = NULL

    cdef void _append(self, _Entry e) noexcept:
        e.older = self._newest
        e.newer = NULL
        if self._newest != NULL:
            (<_Entry>self._newest).newer = <PyObject *>e
        else:
            self._oldest = <PyObject *>e
        self._newest = <PyObject *>e

    cdef void _touch(self, _Entry e) noexcept:
        if self._newest != <PyObject *>e:
            self._unlink(e)
            self._append(e)

    cdef int _evict_over_capacity(self) except -1:
        cdef _Entry oldest
        while len(self._map) > self.capacity:
            oldest = <_Entry>self._oldest
            self._unlink(oldest)
            PyDict_DelItem(self._map, oldest.key)
        return 0


cdef class IdempotencyCache(_LRU):
    """Bounded map ``vote_id -> (content digest, first answer)``, least recently used out.

    A retry with the same digest gets the stored answer back; the same vote_id with
    another digest is a conflict (409). Bounded so a flood of fresh vote_ids costs a
    fixed amount of memory; an evicted vote_id is still deduplicated by the processor.
    """

    def __init__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity

    def get(self, vote_id):
        cdef PyObject *found = PyDict_GetItemWithError(self._map, vote_id)
        cdef _Entry e
        if found == NULL:
            return None
        e = <_Entry>found
        self._touch(e)
        return e.value

    def put(self, vote_id, digest, answer):
        """Store the first answer for vote_id; a later put for the same id is ignored."""
        cdef _Entry e
        if PyDict_Contains(self._map, vote_id):
            return
        e = _Entry.__new__(_Entry)
        e.key = vote_id
        e.value = (digest, answer)
        PyDict_SetItem(self._map, vote_id, e)
        self._append(e)
        self._evict_over_capacity()

    def discard(self, vote_id):
        cdef PyObject *found = PyDict_GetItemWithError(self._map, vote_id)
        cdef _Entry e
        if found == NULL:
            return
        e = <_Entry>found
        self._unlink(e)
        PyDict_DelItem(self._map, e.key)


cdef class RateLimiter(_LRU):
    """Token buckets keyed by a string (client address or voter id), bounded in count.

    Each key may spend ``burst`` requests at once and regains ``rate`` per second.
    ``acquire`` returns 0.0 when the request may go ahead, otherwise the seconds until
    one token is back (the ``Retry-After``). Least recently seen keys are dropped past
    ``capacity``: a dropped key starts again with a full bucket, which errs on letting a
    voter in rather than locking one out.
    """

    def __init__(self, double rate, double burst, Py_ssize_t capacity):
        if rate <= 0 or burst < 1 or capacity < 1:
            raise ValueError("rate must be > 0, burst >= 1, capacity >= 1")
        self.rate = rate
        self.burst = burst
        self.capacity = capacity

    def acquire(self, key, double now):
        cdef PyObject *found = PyDict_GetItemWithError(self._map, key)
        cdef _Entry e
        cdef double elapsed, tokens
        if found == NULL:
            e = _Entry.__new__(_Entry)
            e.key = key
            e.tokens = self.burst
            e.last = now
            PyDict_SetItem(self._map, key, e)
            self._append(e)
            self._evict_over_capacity()
        else:
            e = <_Entry>found
            self._touch(e)
            elapsed = now - e.last
            if elapsed > 0:
                tokens = e.tokens + elapsed * self.rate
                e.tokens = tokens if tokens < self.burst else self.burst  # min(burst, ..)
                e.last = now
        if e.tokens >= 1.0:
            e.tokens -= 1.0
            return 0.0
        return (1.0 - e.tokens) / self.rate


# ---------------------------------------------------------------------------------------
# Event encoding and receipts

# The fixed parts of the msgpack map {v, vote_id, election_id, voter_id, choice,
# received_at_us, gateway_id} (all keys are fixstr), in core.event.VoteEvent field order.
cdef const char *_K_HEAD = b"\x87\xa1v\x01\xa7vote_id"  # map of 7, "v": 1, "vote_id"
cdef const char *_K_ELECTION = b"\xabelection_id"
cdef const char *_K_VOTER = b"\xa8voter_id"
cdef const char *_K_CHOICE = b"\xa6choice"
cdef const char *_K_RECEIVED = b"\xaereceived_at_us"
cdef const char *_K_GATEWAY = b"\xaagateway_id"
cdef enum:
    K_HEAD_LEN = 12
    K_ELECTION_LEN = 12
    K_VOTER_LEN = 9
    K_CHOICE_LEN = 7
    K_RECEIVED_LEN = 15
    K_GATEWAY_LEN = 11


cdef inline Py_ssize_t _str_header_len(Py_ssize_t n) noexcept nogil:
    if n < 32:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    return 5


cdef inline char *_put_str(char *o, const char *s, Py_ssize_t n) noexcept nogil:
    if n < 32:
        o[0] = <char>(0xA0 | n)
        o += 1
    elif n < 0x100:
        o[0] = <char>0xD9
        o[1] = <char>n
        o += 2
    elif n < 0x10000:
        o[0] = <char>0xDA
        o[1] = <char>(n >> 8)
        o[2] = <char>n
        o += 3
    else:
        o[0] = <char>0xDB
        o[1] = <char>(n >> 24)
        o[2] = <char>(n >> 16)
        o[3] = <char>(n >> 8)
        o[4] = <char>n
        o += 5
    memcpy(o, s, n)
    return o + n


cdef inline char *_put_raw(char *o, const char *s, Py_ssize_t n) noexcept nogil:
    memcpy(o, s, n)
    return o + n


cdef inline Py_ssize_t _uint_len(uint64_t v) noexcept nogil:
    if v < 0x80:
        return 1
    if v < 0x100:
        return 2
    if v < 0x10000:
        return 3
    if (v >> 32) == 0:
        return 5
    return 9


cdef inline char *_put_uint(char *o, uint64_t v) noexcept nogil:
    cdef int i, width
    if v < 0x80:
        o[0] = <char>v
        return o + 1
    if v < 0x100:
        o[0] = <char>0xCC
        width = 1
    elif v < 0x10000:
        o[0] = <char>0xCD
        width = 2
    elif (v >> 32) == 0:
        o[0] = <char>0xCE
        width = 4
    else:
        o[0] = <char>0xCF
        width = 8
    for i in range(width):
        o[width - i] = <char>(v >> (8 * i))
    return o + 1 + width


cdef uint64_t _as_uint64(object value) except? 0:
    """A non-negative int as uint64: ValueError below 0, OverflowError from 2**64."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow == 0:
        if v < 0:
            raise ValueError("received_at_us must be >= 0")
        return <uint64_t>v
    if overflow < 0:
        raise ValueError("received_at_us must be >= 0")
    return PyLong_AsUnsignedLongLong(value)


def encode_event(str vote_id not None, str election_id not None, str voter_id not None,
                 str choice not None, received_at_us, str gateway_id not None):
    """The msgpack event of docs/ARCHITECTURE.md (Event schema), byte-identical to
    ``core.event.encode``."""
    cdef Py_ssize_t n_vote, n_election, n_voter, n_choice, n_gateway, size
    cdef const char *s_vote = PyUnicode_AsUTF8AndSize(vote_id, &n_vote)
    cdef const char *s_election = PyUnicode_AsUTF8AndSize(election_id, &n_election)
    cdef const char *s_voter = PyUnicode_AsUTF8AndSize(voter_id, &n_voter)
    cdef const char *s_choice = PyUnicode_AsUTF8AndSize(choice, &n_choice)
    cdef uint64_t received = _as_uint64(received_at_us)
    cdef const char *s_gateway = PyUnicode_AsUTF8AndSize(gateway_id, &n_gateway)
    cdef bytes out
    cdef char *o
    if ((n_vote | n_election | n_voter | n_choice | n_gateway) >> 32) != 0:
        raise ValueError("string too long for msgpack")
    size = (K_HEAD_LEN + K_ELECTION_LEN + K_VOTER_LEN + K_CHOICE_LEN + K_RECEIVED_LEN
            + K_GATEWAY_LEN
            + _str_header_len(n_vote) + n_vote
            + _str_header_len(n_election) + n_election
            + _str_header_len(n_voter) + n_voter
            + _str_header_len(n_choice) + n_choice
            + _uint_len(received)
            + _str_header_len(n_gateway) + n_gateway)
    out = PyBytes_FromStringAndSize(NULL, size)
    o = PyBytes_AS_STRING(out)
    o = _put_raw(o, _K_HEAD, K_HEAD_LEN)
    o = _put_str(o, s_vote, n_vote)
    o = _put_raw(o, _K_ELECTION, K_ELECTION_LEN)
    o = _put_str(o, s_election, n_election)
    o = _put_raw(o, _K_VOTER, K_VOTER_LEN)
    o = _put_str(o, s_voter, n_voter)
    o = _put_raw(o, _K_CHOICE, K_CHOICE_LEN)
    o = _put_str(o, s_choice, n_choice)
    o = _put_raw(o, _K_RECEIVED, K_RECEIVED_LEN)
    o = _put_uint(o, received)
    o = _put_raw(o, _K_GATEWAY, K_GATEWAY_LEN)
    _put_str(o, s_gateway, n_gateway)
    return out


# sign_receipt keeps the HMAC context of the last key it saw (the gateway has one).
cdef EVP_MAC_CTX *_receipt_ctx = NULL
cdef bytes _receipt_key = None

cdef enum:
    RECEIPT_STACK = 512
    RECEIPT_LEN = 46  # "r1." + 43 base64url characters of 32 bytes


cdef EVP_MAC_CTX *_receipt_mac(const unsigned char *key, Py_ssize_t n) except NULL:
    global _receipt_ctx, _receipt_key
    if (_receipt_ctx != NULL and PyBytes_GET_SIZE(_receipt_key) == n
            and memcmp(PyBytes_AS_STRING(_receipt_key), key, n) == 0):
        return _receipt_ctx
    if _receipt_ctx != NULL:
        EVP_MAC_CTX_free(_receipt_ctx)
        _receipt_ctx = NULL
    _receipt_ctx = _hmac_sha256_new(key, n)
    if _receipt_ctx == NULL:
        ERR_clear_error()
        raise RuntimeError("libcrypto HMAC-SHA256 failed")
    _receipt_key = PyBytes_FromStringAndSize(<const char *>key, n)
    return _receipt_ctx


def sign_receipt(key, str vote_id not None, str election_id not None, str voter_id not None,
                 str choice not None, received_at_us):
    """``r1.<base64url HMAC-SHA256>`` over the vote's identity, fields joined by 0x1f.

    0x1f (unit separator) cannot occur in any field the gateway accepts, so two
    different votes cannot share a signed message.
    """
    cdef Py_buffer view
    cdef const char *parts[5]
    cdef Py_ssize_t lens[5]
    cdef Py_ssize_t total = 4, i, pos = 0
    cdef char stack[RECEIPT_STACK]
    cdef char *message = stack
    cdef bytes heap = None
    cdef bytes received_text
    cdef char number[24]
    cdef int overflow = 0
    cdef long long received
    cdef EVP_MAC_CTX *ctx
    cdef unsigned char mac[SHA256_LEN]
    cdef object out

    parts[0] = PyUnicode_AsUTF8AndSize(election_id, &lens[0])
    parts[1] = PyUnicode_AsUTF8AndSize(vote_id, &lens[1])
    parts[2] = PyUnicode_AsUTF8AndSize(voter_id, &lens[2])
    parts[3] = PyUnicode_AsUTF8AndSize(choice, &lens[3])
    received = 0
    if type(received_at_us) is int:
        received = PyLong_AsLongLongAndOverflow(received_at_us, &overflow)
    if type(received_at_us) is int and overflow == 0:
        lens[4] = _format_int(received, number)
        parts[4] = number
    else:
        received_text = str(received_at_us).encode("utf-8")
        parts[4] = PyBytes_AS_STRING(received_text)
        lens[4] = PyBytes_GET_SIZE(received_text)
    for i in range(5):
        total += lens[i]
    if total > RECEIPT_STACK:
        heap = PyBytes_FromStringAndSize(NULL, total)
        message = PyBytes_AS_STRING(heap)
    for i in range(5):
        if i:
            message[pos] = b"\x1f"[0]
            pos += 1
        memcpy(message + pos, parts[i], lens[i])
        pos += lens[i]

    PyObject_GetBuffer(key, &view, PyBUF_SIMPLE)
    try:
        ctx = _receipt_mac(<const unsigned char *>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)
    _hmac_sha256(ctx, <const unsigned char *>message, <size_t>total, mac)
    out = PyUnicode_New(RECEIPT_LEN, 127)
    memcpy(PyUnicode_DATA(out), b"r1.", 3)
    _b64url_encode(mac, SHA256_LEN, <unsigned char *>PyUnicode_DATA(out) + 3)
    return out


cdef Py_ssize_t _format_int(long long v, char *out) noexcept nogil:
    """str(v) into out (room for 21); its length."""
    cdef char digits[24]
    cdef Py_ssize_t n = 0, i
    # |v| without overflowing on LLONG_MIN
    cdef unsigned long long u = (<unsigned long long>(-(v + 1)) + 1 if v < 0
                                 else <unsigned long long>v)
    while True:
        digits[n] = <char>(48 + u % 10)
        n += 1
        u //= 10
        if u == 0:
            break
    i = 0
    if v < 0:
        out[0] = 45
        i = 1
    while n:
        n -= 1
        out[i] = digits[n]
        i += 1
    return i


__all__ = [
    "OPENSSL_VERSION_TEXT",
    "TOKEN_REASONS",
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
