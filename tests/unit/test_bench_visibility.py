"""bench.visibility: quantiles of the votes counted between two histogram snapshots."""

from __future__ import annotations

import math

from bench.visibility import ack_to_visible

BEFORE = {0.1: 50.0, 0.25: 90.0, 1.0: 100.0, math.inf: 100.0}


def test_only_the_votes_between_the_snapshots_count() -> None:
    # 1000 new votes: 900 within 0.1 s, 95 more within 0.25 s, 5 within 1 s.
    after = {0.1: 950.0, 0.25: 1085.0, 1.0: 1100.0, math.inf: 1100.0}
    result = ack_to_visible(BEFORE, after)
    assert result["count"] == 1000
    assert result["p50_le_s"] == 0.1
    assert result["p90_le_s"] == 0.1
    assert result["p99_le_s"] == 0.25  # 995 of 1000 are within 0.25 s


def test_a_slow_tail_lands_in_the_inf_bucket() -> None:
    after = {0.1: 60.0, 0.25: 100.0, 1.0: 110.0, math.inf: 200.0}
    assert ack_to_visible(BEFORE, after)["p99_le_s"] == math.inf


def test_nothing_counted_or_no_metrics_gives_nothing() -> None:
    assert ack_to_visible(BEFORE, dict(BEFORE)) == {}
    assert ack_to_visible({}, {}) == {}
