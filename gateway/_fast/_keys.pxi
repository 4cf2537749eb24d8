# Included by _core.pyx: KeyRing, the live verification keys with their OpenSSL contexts.

_ALG_FOR_KTY = {"oct": "HS256", "OKP": "EdDSA"}


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
