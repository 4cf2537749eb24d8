"""``--max``: the highest offered rate a target sustains, found by stepping the rate.

A step *passes* when fewer than 0.1 % of its requests failed, its p99 (schedule-corrected,
see ``bench.loadgen``) is within the bound, and the target answered at least 95 % of the
offered rate (a target that falls behind builds a queue that a short step may not yet
show in p99). The search multiplies the rate by ``factor`` while steps pass, then
bisects (geometric mean) between the highest pass and the lowest failure until the two
are within ``precision`` of each other. It is a small state machine, not a loop, so the
harness can interleave the steps of several targets.

A failed step counts only once it is confirmed: the search runs the same rate again
(``confirm_failures`` more times) before it takes it as the target's limit. On a shared
machine one 10 s step can fail for reasons that have nothing to do with the target (the
hypervisor's steal, another tenant, a broker's GC pause), and a single such failure
must not cap the target's max for the whole session (bench/README.md, Method).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.loadgen import StepResult


@dataclass(frozen=True)
class Criteria:
    max_error_rate: float = 0.001  # strictly below
    p99_bound_ms: float = 100.0
    min_answered_ratio: float = 0.95

    def failures(self, step: StepResult) -> list[str]:
        """Why a step does not pass (empty when it passes)."""
        why = []
        if step.requests == 0:
            return ["no requests"]
        if not step.error_rate < self.max_error_rate:
            why.append(f"errors {step.error_rate:.3%} >= {self.max_error_rate:.1%}")
        if math.isnan(step.p99_ms) or step.p99_ms > self.p99_bound_ms:
            why.append(f"p99 {step.p99_ms:.1f} ms > {self.p99_bound_ms:g} ms")
        if step.rps < self.min_answered_ratio * step.rate:
            why.append(f"answered {step.rps:.0f}/s < {self.min_answered_ratio:.0%} of offered")
        return why

    def passes(self, step: StepResult) -> bool:
        return not self.failures(step)


def round_rate(rate: float) -> int:
    """Rates with two or three significant digits: easier to read, compare and repeat."""
    if rate < 100:
        return max(1, round(rate))
    digits = 3 if rate >= 1000 else 2
    scale = 10 ** (math.floor(math.log10(rate)) - digits + 1)
    return round(rate / scale) * scale


@dataclass
class MaxSearch:
    start: int = 1000
    factor: float = 2.0
    precision: float = 0.10  # stop when lowest failure / highest pass <= 1 + precision
    max_steps: int = 12  # distinct rates; the repeats that confirm a failure are extra
    floor: int = 25  # below this rate we give up: the target does not work at all
    confirm_failures: int = 0  # extra steps at a failed rate before it counts
    history: list[tuple[int, bool]] = field(default_factory=list)

    @property
    def best(self) -> int | None:
        """The highest rate that passed (in any of its steps), or None."""
        passed = [r for r, ok in self.history if ok]
        return max(passed) if passed else None

    @property
    def lowest_failure(self) -> int | None:
        """The lowest rate whose every step failed, all ``1 + confirm_failures`` of them."""
        failed = [r for r in {r for r, ok in self.history if not ok} if self._confirmed_failure(r)]
        return min(failed) if failed else None

    def _confirmed_failure(self, rate: int) -> bool:
        outcomes = [ok for r, ok in self.history if r == rate]
        return not any(outcomes) and len(outcomes) > self.confirm_failures

    def record(self, rate: int, passed: bool) -> None:
        self.history.append((rate, passed))

    @property
    def confirming(self) -> bool:
        """The next step repeats a failed one."""
        if not self.history:
            return False
        rate, passed = self.history[-1]
        return not passed and not self._confirmed_failure(rate)

    def next_rate(self) -> int | None:
        """The rate of the next step, or None when the search is over."""
        if self.confirming:
            return self.history[-1][0]  # run it again before believing it
        if len({r for r, _ in self.history}) >= self.max_steps:
            return None
        lo, hi = self.best, self.lowest_failure
        if lo is None and hi is None:
            return self.start
        if hi is None:
            assert lo is not None
            return round_rate(lo * self.factor)
        if lo is None:
            rate = round_rate(hi / self.factor)
            return rate if rate >= self.floor and rate < hi else None
        if hi <= lo * (1 + self.precision):
            return None
        mid = round_rate(math.sqrt(lo * hi))
        if mid <= lo or mid >= hi:
            mid = (lo + hi) // 2
        return mid if lo < mid < hi else None

    @property
    def done(self) -> bool:
        return self.next_rate() is None
