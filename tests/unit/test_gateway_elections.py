"""gateway.elections.ElectionCache.lookup: one query per unknown id, shared by everyone
asking meanwhile; unknown ids are remembered briefly; a database error is not "unknown".

``_fetch`` (the PostgreSQL query) is replaced by a fake that counts calls and answers
after a delay, so concurrent callers really overlap. No database needed.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from gateway.elections import Election, ElectionCache, LookupFailed

NEW = Election("fresh", "first_wins", frozenset({"alice"}))


class FakeDatabase:
    def __init__(self, known: dict[str, Election], fail: bool = False) -> None:
        self.known = known
        self.fail = fail
        self.queries = 0

    async def fetch(self, election_id: str | None) -> list[Election]:
        self.queries += 1
        await asyncio.sleep(0.05)  # long enough for every other caller to arrive
        if self.fail:
            raise psycopg.OperationalError("connection refused")
        assert election_id is not None
        return [self.known[election_id]] if election_id in self.known else []


def cache_over(db: FakeDatabase) -> ElectionCache:
    cache = ElectionCache("postgresql://unused", negative_ttl_s=60.0)
    cache._fetch = db.fetch  # type: ignore[method-assign]
    return cache


def test_concurrent_requests_for_a_new_election_all_find_it_with_one_query() -> None:
    async def scenario() -> None:
        db = FakeDatabase({"fresh": NEW})
        cache = cache_over(db)
        found = await asyncio.gather(*(cache.lookup("fresh") for _ in range(64)))
        assert found == [NEW] * 64  # before the fix: 1 found, 63 told "unknown" (404)
        assert db.queries == 1
        assert cache.get("fresh") == NEW

    asyncio.run(scenario())


def test_an_unknown_id_is_asked_once_and_then_remembered() -> None:
    async def scenario() -> None:
        db = FakeDatabase({})
        cache = cache_over(db)
        assert await asyncio.gather(*(cache.lookup("made-up") for _ in range(20))) == [None] * 20
        assert await cache.lookup("made-up") is None
        assert db.queries == 1

    asyncio.run(scenario())


def test_a_database_error_is_not_an_unknown_election() -> None:
    async def scenario() -> None:
        db = FakeDatabase({"fresh": NEW}, fail=True)
        cache = cache_over(db)
        results = await asyncio.gather(
            *(cache.lookup("fresh") for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, LookupFailed) for r in results), results
        db.fail = False  # not remembered as unknown: the next request asks again
        assert await cache.lookup("fresh") == NEW

    asyncio.run(scenario())


def test_a_cancelled_lookup_does_not_strand_the_callers_sharing_it() -> None:
    async def scenario() -> None:
        db = FakeDatabase({"fresh": NEW})
        cache = cache_over(db)
        first = asyncio.ensure_future(cache.lookup("fresh"))
        await asyncio.sleep(0.01)
        follower = asyncio.ensure_future(cache.lookup("fresh"))
        await asyncio.sleep(0.01)
        first.cancel()
        with pytest.raises(LookupFailed):
            await asyncio.wait_for(follower, 1)
        assert await cache.lookup("fresh") == NEW

    asyncio.run(scenario())


class FakeConnection:
    """Enough of psycopg.AsyncConnection for ElectionCache: execute → fetchall."""

    def __init__(self, rows: list[tuple], broken: list[bool]) -> None:
        self.rows = rows
        self.broken = broken  # shared switch: the next execute fails once
        self.closed = False

    async def execute(self, _query: str, _params: tuple = ()) -> FakeConnection:
        if self.broken and self.broken.pop():
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self

    async def fetchall(self) -> list[tuple]:
        return self.rows

    async def close(self) -> None:
        self.closed = True


def test_refreshes_keep_one_connection_and_replace_it_only_after_an_error(monkeypatch) -> None:
    """Refreshes share one kept connection, lookups another (so readiness, which follows
    the refresh, never waits behind lookups); each is replaced only after an error."""
    rows = [("e1", "first_wins", None, None, ["alice", "bob"])]
    broken: list[bool] = []
    opened: list[FakeConnection] = []

    async def connect(*_args: object, **_kwargs: object) -> FakeConnection:
        opened.append(FakeConnection(rows, broken))
        return opened[-1]

    monkeypatch.setattr(psycopg.AsyncConnection, "connect", connect)

    async def scenario() -> None:
        cache = ElectionCache("postgresql://unused")
        for _ in range(5):
            await cache.refresh()
        assert len(opened) == 1  # not a new connection (a backend start) per refresh
        await asyncio.gather(cache.refresh(), cache.lookup("other"), cache.refresh())
        await cache.lookup("another")
        assert len(opened) == 2  # the lookups' own, kept too
        assert cache.get("e1") == Election("e1", "first_wins", frozenset({"alice", "bob"}))
        broken.append(True)
        with pytest.raises(psycopg.OperationalError):
            await cache.refresh()
        assert opened[0].closed and not opened[1].closed
        await cache.refresh()
        assert len(opened) == 3 and not opened[2].closed
        await cache.stop()
        assert opened[1].closed and opened[2].closed

    asyncio.run(scenario())
