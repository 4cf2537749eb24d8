"""core.elections' SQL on the real PostgreSQL: what ``write`` stores, ``load`` (the
processor) and the gateway's ElectionCache read back alike, to the microsecond."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from core import elections
from core.elections import Election, PolicyError
from gateway import admin
from gateway.elections import ElectionCache
from tests.integration.conftest import unique_id

pytestmark = pytest.mark.integration

OPENS_US = 1_764_000_000_123_457  # odd on purpose: no rounding may touch it
CLOSES_US = 1_764_086_400_999_999


def gateway_view(pg_dsn: str, election_id: str) -> Election | None:
    async def read() -> Election | None:
        cache = ElectionCache(pg_dsn)
        try:
            return await cache.lookup(election_id)
        finally:
            await cache.stop()

    return asyncio.run(read())


def test_a_window_round_trips_exactly_and_both_sides_read_the_same(pg_dsn: str) -> None:
    eid = unique_id("sql")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        elections.write(
            conn, eid, ["a", "b"], "max_votes:2", opens_at_us=OPENS_US, closes_at_us=CLOSES_US
        )
        loaded = elections.load(conn, [eid])
    expected = Election(eid, "max_votes:2", frozenset({"a", "b"}), OPENS_US, CLOSES_US)
    assert loaded == {eid: expected}
    assert gateway_view(pg_dsn, eid) == expected


def test_open_ends_are_infinities_in_postgresql_and_none_in_the_model(pg_dsn: str) -> None:
    eid = unique_id("sql")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        elections.write(conn, eid, ["a"])
        ends = conn.execute(
            "SELECT opens_at = '-infinity', closes_at = 'infinity' FROM elections"
            " WHERE election_id = %s",
            (eid,),
        ).fetchone()
        assert ends == (True, True)
        assert elections.load(conn, [eid])[eid] == Election(eid, "first_wins", frozenset({"a"}))
    assert gateway_view(pg_dsn, eid) == Election(eid, "first_wins", frozenset({"a"}))


def test_writing_again_updates_the_election_and_adds_candidates(pg_dsn: str) -> None:
    eid = unique_id("sql")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        elections.write(conn, eid, ["a"], closes_at_us=CLOSES_US)
        elections.write(conn, eid, ["b"], "last_wins", opens_at_us=OPENS_US)
        assert elections.load(conn, [eid])[eid] == Election(
            eid, "last_wins", frozenset({"a", "b"}), OPENS_US, None
        )


def test_an_unknown_policy_writes_nothing(pg_dsn: str) -> None:
    eid = unique_id("sql")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        with pytest.raises(PolicyError):
            elections.write(conn, eid, ["a"], "max_votes:0")
        assert elections.load(conn, [eid]) == {}
    assert admin.election_candidates(pg_dsn, eid) == []


def test_the_operators_seconds_are_converted_at_the_edge(pg_dsn: str) -> None:
    eid = unique_id("sql")
    admin.create_election(pg_dsn, eid, ["b", "a"], closes_at=1_764_086_400.5)
    with psycopg.connect(pg_dsn) as conn:
        assert elections.load(conn, [eid])[eid].closes_at_us == 1_764_086_400_500_000
    assert admin.election_candidates(pg_dsn, eid) == ["a", "b"]
