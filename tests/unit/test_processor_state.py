"""processor.state.PartitionState on its own: what it answers, what it learns after a
commit, and what it forgets. Loading from PostgreSQL is covered against the real database
in tests/integration/test_processor_store.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.event import VoteEvent, encode
from core.keyset import KeySet
from processor.policy import Decoded, Election, EventAuth, Lookups, Message, decode_all, plan_batch
from processor.state import PartitionState, StateError

UNSIGNED = EventAuth(KeySet(()), accept_unsigned=True)
T0 = 1_764_000_000_000_000


def _decoded(*items: tuple[int, str, str, str, str]) -> list[Decoded]:
    """(partition, election, vote_id, voter, choice) per message."""
    msgs = [
        Message(p, i, encode(VoteEvent(1, x, e, a, c, T0 + i, "gw")))
        for i, (p, e, x, a, c) in enumerate(items)
    ]
    return decode_all(msgs, UNSIGNED)


@pytest.fixture
def state(tmp_path: Path) -> PartitionState:
    s = PartitionState(str(tmp_path))
    yield s
    s.close()


def _row(
    p: int,
    e: str,
    a: str,
    state: tuple[int, str, str, int] | None,
    votes: list[tuple[str, str]] = (),
    rejected: list[tuple[str, str]] = (),
) -> tuple:
    """A row as the load query gives it (NULLs for no voters row, no votes, no rejections)."""
    n, x, c, t = state or (None, None, None, None)
    vxs = [v[0] for v in votes] or None
    vcs = [v[1] for v in votes] or None
    rxs = [r[0] for r in rejected] or None
    rcs = [r[1] for r in rejected] or None
    return (p, e, a, n, x, c, t, vxs, vcs, rxs, rcs)


def _filled(state: PartitionState) -> None:
    state.fill(
        [0, 1],
        [
            _row(0, "E", "ann", (1, "x1", "a", T0), [("x1", "a")], [("x3", "b")]),
            _row(1, "E", "bob", (1, "x2", "b", T0 + 1), [("x2", "b")]),
            # Only a rejected vote (an election that did not exist): no voters row.
            _row(1, "E", "cy", None, [], [("x4", "a")]),
        ],
    )


def test_answers_from_the_partition_of_each_message(state: PartitionState) -> None:
    _filled(state)
    lk = state.lookups(
        _decoded(
            (0, "E", "x1", "ann", "a"),
            (0, "E", "x3", "ann", "b"),
            (1, "E", "x2", "bob", "b"),
            (1, "E", "x4", "cy", "a"),
            (0, "E", "x9", "new", "a"),
        )
    )
    assert lk.votes == {("E", "x1"): ("ann", "a"), ("E", "x2"): ("bob", "b")}
    assert lk.rejected == {("E", "x3", "ann", "b"), ("E", "x4", "cy", "a")}
    assert {
        k: (s.counted, s.vote_id, s.choice, s.received_at_us) for k, s in lk.voters.items()
    } == {
        ("E", "ann"): (1, "x1", "a", T0),
        ("E", "bob"): (1, "x2", "b", T0 + 1),
    }
    # bob's keys read on partition 0: that partition never saw them.
    other = state.lookups(_decoded((0, "E", "x2", "bob", "b")))
    assert (other.votes, other.rejected, other.voters) == ({}, set(), {})
    assert state.missing([0, 1, 2]) == [2]


@pytest.mark.parametrize("how", ["record_plan", "record"])
def test_a_replayed_batch_decides_the_same_after_record(state: PartitionState, how: str) -> None:
    """What plan_batch decided, recorded after the commit (from the plan, or from the
    lookups as deciding left them), makes a replay all duplicates and a later vote of
    the same voter a rejection, as PostgreSQL's lookups would."""
    elections = {"E": Election("E", "first_wins", frozenset({"a", "b"}))}
    state.fill([0], [])
    batch = _decoded(
        (0, "E", "x1", "ann", "a"),
        (0, "E", "x2", "ann", "b"),  # voter_already_voted
        (0, "E", "x3", "zoë \u00e9", "b"),  # any text but controls round-trips
    )
    lk = state.lookups(batch)
    first = plan_batch(batch, elections, lk, "t")
    assert first.outcomes == {"counted": 2, "voter_already_voted": 1}
    if how == "record_plan":
        state.record_plan(first)
    else:
        state.record(batch, lk)

    replay = plan_batch(batch, elections, state.lookups(batch), "t")
    assert replay.outcomes == {"duplicate": 3}
    assert not replay.votes and not replay.rejections and not replay.voters
    later = _decoded((0, "E", "x4", "ann", "a"))
    assert plan_batch(later, elections, state.lookups(later), "t").outcomes == {
        "voter_already_voted": 1
    }


