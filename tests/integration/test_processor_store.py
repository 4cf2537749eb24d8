"""processor.store.Store against real PostgreSQL, without Kafka.

Pins what the batch transaction does at its edges: timestamps stored from
microseconds, and the rare race where processors of two partitions store the same
vote_id or the same new voter at once (one of them rolls back and decides again).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from core.event import VoteEvent, encode
from processor.policy import Decoded, Message, Plan, decode_all
from processor.store import BatchResult, Store, VoteIdRace

pytestmark = pytest.mark.integration

T0 = 1_764_000_000_123_457  # µs since the epoch, odd on purpose


def _batch(partition: int, offset: int, *events: VoteEvent) -> list[Decoded]:
    return decode_all([Message(partition, offset + i, encode(e)) for i, e in enumerate(events)])


def _apply(store: Store, partition: int, offset: int, *events: VoteEvent, **kw: Any) -> BatchResult:
    return store.apply_batch(
        _batch(partition, offset, *events),
        store.load_elections(),
        {partition: offset},
        {partition: offset + len(events)},
        **kw,
    )


def test_received_at_microseconds_round_trip(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"), policy="last_wins")
    store = Store(pg_dsn, uuid.uuid4().hex, "t")
    try:
        _apply(store, 0, 0, VoteEvent(1, "x1", eid, "ann", "a", T0, "gw"))
        # A later re-vote updates the known voter's row (UPDATE path, not COPY).
        _apply(store, 0, 1, VoteEvent(1, "x2", eid, "ann", "b", T0 + 1, "gw"))
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT vote_id, (extract(epoch FROM received_at) * 1000000)::bigint,"
                " superseded_by FROM votes WHERE election_id = %s ORDER BY vote_id",
                (eid,),
            ).fetchall()
            voter = conn.execute(
                "SELECT counted, current_vote_id, current_choice,"
                " (extract(epoch FROM current_received_at) * 1000000)::bigint"
                " FROM voters WHERE election_id = %s",
                (eid,),
            ).fetchall()
            tally = dict(
                conn.execute(
                    "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s",
                    (eid,),
                ).fetchall()
            )
    finally:
        store.close()
    assert rows == [("x1", T0, "x2"), ("x2", T0 + 1, None)]
    assert voter == [(1, "x2", "b", T0 + 1)]
    assert tally == {"a": 0, "b": 1}


def _race(
    pg_dsn: str, first: tuple[int, VoteEvent], second: tuple[int, VoteEvent]
) -> tuple[Exception | None, BatchResult]:
    """``second``'s batch runs while ``first``'s transaction holds all its rows, uncommitted;
    returns what ``second`` raised and its retry's result."""
    group = uuid.uuid4().hex  # the session's database keeps other tests' offsets
    s1, s2 = Store(pg_dsn, group, "t"), Store(pg_dsn, group, "t")
    outcome: list[Exception | None] = []
    inserted = threading.Event()

    def second_batch() -> None:
        inserted.wait(10)
        try:
            _apply(s2, second[0], 0, second[1])
            outcome.append(None)
        except Exception as exc:  # reported to the test thread
            outcome.append(exc)

    t = threading.Thread(target=second_batch)
    t.start()
    try:

        def hold(_plan: Plan) -> None:
            # All of s1's rows are in (uncommitted); give s2 time to block on them.
            inserted.set()
            time.sleep(0.5)

        _apply(s1, first[0], 0, first[1], before_commit=hold)
        t.join(10)
        assert outcome, "second batch did not finish"
        retried = _apply(s2, second[0], 0, second[1])
    finally:
        s1.close()
        s2.close()
    return outcome[0], retried


def test_same_vote_id_from_two_partitions_races_then_is_rejected(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "same", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "same", eid, "bob", "b", T0, "gw")),
    )
    assert isinstance(err, VoteIdRace)
    assert retried.plan.outcomes == {"duplicate_vote_id": 1}


def test_same_new_voter_from_two_partitions_races_then_counts_once(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "v1", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "v2", eid, "ann", "b", T0, "gw")),
    )
    assert isinstance(err, VoteIdRace)
    assert retried.plan.outcomes == {"voter_already_voted": 1}
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(
            "SELECT coalesce(sum(votes), 0) FROM election_tallies WHERE election_id = %s", (eid,)
        ).fetchone()[0]
    assert n == 1
