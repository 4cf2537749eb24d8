"""``python -m bench processor --events N --json F``: processor throughput vs plain COPY.

1. Preload N events into a fresh topic (6 partitions, keyed by voter): ~93 % first
   votes, ~5 % exact duplicates of earlier events (same vote_id), ~2 % second votes of
   a voter who already voted (first_wins: rejected).
2. Start one ``python -m processor`` with ``--members`` consumer-group members
   (default: ``VOTE_PROCESSOR_MEMBERS`` or its default) and ``--lookup state|postgres``
   (``VOTE_PROCESSOR_LOOKUP``) on a fresh database and time
   it from the first assignment of partitions (logged) until the offsets stored in
   PostgreSQL reach the end of every partition. The consumer-group join before that is
   reported as ``join_seconds``, not in the figure. The rebalance that spreads the
   partitions over the members (the first to join takes them all, the others' joins
   reach it at its next heartbeat, within 0.5 s) is in the figure: it is part of
   starting a processor.
3. In the same run, time a plain binary ``COPY`` of the same final ``votes`` rows into
   an identical empty table (same columns, primary key and 32 hash partitions).

Output ``{"runs": [{"target": "processor"|"copy-baseline", "rows", "seconds",
"rows_per_s", ...}], ...}``; for the processor ``rows`` counts the events it consumed
(votes/s), ``stored_rows`` what it wrote to ``votes``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Producer

from bench import probe, scratchdb
from bench.env import kafka_config, stack_env
from bench.kafka import create_topic, delete_topics, end_offsets
from core import elections as core_elections
from core import jsonlog, keyset
from core.event import VoteEvent, seal
from core.settings import load
from processor.settings import ProcessorSettings

REPO = Path(__file__).resolve().parents[1]
CANDIDATES = [f"c{i}" for i in range(10)]


def make_events(n: int, election: str, seed: int = 7) -> list[VoteEvent]:
    rng = random.Random(seed)
    base = int(time.time() * 1e6)
    events: list[VoteEvent] = []
    voters = 0
    for i in range(n):
        r = rng.random()
        if events and r < 0.05:
            events.append(events[rng.randrange(len(events))])  # Kafka duplicate
        elif voters and r < 0.07:
            voter = f"voter-{rng.randrange(voters):09d}"  # a second vote
            events.append(
                VoteEvent(
                    1,
                    uuid.uuid4().hex,
                    election,
                    voter,
                    rng.choice(CANDIDATES),
                    base + i,
                    "bench-gw",
                )
            )
        else:
            voter = f"voter-{voters:09d}"
            voters += 1
            events.append(
                VoteEvent(
                    1,
                    uuid.uuid4().hex,
                    election,
                    voter,
                    rng.choice(CANDIDATES),
                    base + i,
                    "bench-gw",
                )
            )
    return events


def preload(kafka: dict[str, str], topic: str, events: list[VoteEvent], key: keyset.Key) -> float:
    """Produce the events, signed with ``key`` as a gateway would."""
    p = Producer(
        {
            **kafka,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 20,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
        }
    )
    t0 = time.perf_counter()
    for e in events:
        while True:
            try:
                p.produce(topic, value=seal(e, key), key=e.voter_id.encode())
                break
            except BufferError:
                p.poll(0.05)
    if p.flush(120):
        raise RuntimeError("preload not confirmed by Kafka")
    return time.perf_counter() - t0


def first_assignment_at(log_text: str) -> float | None:
    """Log time of the first "partitions assigned" line of any member (None: not yet)."""
    for line in log_text.splitlines():
        if '"partitions assigned"' in line:
            try:
                return jsonlog.parse_ts(json.loads(line)["ts"])
            except (ValueError, KeyError):
                continue
    return None


def time_processor(
    env: dict[str, str],
    dsn: str,
    topic: str,
    group: str,
    ends: dict[int, int],
    log_path: Path,
    members: int,
    lookup: str,
) -> dict[str, float]:
    penv = {
        **os.environ,
        **env,
        "VOTE_PG_DSN": dsn,
        "VOTE_PROCESSOR_TOPIC": topic,
        "VOTE_PROCESSOR_DLQ_TOPIC": f"{topic}.dlq",
        "VOTE_PROCESSOR_GROUP": group,
        "VOTE_PROCESSOR_METRICS_PORT": "0",
        "VOTE_PROCESSOR_MEMBERS": str(members),
        "VOTE_PROCESSOR_LOOKUP": lookup,
        "PYTHONPATH": str(REPO),
    }
    started = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "processor"],
            env=penv,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"processor exited: {log_path.read_text()[-2000:]}")
                rows = conn.execute(
                    "SELECT partition, next_offset FROM consumer_offsets"
                    " WHERE consumer_group = %s AND topic = %s",
                    (group, topic),
                ).fetchall()
                stored = dict(rows)
                if all(stored.get(p, 0) >= e for p, e in ends.items() if e):
                    done = time.time()
                    break
                time.sleep(0.02)
    finally:
        proc.terminate()
        proc.wait(30)
    assigned = first_assignment_at(log_path.read_text())
    if assigned is None:
        raise RuntimeError(f"no assignment in the processor log {log_path}")
    return {"seconds": done - assigned, "join_seconds": assigned - started}


_VOTE_COLS = (
    "election_id, vote_id, voter_id, choice, received_at, gateway_id,"
    " kafka_partition, kafka_offset, counted_at, superseded_by"
)


def create_copy_baseline(conn: psycopg.Connection) -> None:
    """An empty table ``copy_baseline`` with the same DDL as `votes` in 001_initial.sql."""
    conn.execute("DROP TABLE IF EXISTS copy_baseline")
    conn.execute(
        "CREATE TABLE copy_baseline (LIKE votes INCLUDING DEFAULTS INCLUDING CONSTRAINTS,"
        " PRIMARY KEY (election_id, vote_id)) PARTITION BY HASH (vote_id)"
    )
    for i in range(32):
        conn.execute(
            f"CREATE TABLE copy_baseline_p{i:02d} PARTITION OF copy_baseline"
            f" FOR VALUES WITH (MODULUS 32, REMAINDER {i})"
        )


def time_copy_baseline(dsn: str, election: str) -> dict[str, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        create_copy_baseline(conn)
        buf = bytearray()
        with conn.cursor().copy(
            f"COPY (SELECT {_VOTE_COLS} FROM votes WHERE election_id = %s)"
            " TO STDOUT (FORMAT BINARY)",
            (election,),
        ) as copy:
            for chunk in copy:
                buf += chunk
        rows = conn.execute(
            "SELECT count(*) FROM votes WHERE election_id = %s", (election,)
        ).fetchone()[0]
        conn.execute("CHECKPOINT")
        t0 = time.perf_counter()
        with (
            conn.transaction(),
            conn.cursor().copy(
                f"COPY copy_baseline ({_VOTE_COLS}) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            view = memoryview(buf)
            for i in range(0, len(view), 1 << 20):
                copy.write(view[i : i + (1 << 20)])
        seconds = time.perf_counter() - t0
        conn.execute("DROP TABLE copy_baseline")
    return {"rows": rows, "seconds": seconds}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench processor", description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument(
        "--members",
        type=int,
        default=load(ProcessorSettings).processor_members,
        help="consumer-group members in the processor process (default: VOTE_PROCESSOR_MEMBERS"
        " or its default)",
    )
    ap.add_argument(
        "--lookup",
        choices=("state", "postgres"),
        default=load(ProcessorSettings).processor_lookup,
        help="where the processor's lookups are answered (default: VOTE_PROCESSOR_LOOKUP or"
        " its default)",
    )
    ap.add_argument("--json", dest="json_path", help="write the result here too")
    ap.add_argument("--keep", action="store_true", help="keep the database and topic")
    args = ap.parse_args(argv)

    speed = probe.announced_speed()
    env = stack_env()
    kafka, admin_dsn = kafka_config(env), env["VOTE_PG_DSN"]
    db, dsn = scratchdb.create(admin_dsn)
    tag = db.removeprefix("vote_bench_")
    topic = group = election = f"bench-{tag}"
    create_topic(kafka, topic, args.partitions)
    log_path = Path(f"/tmp/bench-processor-{tag}.log")
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            core_elections.write(conn, election, CANDIDATES)
        events = make_events(args.events, election)
        key = keyset.load(load(ProcessorSettings, env).event_keys_path).signing()
        preload_s = preload(kafka, topic, events, key)
        ends = end_offsets(kafka, topic)
        proc = time_processor(env, dsn, topic, group, ends, log_path, args.members, args.lookup)
        base = time_copy_baseline(dsn, election)
        with psycopg.connect(dsn) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM votes WHERE election_id = %s", (election,)
            ).fetchone()[0]
            rejected = conn.execute(
                "SELECT count(*) FROM vote_rejections WHERE election_id = %s", (election,)
            ).fetchone()[0]
            tally = conn.execute(
                "SELECT coalesce(sum(votes), 0) FROM election_tallies WHERE election_id = %s",
                (election,),
            ).fetchone()[0]
        distinct = len({e.vote_id for e in events})
        result: dict[str, Any] = {
            "runs": [
                {
                    "target": "processor",
                    "members": args.members,
                    "lookup": args.lookup,
                    "rows": args.events,
                    "seconds": round(proc["seconds"], 3),
                    "rows_per_s": round(args.events / proc["seconds"]),
                    "stored_rows": stored,
                    "rejected_rows": rejected,
                    "join_seconds": round(proc["join_seconds"], 3),
                },
                {
                    "target": "copy-baseline",
                    "rows": base["rows"],
                    "seconds": round(base["seconds"], 3),
                    "rows_per_s": round(base["rows"] / base["seconds"]),
                },
            ],
            # Same final rows: how long the processor took relative to a bare COPY of them.
            "ratio_processor_vs_copy": round(base["seconds"] / proc["seconds"], 3),
            "events": args.events,
            "distinct_vote_ids": distinct,
            "check": {
                "stored_plus_rejected": stored + rejected,
                "distinct": distinct,
                "tally_sum": int(tally),
                "ok": stored + rejected == distinct and int(tally) == stored,
            },
            "preload_seconds": round(preload_s, 3),
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "platform": platform.platform(),
                "speed": speed,
            },
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m bench processor " + " ".join(argv),
        }
        with psycopg.connect(dsn) as conn:
            version = conn.execute("SELECT version()").fetchone()[0]
        m = re.search(r"PostgreSQL (\S+)", version)
        result["machine"]["postgresql"] = m.group(1) if m else "?"
    finally:
        if not args.keep:
            scratchdb.drop(admin_dsn, db)
            delete_topics(kafka, [topic])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_path:
        Path(args.json_path).write_text(text + "\n")
    return 0 if result["check"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
