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
   ``other`` is BEGIN and the offsets UPDATE; ``processor CPU`` is the CPU time of
   the thread that applied the batch (the processor's own side: deciding, psycopg, the
   state store); ``confirm`` is the state path's probe of
   the vote_ids it rejected (processor/lookup.py, StateLookup.confirm).
4. The bare COPY of the same rows: every measured batch's counted votes, binary-COPied
   (the processor's own ``copy_votes``) in one transaction per batch into a table like
   `votes` that holds the preloaded votes too, timed the same way. ``ratio_to_copy`` is
   the processor's PostgreSQL CPU over the COPY's, per size and over all batches.
5. ``--lookup state`` only: the time to load the 3 partitions' state again from
   PostgreSQL (what a member pays on assignment), ``state_load``.

Prints medians per size (and, with ``--json F``, every batch). ``--lookup state|postgres``
picks where lookups are answered (``VOTE_PROCESSOR_LOOKUP``); ``--lookup-threshold T`` is
passed to ``Store`` (keys below it take the array path, see processor/lookup.py).
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
from bench.processor import CANDIDATES, create_copy_baseline, make_events
from core import elections as core_elections
from core.event import encode
from core.keyset import KeySet
from core.settings import load
from processor.policy import EventAuth, Message, VoteRow, decode_all
from processor.settings import ProcessorSettings
from processor.store import Store, copy_votes, register_epoch_dumper

PARTITIONS = 3
PHASES = (
    "fence",
    "lookups",
    "confirm",
    "votes",
    "rejections",
    "voters",
    "tallies",
    "commit",
    "other",
)


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
    store = Store(dsn, "bench", "bench", state=args.lookup == "state", **kw)
    elections = store.load_elections()
    total = args.preload + sum(s * args.batches for s in args.sizes)
    events = make_events(total, election, seed=11)
    offsets = {p: 0 for p in range(PARTITIONS)}

    def apply(batch: tuple, before_commit: Callable | None = None) -> list[VoteRow]:
        decoded, first, nxt = batch
        return store.apply_batch(
            decoded, elections, first, nxt, before_commit=before_commit
        ).plan.votes

    pre, offsets = _batches(events[: args.preload], 20_000, offsets)
    for b in pre:
        apply(b)
    # The bare COPY's table starts with the same rows.
    baseline = psycopg.connect(dsn, autocommit=True)
    create_copy_baseline(baseline)
    baseline.execute("INSERT INTO copy_baseline SELECT * FROM votes")
    store.conn.execute("VACUUM ANALYZE")  # as autovacuum would have by now
    pos = args.preload
    timer = _Timer(store.conn.info.backend_pid)
    for name, attr in (
        ("fence", "_fence"),
        ("lookups", "_lookups"),
        ("confirm", "_confirm"),
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
        copied: list[list[VoteRow]] = []
        for b in batches:
            timer.cpu.clear()
            timer.wall.clear()
            mark: list[int] = []

            def before_commit(_plan: object, mark: list[int] = mark) -> None:
                mark.append(_cpu_ns(timer.path))

            c0, w0, t0 = _cpu_ns(timer.path), time.perf_counter(), time.thread_time()
            copied.append(apply(b, before_commit))
            c1, w1, t1 = _cpu_ns(timer.path), time.perf_counter(), time.thread_time()
            cpu = dict(timer.cpu)
            cpu["commit"] = c1 - mark[0]
            cpu["other"] = (c1 - c0) - sum(cpu.values())
            rows.append(
                {
                    "cpu_ms": (c1 - c0) / 1e6,
                    "wall_ms": (w1 - w0) * 1e3,
                    # The processor's own side of the batch (this thread): deciding,
                    # psycopg, the state store.
                    "processor_cpu_ms": (t1 - t0) * 1e3,
                    "phase_cpu_ms": {k: v / 1e6 for k, v in cpu.items()},
                }
            )
        copy_cpu = [_time_copy(baseline, votes) for votes in copied]
        for r, c in zip(rows, copy_cpu, strict=True):
            r["copy_cpu_ms"] = c / 1e6
        med = {
            "size": size,
            "batches": len(rows),
            "cpu_ms": round(statistics.median(r["cpu_ms"] for r in rows), 3),
            "wall_ms": round(statistics.median(r["wall_ms"] for r in rows), 3),
            "processor_cpu_ms": round(statistics.median(r["processor_cpu_ms"] for r in rows), 3),
            "phase_cpu_ms": {
                p: round(statistics.median(r["phase_cpu_ms"].get(p, 0.0) for r in rows), 3)
                for p in PHASES
            },
            "copy_cpu_ms": round(statistics.median(c / 1e6 for c in copy_cpu), 3),
            "ratio_to_copy": round(sum(r["cpu_ms"] for r in rows) * 1e6 / sum(copy_cpu), 3),
            "all": rows,
        }
        sizes.append(med)
    baseline.close()
    out: dict[str, Any] = {
        "lookup": args.lookup,
        "sizes": sizes,
        # Over every measured batch: the processor's PostgreSQL CPU per event over the
        # bare COPY's, weighted by CPU (so the large batches weigh most).
        "ratio_to_copy": round(
            sum(r["cpu_ms"] for s in sizes for r in s["all"])
            / sum(r["copy_cpu_ms"] for s in sizes for r in s["all"]),
            3,
        ),
    }
    if args.lookup == "state":
        store.forget_state()
        with store.conn.transaction(), store.conn.cursor() as cur:
            c0, w0, t0 = _cpu_ns(timer.path), time.perf_counter(), time.thread_time()
            voters = store.load_state(cur, list(range(PARTITIONS)))
            c1, w1, t1 = _cpu_ns(timer.path), time.perf_counter(), time.thread_time()
        out["state_load"] = {
            "votes_stored": store.conn.execute("SELECT count(*) FROM votes").fetchone()[0],
            "voters": voters,
            "pg_cpu_ms": round((c1 - c0) / 1e6, 1),
            "processor_cpu_ms": round((t1 - t0) * 1e3, 1),
            "wall_ms": round((w1 - w0) * 1e3, 1),
        }
    store.close()
    return out


def _time_copy(conn: psycopg.Connection, votes: list[VoteRow]) -> int:
    """Backend CPU (ns) of one transaction that COPYs ``votes`` into copy_baseline."""
    path = f"/proc/{conn.info.backend_pid}/schedstat"
    c0 = _cpu_ns(path)
    with conn.transaction(), conn.cursor() as cur:
        register_epoch_dumper(cur)
        copy_votes(cur, votes, "copy_baseline")
    return _cpu_ns(path) - c0


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
    ap.add_argument(
        "--lookup",
        choices=("state", "postgres"),
        default=load(ProcessorSettings).processor_lookup,
        help="where lookups are answered (default: VOTE_PROCESSOR_LOOKUP or its default)",
    )
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
    print(
        "| events | batches | PG CPU ms | wall ms | processor CPU ms | bare COPY ms"
        " | ratio to COPY | " + " | ".join(PHASES) + " |"
    )
    print("|--:|--:|--:|--:|--:|--:|--:|" + "--:|" * len(PHASES))
    for s in result["sizes"]:
        print(
            f"| {s['size']} | {s['batches']} | {s['cpu_ms']:.2f} | {s['wall_ms']:.2f} | "
            f"{s['processor_cpu_ms']:.2f} | {s['copy_cpu_ms']:.2f} | {s['ratio_to_copy']:.2f} | "
            + " | ".join(f"{s['phase_cpu_ms'][p]:.2f}" for p in PHASES)
            + " |"
        )
    print(f"lookup {result['lookup']}: ratio_to_copy {result['ratio_to_copy']:.2f} (all batches)")
    if "state_load" in result:
        print(f"state load: {result['state_load']}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
