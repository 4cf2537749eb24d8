# Included by _core.pyx: verify_token, its refusal reasons and the header and claim names it
# asks the JSON scanner for.

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
    WRONG_ISSUER = 9
    ISSUED_IN_FUTURE = 10
    LIFETIME_TOO_LONG = 11


class TokenError(Exception):
    """A token was refused; ``reason`` is one of ``TOKEN_REASONS``."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


cdef const char *_HEADER_NAMES[3]
_HEADER_NAMES[0] = b"alg"
_HEADER_NAMES[1] = b"kid"
_HEADER_NAMES[2] = b"crit"
cdef enum:
    H_ALG = 0
    H_KID = 1
    H_CRIT = 2

cdef const char *_CLAIM_NAMES[7]
_CLAIM_NAMES[0] = b"sub"
_CLAIM_NAMES[1] = b"jti"
_CLAIM_NAMES[2] = b"exp"
_CLAIM_NAMES[3] = b"aud"
_CLAIM_NAMES[4] = b"nbf"
_CLAIM_NAMES[5] = b"iss"
_CLAIM_NAMES[6] = b"iat"
cdef enum:
    C_SUB = 0
    C_JTI = 1
    C_EXP = 2
    C_AUD = 3
    C_NBF = 4
    C_ISS = 5
    C_IAT = 6
    N_CLAIMS = 7


def verify_token(token, KeyRing keys not None, str audience not None, double now,
                 double leeway, str issuer=None, max_lifetime=None):
    """Verify a compact JWS and its claims; return ``(sub, jti, exp)``.

    Checks in this order, so the cheap refusals come first and an attacker learns
    nothing from timing: shape, header (alg/kid/crit), signature (constant time),
    then claims (sub, jti, exp, aud, iss unless ``issuer`` is None, then nbf and iat
    with ``leeway`` seconds of clock skew, then the lifetime: neither exp - iat nor
    exp - now may exceed ``max_lifetime`` seconds, unless it is None).
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
    cdef JValue claims[N_CLAIMS]
    cdef JParser p
    cdef const Key *key
    cdef const unsigned char *kid
    cdef Py_ssize_t kid_len
    cdef Alg alg
    cdef int ok
    cdef bint has_iat
    cdef double exp, nbf, iat, lifetime
    cdef bytes audience_wtf8, issuer_wtf8

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
    if _document(&p, _CLAIM_NAMES, N_CLAIMS, claims, C_AUD) < 0:
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
    if issuer is not None:
        if claims[C_ISS].kind != J_STRING:
            raise TokenError("missing_claim")
        issuer_wtf8 = issuer.encode("utf-8", "surrogatepass")
        if not _str_eq(&p, &claims[C_ISS], <const unsigned char *>PyBytes_AS_STRING(issuer_wtf8),
                       PyBytes_GET_SIZE(issuer_wtf8)):
            raise TokenError("wrong_issuer")
    if now > exp + leeway:
        raise TokenError("expired")
    if claims[C_NBF].kind != J_ABSENT and claims[C_NBF].kind != J_NULL:
        if not _number_value(&p, &claims[C_NBF], &nbf):
            raise TokenError("missing_claim")
        if now < nbf - leeway:
            raise TokenError("not_yet_valid")
    has_iat = claims[C_IAT].kind != J_ABSENT and claims[C_IAT].kind != J_NULL
    if has_iat:
        if not _number_value(&p, &claims[C_IAT], &iat):
            raise TokenError("missing_claim")
        if iat > now + leeway:
            raise TokenError("issued_in_future")
    if max_lifetime is not None:
        lifetime = max_lifetime
        if exp - now > lifetime + leeway or (has_iat and exp - iat > lifetime):
            raise TokenError("lifetime_too_long")
    return (_str_value(&p, &claims[C_SUB]), _str_value(&p, &claims[C_JTI]),
            _exp_value(&p, &claims[C_EXP], exp))
