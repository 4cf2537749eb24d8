# Included by _core.pyx: the msgpack event encoder and the receipt signer.

from core import event as _event
from core import keyset as _keyset

# The fixed parts of the msgpack map {v, vote_id, election_id, voter_id, choice,
# received_at_us, gateway_id, kid, mac} (all keys are fixstr), in core.event.VoteEvent
# field order.
cdef const char *_K_HEAD = b"\x89\xa1v\x02\xa7vote_id"  # map of 9, "v": 2, "vote_id"
cdef const char *_K_ELECTION = b"\xabelection_id"
cdef const char *_K_VOTER = b"\xa8voter_id"
cdef const char *_K_CHOICE = b"\xa6choice"
cdef const char *_K_RECEIVED = b"\xaereceived_at_us"
cdef const char *_K_GATEWAY = b"\xaagateway_id"
cdef const char *_K_KID = b"\xa3kid"
cdef const char *_K_MAC = b"\xa3mac\xc4\x20"  # "mac", then bin 8 of 32 bytes
cdef enum:
    K_HEAD_LEN = 12
    K_ELECTION_LEN = 12
    K_VOTER_LEN = 9
    K_CHOICE_LEN = 7
    K_RECEIVED_LEN = 15
    K_GATEWAY_LEN = 11
    K_KID_LEN = 4
    K_MAC_LEN = 6


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


# The event field limits of core.event (their one definition), read once at import.
cdef Py_ssize_t _MAX_FIELD_BYTES = _event.MAX_FIELD_BYTES
cdef long long _MAX_RECEIVED_AT_US = _event.MAX_RECEIVED_AT_US


cdef bint _field_ok(const char *s, Py_ssize_t n) noexcept nogil:
    """core.event.field_problem's rule on valid UTF-8: 1..MAX_FIELD_BYTES bytes, no C0,
    DEL or C1 control character."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if n == 0 or n > _MAX_FIELD_BYTES:
        return False
    for i in range(n):
        c = <unsigned char>s[i]
        if c < 0x20 or c == 0x7F:
            return False
        if c == 0xC2 and <unsigned char>s[i + 1] < 0xA0:  # U+0080..U+009F; s is NUL-ended
            return False
    return True


cdef const char *_field(str name, str value, Py_ssize_t *n) except NULL:
    """The UTF-8 of an event field; ValueError with core.event's words if it is refused."""
    cdef const char *s = NULL
    try:
        s = PyUnicode_AsUTF8AndSize(value, n)
    except UnicodeEncodeError:
        pass
    if s == NULL or not _field_ok(s, n[0]):
        raise ValueError(_event.field_problem(name, value))
    return s


cdef uint64_t _received_at(object value) except? 0:
    """received_at_us as uint64; ValueError with core.event's words outside its range."""
    cdef int overflow = 0
    cdef long long v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow != 0 or v <= 0 or v > _MAX_RECEIVED_AT_US:
        raise ValueError(_event.received_at_problem(value))
    return <uint64_t>v


@cython.final
cdef class EventSigner:
    """One event key (``core.keyset``): its kid and a keyed HMAC-SHA256 context.

    The gateway builds one per worker from the newest active event key and a new one
    when the key file changes.
    """

    def __cinit__(self):
        self._ctx = NULL

    def __init__(self, str kid not None, secret):
        cdef Py_buffer view
        cdef Py_ssize_t n
        problem = _keyset.kid_problem(kid)
        if problem is not None:
            raise ValueError(problem)
        self.kid = kid
        self._kid_utf8 = kid.encode("utf-8")
        PyObject_GetBuffer(secret, &view, PyBUF_SIMPLE)
        try:
            if view.len < _keyset.MIN_SECRET_BYTES:
                raise ValueError(f"event key {kid!r}: shorter than {_keyset.MIN_SECRET_BYTES} bytes")
            self._ctx = _hmac_sha256_new(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        if self._ctx == NULL:
            ERR_clear_error()
            raise RuntimeError("libcrypto HMAC-SHA256 failed")

    def __dealloc__(self):
        if self._ctx != NULL:
            EVP_MAC_CTX_free(self._ctx)


def encode_event(str vote_id not None, str election_id not None, str voter_id not None,
                 str choice not None, received_at_us, str gateway_id not None,
                 EventSigner signer not None):
    """The signed msgpack event of docs/ARCHITECTURE.md (Event schema), byte-identical
    to ``core.event.seal``: the MAC under ``signer``'s key covers every byte before it.

    Raises ValueError, with core.event's words, for a field the processor would refuse as
    malformed, so the gateway never acknowledges a vote that cannot be counted.
    """
    cdef Py_ssize_t n_vote, n_election, n_voter, n_choice, n_gateway, size
    cdef const char *s_vote = _field("vote_id", vote_id, &n_vote)
    cdef const char *s_election = _field("election_id", election_id, &n_election)
    cdef const char *s_voter = _field("voter_id", voter_id, &n_voter)
    cdef const char *s_choice = _field("choice", choice, &n_choice)
    cdef const char *s_gateway = _field("gateway_id", gateway_id, &n_gateway)
    cdef uint64_t received = _received_at(received_at_us)
    cdef const char *s_kid = PyBytes_AS_STRING(signer._kid_utf8)
    cdef Py_ssize_t n_kid = PyBytes_GET_SIZE(signer._kid_utf8)
    cdef bytes out
    cdef char *o
    cdef char *start
    size = (K_HEAD_LEN + K_ELECTION_LEN + K_VOTER_LEN + K_CHOICE_LEN + K_RECEIVED_LEN
            + K_GATEWAY_LEN + K_KID_LEN + K_MAC_LEN + SHA256_LEN
            + _str_header_len(n_vote) + n_vote
            + _str_header_len(n_election) + n_election
            + _str_header_len(n_voter) + n_voter
            + _str_header_len(n_choice) + n_choice
            + _uint_len(received)
            + _str_header_len(n_gateway) + n_gateway
            + _str_header_len(n_kid) + n_kid)
    out = PyBytes_FromStringAndSize(NULL, size)
    o = start = PyBytes_AS_STRING(out)
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
    o = _put_str(o, s_gateway, n_gateway)
    o = _put_raw(o, _K_KID, K_KID_LEN)
    o = _put_str(o, s_kid, n_kid)
    o = _put_raw(o, _K_MAC, K_MAC_LEN)
    _hmac_sha256(signer._ctx, <const unsigned char *>start, <size_t>(o - start),
                 <unsigned char *>o)
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
