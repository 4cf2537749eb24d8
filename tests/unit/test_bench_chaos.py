"""The chaos harness's pure parts: outcomes, retry delays, the timeline's series, the table."""

from __future__ import annotations

import pytest

from bench.chaos import report
from bench.chaos.checker import Result
from bench.chaos.client import (
    FAIL,
    INFO,
    OK,
    Attempt,
    RetryPolicy,
    Vote,
    classify,
    retry_delay,
    retryable,
)
from bench.chaos.scenarios import SCENARIOS
from bench.chaos.timeline import per_second


def attempt(status: int | None, error: str = "") -> Attempt:
    return Attempt(0.0, status, error, 0.01)


@pytest.mark.parametrize(
    ("statuses", "outcome"),
    [
        ([202], OK),
        ([None, 503, 202], OK),
        ([422], FAIL),
        ([429, 429, 403], FAIL),
        ([None], INFO),  # timed out or reset: it may have counted
        ([503, 503], INFO),  # not durable now, but its produce may still land
        ([None, 422], INFO),  # the first attempt may have been accepted
        ([], INFO),
    ],
)
def test_outcome_of_a_vote(statuses: list[int | None], outcome: str) -> None:
    assert classify([attempt(s) for s in statuses]) == outcome


def test_what_is_retried() -> None:
    assert retryable(attempt(None, "ReadTimeout"))
    assert retryable(attempt(503)) and retryable(attempt(429)) and retryable(attempt(500))
    assert retryable(attempt(408))  # the body deadline: never accepted, safe to resend
    assert not retryable(attempt(202)) and not retryable(attempt(400))


def test_retry_after_is_a_floor_and_the_backoff_is_capped() -> None:
    policy = RetryPolicy(backoff_s=0.2, backoff_cap_s=5.0)
    for n in range(12):
        assert retry_delay(n, None, policy) <= 5.0
        assert retry_delay(n, "3", policy) >= 3.0
    assert retry_delay(0, "not a number", policy) <= 0.2


def test_per_second_series() -> None:
    ok = Vote("a", "v", "alice", "t", b"", 0.2, [Attempt(0.2, 202, "", 0.05)], OK, 0.25)
    late = Vote(
        "b",
        "w",
        "bob",
        "t",
        b"",
        0.5,
        [Attempt(0.5, 503, "", 0.01), Attempt(1.6, 202, "", 0.1)],
        OK,
        1.7,
    )
    lost = Vote("c", "x", "bob", "t", b"", 1.0, [Attempt(1.0, None, "ReadTimeout", 5)], INFO, 6)
    series = per_second([ok, late, lost])
    assert series["acks"][:2] == [(0, 1.0), (1, 1.0)]
    assert series["p99_ms"][0] == (0, pytest.approx(50.0))
    assert series["p99_ms"][1] == (1, pytest.approx(1200.0))
    assert series["not_ok"][:2] == [(0, 1.0), (1, 1.0)]


def test_markdown_marks_a_failed_invariant() -> None:
    table = report.markdown(
        [
            {"name": "x", "acked": 1200, "lost": 0, "tallies_match": True, "passed": True},
            {"name": "y", "acked": 5, "lost": 2, "tallies_match": False, "passed": False},
        ]
    )
    lines = table.splitlines()
    assert len(lines) == 4 and "1,200" in lines[2]
    assert "**NO**" in lines[3] and "**NO**" not in lines[2]


def test_every_scenario_of_the_issue_is_registered() -> None:
    wanted = {
        "kafka-leader-kill",
        "kafka-broker-pause",
        "kafka-below-min-isr",
        "kafka-full-restart",
        "network",
        "gateway-kill-in-spill",
        "spill-disk-full",
        "lost-delivery-report",
        "processor-kill",
        "postgres-restart",
        "postgres-slow",
        "redis-down",
        "rebalance-storm",
        "poison",
        "random",
    }
    assert wanted <= set(SCENARIOS)


def test_a_scenario_result_has_the_fields_the_issue_names() -> None:
    row = Result("kafka-leader-kill").as_dict()
    named = (
        "name acked failed indeterminate stored lost double_counted unacked_stored"
        " spill_drained lag_zero tallies_match"
    )
    assert set(named.split()) <= set(row)
    assert row["name"] == "kafka-leader-kill" and row["passed"] is False


def test_resume_keeps_what_passed_in_an_earlier_session_of_the_same_run(tmp_path) -> None:
    import json

    from bench.chaos import runner
    from bench.env import BenchError

    out = tmp_path / "chaos.json"
    earlier = {
        "seed": 7,
        "rate": 20.0,
        "duration_s": 60.0,
        "date": "2026-12-02T08:00:00Z",
        "command": "python -m bench chaos --stop-after 30",
        "scenarios": [{"name": "poison", "passed": True}, {"name": "network", "passed": False}],
    }
    out.write_text(json.dumps(earlier))

    def session(*extra: str) -> runner.Session:
        argv = ["--seed", "7", "--rate", "20", "--json", str(out), *extra]
        return runner.Session(runner.build_parser().parse_args(argv), argv)

    kept, sessions = session("--resume").resumed()
    assert [s["name"] for s in kept] == ["poison"]  # the failed one runs again
    assert sessions == [{"date": earlier["date"], "command": earlier["command"]}]
    assert session().resumed() == ([], [])  # without --resume the file is replaced
    with pytest.raises(BenchError, match="seed/rate/duration"):
        runner.Session(
            runner.build_parser().parse_args(["--seed", "8", "--json", str(out), "--resume"]), []
        ).resumed()
