"""Failpoints: named places where a test or the chaos suite can make a process crash.

Off unless ``VOTE_FAILPOINTS`` names a point, and then ``hit(name)`` costs one dict lookup
for the other points. The variable is a comma-separated list of ``name=kill@N``: the
process SIGKILLs itself (no ``finally``, no ``atexit``: a crash) the N-th time it reaches
that point (N defaults to 1)::

    VOTE_FAILPOINTS=processor.after_copy=kill@3

Points (docs/ARCHITECTURE.md, "Failure and recovery", has what each one's crash leaves):

* ``processor.before_copy``  — a batch is about to be written; nothing is in PostgreSQL
* ``processor.after_copy``   — the batch's rows are copied, the transaction is still open
* ``processor.after_commit`` — committed with its offsets; Redis not yet written
"""

from __future__ import annotations

import os
import signal
import threading

POINTS = ("processor.before_copy", "processor.after_copy", "processor.after_commit")


class FailpointError(ValueError):
    """``VOTE_FAILPOINTS`` names an unknown point or action."""


def parse(spec: str) -> dict[str, int]:
    """``name=kill@N,...`` as {name: N}."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, action = item.partition("=")
        kind, _, count = action.partition("@")
        if not sep or kind != "kill" or name not in POINTS:
            raise FailpointError(
                f"VOTE_FAILPOINTS: {item!r} is not <point>=kill[@N] with point one of {POINTS}"
            )
        try:
            armed[name] = int(count or 1)
        except ValueError:
            raise FailpointError(f"VOTE_FAILPOINTS: {item!r}: N must be a whole number") from None
        if armed[name] < 1:
            raise FailpointError(f"VOTE_FAILPOINTS: {item!r}: N must be >= 1")
    return armed


_armed = parse(os.environ.get("VOTE_FAILPOINTS", ""))
_hits: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str) -> None:
    """Count a pass through ``name``; SIGKILL this process when it is the armed pass."""
    if name not in _armed:
        return
    with _lock:
        _hits[name] = n = _hits.get(name, 0) + 1
    if n == _armed[name]:
        os.kill(os.getpid(), signal.SIGKILL)
