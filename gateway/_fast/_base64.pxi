# Included by _core.pyx: strict unpadded base64url (RFC 7515 §2), C loops and the two
# public functions.

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
