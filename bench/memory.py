"""Worker memory over a long run (``python -m bench gateway --memory``).

A thread samples the resident set size of every granian worker of the gateway (the
children of its main process) while the measured runs go on. The figure of merit is the
growth from a baseline taken after the warm-up period to the end of the run: the
gateway's per-vote state is bounded (idempotency cache, rate-limiter buckets), so once
those are full any further growth is a leak.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def worker_pids(main_pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{main_pid}/task/{main_pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples the workers' summed RSS every ``interval_s`` until stopped."""

    def __init__(self, main_pid: int, interval_s: float = 5.0) -> None:
        self.main_pid = main_pid
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._t0 = 0.0

    def __enter__(self) -> MemorySampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        total = sum(rss_bytes(p) for p in worker_pids(self.main_pid))
        if total:
            self.samples.append((round(time.monotonic() - self._t0, 1), total))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def summary(self, baseline_s: float) -> dict[str, object]:
        """Growth from the first sample at or after ``baseline_s`` to the last sample."""
        if not self.samples:
            return {"error": "no samples"}
        base_t, base = next(((t, b) for t, b in self.samples if t >= baseline_s), self.samples[-1])
        end_t, end = self.samples[-1]
        mib = 2**20
        return {
            "interval_s": self.interval_s,
            "first_mib": round(self.samples[0][1] / mib, 1),
            "baseline_at_s": base_t,
            "baseline_mib": round(base / mib, 1),
            "end_at_s": end_t,
            "end_mib": round(end / mib, 1),
            "max_mib": round(max(b for _, b in self.samples) / mib, 1),
            "growth_after_baseline_pct": round((end - base) / base * 100, 2),
            "samples_mib": [(t, round(b / mib, 1)) for t, b in self.samples],
        }
