"""processor.store.Store against real PostgreSQL, without Kafka.

Pins what the batch transaction does at its edges: timestamps stored from
microseconds, and the rare race where processors of two partitions store the same
vote_id or the same new voter at once (one of them rolls back and decides again).
Every test runs through the three lookup paths of ``Store`` (staged temp tables and
array parameters, chosen by ``lookup_threshold``, and the member's own state store), and
one crafted sequence of batches must leave identical rows, rejections, tallies and
offsets through each. The state store's own edges (a key another stream wrote, a fenced
batch) have tests of their own at the end.
"""

from __future__ import annotations

import logging
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
from processor.store import BatchResult, Fenced, Store, VoteIdRace

pytestmark = pytest.mark.integration

# The store's paths are under test here, not authentication: unsigned events are taken.
UNSIGNED = EventAuth(KeySet(()), accept_unsigned=True)

# Store arguments that force each path for any batch these tests make.
STAGED: dict[str, Any] = {"lookup_threshold": 0}
ARRAYS: dict[str, Any] = {"lookup_threshold": 1_000_000}
STATE: dict[str, Any] = {"state": True}
PATHS = pytest.mark.parametrize("path", [STAGED, ARRAYS, STATE], ids=["staged", "arrays", "state"])

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
    pg_dsn: str, create_election: Callable[..., str], path: dict[str, Any]
) -> None:
    eid = create_election(("a", "b"), policy="last_wins")
    store = Store(pg_dsn, uuid.uuid4().hex, "t", **path)
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
    pg_dsn: str, first: tuple[int, VoteEvent], second: tuple[int, VoteEvent], path: dict[str, Any]
) -> tuple[Exception | None, BatchResult]:
    """``second``'s batch runs while ``first``'s transaction holds all its rows, uncommitted;
    returns what ``second`` raised and its retry's result."""
    group = uuid.uuid4().hex  # the session's database keeps other tests' offsets
    s1 = Store(pg_dsn, group, "t", **path)
    s2 = Store(pg_dsn, group, "t", **path)
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
    pg_dsn: str, create_election: Callable[..., str], path: dict[str, Any]
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "same", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "same", eid, "bob", "b", T0, "gw")),
        path,
    )
    assert isinstance(err, VoteIdRace)
    assert retried.plan.outcomes == {"duplicate_vote_id": 1}


