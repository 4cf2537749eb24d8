"""``python -m bench chaos``: every scenario in turn against the 3-node chaos stack.

    python -m bench chaos [--scenarios all|NAME,...] [--seed N] [--duration S] [--rate R]
                          [--json F]

Per scenario: heal the stack (``stack up``), create an election, start a gateway (two
workers) and two processor members, drive open-loop load at R votes/s for S seconds
with the fault in the middle, let every vote finish, wait for the spill and the
consumer lag to drain, check (``bench.chaos.checker``), stop the services. Writes the
JSON (``--json``), a PNG timeline per scenario beside it, and every client attempt to
``<json stem>.<scenario>.attempts.jsonl``; prints the Markdown table. Exits 0 only when
every scenario passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import signal
import sys
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

from bench import report as bench_report
from bench.chaos import regions as _regions  # noqa: F401 (registers the region scenarios)
from bench.chaos import report
from bench.chaos.checker import Checker, Result, end_offsets
from bench.chaos.client import OK, Load, VoteSource, write_attempts
from bench.chaos.cluster import Cluster, running
from bench.chaos.fleet import Fleet
from bench.chaos.scenarios import SCENARIOS, Scenario, Setup
from bench.chaos.timeline import Band, Sampler, Timeline, plot
from bench.env import REPO, BenchError
from core.event import DLQ_TOPIC

CANDIDATES = ["alice", "bob", "carol"]
# The fault starts this far into the load; at least the same share follows it.
LEAD_SHARE = 0.35
TAIL_SHARE = 0.30
# The random scenario's schedule of faults, when run at full length.
RANDOM_SCHEDULE_S = 300.0


class Chaos:
    """What a scenario's fault function works with."""

    def __init__(
        self,
        name: str,
        cluster: Cluster,
        fleet: Fleet,
        load: Load,
        timeline: Timeline,
        rng: random.Random,
        election: str,
        topic: str,
        partitions: int,
        schedule_s: float,
        setup: Setup,
        log: object,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.fleet = fleet
        self.load = load
        self.timeline = timeline
        self.rng = rng
        self.election = election
        self.topic = topic
        self.partitions = partitions
        # How long a scenario that schedules faults of its own (random) keeps at it.
        self.schedule_s = schedule_s
        self.setup = setup
        self.notes: list[str] = []
        # Checks a fault adds to the common ones: fn(ctx, result) may add figures to
        # result.extra and what it found wrong to result.failures.
        self.checks: list[Callable[[Chaos, Result], None]] = []
        # (what, partition, offset) of events written straight into the topic (poison),
        # and where the dead-letter topic ended when the scenario began.
        self.poison: list[tuple[str, int, int]] = []
        self.dlq_start = 0
        self._log = log

    def now(self) -> float:
        """Seconds since the load began (the timeline's clock)."""
        return self.load.now()

    def log(self, msg: str) -> None:
        self._log(f"{self.name}: {msg}")  # type: ignore[operator]

    def note(self, msg: str) -> None:
        """A line for the report (and the log)."""
        self.notes.append(msg)
        self.log(msg)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def results_source(self) -> str:
        """What the gateway's results endpoint answers now, and from where."""
        import httpx

        url = f"{self.fleet.base_url}/v1/elections/{self.election}/results"
        try:
            resp = httpx.get(url, timeout=10)
            body = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return f"no answer ({exc!r})"
        return f"HTTP {resp.status_code}, source {body.get('source')!r}"

    @contextlib.contextmanager
    def band(self, label: str) -> Iterator[None]:
        """Shade the timeline from entry to exit with ``label``."""
        start = self.now()
        try:
            yield
        finally:
            self.timeline.bands.append(Band(start, self.now(), label))


def git_head() -> str:
    """The checkout's commit, ``+`` when its tracked files differ from it."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Session:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.command = shlex.join(["python", "-m", "bench", *argv])
        self.started = time.monotonic()
        self.load_at_start = [round(x, 2) for x in os.getloadavg()]
        self.cluster = Cluster()
        self.json_path = Path(args.json)
        self.run_dir = self.json_path.parent / f"{self.json_path.stem}.chaos"

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:7.1f}s] {msg}", flush=True)

    def selected(self) -> list[Scenario]:
        if self.args.scenarios == "all":
            # The scenarios on the chaos stack; those with a topology of their own (the
            # two regions) are run by name.
            names = [n for n, sc in SCENARIOS.items() if sc.standalone is None]
        else:
            names = self.args.scenarios.split(",")
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown:
            raise BenchError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        return [SCENARIOS[n] for n in names]

    def run(self) -> int:
        scenarios = self.selected()
        self.log(f"{self.command}: {len(scenarios)} scenario(s), seed {self.args.seed}")
        if all(sc.standalone is not None for sc in scenarios):
            return self._run(scenarios, {})
        self.log(f"chaos stack in {self.cluster.directory} (deploy/local/stack up, 3 nodes)")
        # Stopped at the end unless it was running before.
        with running(self.cluster):
            env = self.cluster.env()
            from bench.targets import migrate

            migrate(env)
            return self._run(scenarios, env)

    def _run(self, scenarios: list[Scenario], env: dict[str, str]) -> int:
        machine = bench_report.machine(env)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        results, sessions = self.resumed()
        kept = {str(r["name"]) for r in results}
        stopped = False

        def write() -> dict[str, object]:
            doc = report.document(
                date=bench_report.now_iso(),
                command=self.command,
                seed=self.args.seed,
                rate=self.args.rate,
                duration_s=self.args.duration,
                machine=machine,
                scenarios=results,
                seconds=time.monotonic() - self.started,
                sessions=[*sessions, self.session_record()],
            )
            bench_report.write_json(self.json_path, doc)  # after each: a crash keeps the rest
            return doc

        for i, sc in enumerate(scenarios):
            if sc.name in kept:
                self.log(f"{sc.name}: passed in the earlier session of {self.json_path}; kept")
                continue
            if self.args.stop_after and time.monotonic() - self.started > self.args.stop_after * 60:
                self.log(f"stopping before {sc.name} (--stop-after); go on with --resume")
                stopped = True
                break
            rng = random.Random(f"{self.args.seed}:{sc.name}")
            try:
                if sc.standalone is not None:
                    self.log(f"== {sc.name}: {sc.summary}")
                    res = sc.standalone(self.args, self.run_dir / sc.name, self.log)
                else:
                    res = self.scenario(sc, env, rng)
            except Exception as exc:  # one scenario's failure must not end the session
                self.log(f"{sc.name}: the harness failed:\n{traceback.format_exc()}")
                res = {**Result(sc.name).as_dict(), "error": repr(exc), "passed": False}
            results.append(res)
            self.log(
                f"{sc.name}: {'passed' if res['passed'] else 'FAILED'} ({i + 1}/{len(scenarios)})"
            )
            write()
        doc = write()
        print()
        print(report.markdown(results))
        print(f"\nwrote {self.json_path} (timelines and attempts in {self.run_dir})")
        if stopped:
            return 3
        return 0 if doc["passed"] else 1

    def session_record(self) -> dict[str, object]:
        return {
            "date": bench_report.now_iso(),
            "command": self.command,
            "seconds": round(time.monotonic() - self.started, 1),
            "commit": git_head(),
            "loadavg_at_start": self.load_at_start,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        }

    def resumed(self) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """With ``--resume``: the scenarios that passed in the earlier sessions written to
        ``--json`` (same seed, rate and duration), and those sessions. A run too long
        for one sitting is split this way into sessions of one document."""
        if not self.args.resume or not self.json_path.exists():
            return [], []
        doc = json.loads(self.json_path.read_text())
        same = (doc.get("seed"), doc.get("rate"), doc.get("duration_s"))
        if same != (self.args.seed, self.args.rate, self.args.duration):
            raise BenchError(
                f"--resume: {self.json_path} is of seed/rate/duration {same}, not"
                f" {(self.args.seed, self.args.rate, self.args.duration)}"
            )
        passed = [s for s in doc.get("scenarios", []) if s.get("passed")]
        sessions = doc.get("sessions") or [{"date": doc.get("date"), "command": doc.get("command")}]
        return passed, list(sessions)

    def scenario(self, sc: Scenario, env: dict[str, str], rng: random.Random) -> dict[str, object]:
        from core import settings as settings_mod
        from gateway import admin
        from gateway.config import GatewaySettings

        self.log(f"== {sc.name}: {sc.summary}")
        # Heal whatever an earlier scenario (or run) left down.
        self.cluster.up()
        settings = settings_mod.load(GatewaySettings, env)
        election = f"chaos-{sc.name}-{uuid.uuid4().hex[:8]}"
        admin.create_election(settings.pg_dsn, election, CANDIDATES, title=f"chaos {sc.name}")
        out = self.run_dir / sc.name
        out.mkdir(parents=True, exist_ok=True)
        duration = self.args.duration
        timeline = Timeline()
        with contextlib.ExitStack() as stack:
            setup = stack.enter_context(sc.setup(env, out))
            fleet = Fleet(env, out, election, setup.gateway_env, setup.processor_env)
            checker = Checker(env, fleet.metrics_url, drain_timeout_s=self.args.drain_timeout)
            starts = checker.snapshot_ends()
            stack.callback(fleet.stop)
            fleet.start()
            source = VoteSource(fleet.issuer_file, election, CANDIDATES, rng.randrange(2**32))
            source.prefill(int(self.args.rate * duration * 1.2))
            load = Load(fleet.votes_url(election), source, self.args.rate)
            ctx = Chaos(
                sc.name,
                self.cluster,
                fleet,
                load,
                timeline,
                rng,
                election,
                checker.settings.vote_topic,
                len(starts),
                RANDOM_SCHEDULE_S if self.args.full_length else duration / 3,
                setup,
                self.log,
            )
            ctx.dlq_start = end_offsets(checker.settings.kafka_bootstrap, DLQ_TOPIC, 30.0).get(0, 0)
            sampler = Sampler(
                timeline,
                load.now,
                fleet.metrics_url,
                checker.settings.kafka_bootstrap,
                checker.settings.vote_topic,
                checker.settings.pg_dsn,
                checker.settings.processor_group,
                checker.settings.processor_cluster,
            )
            stack.enter_context(sampler)
            load.start()
            stack.callback(load.stop)
            time.sleep(duration * LEAD_SHARE)
            fault_start = load.now()
            self.log(f"{sc.name}: fault at {fault_start:.1f}s")
            try:
                sc.fault(ctx)
            finally:
                fault_end = load.now()
                self.log(f"{sc.name}: healed at {fault_end:.1f}s")
            time.sleep(max(duration * TAIL_SHARE, duration - load.now()))
            self.log(f"{sc.name}: load stopped at {load.now():.1f}s; waiting for open votes")
            unfinished = load.finish(timeout_s=load.policy.max_elapsed_s + 120)
            if unfinished:
                ctx.note(
                    f"{unfinished} votes had no outcome when the client gave up on them"
                    " (those never sent are `unsent`)"
                )
            self.log(f"{sc.name}: {Counter(v.outcome for v in load.votes)}; checking")
            result = checker.check(sc.name, election, CANDIDATES, load.votes, starts)
            for extra_check in ctx.checks:
                extra_check(ctx, result)
            result.notes.extend(ctx.notes)
        for line in result.notes:
            self.log(f"{sc.name}: {line}")
        write_attempts(out / "attempts.jsonl", load.votes)
        during = Counter(
            v.durability
            for v in load.votes
            if v.outcome == OK and v.done_s is not None and fault_start <= v.done_s <= fault_end
        )
        load_s = load.votes[-1].scheduled_s if load.votes else 0.0
        # The rate the client really sent new votes at while the load ran (the box may
        # not sustain --rate: the rest is `unsent` or sent late).
        first_sent = [v.attempts[0].at_s for v in load.votes if v.attempts]
        sent_per_s = sum(1 for t in first_sent if t <= load_s) / load_s if load_s else 0.0
        png = self.json_path.parent / f"{self.json_path.stem}.{sc.name}.png"
        plot(
            png,
            f"{sc.name} (seed {self.args.seed}, {self.args.rate:g} votes/s): {sc.summary}",
            load.votes,
            timeline,
        )
        return {
            **result.as_dict(),
            "election": election,
            "summary": sc.summary,
            "fault_s": [round(fault_start, 1), round(fault_end, 1)],
            "bands": [[round(b.start_s, 1), round(b.end_s, 1), b.label] for b in timeline.bands],
            "acks_during_fault_by_durability": dict(during),
            "load_s": round(load_s, 1),
            "sent_per_s": round(sent_per_s, 1),
            "png": str(png),
        }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--scenarios",
        default="all",
        help=f"all (those on the chaos stack), or of: {', '.join(SCENARIOS)}",
    )
    p.add_argument("--seed", type=int, default=None, help="random by default (printed)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load per scenario")
    p.add_argument(
        "--full-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run random's fault schedule for 5 minutes (else a third of --duration)",
    )
    p.add_argument("--rate", type=float, default=200.0, help="votes/s, open loop")
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the scenarios that passed in --json (same seed, rate, duration); run the rest",
    )
    p.add_argument(
        "--stop-after",
        type=float,
        default=0.0,
        metavar="MIN",
        help="start no scenario after MIN minutes (exit 3; go on later with --resume)",
    )
    p.add_argument(
        "--json",
        default=str(REPO / "bench" / "out" / time.strftime("chaos-%Y%m%d-%H%M%S.json")),
        help="results; PNG timelines are written beside it",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    if args.rate <= 0 or args.duration <= 0:
        build_parser().error("--rate and --duration must be positive")
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return Session(args, ["chaos", *argv]).run()
    except BenchError as exc:
        print(f"bench chaos: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbench chaos: interrupted; its services are stopped", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
