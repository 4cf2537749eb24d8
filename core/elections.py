"""The election model the gateway and the processor share, and its SQL.

One unit for time: microseconds since the Unix epoch, the unit of an event's
``received_at_us``; ``None`` for an open end (PostgreSQL's ``-infinity`` / ``infinity``).
The gateway's clock (float seconds) is converted once, by ``micros``, exactly as the
vote's ``received_at_us`` is, so the gateway and the processor judge a vote at the edge
of the window alike. Seconds appear only at the operator's edge
(``gateway.admin.create_election``).

Reading (``SELECT_SQL`` + ``select_params``, rows through ``from_row``) and writing
(``write``) are the only SQL on ``elections`` and ``candidates`` outside the migrations;
the gateway runs the select over its async connections, the processor over its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

POLICIES = ("first_wins", "last_wins", "max_votes:N")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class PolicyError(ValueError):
    """An election's policy text is not first_wins, last_wins or max_votes:N (N >= 1)."""


def max_votes(policy: str) -> int:
    """Votes that may count per voter under ``policy``; raises PolicyError."""
    if policy in ("first_wins", "last_wins"):
        return 1
    if policy.startswith("max_votes:"):
        try:
            n = int(policy.split(":", 1)[1])
        except ValueError:
            n = 0
        if n >= 1:
            return n
    raise PolicyError(f"unknown policy {policy!r} (one of {', '.join(POLICIES)})")


def micros(seconds: float) -> int:
    """Unix seconds (``time.time()``) in the model's unit, as ``received_at_us`` is made."""
    return int(seconds * 1_000_000)


@dataclass(frozen=True, slots=True)
class Election:
    election_id: str
    policy: str
    candidates: frozenset[str]
    # Microseconds since the epoch; None for an open end.
    opens_at_us: int | None = None
    closes_at_us: int | None = None

    @property
    def last_wins(self) -> bool:
        return self.policy == "last_wins"

    @property
    def max_votes(self) -> int:
        """Votes that may count per voter under first_wins / max_votes:N."""
        try:
            return max_votes(self.policy)
        except PolicyError as exc:
            raise PolicyError(f"election {self.election_id}: {exc}") from None

    def is_open_at(self, at_us: int) -> bool:
        """Whether a vote received at ``at_us`` falls in [opens_at, closes_at)."""
        if self.opens_at_us is not None and at_us < self.opens_at_us:
            return False
        return self.closes_at_us is None or at_us < self.closes_at_us

    def is_open(self, now: float) -> bool:
        """``is_open_at`` for the gateway's clock (unix seconds)."""
        return self.is_open_at(micros(now))


# Every election, or those named: params from ``select_params``. extract(epoch) is
# numeric, so the microseconds are exact.
SELECT_SQL = """
SELECT e.election_id, e.policy,
       CASE WHEN e.opens_at = '-infinity' THEN NULL
            ELSE (extract(epoch FROM e.opens_at) * 1000000)::bigint END,
       CASE WHEN e.closes_at = 'infinity' THEN NULL
            ELSE (extract(epoch FROM e.closes_at) * 1000000)::bigint END,
       coalesce(array_agg(c.candidate_id) FILTER (WHERE c.candidate_id IS NOT NULL), '{}')
FROM elections e LEFT JOIN candidates c USING (election_id)
WHERE %(all)s OR e.election_id = ANY(%(ids)s)
GROUP BY e.election_id
"""


def select_params(ids: Sequence[str] | None = None) -> dict[str, Any]:
    """``SELECT_SQL``'s parameters: every election (None) or those in ``ids``."""
    return {"all": ids is None, "ids": list(ids or ())}


def from_row(row: Sequence[Any]) -> Election:
    eid, policy, opens_us, closes_us, candidates = row
    return Election(eid, policy, frozenset(candidates), opens_us, closes_us)


def load(conn: psycopg.Connection, ids: Sequence[str] | None = None) -> dict[str, Election]:
    """Elections (all, or those in ``ids``) with their candidates and policy."""
    rows = conn.execute(SELECT_SQL, select_params(ids)).fetchall()
    return {row[0]: from_row(row) for row in rows}


def _timestamp(us: int | None) -> datetime | None:
    # timedelta keeps every microsecond (a float of seconds would not).
    return None if us is None else _EPOCH + timedelta(microseconds=us)


def write(
    conn: psycopg.Connection,
    election_id: str,
    candidates: Iterable[str],
    policy: str = "first_wins",
    *,
    title: str = "",
    opens_at_us: int | None = None,
    closes_at_us: int | None = None,
) -> None:
    """Create or update an election and add its candidates (an upsert; a candidate is
    never removed). Raises PolicyError before writing anything for an unknown policy."""
    max_votes(policy)
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO elections (election_id, title, policy, opens_at, closes_at)
            VALUES (%s, %s, %s, coalesce(%s::timestamptz, '-infinity'),
                    coalesce(%s::timestamptz, 'infinity'))
            ON CONFLICT (election_id) DO UPDATE
               SET title = excluded.title, policy = excluded.policy,
                   opens_at = excluded.opens_at, closes_at = excluded.closes_at,
                   updated_at = now()
            """,
            (election_id, title, policy, _timestamp(opens_at_us), _timestamp(closes_at_us)),
        )
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO candidates (election_id, candidate_id, name) VALUES (%s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                [(election_id, c, c) for c in candidates],
            )