def test_record_skips_partitions_not_loaded(state: PartitionState) -> None:
    state.fill([0], [])
    batch = _decoded((0, "E", "x1", "ann", "a"), (1, "E", "x2", "bob", "b"))
    lk = Lookups()
    lk.votes = {("E", "x1"): ("ann", "a"), ("E", "x2"): ("bob", "b")}
    state.record(batch, lk)
    assert state.partitions == {0}
    assert state.lookups(batch[:1]).votes == {("E", "x1"): ("ann", "a")}


def test_forget_drops_what_was_loaded(state: PartitionState, tmp_path: Path) -> None:
    _filled(state)
    state.forget([1])
    assert state.partitions == {0}
    assert state.missing([0, 1]) == [1]
    # Loading again starts from nothing but what it is given.
    state.fill([1], [])
    assert state.lookups(_decoded((1, "E", "x2", "bob", "b"))).votes == {}
    state.forget()
    assert state.partitions == set()
    state.close()
    assert os.listdir(tmp_path) == []


def test_a_failed_fill_leaves_the_partition_unloaded(state: PartitionState) -> None:
    def broken() -> list[tuple[int, str, str, str, str]]:
        raise OSError("disk gone")

    class Rows:
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield _row(0, "E", "ann", None, [("x1", "a")])
            broken()

    with pytest.raises(StateError):
        state.fill([0], Rows())
    assert state.missing([0]) == [0]


def test_each_store_has_its_own_directory(tmp_path: Path) -> None:
    a, b = PartitionState(str(tmp_path)), PartitionState(str(tmp_path))
    try:
        a.fill([0], [_row(0, "E", "ann", None, [("x1", "a")])])
        b.fill([0], [])
        batch = _decoded((0, "E", "x1", "ann", "a"))
        assert a.lookups(batch).votes and not b.lookups(batch).votes
    finally:
        a.close()
        b.close()


def test_record_without_lookups_merges_into_the_stored_record(state: PartitionState) -> None:
    """A batch decided again from PostgreSQL reaches record() without the state's own
    lookups: what it learnt is added to the voter's stored record, nothing is lost."""
    _filled(state)
    batch = _decoded((0, "E", "x5", "ann", "a"))  # ann's second vote, rejected
    lk = Lookups()
    lk.rejected = {("E", "x5", "ann", "a")}
    state.record(batch, lk)
    again = state.lookups(_decoded((0, "E", "x1", "ann", "a")))
    assert again.votes == {("E", "x1"): ("ann", "a")}
    assert again.rejected == {("E", "x3", "ann", "b"), ("E", "x5", "ann", "a")}
    assert again.voters[("E", "ann")].vote_id == "x1"


def test_record_plan_follows_a_last_wins_revote(state: PartitionState) -> None:
    """A re-vote that supersedes: the voter's record moves to the new vote and keeps
    both vote_ids, so replays of either are duplicates."""
    elections = {"L": Election("L", "last_wins", frozenset({"a", "b"}))}
    state.fill([0], [])
    for batch in (_decoded((0, "L", "l1", "cat", "a")), _decoded((0, "L", "l2", "cat", "b"))):
        plan = plan_batch(batch, elections, state.lookups(batch), "t")
        state.record_plan(plan)
    both = _decoded((0, "L", "l1", "cat", "a"), (0, "L", "l2", "cat", "b"))
    lk = state.lookups(both)
    assert lk.votes == {("L", "l1"): ("cat", "a"), ("L", "l2"): ("cat", "b")}
    assert (lk.voters[("L", "cat")].vote_id, lk.voters[("L", "cat")].choice) == ("l2", "b")
    assert plan_batch(both, elections, lk, "t").outcomes == {"duplicate": 2}


def test_a_dead_stores_directory_is_removed_by_the_next(tmp_path: Path) -> None:
    """A killed processor leaves its directory behind; the next store in the same place
    removes it, and never a live store's."""
    live = PartitionState(str(tmp_path))
    dead = tmp_path / "vote-processor-state-dead"
    dead.mkdir()
    (dead / "lock").touch()  # nobody holds it: its process is gone
    (dead / "p0").mkdir()
    other = tmp_path / "unrelated"
    other.mkdir()
    try:
        new = PartitionState(str(tmp_path))
        new.close()
        assert not dead.exists()
        assert other.exists()
        assert len([p for p in tmp_path.iterdir() if p.name.startswith("vote-processor")]) == 1
        live.fill([0], [])  # still usable
    finally:
        live.close()
