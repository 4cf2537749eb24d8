"""``python -m bench capacity``: cores, storage and Kafka sizing from measured costs.

    python -m bench capacity --from REPORT.json [--votes-per-s 250000] [--voters 300000000]
                             [--target gateway] [--mode max] [--retention-h 168]
                             [--partition-mb-s 10] [--replication 3] [--json FILE]

Three measured inputs, multiplied out:

* **Cores.** A gateway report (``python -m bench gateway --json F``) holds, for every
  run, the µs of CPU each process group spent per acknowledged vote (``bench.cpu``).
  The run of ``--target`` in ``--mode`` (default: its ``max`` run, the cheapest per vote
  it got; else its highest-rate run) gives the µs per vote of the gateway, the broker(s),
  the processor, PostgreSQL and Redis; x votes/s / 10^6 is the cores each needs. CPU per
  vote falls as the rate rises, so cores from a run below saturation are an upper bound.
  The brokers' figure is that of the cluster the report ran on (``settings.kafka_nodes``):
  a one-node stack does no replication, so its broker figure understates a replicated
  cluster's.
* **Storage.** PostgreSQL's own relation sizes after a run, from the stack's database:
  heap (with TOAST) and index bytes of ``votes`` and ``voters`` (all partitions) per
  stored vote, x ``--voters`` (one vote each).
* **Kafka.** The bytes of the vote topic's log segments on the stack's broker(s) per
  event (what one vote costs on disk after compression and batching, one replica), x
  votes/s x ``--retention-h`` x ``--replication``; partitions: enough that every
  processor core has one to consume, and that no partition takes more than
  ``--partition-mb-s`` of writes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.report import find_run, write_json

# The process groups that run in production, in the order of the table; the load
# generator is the test's own.
COMPONENTS = (
    ("target", "gateways"),
    ("broker", "Kafka brokers"),
    ("processor", "processors"),
    ("postgres", "PostgreSQL"),
    ("redis", "Redis"),
)
# The relations a stored vote grows: one row in each (first_wins, one vote per voter).
VOTE_RELATIONS = ("votes", "voters")


@dataclass(frozen=True)
class CoreNeed:
    component: str
    us_per_vote: float | None
    cores: float | None


def pick_run(runs: Sequence[dict], target: str, mode: str | None) -> dict:
    """The run whose costs the model uses (see the module docstring)."""
    if mode:
        run = find_run(runs, target, mode)
        if not run or not run.get("cpu_us_per_vote"):
            raise ValueError(f"the report has no {mode!r} run of {target!r} with CPU figures")
        return run
    measured = [r for r in runs if r["target"] == target and r.get("cpu_us_per_vote")]
    if not measured:
        raise ValueError(
            f"the report has no run of {target!r} with cpu_us_per_vote: "
            "measure one with `python -m bench gateway --json F`"
        )
    best = find_run(measured, target, "max")
    return best or max(measured, key=lambda r: r.get("rate") or 0)


def cores(per_vote: dict[str, float | None], votes_per_s: float) -> list[CoreNeed]:
    """Cores each production component needs at ``votes_per_s``."""
    out = []
    for group, label in COMPONENTS:
        us = per_vote.get(group)
        need = round(us * votes_per_s / 1e6, 1) if us is not None else None
        out.append(CoreNeed(label, us, need))
    return out


@dataclass(frozen=True)
class RelationSize:
    relation: str
    rows: int
    table_bytes: int  # heap + TOAST of every partition
    index_bytes: int


def relation_sizes(dsn: str, relations: Sequence[str] = VOTE_RELATIONS) -> list[RelationSize]:
    """Rows (planner estimate after ANALYZE) and bytes of each relation and its partitions."""
    import psycopg

    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for rel in relations:
            conn.execute(f"ANALYZE {rel}")
            row = conn.execute(
                """
                SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,
                       coalesce(sum(pg_table_size(t.relid)), 0)::bigint,
                       coalesce(sum(pg_indexes_size(t.relid)), 0)::bigint
                FROM pg_partition_tree(%s::regclass) t
                JOIN pg_class c ON c.oid = t.relid
                WHERE t.isleaf
                """,
                (rel,),
            ).fetchone()
            assert row is not None
            out.append(RelationSize(rel, int(row[0]), int(row[1]), int(row[2])))
    return out


def storage(sizes: Sequence[RelationSize], voters: int) -> dict[str, object]:
    """Bytes per stored vote (rows of ``votes``) and the totals for ``voters`` votes."""
    votes = next((s.rows for s in sizes if s.relation == "votes"), 0)
    if votes <= 0:
        raise ValueError("no stored votes to divide by: run a bench first")
    per_vote = {
        s.relation: {
            "rows": s.rows,
            "rows_per_vote": round(s.rows / votes, 3),
            "table_bytes_per_vote": round(s.table_bytes / votes, 1),
            "index_bytes_per_vote": round(s.index_bytes / votes, 1),
        }
        for s in sizes
    }
    total = sum(s.table_bytes + s.index_bytes for s in sizes) / votes
    return {
        "stored_votes": votes,
        "relations": per_vote,
        "bytes_per_vote": round(total, 1),
        "voters": voters,
        "total_bytes": round(total * voters),
    }


def topic_bytes_per_event(data_dirs: Sequence[Path], topic: str, events: int) -> float | None:
    """Bytes of ``topic``'s log segments per event, one replica (all replicas divided by their
    number per partition), or None without events."""
    dirs = [
        p for d in data_dirs for p in d.glob(f"{topic}-*") if p.name.rpartition("-")[2].isdigit()
    ]
    partitions = {p.name for p in dirs}
    if events <= 0 or not partitions:
        return None
    size = sum(f.stat().st_size for p in dirs for f in p.glob("*.log"))
    return size / (len(dirs) / len(partitions)) / events


def topic_events(kafka_config: dict[str, str], topic: str) -> int:
    """Events in the topic now (end minus start offset, summed over its partitions).

    ``kafka_config``: the client settings (``bench.env.kafka_config``)."""
    from bench import kafka as kafka_topics

    return sum(high - low for low, high in kafka_topics.watermarks(kafka_config, topic).values())


def kafka(
    bytes_per_event: float | None,
    votes_per_s: float,
    retention_h: float,
    replication: int,
    partition_mb_s: float,
    processor_cores: float | None,
) -> dict[str, object]:
    if bytes_per_event is None:
        return {"bytes_per_event": None}
    write_mb_s = votes_per_s * bytes_per_event / 1e6
    by_throughput = math.ceil(write_mb_s / partition_mb_s)
    by_consumers = math.ceil(processor_cores or 1)
    return {
        "bytes_per_event": round(bytes_per_event, 1),
        "write_mb_s": round(write_mb_s, 1),
        "partitions": max(by_throughput, by_consumers),
        "partitions_for_throughput": by_throughput,
        "partitions_for_processor_cores": by_consumers,
        "retention_h": retention_h,
        "replication": replication,
        "retained_bytes": round(write_mb_s * 1e6 * 3600 * retention_h * replication),
    }


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n < 1e12 else f"{n / 1e12:,.2f} TB"


def markdown(model: dict) -> str:
    src = model["source"]
    lines = [
        f"Measured {src['date']} on {src['machine']} (`{src['command']}`, run "
        f"{src['target']} {src['mode']} at {src['rate']:,}/s, {src['kafka_nodes']} Kafka "
        f"node(s)); model for {model['votes_per_s']:,} votes/s:",
        "",
        "| component | CPU µs per vote (measured) | cores |",
        "|---|--:|--:|",
    ]
    for need in model["cores"]:
        us = "—" if need["us_per_vote"] is None else f"{need['us_per_vote']:,.0f}"
        cores_ = "—" if need["cores"] is None else f"{need['cores']:,.1f}"
        lines.append(f"| {need['component']} | {us} | {cores_} |")
    total = sum(n["cores"] for n in model["cores"] if n["cores"] is not None)
    lines.append(f"| **all** | | **{total:,.1f}** |")
    st = model.get("storage")
    if st:
        lines += [
            "",
            f"PostgreSQL for {st['voters']:,} voters (from {st['stored_votes']:,} stored votes):",
            "",
            "| relation | rows per vote | table bytes per vote | index bytes per vote | total |",
            "|---|--:|--:|--:|--:|",
        ]
        for rel, r in st["relations"].items():
            both = (r["table_bytes_per_vote"] + r["index_bytes_per_vote"]) * st["voters"]
            lines.append(
                f"| {rel} | {r['rows_per_vote']} | {r['table_bytes_per_vote']:,.0f} | "
                f"{r['index_bytes_per_vote']:,.0f} | {_gb(both)} |"
            )
        lines.append(
            f"| **all** | | | {st['bytes_per_vote']:,.0f} B/vote | **{_gb(st['total_bytes'])}** |"
        )
    k = model.get("kafka")
    if k and k.get("bytes_per_event"):
        lines += [
            "",
            f"Kafka: {k['bytes_per_event']:,.0f} bytes per event on disk (one replica) → "
            f"{k['write_mb_s']:,} MB/s of writes; {k['partitions']} partitions (throughput "
            f"{k['partitions_for_throughput']}, one per processor core "
            f"{k['partitions_for_processor_cores']}); {k['retention_h']:g} h retention x "
            f"RF {k['replication']} = {_gb(k['retained_bytes'])}.",
        ]
    return "\n".join(lines)


def build_model(args: argparse.Namespace, report: dict) -> dict[str, object]:
    run = pick_run(report["runs"], args.target, args.mode)
    per_vote: dict[str, float | None] = run["cpu_us_per_vote"]
    needs = cores(per_vote, args.votes_per_s)
    machine = report.get("machine") or {}
    model: dict[str, object] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "votes_per_s": args.votes_per_s,
        "source": {
            "report": str(args.source),
            "date": report.get("date"),
            "command": report.get("command"),
            "machine": f"{machine.get('cpu')}, {machine.get('cpus')} CPUs",
            "target": run["target"],
            "mode": run["mode"],
            "rate": run["rate"],
            "kafka_nodes": (report.get("settings") or {}).get("kafka_nodes", "?"),
        },
        "cores": [asdict(n) for n in needs],
    }
    if not args.no_storage:
        from bench.env import kafka_config, stack_dir, stack_env
        from core.event import TOPIC

        env = stack_env()
        model["storage"] = storage(relation_sizes(env["VOTE_PG_DSN"]), args.voters)
        data_dirs = sorted(stack_dir(env).glob("kafka/node-*/data"))
        events = topic_events(kafka_config(env), TOPIC)
        processor = next(n for n in needs if n.component == "processors")
        model["kafka"] = kafka(
            topic_bytes_per_event(data_dirs, TOPIC, events),
            args.votes_per_s,
            args.retention_h,
            args.replication,
            args.partition_mb_s,
            processor.cores,
        )
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench capacity",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from", dest="source", type=Path, required=True, help="gateway report")
    p.add_argument("--votes-per-s", type=float, default=250_000)
    p.add_argument("--voters", type=int, default=300_000_000)
    p.add_argument("--target", default="gateway")
    p.add_argument("--mode", default=None, help="which run of the target (default: max)")
    p.add_argument("--retention-h", type=float, default=168.0)
    p.add_argument("--replication", type=int, default=3)
    p.add_argument(
        "--partition-mb-s", type=float, default=10.0, help="write budget of one partition"
    )
    p.add_argument("--no-storage", action="store_true", help="cores only (no PostgreSQL, no Kafka)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        report = json.loads(args.source.read_text())
        model = build_model(args, report)
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench capacity: {exc}", file=sys.stderr)
        return 2
    print(markdown(model))
    if args.json:
        write_json(args.json, model)
    return 0
