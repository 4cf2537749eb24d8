"""bench.search: which rate the --max search settles on, given fake step outcomes."""

from __future__ import annotations

import math

import pytest

from bench.loadgen import StepResult
from bench.search import Criteria, MaxSearch, round_rate


def _drive(search: MaxSearch, capacity: float) -> list[int]:
    """Run the search against a target that passes iff rate <= capacity."""
    rates = []
    while (rate := search.next_rate()) is not None:
        rates.append(rate)
        search.record(rate, rate <= capacity)
    return rates


@pytest.mark.parametrize("capacity", [130, 900, 1000, 1700, 3100, 6400, 27_000])
def test_search_converges_below_capacity_within_precision(capacity: int) -> None:
    search = MaxSearch(start=1000, factor=2.0, precision=0.10, max_steps=20)
    _drive(search, capacity)
    assert search.best is not None
    assert search.best <= capacity
    assert search.lowest_failure is not None and search.lowest_failure > capacity
    assert search.lowest_failure <= search.best * 1.10 + 10


def test_search_steps_up_by_factor_then_bisects() -> None:
    search = MaxSearch(start=1000, factor=2.0, precision=0.25, max_steps=20)
    rates = _drive(search, 5000)
    assert rates[:4] == [1000, 2000, 4000, 8000]
    assert rates[4] == round_rate(math.sqrt(4000 * 8000))  # 5660 fails
    assert search.best == 4760 or search.best == 4000 or 4000 <= search.best <= 5000


def test_search_goes_down_when_the_first_step_fails() -> None:
    search = MaxSearch(start=1000, factor=2.0, precision=0.25, max_steps=20)
    rates = _drive(search, 300)
    assert rates[:3] == [1000, 500, 250]
    assert search.best is not None and 250 <= search.best <= 300


def test_search_gives_up_below_the_floor() -> None:
    search = MaxSearch(start=1000, factor=2.0, floor=100)
    rates = _drive(search, 0)
    assert rates == [1000, 500, 250, 120]
    assert search.best is None


def test_search_respects_max_steps() -> None:
    search = MaxSearch(start=10, factor=2.0, max_steps=3)
    assert _drive(search, 10**9) == [10, 20, 40]
    assert search.best == 40


def test_a_noisy_failure_below_a_pass_ends_the_search() -> None:
    search = MaxSearch(start=1000)
    search.record(1000, True)
    search.record(2000, True)
    search.record(1500, False)  # noise: lower than a pass
    assert search.next_rate() is None
    assert search.best == 2000


@pytest.mark.parametrize(
    ("raw", "nice"), [(57, 57), (123.4, 120), (5656.9, 5660), (1000, 1000), (14142.1, 14100)]
)
def test_round_rate(raw: float, nice: int) -> None:
    assert round_rate(raw) == nice


def _step(rate: int, rps: float, p99: float, errors: int, requests: int = 10_000) -> StepResult:
    return StepResult(
        target="t",
        mode="search",
        rate=rate,
        duration_s=1,
        requests=requests,
        ok=requests - errors,
        errors=errors,
        error_rate=errors / max(requests, 1),
        rps=rps,
        send_rate=rate,
        p50_ms=1,
        p90_ms=1,
        p99_ms=p99,
        p999_ms=p99,
        max_ms=p99,
        service_p99_ms=p99,
        send_lag_p99_ms=0,
        codes={},
        error_samples=[],
    )


def test_criteria() -> None:
    c = Criteria(max_error_rate=0.001, p99_bound_ms=100)
    assert c.passes(_step(1000, 999, 20, 9))
    assert not c.passes(_step(1000, 999, 20, 10))  # 0.1 % is not below 0.1 %
    assert not c.passes(_step(1000, 999, 100.5, 0))
    assert not c.passes(_step(1000, 900, 20, 0))  # answered < 95 % of offered
    assert c.failures(_step(1000, 999, float("nan"), 0))
    assert c.failures(_step(1000, 0, 1, 0, requests=0)) == ["no requests"]


def _drive_with_noise(search: MaxSearch, capacity: float, noisy: set[int]) -> list[int]:
    """Like ``_drive``, but the first step at each rate in ``noisy`` fails whatever the
    target can do (a hypervisor's steal, a broker's GC pause)."""
    rates: list[int] = []
    while (rate := search.next_rate()) is not None:
        hit = rate in noisy and rate not in rates
        rates.append(rate)
        search.record(rate, rate <= capacity and not hit)
    return rates


def test_one_noisy_failure_does_not_cap_the_max_when_failures_are_confirmed() -> None:
    capacity = 5000
    plain = MaxSearch(start=1000, precision=0.05, max_steps=14)
    _drive_with_noise(plain, capacity, noisy={2000})
    assert plain.best == 1910  # the noisy step at 2,000/s capped it (as on 2026-12-01)

    confirmed = MaxSearch(start=1000, precision=0.05, max_steps=14, confirm_failures=1)
    rates = _drive_with_noise(confirmed, capacity, noisy={2000})
    assert rates[:3] == [1000, 2000, 2000]  # the failure was run again, and passed
    assert confirmed.best is not None and 0.95 * capacity <= confirmed.best <= capacity
    assert confirmed.lowest_failure is not None and confirmed.lowest_failure > capacity


def test_a_confirmed_failure_repeats_each_failed_rate_and_still_converges() -> None:
    search = MaxSearch(start=1000, precision=0.10, max_steps=14, confirm_failures=1)
    rates = _drive(search, 3100)
    failed = sorted({r for r in rates if r > 3100})
    assert failed  # the bisection met failures ...
    for rate in failed:
        assert rates.count(rate) == 2  # ... and ran each of them twice
    assert search.best is not None and search.best <= 3100
    assert search.lowest_failure is not None
    assert search.lowest_failure <= search.best * 1.10 + 10


def test_confirming_steps_do_not_count_against_max_steps() -> None:
    search = MaxSearch(start=1000, factor=2.0, max_steps=3, confirm_failures=1)
    assert _drive(search, 1500) == [1000, 2000, 2000, 1410]  # 3 rates, 4 steps
