"""processor.store.Store against real PostgreSQL, without Kafka.

Pins what the batch transaction does at its edges: timestamps stored from
microseconds, and the rare race where processors of two partitions store the same
vote_id or the same new voter at once (one of them rolls back and decides again).
Every test runs through both lookup paths of ``Store`` (staged temp tables and array
parameters, chosen by ``lookup_threshold``), and one crafted sequence of batches must
leave identical rows, rejections, tallies and offsets through either.
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
from core.keyset import KeySet
from processor.policy import Decoded, EventAuth, Message, Plan, decode_all
from processor.store import BatchResult, Store, VoteIdRace

pytestmark = pytest.mark.integration

# The store's paths are under test here, not authentication: unsigned events are taken.
UNSIGNED = EventAuth(KeySet(()), accept_unsigned=True)

# lookup_threshold values that force each path for any batch these tests make.
STAGED = 0
ARRAYS = 1_000_000
PATHS = pytest.mark.parametrize("threshold", [STAGED, ARRAYS], ids=["staged", "arrays"])

T0 = 1_764_000_000_123_457  # µs since the epoch, odd on purpose


def _batch(partition: int, offset: int, *events: VoteEvent) -> list[Decoded]:
    return decode_all(
        [Message(partition, offset + i, encode(e)) for i, e in enumerate(events)], UNSIGNED
    )


def _apply(store: Store, partition: int, offset: int, *events: VoteEvent, **kw: Any) -> BatchResult:
    return store.apply_batch(
        _batch(partition, offset, *events),
        store.load_elections(),
        {partition: offset},
        {partition: offset + len(events)},
        **kw,
    )


@PATHS
def test_received_at_microseconds_round_trip(
    pg_dsn: str, create_election: Callable[..., str], threshold: int
) -> None:
    eid = create_election(("a", "b"), policy="last_wins")
    store = Store(pg_dsn, uuid.uuid4().hex, "t", lookup_threshold=threshold)
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
    pg_dsn: str, first: tuple[int, VoteEvent], second: tuple[int, VoteEvent], threshold: int
) -> tuple[Exception | None, BatchResult]:
    """``second``'s batch runs while ``first``'s transaction holds all its rows, uncommitted;
    returns what ``second`` raised and its retry's result."""
    group = uuid.uuid4().hex  # the session's database keeps other tests' offsets
    s1 = Store(pg_dsn, group, "t", lookup_threshold=threshold)
    s2 = Store(pg_dsn, group, "t", lookup_threshold=threshold)
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


@PATHS
def test_same_vote_id_from_two_partitions_races_then_is_rejected(
    pg_dsn: str, create_election: Callable[..., str], threshold: int
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "same", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "same", eid, "bob", "b", T0, "gw")),
        threshold,
    )
    assert isinstance(err, VoteIdRace)
    assert retried.plan.outcomes == {"duplicate_vote_id": 1}


@PATHS
def test_same_new_voter_from_two_partitions_races_then_counts_once(
    pg_dsn: str, create_election: Callable[..., str], threshold: int
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "v1", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "v2", eid, "ann", "b", T0, "gw")),
        threshold,
    )
    assert isinstance(err, VoteIdRace)
    assert retried.plan.outcomes == {"voter_already_voted": 1}
    with psycopg.connect(pg_dsn) as conn:
        n = conn.execute(
            "SELECT coalesce(sum(votes), 0) FROM election_tallies WHERE election_id = %s", (eid,)
        ).fetchone()[0]
    assert n == 1


# -- the same batches through either lookup path ---------------------------------------

_ELECTIONS = {
    # role: (candidates, policy, closes_at_us)
    "F": (("a", "b"), "first_wins", None),
    "L": (("a", "b"), "last_wins", None),
    "M": (("a", "b", "c"), "max_votes:2", None),
    "C": (("a", "b"), "first_wins", 1_577_836_800_000_000),  # 2020-01-01: closed before T0
}
_GARBAGE = b"\xc1 not msgpack"

