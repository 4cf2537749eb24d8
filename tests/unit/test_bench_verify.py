"""bench.verify: the exactly-once comparison and the wait for the processor."""

from __future__ import annotations

from bench.env import parse_env_lines
from bench.verify import compare, wait_caught_up


def test_compare_finds_missing_duplicates_and_unacked() -> None:
    acked = ["a", "b", "c", "d"]
    stored = {"a": 1, "b": 2, "c": 1, "x": 1, "y": 3}
    assert compare(acked, stored) == {
        "acked": 4,
        "stored": 3,
        "missing": 1,
        "duplicates": 1,
        "unacked_stored": 2,
        "duplicates_unacked": 2,
    }


def test_compare_all_good() -> None:
    r = compare({"a", "b"}, {"a": 1, "b": 1})
    assert (r["missing"], r["duplicates"], r["unacked_stored"]) == (0, 0, 0)


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_wait_returns_once_the_count_reaches_the_acked() -> None:
    clock = _Clock()
    counts = iter([0, 10, 50, 100, 100])
    assert (
        wait_caught_up(
            lambda: next(counts), 100, timeout_s=60, stall_s=10, clock=clock, sleep=clock.sleep
        )
        == 100
    )
    assert clock.t == 1.5


def test_wait_gives_up_when_the_count_stalls() -> None:
    clock = _Clock()
    assert (
        wait_caught_up(lambda: 7, 100, timeout_s=60, stall_s=5, clock=clock, sleep=clock.sleep) == 7
    )
    assert 5 <= clock.t < 6


def test_wait_gives_up_at_the_timeout_even_while_progressing() -> None:
    clock = _Clock()
    n = iter(range(1000))
    wait_caught_up(lambda: next(n), 10**6, timeout_s=20, stall_s=5, clock=clock, sleep=clock.sleep)
    assert 20 <= clock.t < 21


def test_parse_env_lines() -> None:
    text = (
        "# comment\nexport VOTE_PG_DSN='postgresql://vote:vote@127.0.0.1:15432/vote'\n"
        'VOTE_STACK_DIR=/work/main/.stack\nexport VOTE_X="a b"\nnot a var\n'
    )
    assert parse_env_lines(text) == {
        "VOTE_PG_DSN": "postgresql://vote:vote@127.0.0.1:15432/vote",
        "VOTE_STACK_DIR": "/work/main/.stack",
        "VOTE_X": "a b",
    }