@PATHS
def test_same_new_voter_from_two_partitions_races_then_counts_once(
    pg_dsn: str, create_election: Callable[..., str], path: dict[str, Any]
) -> None:
    eid = create_election(("a", "b"))
    err, retried = _race(
        pg_dsn,
        (0, VoteEvent(1, "v1", eid, "ann", "a", T0, "gw")),
        (1, VoteEvent(1, "v2", eid, "ann", "b", T0, "gw")),
        path,
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
    pg_dsn: str, create_election: Callable[..., str], path: dict[str, Any]
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
    store = Store(pg_dsn, group, topic, **path)
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
    mixed = _run_sequence(pg_dsn, create_election, {"lookup_threshold": 10})
    state = _run_sequence(pg_dsn, create_election, STATE)

    # Each run took the path it was meant to (the stage is emptied at commit).
    assert all(n > 0 for n in staged[2])
    assert arrays[2] == [0, 0, 0]
    assert mixed[2][0] > 0 and mixed[2][1:] == [0, 0]
    assert state[2] == [0, 0, 0]

    assert arrays[:2] == staged[:2]
    assert mixed[:2] == staged[:2]
    assert state[:2] == staged[:2]

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


# -- the state store's edges -------------------------------------------------------------


def _scans(cur: psycopg.Cursor) -> dict[str, int]:
    """Index and sequential scans of `votes` and `voters` (all partitions) by this
    session that its statistics have not reported yet: within one transaction, a
    difference of two readings counts what ran in between."""
    rows = cur.execute(
        "SELECT split_part(relname, '_p', 1), sum(coalesce(idx_scan, 0) + seq_scan)"
        " FROM pg_stat_xact_user_tables WHERE relname ~ '^(votes|voters)_p[0-9]+$'"
        " GROUP BY 1"
    ).fetchall()
    return {name: int(n) for name, n in rows}


@pytest.mark.parametrize("path", [ARRAYS, STATE], ids=["arrays", "state"])
def test_state_answers_without_lookup_queries(
    pg_dsn: str, create_election: Callable[..., str], path: dict[str, Any]
) -> None:
    """Once its first batch loaded the partition, the state path's lookups read neither
    votes nor voters (the arrays path, for contrast, probes both), and the batch still
    decides replays and second votes."""
    eid = create_election(("a", "b"))
    store = Store(pg_dsn, uuid.uuid4().hex, f"t-{uuid.uuid4().hex[:8]}", **path)
    scans: list[dict[str, int]] = []
    lookups = store._lookups

    def counted(cur: psycopg.Cursor, *args: Any) -> Any:
        before = _scans(cur)
        try:
            return lookups(cur, *args)
        finally:
            scans.append({k: n - before[k] for k, n in _scans(cur).items()})

    store._lookups = counted  # type: ignore[method-assign]
    try:
        first = _apply(store, 0, 0, VoteEvent(1, "x1", eid, "ann", "a", T0, "gw"))
        assert first.plan.outcomes == {"counted": 1}
        later = _apply(
            store,
            0,
            1,
            VoteEvent(1, "x1", eid, "ann", "a", T0, "gw"),  # replay
            VoteEvent(1, "x2", eid, "ann", "b", T0 + 1, "gw"),  # second vote
            VoteEvent(1, "x3", eid, "bob", "b", T0 + 2, "gw"),
        )
    finally:
        store.close()
    assert later.plan.outcomes == {"duplicate": 1, "voter_already_voted": 1, "counted": 1}
    if path is STATE:
        assert scans[0]["votes"] > 0  # the first batch loaded the partition
        assert scans[1] == {"votes": 0, "voters": 0}, scans
    else:
        assert scans[1]["votes"] > 0 and scans[1]["voters"] > 0, scans


def test_state_learns_a_vote_id_stored_through_another_partition(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    """Partition 1's state never saw partition 0's vote_id: the COPY collides, the batch
    is decided again from PostgreSQL, and the state keeps that answer for a replay."""
    eid = create_election(("a", "b"))
    store = Store(pg_dsn, uuid.uuid4().hex, f"t-{uuid.uuid4().hex[:8]}", **STATE)
    try:
        _apply(store, 0, 0, VoteEvent(1, "same", eid, "ann", "a", T0, "gw"))
        theirs = VoteEvent(1, "same", eid, "bob", "b", T0, "gw")
        with pytest.raises(VoteIdRace):
            _apply(store, 1, 0, theirs)
        assert _apply(store, 1, 0, theirs).plan.outcomes == {"duplicate_vote_id": 1}
        assert _apply(store, 1, 1, theirs).plan.outcomes == {"duplicate": 1}
    finally:
        store.close()


def test_state_missing_another_streams_voter_update_counts_once(
    pg_dsn: str, create_election: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    """Another stream (here another topic) moves a voter the state already knows: the
    state's UPDATE finds the row changed, the batch is decided again from PostgreSQL, and
    the voter stays within max_votes:2."""
    eid = create_election(("a", "b", "c"), policy="max_votes:2")
    group = uuid.uuid4().hex
    ours = Store(pg_dsn, group, f"t-{uuid.uuid4().hex[:8]}", **STATE)
    other = Store(pg_dsn, group, f"t-{uuid.uuid4().hex[:8]}", **ARRAYS)
    try:
        _apply(ours, 0, 0, VoteEvent(1, "m1", eid, "dan", "a", T0, "gw"))
        _apply(other, 0, 0, VoteEvent(1, "m2", eid, "dan", "b", T0 + 1, "gw"))
        third = VoteEvent(1, "m3", eid, "dan", "c", T0 + 2, "gw")
        with caplog.at_level(logging.INFO, "processor.store"):
            assert _apply(ours, 0, 1, third).plan.outcomes == {"voter_already_voted": 1}
        assert [r.detail for r in caplog.records if r.msg == "decided again from PostgreSQL"] == [
            "1 of 1 known voters changed meanwhile"
        ]
        # And the state learnt dan's row: a fourth vote is decided without a retry.
        caplog.clear()
        fourth = VoteEvent(1, "m4", eid, "dan", "a", T0 + 3, "gw")
        with caplog.at_level(logging.INFO, "processor.store"):
            assert _apply(ours, 0, 2, fourth).plan.outcomes == {"voter_already_voted": 1}
        assert not caplog.records
    finally:
        ours.close()
        other.close()
    with psycopg.connect(pg_dsn) as conn:
        counted = conn.execute(
            "SELECT counted FROM voters WHERE election_id = %s AND voter_id = 'dan'", (eid,)
        ).fetchone()[0]
        tally = conn.execute(
            "SELECT sum(votes) FROM election_tallies WHERE election_id = %s", (eid,)
        ).fetchone()[0]
    assert (counted, tally) == (2, 2)


def test_state_is_dropped_after_a_fenced_batch(
    pg_dsn: str, create_election: Callable[..., str]
) -> None:
    """A member that lost its partition to another (a zombie) must not go on trusting its
    state. Here the new owner rejects a vote for an election that does not exist yet;
    once it exists, the zombie's replay of that vote is a duplicate only if the zombie
    reloaded what the new owner committed (its own state never saw that rejection)."""
    eid = create_election(("a", "b"))
    group, topic = uuid.uuid4().hex, f"t-{uuid.uuid4().hex[:8]}"
    zombie = Store(pg_dsn, group, topic, **STATE)
    owner = Store(pg_dsn, group, topic, **STATE)
    early = VoteEvent(1, "x1", eid, "fay", "a", T0, "gw")

    def apply(store: Store, offset: int, *events: VoteEvent, known: bool) -> BatchResult:
        elections = store.load_elections([eid]) if known else {}
        return store.apply_batch(
            _batch(0, offset, *events), elections, {0: offset}, {0: offset + len(events)}
        )

    try:
        apply(zombie, 0, VoteEvent(1, "x0", eid, "gus", "b", T0, "gw"), known=True)
        assert apply(owner, 1, early, known=False).plan.outcomes == {"unknown_election": 1}
        with pytest.raises(Fenced):
            apply(zombie, 1, early, known=True)
        replay = apply(zombie, 2, early, known=True)
    finally:
        zombie.close()
        owner.close()
    assert replay.plan.outcomes == {"duplicate": 1}
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute(
            "SELECT count(*) FROM votes WHERE election_id = %s AND vote_id = 'x1'", (eid,)
        ).fetchone()[0]
    assert stored == 0
