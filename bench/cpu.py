"""CPU time per acknowledged vote, for every process group a vote passes through.

On a machine that the load generator, Kafka, PostgreSQL and the target share, "how many
votes per second" mostly measures the machine. What capacity planning needs, and what
the machine can measure honestly, is how much CPU each component spends on one vote:
that figure does not depend on who else was busy, and it multiplies out to cores.

Each step reads, from ``/proc``, the CPU seconds of each group before and after the load:

* ``target``    — the process under load and all its descendants (granian workers);
* ``broker``    — every Kafka node of the stack;
* ``processor`` — the processor and its descendants;
* ``postgres``  — the postmaster and every backend;
* ``redis``     — the Redis server;
* ``loadgen``   — the load generator, from the rusage of the child that ran it.

A group's CPU is the sum of ``utime + stime + cutime + cstime`` over its live members:
a backend that exits during the step is reaped by the postmaster, which is in the group,
so its time moves into the postmaster's ``cutime`` and is not lost. A group whose total
went down (its root restarted, its time reaped by someone outside) is reported as None.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

GROUPS = ("target", "broker", "loadgen", "processor", "postgres", "redis")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# A group's root pids, asked again at every sample: a broker restarted mid-session has a
# new pid, and a target is a different process for every step.
Roots = Callable[[], Iterable[int]]


@dataclass(frozen=True)
class ProcStat:
    """What ``/proc/<pid>/stat`` says about CPU time and parentage."""

    pid: int
    ppid: int
    ticks: int  # utime + stime + cutime + cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself hold spaces and
    parentheses, so the fields are counted from the last ``)``.
    """
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    pid = int(head.split("(", 1)[0])
    fields = tail.split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return ProcStat(pid, ppid, utime + stime + cutime + cstime)


def read_all() -> dict[int, ProcStat]:
    """Every process of the machine (processes vanishing while we read are skipped)."""
    out: dict[int, ProcStat] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = parse_stat(fh.read())
        except (OSError, ValueError):
            continue
        out[stat.pid] = stat
    return out


def descendants(roots: Iterable[int], procs: Mapping[int, ProcStat]) -> set[int]:
    """``roots`` (those alive) and every process below them."""
    children: dict[int, list[int]] = {}
    for stat in procs.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [pid for pid in roots if pid in procs]
    while todo:
        pid = todo.pop()
        if pid in found:
            continue
        found.add(pid)
        todo.extend(children.get(pid, ()))
    return found


def group_seconds(
    groups: Mapping[str, Iterable[int]], procs: Mapping[int, ProcStat]
) -> dict[str, float]:
    """CPU seconds of each group (roots and descendants) in one snapshot of ``procs``."""
    out: dict[str, float] = {}
    for name, roots in groups.items():
        members = descendants(roots, procs)
        out[name] = sum(procs[pid].ticks for pid in members) / CLOCK_TICKS
    return out


def children_seconds() -> float:
    """CPU seconds of this process's reaped children (the load generator's meter)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Snapshot:
    groups: dict[str, float]
    children: float


class CpuMeter:
    """Samples the CPU seconds of the stack's process groups around one step."""

    def __init__(self, stack: Mapping[str, Roots]) -> None:
        self.stack = dict(stack)

    def sample(self, target: Iterable[int] = ()) -> Snapshot:
        roots = {name: list(fn()) for name, fn in self.stack.items()}
        roots["target"] = list(target)
        return Snapshot(group_seconds(roots, read_all()), children_seconds())


def used_seconds(before: Snapshot, after: Snapshot) -> dict[str, float | None]:
    """CPU seconds each group spent between two snapshots (None when unmeasurable).

    The load generator is the child reaped between them: the caller takes the snapshots
    right before starting it and right after waiting for it.
    """
    out: dict[str, float | None] = {}
    for name in GROUPS:
        if name == "loadgen":
            delta: float | None = after.children - before.children
        elif name in before.groups and name in after.groups:
            delta = after.groups[name] - before.groups[name]
        else:
            delta = None
        out[name] = round(delta, 3) if delta is not None and delta >= 0 else None
    return out


def per_vote_us(seconds: Mapping[str, float | None], acked: int) -> dict[str, float | None]:
    """µs of CPU per acknowledged vote for each group; None without acks or a figure."""
    out: dict[str, float | None] = {}
    for name in GROUPS:
        s = seconds.get(name)
        out[name] = round(s * 1e6 / acked, 1) if s is not None and acked > 0 else None
    return out


def saturation_rps(target_us_per_vote: float | None, cores: int) -> float | None:
    """The rate at which the target's own cores would be busy all the time.

    CPU per vote falls as the rate rises (fixed per-wake-up costs get shared by more
    votes), so this extrapolation from a rate below saturation is a lower bound.
    """
    if not target_us_per_vote or cores < 1:
        return None
    return round(cores * 1e6 / target_us_per_vote, 0)


def busy_share(target_seconds: float | None, wall_s: float, cores: int) -> float | None:
    """Share (0..1) of the target's cores that it kept busy during the step."""
    if target_seconds is None or wall_s <= 0 or cores < 1:
        return None
    return round(target_seconds / (wall_s * cores), 3)


def cpus_of(pid: int) -> int:
    """How many CPUs ``pid`` may run on (its affinity: the --target-cpus pinning)."""
    try:
        return len(os.sched_getaffinity(pid))
    except OSError:
        return os.cpu_count() or 1


# -- the local stack's process groups ---------------------------------------------------


def _pid_file(path: Path) -> list[int]:
    try:
        first = path.read_text().split()
    except OSError:
        return []
    return [int(first[0])] if first and first[0].isdigit() else []


def stack_groups(stack_dir: Path, processor: Callable[[], int | None]) -> dict[str, Roots]:
    """Root pids of the servers ``deploy/local/stack`` started under ``stack_dir``."""

    def brokers() -> list[int]:
        return [p for f in sorted((stack_dir / "pids").glob("kafka-*.pid")) for p in _pid_file(f)]

    def processors() -> list[int]:
        pid = processor()
        return [pid] if pid else []

    return {
        "broker": brokers,
        "processor": processors,
        "postgres": lambda: _pid_file(stack_dir / "pg" / "postmaster.pid"),
        "redis": lambda: _pid_file(stack_dir / "pids" / "redis.pid"),
    }
