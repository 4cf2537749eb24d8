"""``python -m bench batchcost``: PostgreSQL CPU and wall time of one ``Store.apply_batch``.

The processor's steady state is many small batches (the time bound closes one every
``VOTE_PROCESSOR_BATCH_MAX_MS`` per member, a few hundred events each), where the fixed
cost of a transaction dominates; draining a backlog is few large ones, where the
per-row cost does. This times both directly, without Kafka:

1. A fresh database (migrated, dropped at the end), one ``first_wins`` election with
   10 candidates and the event mix of ``bench processor`` (~5 % Kafka duplicates, ~2 %
   second votes), spread over 3 Kafka partitions per batch like one member's share of
   a 6-partition topic.
2. ``--preload`` events applied in 20k batches (untimed), so indexes are not empty.
3. For every size in ``--sizes``: ``--batches`` batches of that many events, each timed
   by phase. CPU is the backend's own time on a core, read from
   ``/proc/<backend pid>/schedstat`` (ns) before and after every phase; WAL flush waits
   are not CPU. ``commit`` is the COMMIT itself (ON COMMIT actions + WAL flush);
   ``other`` is BEGIN and the offsets UPDATE.

Prints medians per size (and, with ``--json F``, every batch). ``--lookup-threshold T``
is passed to ``Store`` (keys below it take the array path, see processor/lookup.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from bench import probe, scratchdb
from bench.env import stack_env
from bench.processor import CANDIDATES, make_events
from core import elections as core_elections
from core.event import encode
from core.keyset import KeySet
from processor.policy import EventAuth, Message, decode_all
from processor.store import Store

PARTITIONS = 3
PHASES = ("fence", "lookups", "votes", "rejections", "voters", "tallies", "commit", "other")


def _cpu_ns(path: str) -> int:
    with open(path, "rb") as f:
        return int(f.read().split()[0])


class _Timer:
    """Backend CPU (ns) and wall (s) per phase of the batch being applied."""

    def __init__(self, pid: int) -> None:
        self.path = f"/proc/{pid}/schedstat"
        self.cpu: dict[str, int] = {}
        self.wall: dict[str, float] = {}

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kw: Any) -> Any:
            c0, w0 = _cpu_ns(self.path), time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.cpu[name] = self.cpu.get(name, 0) + _cpu_ns(self.path) - c0
                self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w0

        return timed


def _batches(
    events: list, size: int, start_offsets: dict[int, int]
) -> tuple[list[tuple], dict[int, int]]:
    """Events split into batches of ``size``, each message on partition crc32(voter) % 3."""
    out = []
    offsets = dict(start_offsets)
    for i in range(0, len(events), size):
        msgs = []
        first = {}
        for e in events[i : i + size]:
            p = zlib.crc32(e.voter_id.encode()) % PARTITIONS  # stable across runs
            first.setdefault(p, offsets[p])
            msgs.append(Message(p, offsets[p], encode(e)))
            offsets[p] += 1
        # PostgreSQL's cost per batch is measured here: unsigned events, no MAC check.
        unsigned = EventAuth(KeySet(()), accept_unsigned=True)
        out.append((decode_all(msgs, unsigned), first, {p: offsets[p] for p in first}))
    return out, offsets


def run(dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    election = f"bench-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        core_elections.write(conn, election, CANDIDATES)
    kw = {} if args.lookup_threshold is None else {"lookup_threshold": args.lookup_threshold}
    store = Store(dsn, "bench", "bench", **kw)
    elections = store.load_elections()
    total = args.preload + sum(s * args.batches for s in args.sizes)
    events = make_events(total, election, seed=11)
    offsets = {p: 0 for p in range(PARTITIONS)}

    def apply(batch: tuple, before_commit: Callable | None = None) -> None:
        decoded, first, nxt = batch
        store.apply_batch(decoded, elections, first, nxt, before_commit=before_commit)

    pre, offsets = _batches(events[: args.preload], 20_000, offsets)
    for b in pre:
        apply(b)
    store.conn.execute("VACUUM ANALYZE")  # as autovacuum would have by now
    pos = args.preload
    timer = _Timer(store.conn.info.backend_pid)
    for name, attr in (
        ("fence", "_fence"),
        ("lookups", "_lookups"),
        ("votes", "_write_votes"),
        ("rejections", "_write_rejections"),
        ("voters", "_write_voters"),
        ("tallies", "_write_tallies"),
    ):
        setattr(store, attr, timer.wrap(name, getattr(store, attr)))
    sizes: list[dict[str, Any]] = []
    for size in args.sizes:
        chunk = events[pos : pos + size * args.batches]
        pos += len(chunk)
        batches, offsets = _batches(chunk, size, offsets)
        rows = []
        for b in batches:
            timer.cpu.clear()
            timer.wall.clear()
            mark: list[int] = []

            def before_commit(_plan: object, mark: list[int] = mark) -> None:
                mark.append(_cpu_ns(timer.path))

            c0, w0 = _cpu_ns(timer.path), time.perf_counter()
            apply(b, before_commit)
            c1, w1 = _cpu_ns(timer.path), time.perf_counter()
            cpu = dict(timer.cpu)
            cpu["commit"] = c1 - mark[0]
            cpu["other"] = (c1 - c0) - sum(cpu.values())
            rows.append(
                {
                    "cpu_ms": (c1 - c0) / 1e6,
                    "wall_ms": (w1 - w0) * 1e3,
                    "phase_cpu_ms": {k: v / 1e6 for k, v in cpu.items()},
                }
            )
        med = {
            "size": size,
            "batches": len(rows),
            "cpu_ms": round(statistics.median(r["cpu_ms"] for r in rows), 3),
            "wall_ms": round(statistics.median(r["wall_ms"] for r in rows), 3),
            "phase_cpu_ms": {
                p: round(statistics.median(r["phase_cpu_ms"].get(p, 0.0) for r in rows), 3)
                for p in PHASES
            },
            "all": rows,
        }
        sizes.append(med)
    store.close()
    return {"sizes": sizes}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench batchcost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--sizes", default="200,15000", help="comma-separated events per batch (default 200,15000)"
    )
    ap.add_argument("--batches", type=int, default=40, help="batches per size (default 40)")
    ap.add_argument("--preload", type=int, default=200_000)
    ap.add_argument("--lookup-threshold", type=int, default=None)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    speed = probe.announced_speed()
    admin_dsn = stack_env()["VOTE_PG_DSN"]
    db, dsn = scratchdb.create(admin_dsn)
    try:
        result = run(dsn, args)
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]
    finally:
        scratchdb.drop(admin_dsn, db)
    result["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["command"] = "python -m bench batchcost " + " ".join(argv)
    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": version,
        "speed": speed,
    }
    print(f"# {result['command']}  ({result['date']})")
    print("| events | batches | PG CPU ms | wall ms | " + " | ".join(PHASES) + " |")
    print("|--:|--:|--:|--:|" + "--:|" * len(PHASES))
    for s in result["sizes"]:
        print(
            f"| {s['size']} | {s['batches']} | {s['cpu_ms']:.2f} | {s['wall_ms']:.2f} | "
            + " | ".join(f"{s['phase_cpu_ms'][p]:.2f}" for p in PHASES)
            + " |"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
