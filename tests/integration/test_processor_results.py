"""gateway.results.ResultsReader against real Redis and PostgreSQL.

The rows are written the way the processor writes them (``processor.cache`` for Redis,
plain rows for PostgreSQL), so these tests pin the contract between the two sides.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable

import psycopg
import pytest

from gateway.results import HEARTBEAT, ResultsReader
from processor import metrics
from processor.cache import TallyCache, TallyPublisher
from processor.policy import Plan, VoteRow
from processor.store import BatchResult, ShardTally

pytestmark = pytest.mark.integration


def _shards(eid: str, offset: int, **votes: int) -> list[ShardTally]:
    return [ShardTally(eid, c, "t", 0, n, offset) for c, n in votes.items()]


def _put_tallies(dsn: str, eid: str, offset: int, **votes: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for c, n in votes.items():
            conn.execute(
                "INSERT INTO tallies VALUES (%s, %s, 't', 0, %s, %s)"
                " ON CONFLICT (election_id, candidate_id, cluster, topic, kafka_partition)"
                " DO UPDATE SET votes = EXCLUDED.votes, as_of_offset = EXCLUDED.as_of_offset",
                (eid, c, n, offset),
            )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_results_redis_then_postgres_fallback(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b", "c"))
    cache = TallyCache(redis_url)

    async def scenario() -> None:
        reader = ResultsReader(redis_url, pg_dsn)
        down = ResultsReader(f"redis://127.0.0.1:{_closed_port()}/0", pg_dsn)
        await reader.start()
        await down.start()
        try:
            assert await reader.results("no-such-election") is None
            # Nothing in Redis yet: PostgreSQL, every candidate with 0.
            r = await reader.results(eid)
            assert r is not None and r["source"] == "postgres"
            assert r["tallies"] == {"a": 0, "b": 0, "c": 0} and r["total"] == 0

            _put_tallies(pg_dsn, eid, 10, a=3, b=1)
            cache.write(eid, _shards(eid, 10, a=3, b=1), full=True)
            r = await reader.results(eid)
            assert r is not None and r["source"] == "redis"
            assert r["tallies"] == {"a": 3, "b": 1, "c": 0} and r["total"] == 4
            assert r["as_of"] > 0

            # Redis unreachable: the same numbers from PostgreSQL.
            r = await down.results(eid)
            assert r is not None and r["source"] == "postgres"
            assert r["tallies"] == {"a": 3, "b": 1, "c": 0}
            assert await down.results("no-such-election") is None
        finally:
            await reader.close()
            await down.close()

    try:
        asyncio.run(scenario())
    finally:
        cache.delete(eid)
        cache.close()


def test_cache_ignores_older_versions_and_replays(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"))
    cache = TallyCache(redis_url)
    try:
        assert cache.write(eid, _shards(eid, 5, a=1), full=False) == -1  # no keys: full
        assert cache.write(eid, _shards(eid, 5, a=1), full=True) == 1
        assert cache.write(eid, _shards(eid, 9, a=4), full=False) == 1
        assert cache.write(eid, _shards(eid, 9, a=4), full=False) == 0  # replay
        assert cache.write(eid, _shards(eid, 7, a=2), full=False) == 0  # zombie, older
        other = [ShardTally(eid, "a", "t", 1, 10, 3)]  # another partition adds up
        assert cache.write(eid, other, full=False) == 1
        assert cache.client.hgetall(f"tally:{eid}") == {b"a": b"14"}
    finally:
        cache.delete(eid)
        cache.close()


def test_publisher_heals_a_failed_or_flushed_election(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"))
    in_postgres = _shards(eid, 7, a=2, b=1)  # what read_shards answers: the committed truth
    reads: list[str] = []

    def read_shards(election_id: str) -> list[ShardTally]:
        reads.append(election_id)
        return in_postgres

    def result(shards: list[ShardTally]) -> BatchResult:
        plan = Plan(votes=[VoteRow(eid, "x", "v", "a", 1, "g", 0, 6)])
        return BatchResult(plan, shards)

    down = TallyCache(f"redis://127.0.0.1:{_closed_port()}/0")
    publisher = TallyPublisher(down, read_shards)
    errors = metrics.CACHE_ERRORS._value.get()
    try:
        publisher.publish(result(_shards(eid, 7, a=1)), known={eid})
        assert publisher.stale == {eid}
        assert metrics.CACHE_ERRORS._value.get() > errors
        down.close()
        publisher.cache = TallyCache(redis_url)
        reads.clear()
        publisher.heal()  # the idle loop: rewritten in full from PostgreSQL
        assert publisher.stale == set() and reads == [eid]
        assert publisher.cache.client.hgetall(f"tally:{eid}") == {b"a": b"2", b"b": b"1"}

        # Redis flushed; a batch that changed no tally of a known election still heals it.
        publisher.cache.delete(eid)
        publisher.publish(result([]), known={eid})
        assert reads == [eid, eid]
        assert publisher.cache.client.hgetall(f"tally:{eid}") == {b"a": b"2", b"b": b"1"}
        # An election the member does not know is not written for a batch without tallies.
        publisher.cache.delete(eid)
        publisher.publish(result([]), known=set())
        assert reads == [eid, eid] and publisher.cache.client.exists(f"tally:{eid}") == 0
    finally:
        publisher.cache.delete(eid)
        publisher.close()


def test_publisher_write_says_whether_redis_took_it(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    """What the region watch relies on: False (and the election stale) when Redis is
    down, so it stops its sync; True once written, in full when Redis lost the keys."""
    eid = create_election(("a", "b"))
    reads: list[str] = []

    def read_shards(election_id: str) -> list[ShardTally]:
        reads.append(election_id)
        return _shards(eid, 9, a=5, b=2)

    down = TallyPublisher(TallyCache(f"redis://127.0.0.1:{_closed_port()}/0"), read_shards)
    up = TallyPublisher(TallyCache(redis_url), read_shards)
    try:
        assert down.write(eid, _shards(eid, 3, a=1)) is False
        assert down.stale == {eid}
        assert up.write(eid, _shards(eid, 3, a=1)) is True  # no keys yet: written in full
        assert reads == [eid] and up.stale == set()
        assert up.cache.client.hgetall(f"tally:{eid}") == {b"a": b"5", b"b": b"2"}
        assert up.write(eid, [ShardTally(eid, "a", "t", 0, 6, 10)]) is True  # incremental
        assert reads == [eid]
        assert up.cache.client.hgetall(f"tally:{eid}") == {b"a": b"6", b"b": b"2"}
    finally:
        up.cache.delete(eid)
        up.close()
        down.close()


def test_a_change_is_a_notice_and_every_stream_gets_the_get_document(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    """The processor's script publishes only {election_id, as_of}; the gateway builds the
    frames with the same document as GET …/results (a candidate without votes shows 0)."""
    eid = create_election(("a", "b", "c"))
    cache = TallyCache(redis_url)
    cache.write(eid, _shards(eid, 1, a=1), full=True)
    notices = cache.client.pubsub()
    notices.subscribe(f"results:{eid}")

    async def scenario() -> tuple[dict, dict]:
        reader = ResultsReader(redis_url, pg_dsn, heartbeat_s=30)
        await reader.start()
        try:
            gen = reader.stream(eid)
            await asyncio.wait_for(anext(gen), 10)
            await asyncio.sleep(0.2)  # subscribed by now (the first frame came after it)
            await asyncio.to_thread(cache.write, eid, _shards(eid, 2, b=4), False)
            frame = await asyncio.wait_for(anext(gen), 10)
            await gen.aclose()
            got = await reader.results(eid)
            assert got is not None
            return json.loads(frame.split(b"\ndata: ", 1)[1]), got
        finally:
            await reader.close()

    try:
        streamed, got = asyncio.run(scenario())
        assert streamed == got
        assert streamed["tallies"] == {"a": 1, "b": 4, "c": 0} and streamed["total"] == 5
        deadline = time.monotonic() + 10
        published = []
        while len(published) < 2 and time.monotonic() < deadline:
            msg = notices.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if msg is not None:
                published.append(json.loads(msg["data"]))
        meta = float(cache.client.hget(f"tally_meta:{eid}", "as_of"))
        assert published[-1] == {"election_id": eid, "as_of": meta}
    finally:
        notices.close()
        cache.delete(eid)
        cache.close()


def test_vote_status(pg_dsn: str, redis_url: str, create_election: Callable[..., str]) -> None:
    eid = create_election(("a", "b"), "last_wins")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for x, voter, choice, sup in [("v1", "al", "a", "v2"), ("v2", "al", "b", None)]:
            conn.execute(
                "INSERT INTO votes (election_id, vote_id, voter_id, choice, received_at,"
                " gateway_id, kafka_partition, kafka_offset, superseded_by)"
                " VALUES (%s, %s, %s, %s, now(), 'g', 0, 0, %s)",
                (eid, x, voter, choice, sup),
            )
        conn.execute(
            "INSERT INTO vote_rejections (election_id, vote_id, voter_id, choice, reason,"
            " kafka_partition, kafka_offset) VALUES (%s, 'v2', 'bo', 'a',"
            " 'duplicate_vote_id', 0, 1), (%s, 'v3', 'bo', 'zz', 'unknown_candidate', 0, 2)",
            (eid, eid),
        )

    async def scenario() -> None:
        reader = ResultsReader(redis_url, pg_dsn)
        await reader.start()
        try:
            st = reader.vote_status
            assert await st(eid, "v2", "al") == {"status": "counted"}
            assert await st(eid, "v1", "al") == {"status": "superseded", "superseded_by": "v2"}
            assert await st(eid, "v2", "bo") == {
                "status": "rejected",
                "reason": "duplicate_vote_id",
            }
            assert await st(eid, "v3", "bo") == {
                "status": "rejected",
                "reason": "unknown_candidate",
            }
            # Someone else's vote answers as an unknown one does: it reveals nothing.
            assert await st(eid, "v1", "mallory") == {"status": "pending"}
            assert await st(eid, "v9", "al") == {"status": "pending"}
            assert await st("no-such-election", "v1", "al") is None
        finally:
            await reader.close()

    asyncio.run(scenario())


def test_stream_snapshot_changes_and_heartbeat(
    pg_dsn: str, redis_url: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"))
    cache = TallyCache(redis_url)
    cache.write(eid, _shards(eid, 1, a=1), full=True)

    async def scenario() -> list[bytes]:
        reader = ResultsReader(redis_url, pg_dsn, heartbeat_s=0.3)
        await reader.start()
        frames: list[bytes] = []
        try:
            gen = reader.stream(eid)
            frames.append(await asyncio.wait_for(anext(gen), 10))
            await asyncio.sleep(0.2)  # subscribed by now (the first frame came after it)
            await asyncio.to_thread(cache.write, eid, _shards(eid, 2, a=2, b=1), False)
            while len(frames) < 4:
                frames.append(await asyncio.wait_for(anext(gen), 10))
            await gen.aclose()
            # A second viewer gets the current state first.
            gen2 = reader.stream(eid)
            frames.append(await asyncio.wait_for(anext(gen2), 10))
            await gen2.aclose()
        finally:
            await reader.close()
        return frames

    try:
        frames = asyncio.run(scenario())
    finally:
        cache.delete(eid)
        cache.close()

    def doc(frame: bytes) -> dict:
        head, data = frame.split(b"\ndata: ", 1)
        assert head == b"event: tally" and data.endswith(b"\n\n")
        return json.loads(data)

    first = doc(frames[0])
    assert first["tallies"] == {"a": 1, "b": 0} and first["source"] == "redis"
    rest = [f for f in frames[1:4] if f != HEARTBEAT]
    assert doc(rest[0])["tallies"] == {"a": 2, "b": 1} and doc(rest[0])["total"] == 3
    assert HEARTBEAT in frames[1:4]
    assert doc(frames[4])["tallies"] == {"a": 2, "b": 1}
