# Included by _core.pyx: a strict, allocation-free JSON scanner for a token's header and
# claims objects, and the conversion of the members it found into Python values.
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
