# Included by _core.pyx: the one HMAC-SHA256 implementation (libcrypto EVP_MAC) that the
# token verifier and the receipt signer share.

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
