"""Kafka outages for ``python -m bench gateway --kafka-stopped``: stop the local stack's
broker, bring it back, and wait until the gateway's spill has drained into it.

The broker is the one of ``deploy/local/stack`` (its pid file under ``.stack/pids``); it
is stopped with SIGKILL, like a crashed or unplugged broker, and restarted with
``deploy/local/stack up``, which starts what is not running and waits until it answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from bench.env import REPO, STACK_SCRIPT, BenchError, stack_dir
from bench.scrape import samples


def kafka_pids(env: dict[str, str]) -> list[int]:
    pids = []
    for pid_file in sorted((stack_dir(env) / "pids").glob("kafka-*.pid")):
        pid = int(pid_file.read_text().split()[0])
        if Path(f"/proc/{pid}").exists():
            pids.append(pid)
    return pids


def stop_kafka(env: dict[str, str], timeout_s: float = 30.0) -> None:
    pids = kafka_pids(env)
    if not pids:
        raise BenchError("no running broker of the local stack to stop")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        if time.monotonic() > deadline:
            raise BenchError(f"broker(s) {pids} still alive {timeout_s:g}s after SIGKILL")
        time.sleep(0.05)


def start_kafka(env: dict[str, str], timeout_s: float = 900.0) -> float:
    """``deploy/local/stack up``; returns the seconds it took."""
    started = time.monotonic()
    done = subprocess.run(
        [str(STACK_SCRIPT), "up"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if done.returncode != 0:
        raise BenchError(f"`deploy/local/stack up` failed:\n{done.stderr[-2000:]}")
    return time.monotonic() - started


def spilled_events(metrics_url: str) -> float:
    """The gateway's ``vote_spill_events`` gauge (all workers, orphans included)."""
    found = samples(metrics_url, "vote_spill_events")
    if found is None:
        raise BenchError(f"no vote_spill_events at {metrics_url}")
    return sum(s.value for s in found)


def wait_spill_drained(metrics_url: str, timeout_s: float = 600.0) -> None:
    started = time.monotonic()
    while (left := spilled_events(metrics_url)) > 0:
        if time.monotonic() - started > timeout_s:
            raise BenchError(f"spill still holds {left:.0f} events after {timeout_s:g}s")
        time.sleep(0.2)