# Batches of (partition, role, vote_id, voter, choice, µs after T0, gateway_id); a bytes
# item is an undecodable message on partition 1. Role "X" is an election that does not
# exist. Voters stay on one partition, as the gateway's Kafka key keeps them.
_SEQUENCE: list[list[tuple[int, str, str, str, str, int, str] | bytes]] = [
    [
        (0, "F", "f1", "ann", "a", 1, "gw"),
        (1, "F", "f2", "bob", "b", 2, "gw"),
        (0, "F", "f3", "ann", "b", 3, "gw"),  # voter_already_voted in the batch
        (0, "F", "f1", "ann", "a", 1, "gw"),  # Kafka duplicate in the batch
        (0, "L", "l1", "cat", "a", 10, "gw"),
        (0, "L", "l2", "cat", "b", 20, "gw"),  # supersedes l1 in the batch
        (1, "M", "m1", "dan", "a", 4, "gw"),
        (1, "M", "m2", "dan", "b", 5, "gw"),
        (1, "M", "m3", "dan", "c", 6, "gw"),  # over max_votes:2
        (1, "C", "c1", "eve", "a", 7, "gw"),  # election_closed
        (0, "F", "f4", "fay", "zzz", 8, "gw"),  # unknown_candidate
        (0, "X", "x1", "fay", "a", 9, "gw"),  # unknown_election
        _GARBAGE,  # malformed, undecodable
        (1, "F", "f5", "gus", "a", 9, ""),  # malformed: empty gateway_id
    ],
    [
        (1, "F", "f1", "bob", "b", 11, "gw"),  # duplicate_vote_id (f1 is ann's)
        (0, "F", "f3", "ann", "b", 3, "gw"),  # replay of a rejected vote
        (1, "F", "f2", "bob", "b", 2, "gw"),  # replay of a stored vote
        (1, "F", "f6", "gil", "a", 12, "gw"),
        (0, "L", "l3", "cat", "a", 30, "gw"),  # supersedes stored l2; known voter UPDATE
        (0, "L", "l0", "cat", "b", 5, "gw"),  # older re-vote, late: stored superseded
        (1, "M", "m4", "dan", "a", 13, "gw"),  # dan has 2 already
        (1, "M", "m5", "hal", "a", 14, "gw"),
        _GARBAGE,
    ],
    [
        (1, "M", "m6", "hal", "b", 15, "gw"),  # known voter, counted 1 -> 2
        (0, "L", "l4", "ivy", "a", 16, "gw"),
        (0, "L", "l3", "cat", "a", 30, "gw"),  # replay
        (0, "F", "f1", "ann", "a", 1, "gw"),  # replay
        (1, "C", "c1", "eve", "a", 7, "gw"),  # replay of a rejected vote
    ],
]


def _run_sequence(
    pg_dsn: str, create_election: Callable[..., str], threshold: int
) -> tuple[list[dict[str, int]], dict[str, list[tuple]], list[int]]:
    """Apply ``_SEQUENCE`` with fresh elections, topic and group; return every batch's
    outcomes and the rows it left, with the run's own ids replaced by their roles."""
    eids = {
        role: create_election(cands, policy=pol, closes_at_us=closes)
        for role, (cands, pol, closes) in _ELECTIONS.items()
    }
    eids["X"] = f"no-such-{uuid.uuid4().hex[:8]}"
    role_of = {eid: role for role, eid in eids.items()}
    topic, group = f"t-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    store = Store(pg_dsn, group, topic, lookup_threshold=threshold)
    outcomes: list[dict[str, int]] = []
    staged_keys: list[int] = []
    nxt = {0: 0, 1: 0}
    try:
        for items in _SEQUENCE:
            msgs = []
            first: dict[int, int] = {}
            for it in items:
                if isinstance(it, bytes):
                    p, value = 1, it
                else:
                    p, role, x, a, c, dt, g = it
                    value = encode(VoteEvent(1, x, eids[role], a, c, T0 + dt, g))
                first.setdefault(p, nxt[p])
                msgs.append(Message(p, nxt[p], value))
                nxt[p] += 1

            def seen(_plan: Plan) -> None:
                # Inside the transaction: did this batch stage its keys?
                n = store.conn.execute("SELECT count(*) FROM stage_keys").fetchone()[0]
                staged_keys.append(n)

            result = store.apply_batch(
                decode_all(msgs, UNSIGNED),
                store.load_elections(list(eids.values())),
                first,
                {p: nxt[p] for p in first},
                before_commit=seen,
            )
            outcomes.append(dict(result.plan.outcomes))
    finally:
        store.close()

    def norm(rows: list[tuple]) -> list[tuple]:
        out = []
        for r in rows:
            r = tuple(role_of.get(v, v) if isinstance(v, str) else v for v in r)
            out.append(tuple(v.replace(topic, "TOPIC") if isinstance(v, str) else v for v in r))
        return sorted(out, key=repr)

    ids = list(eids.values())
    with psycopg.connect(pg_dsn) as conn:

        def q(sql: str, *params: Any) -> list[tuple]:
            return norm(conn.execute(sql, params).fetchall())

        us = "(extract(epoch FROM {}) * 1000000)::bigint"
        rows = {
            "votes": q(
                "SELECT election_id, vote_id, voter_id, choice, "
                + us.format("received_at")
                + ", gateway_id, kafka_partition, kafka_offset, superseded_by"
                " FROM votes WHERE election_id = ANY(%s)",
                ids,
            ),
            "rejections": q(
                "SELECT election_id, vote_id, voter_id, choice, reason, detail, "
                + us.format("received_at")
                + ", kafka_partition, kafka_offset"
                " FROM vote_rejections WHERE election_id = ANY(%s) OR vote_id LIKE %s",
                ids,
                f"kafka:{topic}:%",
            ),
            "voters": q(
                "SELECT election_id, voter_id, counted, current_vote_id, current_choice, "
                + us.format("current_received_at")
                + " FROM voters WHERE election_id = ANY(%s)",
                ids,
            ),
            "tallies": q(
                "SELECT election_id, candidate_id, topic, kafka_partition, votes, as_of_offset"
                " FROM tallies WHERE election_id = ANY(%s)",
                ids,
            ),
            "offsets": q(
                "SELECT topic, partition, next_offset FROM consumer_offsets"
                " WHERE consumer_group = %s",
                group,
            ),
        }
    return outcomes, rows, staged_keys


