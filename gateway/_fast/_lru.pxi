# Included by _core.pyx: the bounded LRU maps, IdempotencyCache and RateLimiter.

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
