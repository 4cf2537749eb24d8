# Contract of _core.pyx: the libcrypto calls it makes, the C structs of the token verifier
# and the layout of the extension types. The public surface is gateway._fast (see _core.pyi).

from cpython.object cimport PyObject


# CPython's C API beyond what Cython's own cpython/*.pxd declare.
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


cdef extern from "openssl/core.h" nogil:
    ctypedef struct OSSL_PARAM:
        const char *key
        unsigned int data_type
        void *data
        size_t data_size
        size_t return_size


cdef extern from "openssl/evp.h" nogil:
    ctypedef struct ENGINE:
        pass
    ctypedef struct OSSL_LIB_CTX:
        pass
    ctypedef struct EVP_MD:
        pass
    ctypedef struct EVP_MD_CTX:
        pass
    ctypedef struct EVP_PKEY:
        pass
    ctypedef struct EVP_PKEY_CTX:
        pass
    ctypedef struct EVP_MAC:
        pass
    ctypedef struct EVP_MAC_CTX:
        pass

    int EVP_PKEY_ED25519
    EVP_PKEY *EVP_PKEY_new_raw_public_key(
        int type, ENGINE *e, const unsigned char *key, size_t keylen)
    void EVP_PKEY_free(EVP_PKEY *pkey)

    EVP_MD_CTX *EVP_MD_CTX_new()
    void EVP_MD_CTX_free(EVP_MD_CTX *ctx)
    # Ed25519 is one-shot: every token needs EVP_DigestVerifyInit, then EVP_DigestVerify.
    int EVP_DigestVerifyInit(
        EVP_MD_CTX *ctx, EVP_PKEY_CTX **pctx, const EVP_MD *type, ENGINE *e, EVP_PKEY *pkey)
    int EVP_DigestVerify(
        EVP_MD_CTX *ctx, const unsigned char *sig, size_t siglen,
        const unsigned char *tbs, size_t tbslen)

    EVP_MAC *EVP_MAC_fetch(OSSL_LIB_CTX *libctx, const char *algorithm, const char *properties)
    void EVP_MAC_free(EVP_MAC *mac)
    EVP_MAC_CTX *EVP_MAC_CTX_new(EVP_MAC *mac)
    void EVP_MAC_CTX_free(EVP_MAC_CTX *ctx)
    # key == NULL re-initialises an HMAC context with the key it already holds (OpenSSL 3).
    int EVP_MAC_init(EVP_MAC_CTX *ctx, const unsigned char *key, size_t keylen,
                     const OSSL_PARAM params[])
    int EVP_MAC_update(EVP_MAC_CTX *ctx, const unsigned char *data, size_t datalen)
    int EVP_MAC_final(EVP_MAC_CTX *ctx, unsigned char *out, size_t *outl, size_t outsize)


cdef extern from "openssl/params.h" nogil:
    OSSL_PARAM OSSL_PARAM_construct_utf8_string(const char *key, char *buf, size_t bsize)
    OSSL_PARAM OSSL_PARAM_construct_end()


cdef extern from "openssl/crypto.h" nogil:
    int CRYPTO_memcmp(const void *a, const void *b, size_t len)
    const char *OpenSSL_version(int type)
    int OPENSSL_VERSION


cdef extern from "openssl/err.h" nogil:
    void ERR_clear_error()


cdef enum:
    MAX_TOKEN_LENGTH = 4096  # longer tokens are malformed (same bound as reference.py)
    MAX_JSON_DEPTH = 32      # deeper header/claims JSON is malformed (same as reference.py)
    SEG_MAX = 3072           # decoded size of the longest possible segment (4094 * 3 / 4)
    SHA256_LEN = 32


cdef enum Alg:
    ALG_HS256 = 1
    ALG_EDDSA = 2


# The kind of a JSON value seen by the verifier's parser.
cdef enum JKind:
    J_ABSENT = 0  # the member does not occur in the object
    J_STRING = 1  # start/end: the bytes between the quotes; escaped: contains a backslash
    J_INT = 2     # start/end: the literal, e.g. -12
    J_FLOAT = 3   # start/end: the literal, with a fraction and/or an exponent
    J_NULL = 4
    J_BOOL = 5
    J_ARRAY = 6   # has_audience: a direct string element equals JParser.aud
    J_OBJECT = 7


cdef struct JValue:
    JKind kind
    Py_ssize_t start
    Py_ssize_t end
    bint escaped
    bint has_audience


cdef struct JParser:
    const unsigned char *s      # the JSON text (a decoded header or claims segment)
    Py_ssize_t n
    Py_ssize_t i                # read position
    const unsigned char *aud    # audience as WTF-8 (surrogatepass UTF-8), for aud arrays
    Py_ssize_t aud_len
    unsigned char *scratch      # >= n bytes, where escaped strings are decoded to compare


# One verification key, owned by a KeyRing.
cdef struct Key:
    const char *kid             # WTF-8 of the kid; the bytes live in KeyRing._kid_bytes
    Py_ssize_t kid_len
    Alg alg
    EVP_MAC_CTX *mac            # HS256: HMAC-SHA256 context keyed with the secret
    EVP_PKEY *pkey              # EdDSA: the Ed25519 public key
    EVP_MD_CTX *md              # EdDSA: verify context, only ever initialised with pkey


cdef class KeyRing:
    cdef dict _keys             # kid -> (alg, material), as in reference.KeyRing
    cdef list _kid_bytes        # keeps Key.kid alive
    cdef Key *_ring
    cdef Py_ssize_t _count

    cdef _build(self, dict keys, dict raw)
    cdef void _free(self) noexcept
    cdef const Key *_find(self, const unsigned char *kid, Py_ssize_t kid_len) noexcept nogil


# An entry of the bounded LRU maps below; linked newest/oldest by borrowed pointers (the
# map's dict owns the entries, so the links create no reference cycles).
cdef class _Entry:
    cdef object key
    cdef object value           # IdempotencyCache: the (digest, answer) tuple
    cdef double tokens          # RateLimiter: tokens left in the bucket
    cdef double last            # RateLimiter: when the bucket was last refilled
    cdef PyObject *older
    cdef PyObject *newer


cdef class _LRU:
    cdef dict _map              # key -> _Entry
    cdef PyObject *_oldest      # NULL when empty
    cdef PyObject *_newest
    cdef readonly Py_ssize_t capacity

    cdef void _unlink(self, _Entry e) noexcept
    cdef void _append(self, _Entry e) noexcept
    cdef void _touch(self, _Entry e) noexcept
    cdef int _evict_over_capacity(self) except -1


cdef class IdempotencyCache(_LRU):
    pass


cdef class RateLimiter(_LRU):
    cdef readonly double rate
    cdef readonly double burst


cdef class EventSigner:
    cdef EVP_MAC_CTX *_ctx      # HMAC-SHA256 keyed with the event key
    cdef readonly str kid
    cdef bytes _kid_utf8
