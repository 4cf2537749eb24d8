"""What the gateway knows of each election: its voting window and its candidates.

Loaded from PostgreSQL at start and refreshed in the background, so the request path
never waits on the database. An id the cache does not know is looked up once on demand
(a freshly created election works at once) and remembered as unknown for a short while,
so a flood of requests for made-up elections cannot reach PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import psycopg

log = logging.getLogger("gateway.elections")

_QUERY = """
SELECT e.election_id, e.policy,
       extract(epoch FROM e.opens_at)::float8, extract(epoch FROM e.closes_at)::float8,
       coalesce(array_agg(c.candidate_id) FILTER (WHERE c.candidate_id IS NOT NULL), '{}')
FROM elections e LEFT JOIN candidates c USING (election_id)
{where}
GROUP BY e.election_id
"""


@dataclass(frozen=True, slots=True)
class Election:
    election_id: str
    policy: str
    opens_at: float  # epoch seconds; -inf when always open
    closes_at: float  # epoch seconds; +inf when never closing
    candidates: frozenset[str]

    def is_open(self, now: float) -> bool:
        return self.opens_at <= now < self.closes_at


def _row_to_election(row: tuple) -> Election:
    eid, policy, opens, closes, candidates = row
    return Election(
        eid,
        policy,
        -math.inf if opens is None else opens,
        math.inf if closes is None else closes,
        frozenset(candidates),
    )


class ElectionCache:
    def __init__(self, dsn: str, refresh_s: float = 2.0, negative_ttl_s: float = 1.0) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._negative_ttl_s = negative_ttl_s
        self._elections: dict[str, Election] = {}
        self._unknown_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.loaded = False
        self.last_refresh_ok = 0.0

    def get(self, election_id: str) -> Election | None:
        """The cached election, without I/O (the request path's first try)."""
        return self._elections.get(election_id)

    async def lookup(self, election_id: str) -> Election | None:
        """The election, asking PostgreSQL at most once a ``negative_ttl_s`` per unknown id."""
        election = self._elections.get(election_id)
        if election is not None:
            return election
        now = time.monotonic()
        if self._unknown_until.get(election_id, 0.0) > now:
            return None
        if len(self._unknown_until) > 100_000:
            self._unknown_until.clear()  # bounded: a flood of made-up ids costs fixed memory
        self._unknown_until[election_id] = now + self._negative_ttl_s
        try:
            found = await self._fetch(election_id)
        except psycopg.Error as exc:
            log.warning("election lookup failed", extra={"error": str(exc)})
            return None
        if found:
            self._elections[election_id] = found[0]
            self._unknown_until.pop(election_id, None)
            return found[0]
        return None

    async def refresh(self) -> None:
        elections = await self._fetch(None)
        self._elections = {e.election_id: e for e in elections}
        self.loaded = True
        self.last_refresh_ok = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def healthy(self) -> bool:
        # Stale by more than a few refresh periods means PostgreSQL is out of reach.
        return self.loaded and time.monotonic() - self.last_refresh_ok < max(
            10.0, 5 * self._refresh_s
        )

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except psycopg.Error as exc:
                log.warning("election refresh failed", extra={"error": str(exc)})

    async def _fetch(self, election_id: str | None) -> list[Election]:
        where = "" if election_id is None else "WHERE e.election_id = %s"
        params = () if election_id is None else (election_id,)
        async with await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=3
        ) as conn:
            cur = await conn.execute(_QUERY.replace("{where}", where), params)
            return [_row_to_election(r) for r in await cur.fetchall()]
