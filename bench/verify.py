"""After a run: did every acknowledged vote reach PostgreSQL exactly once? (Invariant A.)

The harness collects the ``vote_id`` of every 2xx answer. Once the processor has caught
up, each of them must be in ``votes`` exactly once. Votes stored although their request
failed on the client side (a timeout after the gateway had accepted) are reported as
``unacked_stored``: allowed, since the voter was never told the vote was lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping


def compare(acked: Iterable[str], stored_counts: Mapping[str, int]) -> dict[str, int]:
    """Counts of the acknowledged set against ``vote_id -> rows in votes`` (pure)."""
    acked_set = set(acked)
    stored = sum(1 for v in acked_set if stored_counts.get(v, 0) >= 1)
    duplicates = sum(n - 1 for v, n in stored_counts.items() if n > 1 and v in acked_set)
    return {
        "acked": len(acked_set),
        "stored": stored,
        "missing": len(acked_set) - stored,
        "duplicates": duplicates,
        "unacked_stored": sum(1 for v in stored_counts if v not in acked_set),
        "duplicates_unacked": sum(
            n - 1 for v, n in stored_counts.items() if n > 1 and v not in acked_set
        ),
    }


def wait_caught_up(
    count: Callable[[], int],
    expected: int,
    *,
    timeout_s: float,
    stall_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Poll ``count()`` until it reaches ``expected``, stops growing for ``stall_s``
    (after having reached it is not required: a lost vote must not hang the harness), or
    ``timeout_s`` passes. Returns the last count."""
    started = clock()
    last, last_change = count(), started
    while last < expected:
        now = clock()
        if now - started >= timeout_s or now - last_change >= stall_s:
            break
        sleep(0.5)
        current = count()
        if current != last:
            last, last_change = current, clock()
            if progress:
                progress(current)
    return last


def check_election(
    dsn: str,
    election_id: str,
    acked: Iterable[str],
    *,
    timeout_s: float = 180.0,
    stall_s: float = 30.0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, object], dict[str, int]]:
    """Wait for the processor, then compare ``votes`` of one election with ``acked``.

    Returns the summary and ``vote_id -> rows`` (for per-run breakdowns with ``compare``).
    """
    import psycopg

    acked_set = set(acked)
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:

        def count() -> int:
            row = conn.execute(
                "SELECT count(DISTINCT vote_id) FROM votes WHERE election_id = %s", (election_id,)
            ).fetchone()
            return int(row[0]) if row else 0

        wait_caught_up(
            count, len(acked_set), timeout_s=timeout_s, stall_s=stall_s, progress=progress
        )
        rows = conn.execute(
            "SELECT vote_id, count(*) FROM votes WHERE election_id = %s GROUP BY vote_id",
            (election_id,),
        ).fetchall()
        rejections = conn.execute(
            "SELECT reason, count(*) FROM vote_rejections WHERE election_id = %s GROUP BY reason",
            (election_id,),
        ).fetchall()
    counts = {str(v): int(n) for v, n in rows}
    result: dict[str, object] = {"election": election_id}
    result.update(compare(acked_set, counts))
    result["rejections"] = {str(reason): int(n) for reason, n in rejections}
    result["wait_s"] = round(time.monotonic() - started, 1)
    return result, counts
