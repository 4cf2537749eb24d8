"""``python -m bench locust``: a Locust master and N workers on this machine, then the
exactly-once check.

    python -m bench locust [--workers 2] [--users 4] [--rate 200] [--duration 20]

The distributed set-up of ``bench/locustfile.py`` (``deploy/locust/`` runs it on many
machines), checked here end to end: a gateway of its own on a free port (and a processor
when the stack has none), a fresh election, a corpus of ``rate x duration`` votes of
distinct voters signed through ``gateway.admin``, one Locust master (headless) and
``--workers`` Locust workers as separate processes talking to it over its ZeroMQ port.
When the workers have used up their shares, every ``vote_id`` they were answered 202 for
is looked up in PostgreSQL (``bench.verify``): each must be stored exactly once.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import time
from pathlib import Path

from bench.corpus import DEFAULT_CANDIDATES, vegeta_target, votes_path, write_targets
from bench.env import REPO, BenchError, bench_dir, preflight, python_exe, stack_env
from bench.procs import Service, free_port
from bench.targets import (
    TargetConfig,
    make_target,
    migrate,
    processor_running,
    processor_service,
)
from bench.verify import check_election

LOCUSTFILE = REPO / "bench" / "locustfile.py"


def read_acked(directory: Path) -> list[str]:
    """Every ``vote_id`` the workers listed (one file per worker process)."""
    return [
        line
        for path in sorted(directory.glob("acked-*.txt"))
        for line in path.read_text().splitlines()
        if line
    ]


def locust_argv(*args: str) -> list[str]:
    return [python_exe(), "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING", *args]


def run(args: argparse.Namespace) -> dict[str, object]:
    env = stack_env()
    preflight(env)
    from core import settings as settings_mod
    from gateway import admin
    from gateway.config import GatewaySettings

    settings = settings_mod.load(GatewaySettings, env)
    keys = admin.init_keys(settings)
    migrate(env)
    run_id = time.strftime("locust-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    run_dir = bench_dir(env) / run_id
    run_dir.mkdir(parents=True)
    acked_dir = run_dir / "acked"
    cfg = TargetConfig(
        env=env,
        run_dir=run_dir,
        topic=settings.topic,
        linger_ms=settings.kafka_linger_ms,
        jwks_file=keys["jwks"],
        receipt_key_file=keys["receipt"],
    )
    gateway = make_target("gateway", run_id, cfg)
    admin.create_election(
        settings.pg_dsn, gateway.election, list(DEFAULT_CANDIDATES), title=f"bench {run_id}"
    )
    votes = round(args.rate * args.duration)
    corpus = run_dir / "corpus.targets.jsonl"
    url = gateway.base_url + votes_path(gateway.election)
    minted = admin.mint_votes(
        keys["issuer"], gateway.election, votes, "HS256", None, list(DEFAULT_CANDIDATES)
    )
    write_targets(corpus, (vegeta_target(url, v) for v in minted))
    print(f"{votes} signed votes in {corpus}", flush=True)

    with contextlib.ExitStack() as stack:
        if not processor_running(env):
            proc = processor_service(env, run_dir)
            proc.start()
            stack.callback(proc.stop)
        gateway.service.start()
        stack.callback(gateway.service.stop)
        gateway.service.wait_ready(60.0)
        port = free_port()
        master = Service(
            "locust-master",
            locust_argv(
                "--master",
                "--headless",
                "--master-bind-host",
                "127.0.0.1",
                "--master-bind-port",
                str(port),
                "--expect-workers",
                str(args.workers),
                "--users",
                str(args.users),
                "--spawn-rate",
                str(args.users),
                # The workers stop when their shares are used up; the run time is a bound.
                "--run-time",
                f"{int(args.duration * 3 + 30)}s",
                "--stop-timeout",
                "30",
                "--host",
                gateway.base_url,
                "--corpus",
                str(corpus),
                "--vote-rate",
                str(args.rate),
                "--acked-dir",
                str(acked_dir),
                "--csv",
                str(run_dir / "locust"),
                "--only-summary",
            ),
            env,
            run_dir / "locust-master.log",
        )
        master.start()
        stack.callback(master.stop)
        for i in range(args.workers):
            worker = Service(
                f"locust-worker-{i}",
                locust_argv("--worker", "--master-host", "127.0.0.1", "--master-port", str(port)),
                env,
                run_dir / f"locust-worker-{i}.log",
            )
            worker.start()
            stack.callback(worker.stop)
        started = time.monotonic()
        assert master.proc is not None
        try:
            code = master.proc.wait(timeout=args.duration * 3 + 120)
        except Exception as exc:
            raise RuntimeError(f"the Locust master did not finish:\n{master.log_tail()}") from exc
        seconds = time.monotonic() - started
        acked = read_acked(acked_dir)
        print(f"locust master exited {code} after {seconds:.0f}s; {len(acked)} votes acked")
        result, _ = check_election(
            env["VOTE_PG_DSN"], gateway.election, acked, timeout_s=args.verify_timeout
        )
    stats = _stats(run_dir / "locust_stats.csv")
    return {
        "run": run_id,
        "workers": args.workers,
        "users": args.users,
        "rate": args.rate,
        "duration_s": args.duration,
        "corpus_votes": votes,
        "locust_exit": code,
        "locust_seconds": round(seconds, 1),
        "locust": stats,
        "verify": result,
        "logs": str(run_dir),
    }


def _stats(path: Path) -> dict[str, str]:
    """The aggregated row of Locust's ``--csv`` statistics."""
    import csv

    try:
        with open(path) as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return {}
    return next((r for r in rows if r.get("Name") == "Aggregated"), {})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench locust",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--users", type=int, default=4, help="Locust users over all workers")
    p.add_argument("--rate", type=float, default=200.0, help="votes/s of all workers")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of votes in the corpus")
    p.add_argument("--verify-timeout", type=float, default=180.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.workers < 1 or args.users < args.workers or args.rate <= 0:
        p.error("need --workers >= 1, --users >= --workers and --rate > 0")
    try:
        doc = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    stats = doc["locust"]
    print(
        f"locust: {stats.get('Request Count', '?')} requests, {stats.get('Failure Count', '?')}"
        f" failures, p50 {stats.get('50%', '?')} ms, p99 {stats.get('99%', '?')} ms"
    )
    v = doc["verify"]
    print(
        f"exactly-once: acked {v['acked']} stored {v['stored']} missing {v['missing']} "
        f"duplicates {v['duplicates']}"
    )
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    ok = (
        doc["locust_exit"] == 0
        and v["acked"] == doc["corpus_votes"]
        and not v["missing"]
        and not v["duplicates"]
    )
    return 0 if ok else 1
