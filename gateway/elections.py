"""What the gateway knows of each election: its voting window and its candidates.

Loaded from PostgreSQL at start and refreshed in the background over a kept connection
of its own, so the request path never waits on the database and readiness (which
follows the refresh) never waits behind lookups. An id the cache does not know is looked
up once on demand (a freshly created election works at once), over a second connection:
requests arriving while that lookup is in flight wait for its answer, at most
``max_lookups`` different ids are looked up at a time (more are refused at once), and an
id PostgreSQL does not know is remembered as unknown for a short while, in a bounded
cache that drops its oldest entries, so a flood of made-up ids cannot reach PostgreSQL
for every request nor make the cache forget everything it knows.

The model (``Election``, times in microseconds) and its SQL are ``core.elections``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict

import psycopg

from core.elections import SELECT_SQL, Election, from_row, select_params
from gateway import metrics

log = logging.getLogger("gateway.elections")


class LookupFailed(Exception):
    """PostgreSQL could not be asked: the election may well exist (a 503, not a 404)."""


class _Connection:
    """One kept PostgreSQL connection, reopened on the next use after an error (kept
    because opening one per refresh would start a PostgreSQL backend every refresh)."""

    def __init__(self, dsn: str, purpose: str) -> None:
        self._dsn = dsn
        self._purpose = purpose
        self._conn: psycopg.AsyncConnection | None = None
        self._connecting = asyncio.Lock()

    async def get(self) -> psycopg.AsyncConnection:
        async with self._connecting:
            if self._conn is None or self._conn.closed:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn,
                    autocommit=True,
                    connect_timeout=3,
                    application_name=f"vote-gateway-{self._purpose}",
                )
            return self._conn

    async def drop(self, conn: psycopg.AsyncConnection) -> None:
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(psycopg.Error):
            await conn.close()

    async def close(self) -> None:
        if self._conn is not None:
            await self.drop(self._conn)


class ElectionCache:
    """``negative_ttl_s``: how long an unknown id is remembered as unknown;
    ``negative_capacity``: how many such ids at most (the oldest go first);
    ``max_lookups``: different ids looked up at once."""

    def __init__(
        self,
        dsn: str,
        refresh_s: float = 2.0,
        negative_ttl_s: float = 1.0,
        negative_capacity: int = 100_000,
        max_lookups: int = 4,
    ) -> None:
        self._refresh_s = refresh_s
        self._negative_ttl_s = negative_ttl_s
        self._negative_capacity = negative_capacity
        self._max_lookups = max_lookups
        self._elections: dict[str, Election] = {}
        # Insertion order is expiry order (one TTL for all): the first entry is the oldest.
        self._unknown_until: OrderedDict[str, float] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[Election | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._refresh_conn = _Connection(dsn, "elections")
        self._lookup_conn = _Connection(dsn, "election-lookup")
        self.loaded = False
        self.last_refresh_ok = 0.0

    def get(self, election_id: str) -> Election | None:
        """The cached election, without I/O (the request path's first try)."""
        return self._elections.get(election_id)

    async def lookup(self, election_id: str) -> Election | None:
        """The election, or None when PostgreSQL does not know it; raises LookupFailed.

        One query per id at a time: concurrent callers share its answer, so none is told
        "unknown" while the first caller's query is still running. An unknown id is not
        asked again for ``negative_ttl_s``. Past ``max_lookups`` ids in flight a new one
        is refused (LookupFailed) without a query.
        """
        election = self._elections.get(election_id)
        if election is not None:
            return election
        in_flight = self._in_flight.get(election_id)
        if in_flight is not None:
            return await asyncio.shield(in_flight)
        until = self._unknown_until.get(election_id)
        if until is not None:
            if until > time.monotonic():
                return None
            del self._unknown_until[election_id]
        if len(self._in_flight) >= self._max_lookups:
            metrics.election_lookups_refused_total.inc()
            raise LookupFailed("too many election lookups at once")
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
                while len(self._unknown_until) >= self._negative_capacity:
                    self._unknown_until.popitem(last=False)
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
        await self._refresh_conn.close()
        await self._lookup_conn.close()

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
        """All elections (the refresh) or one (a lookup), each over its own connection."""
        params = select_params(None if election_id is None else [election_id])
        kept = self._refresh_conn if election_id is None else self._lookup_conn
        conn = await kept.get()
        metrics.postgres_queries_total.labels(
            "elections" if election_id is None else "election"
        ).inc()
        try:
            cur = await conn.execute(SELECT_SQL, params)
            return [from_row(r) for r in await cur.fetchall()]
        except psycopg.Error:
            # Most likely the connection broke (PostgreSQL restarted): the next call opens
            # a new one. Dropping it after any error keeps that rule simple.
            await kept.drop(conn)
            raise