def test_both_lookup_paths_decide_and_write_the_same(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    staged = _run_sequence(pg_dsn, create_election, STAGED)
    arrays = _run_sequence(pg_dsn, create_election, ARRAYS)
    # A threshold between the batch sizes: the first batch staged, the others arrays.
    mixed = _run_sequence(pg_dsn, create_election, 10)

    # Each run took the path it was meant to (the stage is emptied at commit).
    assert all(n > 0 for n in staged[2])
    assert arrays[2] == [0, 0, 0]
    assert mixed[2][0] > 0 and mixed[2][1:] == [0, 0]

    assert arrays[:2] == staged[:2]
    assert mixed[:2] == staged[:2]

    # And what they agree on is right.
    outcomes, rows, _ = staged
    assert outcomes == [
        {
            "counted": 6,  # f1, f2, l1, l2, m1, m2
            "duplicate": 1,
            "voter_already_voted": 2,
            "election_closed": 1,
            "unknown_candidate": 1,
            "unknown_election": 1,
            "malformed": 2,
        },
        {
            "counted": 3,  # f6, l3, m5
            "superseded": 1,  # l0
            "duplicate": 2,
            "duplicate_vote_id": 1,
            "voter_already_voted": 1,
            "malformed": 1,
        },
        {"counted": 2, "duplicate": 3},  # m6, l4
    ]
    reasons = sorted((r[1], r[4]) for r in rows["rejections"])
    assert reasons == sorted(
        [
            ("f3", "voter_already_voted"),
            ("m3", "voter_already_voted"),
            ("c1", "election_closed"),
            ("f4", "unknown_candidate"),
            ("x1", "unknown_election"),
            ("kafka:TOPIC:1:5", "malformed"),
            ("kafka:TOPIC:1:6", "malformed"),  # f5: an empty gateway_id
            ("f1", "duplicate_vote_id"),
            ("m4", "voter_already_voted"),
            ("kafka:TOPIC:1:12", "malformed"),
        ]
    )
    superseded = {r[1]: r[8] for r in rows["votes"] if r[0] == "L"}
    assert superseded == {"l1": "l2", "l2": "l3", "l0": "l3", "l3": None, "l4": None}
    tally: dict[tuple[str, str], int] = {}
    for e, c, _t, _p, n, _o in rows["tallies"]:
        tally[(e, c)] = tally.get((e, c), 0) + n
    assert {k: v for k, v in tally.items() if v} == {
        ("F", "a"): 2,  # ann, gil
        ("F", "b"): 1,  # bob
        ("L", "a"): 2,  # cat (l3), ivy
        ("M", "a"): 2,  # dan, hal
        ("M", "b"): 2,  # dan, hal
    }
    assert rows["offsets"] == [("TOPIC", 0, 13), ("TOPIC", 1, 15)]
