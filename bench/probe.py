"""How fast this machine is right now, recorded beside every figure the harness writes.

The bench machines are shared VMs whose speed changes from day to day, and not for every
kind of work alike: waking a sleeping thread or process can slow down far more than a
CPU-bound loop, and HTTP servers, Kafka clients and PostgreSQL wake up for every request
(bench/README.md, "The machine's speed on the day"). So a report carries two probes,
taken just before it measures:

* ``python_loop_ms``: 10 million iterations of an empty Python loop (CPU speed);
* ``wakeup_roundtrip_us``: one byte sent to a child process and back over pipes, the
  child on another CPU when there is one (p50 and p99 of 2,000 round trips, each one
  two wake-ups of a sleeping process);

and the PSI CPU pressure (``some avg10``). Figures from two days compare only when
these do too; within one run the harness compares targets side by side anyway.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TextIO

from bench.loadgen import cpu_pressure

_ECHO = """
import os
while True:
    b = os.read(0, 1)
    if not b:
        break
    os.write(1, b)
"""


def python_loop_ms(iterations: int = 10_000_000) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        pass
    return round((time.perf_counter() - started) * 1000, 1)


def wakeup_roundtrip_us(round_trips: int = 2000, warmup: int = 200) -> dict[str, float]:
    """p50 / p99 in microseconds of a one-byte ping-pong with a child process."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = len(cpus) > 1
    samples = []
    with subprocess.Popen(
        [sys.executable, "-c", _ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
    ) as child:
        assert child.stdin is not None and child.stdout is not None
        try:
            if pinned:  # the child on one CPU, this thread on the others: every hop crosses
                os.sched_setaffinity(child.pid, {cpus[-1]})
                os.sched_setaffinity(0, set(cpus[:-1]))
            w, r = child.stdin.fileno(), child.stdout.fileno()
            for _ in range(warmup + round_trips):
                t = time.perf_counter_ns()
                os.write(w, b"x")
                os.read(r, 1)
                samples.append(time.perf_counter_ns() - t)
        finally:
            if pinned:
                os.sched_setaffinity(0, set(cpus))
            child.stdin.close()  # the child's read returns b"" and it exits
    timed = sorted(samples[warmup:])
    return {
        "p50": round(timed[len(timed) // 2] / 1000, 1),
        "p99": round(timed[int(len(timed) * 0.99)] / 1000, 1),
    }


def speed() -> dict[str, object]:
    """The probes above, for a report's ``machine`` section (~1 s)."""
    # The pressure first: the probes' own second of work would show in its 10 s average.
    pressure = cpu_pressure()
    return {
        "python_loop_ms": python_loop_ms(),
        "wakeup_roundtrip_us": wakeup_roundtrip_us(),
        "cpu_pressure_avg10": pressure,
    }


def announced_speed(stream: TextIO | None = None) -> dict[str, object]:
    """``speed()``, with its ``describe`` line written to ``stream`` (stderr by default)
    first, so a run's log shows the day's speed before its figures."""
    probe = speed()
    print(describe(probe), file=stream or sys.stderr, flush=True)
    return probe


def describe(probe: dict[str, object]) -> str:
    """One line for a run's log."""
    wake = probe["wakeup_roundtrip_us"]
    assert isinstance(wake, dict)
    pressure = probe.get("cpu_pressure_avg10")
    return (
        f"machine speed: python loop {probe['python_loop_ms']} ms (10M iterations), "
        f"wake-up round trip p50 {wake['p50']} us p99 {wake['p99']} us"
        + (f", cpu pressure {pressure:g}%" if pressure is not None else "")
    )
