"""core.elections: the one election model of the gateway and the processor.

The window is judged in microseconds, the unit of an event's ``received_at_us``; the
gateway's clock goes through ``micros`` as the acknowledged vote's ``received_at_us``
does, so both sides give the same verdict at the edge of the window.
"""

from __future__ import annotations

import pytest

from core.elections import Election, PolicyError, from_row, max_votes, micros, select_params

E = "e1"
CANDS = frozenset({"a", "b"})


def test_open_ends_are_none_and_always_open() -> None:
    election = Election(E, "first_wins", CANDS)
    for at_us in (1, 10**15, 253_402_300_799_999_999):
        assert election.is_open_at(at_us)
    assert election.is_open(0.5) and election.is_open(4_102_444_800.0)


def test_the_window_includes_its_opening_and_excludes_its_closing_microsecond() -> None:
    election = Election(E, "first_wins", CANDS, opens_at_us=100, closes_at_us=200)
    assert [election.is_open_at(t) for t in (99, 100, 199, 200)] == [False, True, True, False]


def test_the_gateway_and_the_processor_agree_at_the_edge() -> None:
    """The gateway asks ``is_open(now)``; the processor ``is_open_at(received_at_us)``
    with the ``received_at_us`` the gateway made from the same ``now``."""
    closes_us = 1_764_000_000_000_000
    election = Election(E, "first_wins", CANDS, closes_at_us=closes_us)
    for now in (1_764_000_000.0 - 1e-6, 1_764_000_000.0, 1_763_999_999.999999, 1_764_000_000.5):
        received_at_us = micros(now)  # what gateway.acceptance puts in the event
        assert election.is_open(now) == election.is_open_at(received_at_us), now
    assert not election.is_open(1_764_000_000.0)
    assert election.is_open(1_763_999_999.9999)


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [("first_wins", 1), ("last_wins", 1), ("max_votes:1", 1), ("max_votes:3", 3)],
)
def test_policies(policy: str, allowed: int) -> None:
    assert max_votes(policy) == allowed
    assert Election(E, policy, CANDS).max_votes == allowed
    assert Election(E, policy, CANDS).last_wins == (policy == "last_wins")


@pytest.mark.parametrize("policy", ["", "most_wins", "max_votes:0", "max_votes:-2", "max_votes:x"])
def test_unknown_policies_are_refused(policy: str) -> None:
    with pytest.raises(PolicyError):
        max_votes(policy)
    with pytest.raises(PolicyError, match=f"election {E}: unknown policy"):
        _ = Election(E, policy, CANDS).max_votes


def test_rows_and_parameters() -> None:
    row = ("e1", "last_wins", None, 1_764_000_000_000_001, ["b", "a"])
    assert from_row(row) == Election("e1", "last_wins", CANDS, None, 1_764_000_000_000_001)
    assert select_params() == {"all": True, "ids": []}
    assert select_params(["e1"]) == {"all": False, "ids": ["e1"]}
