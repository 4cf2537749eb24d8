"""What the gateway knows of each election: its voting window and its candidates.

Loaded from PostgreSQL at start and refreshed in the background over one kept
connection, so the request path never waits on the database. An id the cache does not
know is looked up once on demand (a freshly created election works at once): requests
arriving while that lookup is in flight wait for its answer, and an id PostgreSQL does
not know is remembered as unknown for a short while, so a flood of requests for made-up
elections cannot reach PostgreSQL.
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


class LookupFailed(Exception):
    """PostgreSQL could not be asked: the election may well exist (a 503, not a 404)."""


class ElectionCache:
    def __init__(self, dsn: str, refresh_s: float = 2.0, negative_ttl_s: float = 1.0) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._negative_ttl_s = negative_ttl_s
        self._elections: dict[str, Election] = {}
        self._unknown_until: dict[str, float] = {}
        self._in_flight: dict[str, asyncio.Future[Election | None]] = {}
        self._task: asyncio.Task[None] | None = None
        # One connection per worker, kept: a new one per refresh would cost a PostgreSQL
        # backend start per refresh per worker, and more of the worker's loop.
        self._conn: psycopg.AsyncConnection | None = None
        self._connecting = asyncio.Lock()
        self.loaded = False
        self.last_refresh_ok = 0.0

    def get(self, election_id: str) -> Election | None:
        """The cached election, without I/O (the request path's first try)."""
        return self._elections.get(election_id)

    async def lookup(self, election_id: str) -> Election | None:
        """The election, or None when PostgreSQL does not know it; raises LookupFailed.

        One query per id at a time: concurrent callers share its answer, so none is told
        "unknown" while the first caller's query is still running. An unknown id is not
        asked again for ``negative_ttl_s``.
        """
        election = self._elections.get(election_id)
        if election is not None:
            return election
        in_flight = self._in_flight.get(election_id)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        if self._unknown_until.get(election_id, 0.0) > time.monotonic():
            return None
        answer: asyncio.Future[Election | None] = asyncio.get_running_loop().create_future()
        self._in_flight[election_id] = answer
        try:
            found = await self._fetch(election_id)
        except psycopg.Error as exc:
            log.warning("election lookup failed", extra={"error": str(exc)})
            answer.set_exception(LookupFailed(str(exc)))
            raise LookupFailed(str(exc)) from None
        except BaseException as exc:  # cancelled: the callers sharing it must not hang
            answer.set_exception(LookupFailed(f"lookup interrupted: {exc!r}"))
            raise
        else:
            election = found[0] if found else None
            if election is not None:
                self._elections[election_id] = election
            else:
                if len(self._unknown_until) > 100_000:
                    self._unknown_until.clear()  # bounded: made-up ids cost fixed memory
                self._unknown_until[election_id] = time.monotonic() + self._negative_ttl_s
            answer.set_result(election)
            return election
        finally:
            del self._in_flight[election_id]
            if answer.done():
                answer.exception()  # mark it retrieved: asyncio would log it if unshared

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
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

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
        conn = await self._connection()
        try:
            cur = await conn.execute(_QUERY.replace("{where}", where), params)
            return [_row_to_election(r) for r in await cur.fetchall()]
        except psycopg.Error:
            # Most likely the connection broke (PostgreSQL restarted): the next call opens
            # a new one. Dropping it after any error keeps that rule simple.
            self._conn = None
            with contextlib.suppress(psycopg.Error):
                await conn.close()
            raise

    async def _connection(self) -> psycopg.AsyncConnection:
        async with self._connecting:  # a refresh and a lookup must not both connect
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=3
                )
            return self._conn
