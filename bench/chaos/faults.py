"""What can be done to a server of the chaos stack, each fault healed on the way out.

Every fault that leaves something broken while it lasts (a paused process, a stopped
server) is a context manager whose exit heals it, so an error in the harness or a
Ctrl-C never leaves a broker stopped. Kills are plain functions: ``restart_stack`` (a
plain ``deploy/local/stack up``, which restarts the recorded cluster) heals them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from bench.env import BenchError
from bench.memory import worker_pids

if TYPE_CHECKING:
    from bench.chaos.runner import Chaos

NODES = (1, 2, 3)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: list[int], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids):
        if time.monotonic() > deadline:
            raise BenchError(f"processes {pids} still alive after {timeout_s:g}s")
        time.sleep(0.05)


# -- Kafka ------------------------------------------------------------------------------


def restart_stack(ctx: Chaos) -> None:
    """``deploy/local/stack up`` on the chaos stack: starts whatever is not running."""
    started = time.monotonic()
    done = ctx.cluster.stack("up")
    if done.returncode != 0:
        raise BenchError(f"`stack up` failed while healing:\n{done.stderr[-3000:]}")
    ctx.log(f"stack up: everything answers again after {time.monotonic() - started:.1f}s")


def kill_brokers(ctx: Chaos, nodes: list[int]) -> None:
    for n in nodes:
        ctx.cluster.kill_broker(n)
    ctx.log(f"kill -9 kafka-{','.join(map(str, nodes))}")


def broker_pids(ctx: Chaos, nodes: list[int]) -> list[int]:
    pids = [ctx.cluster.broker_pid(n) for n in nodes]
    if None in pids:
        raise BenchError(f"not every broker of {nodes} runs")
    return [p for p in pids if p is not None]


@contextlib.contextmanager
def paused(ctx: Chaos, pids: list[int], what: str) -> Iterator[None]:
    """SIGSTOP ``pids`` for the block (a frozen host: sockets open, nothing answers)."""
    _signal_all(pids, signal.SIGSTOP)
    ctx.log(f"SIGSTOP {what}")
    try:
        yield
    finally:
        _signal_all(pids, signal.SIGCONT)
        ctx.log(f"SIGCONT {what}")


@contextlib.contextmanager
def brokers_paused(ctx: Chaos, nodes: list[int]) -> Iterator[None]:
    with paused(ctx, broker_pids(ctx, nodes), f"kafka-{','.join(map(str, nodes))}"):
        yield


# -- PostgreSQL and Redis ---------------------------------------------------------------


def postgres_pids(ctx: Chaos) -> list[int]:
    """The postmaster and its children (backends, checkpointer, WAL writer ...)."""
    try:
        main = int((ctx.cluster.directory / "pg" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchError("PostgreSQL of the chaos stack is not running") from exc
    return [main, *worker_pids(main)]


def crash_postgres(ctx: Chaos) -> None:
    """SIGQUIT to the postmaster: PostgreSQL's immediate shutdown, crash recovery at start."""
    pids = postgres_pids(ctx)
    os.kill(pids[0], signal.SIGQUIT)
    wait_gone(pids[:1])
    ctx.log("PostgreSQL stopped (immediate shutdown)")


def stutter_postgres(ctx: Chaos, seconds: float, stall_s: float = 0.7) -> None:
    """For ``seconds``, PostgreSQL freezes ``stall_s`` of every second (an I/O-starved
    database host)."""
    ctx.log(f"PostgreSQL stalls {stall_s:g}s of every second for {seconds:g}s")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pids = postgres_pids(ctx)
        _signal_all(pids, signal.SIGSTOP)
        try:
            time.sleep(stall_s)
        finally:
            _signal_all(pids, signal.SIGCONT)
        time.sleep(max(0.0, 1.0 - stall_s))


def kill_redis(ctx: Chaos) -> None:
    try:
        pid = int((ctx.cluster.directory / "pids" / "redis.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError) as exc:
        raise BenchError("Redis of the chaos stack is not running") from exc
    os.kill(pid, signal.SIGKILL)
    wait_gone([pid])
    ctx.log("kill -9 redis")


# -- gateway and processors -------------------------------------------------------------


def kill_gateway_worker(ctx: Chaos) -> int:
    workers = ctx.fleet.gateway_workers()
    if not workers:
        raise BenchError("the gateway has no worker process")
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)
    ctx.log(f"kill -9 gateway worker {victim}")
    return victim
