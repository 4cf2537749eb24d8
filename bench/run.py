"""``python -m bench gateway``: the same open-loop load on several targets, interleaved.

    python -m bench gateway [--quick] [--max | --rate R] [--targets gateway,nginx-204,...]
                            [--json FILE] [--repeat N] [--workers N] [--p99-bound-ms MS]

One session: create one election per target (so each target's votes can be told apart
in PostgreSQL), start every target (and a processor when the stack has none), warm each
one up, then run the steps of all targets in turn — round robin, the order rotated each
round — so that whatever else happens on the machine is spread over all of them alike.

``--max`` (the default) finds each target's highest rate with < 0.1 % errors and p99
within the bound (``bench.search``), then measures each target at that rate and at half
of it (``half-max``), ``--repeat`` times, reporting medians. ``--rate R`` measures every
target at R. Afterwards every acknowledged ``vote_id`` of the gateway is looked up in
PostgreSQL (``bench.verify``). Everything the session started is stopped on the way out,
on errors, Ctrl-C and SIGTERM included.

``--kafka-stopped`` (with ``--rate R --targets gateway``) kills the stack's broker after
the warm-up, so every measured vote is acknowledged from the gateway's spill; then it
restarts the broker, waits until the spill is empty and checks exactly-once as usual
(``bench.outage``). ``--memory`` (same restriction) samples the gateway workers' RSS
through the runs and reports its growth after ``--memory-baseline-s`` (``bench.memory``):
``--rate R --repeat 10 --duration 60 --memory`` is the 10-minute soak.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from bench import cpu, probe, report
from bench.corpus import DEFAULT_CANDIDATES, BatchPool, VotePool, batch_path, votes_path
from bench.env import (
    REPO,
    BenchError,
    bench_dir,
    ensure_go_peer,
    ensure_nginx,
    ensure_vegeta,
    go_binary,
    preflight,
    stack_dir,
    stack_env,
)
from bench.loadgen import StepResult, Vegeta, targets_needed
from bench.memory import MemorySampler
from bench.outage import spilled_events, start_kafka, stop_kafka, wait_spill_drained
from bench.procs import Service
from bench.search import Criteria, MaxSearch, round_rate
from bench.targets import (
    DEFAULT_TARGETS,
    TARGETS,
    Target,
    TargetConfig,
    election_for,
    is_gateway,
    make_target,
    migrate,
    parse_variant,
    processor_running,
    processor_service,
    settle_database,
)
from bench.visibility import ack_to_count_buckets, ack_to_visible

# A batch answer's result per vote is a single vote's 202 body (receipt included) plus its
# index and code, a few hundred bytes; vegeta keeps this much per vote of a batch's answer.
BATCH_ANSWER_BYTES_PER_VOTE = 1024
# CPU pressure (PSI some avg10, %) from which a step is flagged as disturbed: the load
# generator and the target alone keep it well below this on an otherwise idle machine.
NOISY_PSI = 40.0
# Steal (% of the CPU time the hypervisor gave to other guests during a step) from which a
# step is flagged: a few % is usual on a shared VM; 40-50 % was seen in a step whose
# every target's throughput had halved.
NOISY_STEAL = 10.0


@dataclass(frozen=True)
class Plan:
    """Durations and search parameters of one session (``--quick`` or the full method)."""

    mode: str  # max | rate
    rate: int | None
    warmup_s: float
    warmup_rate: int
    step_s: float  # one step of the --max search
    run_s: float  # one measured run (--rate, max confirmation, half-max)
    repeat: int
    start_rate: int
    factor: float
    precision: float
    max_steps: int
    confirm_failures: int  # repeats of a failed search step before it counts
    timeout_s: float
    settle_s: float  # pause after a failed step: let the target drain its backlog
    half_max: bool


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    mode = "rate" if args.rate else "max"
    return Plan(
        mode=mode,
        rate=args.rate,
        warmup_s=args.warmup if args.warmup is not None else (2.0 if quick else 10.0),
        # The warm-up is in votes/s: with --batch N, N times fewer requests.
        warmup_rate=max(1, args.warmup_rate // (args.batch or 1)),
        step_s=args.step_duration or (2.0 if quick else 10.0),
        run_s=args.duration or (3.0 if quick else 20.0),
        repeat=args.repeat or (1 if quick else 3),
        start_rate=args.start_rate,
        factor=2.0,
        precision=0.25 if quick else 0.05,
        max_steps=8 if quick else 14,
        confirm_failures=(
            args.confirm_failures if args.confirm_failures is not None else 0 if quick else 1
        ),
        timeout_s=2.0 if quick else 5.0,
        settle_s=0.5 if quick else 3.0,
        half_max=not args.no_half_max,
    )


def _rotate(items: list[str], k: int) -> list[str]:
    if not items:
        return items
    k %= len(items)
    return items[k:] + items[:k]


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _raise_nofile() -> None:
    # Overload steps open thousands of connections; let vegeta and nginx have them.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Session:
    def __init__(self, args: argparse.Namespace, argv: list[str]) -> None:
        self.args = args
        self.plan = make_plan(args)
        self.command = shlex.join([os.path.basename(sys.executable), "-m", "bench", *argv])
        self.criteria = Criteria(max_error_rate=args.max_error_rate, p99_bound_ms=args.p99_bound_ms)
        self.targets: dict[str, Target] = {}
        self.pools: dict[str, VotePool | BatchPool] = {}
        self.steps: list[StepResult] = []
        self.acked: dict[str, set[str]] = defaultdict(set)
        self.run_steps: dict[tuple[str, str], list[StepResult]] = defaultdict(list)
        self.dead: dict[str, str] = {}
        self.outage: dict[str, float] = {}
        self.memory: dict[str, object] = {}
        self.processor_metrics: str | None = None
        self.processor_pid: int | None = None
        self.meter: cpu.CpuMeter | None = None
        self.kafka_nodes = 0
        self.ack_to_visible: dict[str, object] = {}
        self.env: dict[str, str] = {}
        self._visible_before: dict[float, float] = {}
        self.started = time.monotonic()

    # -- progress ---------------------------------------------------------------------

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.started:6.1f}s] {msg}", flush=True)

    # -- one step ---------------------------------------------------------------------

    def step(
        self, vegeta: Vegeta, name: str, mode: str, rate: int, duration_s: float
    ) -> StepResult | None:
        target = self.targets[name]
        if name in self.dead:
            return None
        if not target.service.alive():
            self.dead[name] = f"exited:\n{target.service.log_tail()}"
            self.log(f"{name} is not running any more; dropping it\n{target.service.log_tail()}")
            return None
        lines = self.pools[name].take(targets_needed(rate, duration_s))
        print(
            f"[{time.monotonic() - self.started:6.1f}s] {name:<12} {mode:<8} "
            f"{rate:>7}/s x {duration_s:g}s ... ",
            end="",
            flush=True,
        )
        res = vegeta.step(
            name, mode, lines, rate, duration_s, meter=self.meter, target_pid=target.service.pid
        )
        why = self.criteria.failures(res)
        noisy = res.cpu_pressure is not None and res.cpu_pressure >= NOISY_PSI
        stolen = res.cpu_steal is not None and res.cpu_steal >= NOISY_STEAL
        print(report.step_line(res, why, noisy=noisy, stolen=stolen), flush=True)
        if why and res.error_samples:
            print(f"{'':>10}errors: {' | '.join(res.error_samples)}", flush=True)
        self.steps.append(res)
        self.acked[name].update(res.acked_ids)
        if why:
            time.sleep(self.plan.settle_s)
        return res

    # -- the session ------------------------------------------------------------------

    def _variants(self, env: dict[str, str]) -> dict[str, dict[str, str]]:
        """The ``--variant`` targets, each checked by the gateway's own settings parser."""
        from core import settings as settings_mod
        from gateway.config import GatewaySettings

        known = settings_mod.variables(GatewaySettings)
        variants: dict[str, dict[str, str]] = {}
        for spec in self.args.variant:
            try:
                name, changed = parse_variant(spec)
                if typos := sorted(set(changed) - known):
                    raise ValueError(f"--variant {spec!r}: no gateway setting {', '.join(typos)}")
                settings_mod.load(GatewaySettings, {**env, **changed})
            except (settings_mod.ConfigError, ValueError) as exc:
                raise BenchError(str(exc)) from exc
            variants[name] = changed
        return variants

    def run(self) -> int:
        args, plan = self.args, self.plan
        env = self.env = stack_env()
        names = [t.strip() for t in args.targets.split(",") if t.strip()]
        if args.batch and names != ["gateway"]:
            raise BenchError("--batch N sends POST .../votes:batch: it needs --targets gateway")
        for flag, on in (("--kafka-stopped", args.kafka_stopped), ("--memory", args.memory)):
            if on and (names != ["gateway"] or not args.rate):
                raise BenchError(
                    f"{flag} measures the gateway alone: it needs --targets gateway and --rate R"
                )
        needs_stack = any(n not in ("nginx-204", "granian-floor") for n in names)
        preflight(env, kafka=needs_stack, postgres=needs_stack)
        _raise_nofile()
        from core import settings as settings_mod
        from gateway import admin
        from gateway.config import GatewaySettings

        settings = settings_mod.load(GatewaySettings, env)
        variants = self._variants(env)
        known = (*TARGETS, *variants)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BenchError(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(known)}")
        vegeta_exe = ensure_vegeta(env)
        if "go-peer" in names:
            ensure_go_peer(env)
        if "nginx-204" in names:
            ensure_nginx()
        keys = admin.init_keys(settings)
        run_id = time.strftime("bench-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        run_dir = bench_dir(env) / run_id
        run_dir.mkdir(parents=True)
        json_path = Path(args.json) if args.json else REPO / "bench" / "out" / f"{run_id}.json"
        machine = report.machine(env, vegeta_exe, go_binary())
        self.log(probe.describe(machine["speed"]))
        psi = machine["speed"]["cpu_pressure_avg10"]
        if psi is not None and psi >= NOISY_PSI:
            self.log(
                f"WARNING: the machine is busy (CPU pressure {psi:.0f}% over the last "
                "10 s): other processes compete with the targets; figures will be low "
                "and noisy"
            )
        self.log(f"{self.command}\n         run {run_id}: {plan}\n         logs in {run_dir}")

        cfg = TargetConfig(
            env=env,
            run_dir=run_dir,
            workers=args.workers,
            cpus=args.target_cpus,
            topic=settings.topic,
            linger_ms=settings.kafka_linger_ms,
            jwks_file=keys["jwks"],
            receipt_key_file=keys["receipt"],
            variants=variants,
        )
        candidates = list(DEFAULT_CANDIDATES)
        verify_results: dict[str, dict] = {}
        verify_counts: dict[str, dict[str, int]] = {}
        # A fresh stack has no schema yet; migrations are idempotent, so this costs one
        # round trip when they are already applied.
        migrate(env)
        settled_s = settle_database(settings.pg_dsn)
        self.log(
            f"vacuumed and analyzed the vote tables in {settled_s:.1f} s "
            "(so that autovacuum does not start during a run)"
        )
        with contextlib.ExitStack() as stack:
            for name in names:
                target = make_target(name, election_for(run_id, name), cfg)
                self.targets[name] = target
                if target.produces:
                    admin.create_election(
                        settings.pg_dsn, target.election, candidates, title=f"bench {run_id} {name}"
                    )
            if any(t.produces for t in self.targets.values()):
                self._ensure_processor(env, run_dir, stack)
            for target in self.targets.values():
                target.service.start()
                stack.callback(self._stop, target.service)
            for target in self.targets.values():
                target.service.wait_ready(60.0)
                self.log(f"{target.name} ready at {target.base_url} (election {target.election})")
                votes = admin.mint_votes(
                    keys["issuer"], target.election, 10**9, args.alg, None, candidates
                )
                if args.batch:
                    self.pools[target.name] = BatchPool(
                        votes, target.base_url + batch_path(target.election), args.batch
                    )
                    continue
                self.pools[target.name] = VotePool(
                    votes,
                    target.base_url + votes_path(target.election),
                    fresh=target.fresh_votes,
                    cap=args.pool,
                )

            groups = cpu.stack_groups(
                stack_dir(env), lambda: self.processor_pid or processor_running(env)
            )
            self.kafka_nodes = len(list(groups["broker"]()))
            self.meter = cpu.CpuMeter(groups)
            vegeta = Vegeta(
                vegeta_exe,
                run_dir,
                cpus=args.loadgen_cpus,
                timeout_s=plan.timeout_s,
                max_body=BATCH_ANSWER_BYTES_PER_VOTE * (args.batch or 1) + 4096,
            )
            searches = self._measure(vegeta, names)

            # Peers first: the gateway keeps running while we wait, so that anything it
            # had to spill is drained to Kafka before we look for it in PostgreSQL.
            for name in names:
                if not is_gateway(name):
                    self._stop(self.targets[name].service)
            to_verify = [
                n
                for n in names
                if self.targets[n].produces
                and (is_gateway(n) or args.verify_peers)
                and not args.no_verify
            ]
            for name in to_verify:
                verify_results[name], verify_counts[name] = self._verify(env, name)
            if plan.mode == "rate" and "gateway" in to_verify:
                # Every acknowledged vote is stored now: the histogram holds them all.
                self.ack_to_visible = ack_to_visible(
                    self._visible_before, ack_to_count_buckets(self.processor_metrics)
                )
                if self.ack_to_visible:
                    self.log(
                        f"acknowledged -> visible in results (processor's "
                        f"vote_ack_to_count_seconds over the runs): "
                        f"p50 <= {self.ack_to_visible['p50_le_s']} s, "
                        f"p99 <= {self.ack_to_visible['p99_le_s']} s "
                        f"({self.ack_to_visible['count']} sampled votes)"
                    )
            # ExitStack stops the rest (gateway, our processor) here.

        doc = self._document(machine, searches, verify_results, verify_counts, json_path)
        report.write_json(json_path, doc)
        png = json_path.with_suffix(".png")
        report.plot(
            png,
            doc["steps"],
            doc["runs"],
            self.criteria.p99_bound_ms,
            title=f"{self.command}  ({doc['date']}, {machine['cpu']}, {machine['cpus']} CPUs)",
        )
        print()
        print(report.markdown(doc))
        print(f"\nwrote {json_path} and {png} in {time.monotonic() - self.started:.0f}s")
        return self._exit_code(doc)

    def _measure(self, vegeta: Vegeta, names: list[str]) -> dict[str, MaxSearch]:
        plan = self.plan
        self.log(f"warm-up: {plan.warmup_rate}/s for {plan.warmup_s:g}s per target")
        for name in names:
            if plan.warmup_s > 0:
                self.step(vegeta, name, "warmup", plan.warmup_rate, plan.warmup_s)
        searches: dict[str, MaxSearch] = {}
        if plan.mode == "rate":
            self._measure_rate(vegeta, names)
            return searches

        self.log(
            f"max search: start {plan.start_rate}/s, x{plan.factor:g} then bisect to "
            f"{plan.precision:.0%}, {plan.step_s:g}s steps; pass = errors < "
            f"{self.criteria.max_error_rate:.1%}, p99 <= {self.criteria.p99_bound_ms:g} ms"
            + (
                f"; a failed step is run {plan.confirm_failures} more time(s) before it counts"
                if plan.confirm_failures
                else ""
            )
        )
        for name in names:
            searches[name] = MaxSearch(
                start=plan.start_rate,
                factor=plan.factor,
                precision=plan.precision,
                max_steps=plan.max_steps,
                confirm_failures=plan.confirm_failures,
            )
        best_step: dict[str, StepResult] = {}
        for k in self._rounds():
            pending = [
                n
                for n in _rotate(names, k)
                if n not in self.dead and searches[n].next_rate() is not None
            ]
            if not pending:
                break
            for name in pending:
                rate = searches[name].next_rate()
                assert rate is not None
                mode = "confirm" if searches[name].confirming else "search"
                res = self.step(vegeta, name, mode, rate, plan.step_s)
                if res is None:
                    continue
                passed = self.criteria.passes(res)
                searches[name].record(rate, passed)
                if passed and (name not in best_step or rate > best_step[name].rate):
                    best_step[name] = res
        for name in names:
            self.log(f"{name}: max {searches[name].best}/s (steps {searches[name].history})")

        if plan.repeat == 1:
            # --quick: the search's best step is the max run (same duration, same rate).
            for name, res in best_step.items():
                self.run_steps[(name, "max")].append(res)
        else:
            for i in range(plan.repeat):
                self.log(f"max runs, repeat {i + 1}/{plan.repeat}")
                for name in _rotate(names, i):
                    if searches[name].best:
                        self._run(vegeta, name, "max", searches[name].best, plan.run_s)
        if plan.half_max:
            for i in range(plan.repeat):
                self.log(f"half-max runs, repeat {i + 1}/{plan.repeat}")
                for name in _rotate(names, i):
                    best = searches[name].best
                    if best:
                        self._run(vegeta, name, "half-max", round_rate(best / 2), plan.run_s)
        return searches

    def _measure_rate(self, vegeta: Vegeta, names: list[str]) -> None:
        """``--rate R``: every target at R, ``--repeat`` times; with ``--kafka-stopped``
        while the broker is down, with ``--memory`` while the workers' RSS is sampled."""
        plan = self.plan
        assert plan.rate is not None
        mode = "kafka-stopped" if self.args.kafka_stopped else "rate"
        self._visible_before = ack_to_count_buckets(self.processor_metrics)
        sampler = (
            MemorySampler(self.targets["gateway"].service.proc.pid) if self.args.memory else None
        )
        if self.args.kafka_stopped:
            self.log("stopping Kafka (SIGKILL of the stack's broker)")
            stop_kafka(self.env)
        try:
            with sampler or contextlib.nullcontext():
                for i in range(plan.repeat):
                    self.log(f"{mode} {plan.rate}/s, repeat {i + 1}/{plan.repeat}")
                    for name in _rotate(names, i):
                        self._run(vegeta, name, mode, plan.rate, plan.run_s)
                        if sampler is not None and sampler.samples:
                            t, rss = sampler.samples[-1]
                            self.log(f"gateway workers' RSS {rss / 2**20:.1f} MiB at {t:g}s")
        finally:
            if self.args.kafka_stopped:
                self._restore_kafka()
        if sampler is not None:
            m = self.memory = sampler.summary(self.args.memory_baseline_s)
            self.log(
                f"memory: {m['baseline_mib']} MiB at {m['baseline_at_s']}s -> "
                f"{m['end_mib']} MiB at {m['end_at_s']}s "
                f"({m['growth_after_baseline_pct']:+.2f}%)"
            )

    def _restore_kafka(self) -> None:
        """Restart the broker and wait until the gateway's spill has drained into it."""
        port = self.targets["gateway"].service.env["VOTE_METRICS_PORT"]
        url = f"http://127.0.0.1:{port}/metrics"
        spilled = spilled_events(url)
        self.log(f"restarting Kafka (deploy/local/stack up); {spilled:.0f} events spilled")
        started = time.monotonic()
        restart_s = start_kafka(self.env)
        wait_spill_drained(url)
        drained_s = time.monotonic() - started
        self.outage.update(
            spilled_events=spilled,
            kafka_restart_s=round(restart_s, 1),
            drained_after_s=round(drained_s, 1),
        )
        self.log(
            f"Kafka answered again after {restart_s:.1f}s; the spill was empty "
            f"{drained_s:.1f}s after the restart began"
        )

    def _rounds(self) -> Iterator[int]:
        k = 0
        while True:
            yield k
            k += 1

    def _run(self, vegeta: Vegeta, name: str, mode: str, rate: int, duration_s: float) -> None:
        res = self.step(vegeta, name, mode, rate, duration_s)
        if res is not None:
            self.run_steps[(name, mode)].append(res)

    # -- services ---------------------------------------------------------------------

    def _stop(self, service: Service) -> None:
        if service.proc is not None and service.proc.returncode is None:
            self.log(f"stopping {service.name}")
        service.stop()

    def _ensure_processor(
        self, env: dict[str, str], run_dir: Path, stack: contextlib.ExitStack
    ) -> None:
        pid = processor_running(env)
        if pid:
            self.log(f"using the stack's processor (pid {pid})")
            port = env.get("VOTE_PROCESSOR_METRICS_PORT", "9101")
            self.processor_metrics = f"http://127.0.0.1:{port}/metrics"
            return
        self.log("no processor running: starting one for this session")
        svc = processor_service(env, run_dir)
        self.processor_metrics = (
            f"http://127.0.0.1:{svc.env['VOTE_PROCESSOR_METRICS_PORT']}/metrics"
        )
        svc.start()
        stack.callback(self._stop, svc)
        svc.wait_ready(5.0)
        self.processor_pid = svc.pid

    def _verify(self, env: dict[str, str], name: str) -> tuple[dict, dict[str, int]]:
        from bench.verify import check_election

        target = self.targets[name]
        acked = self.acked[name]
        self.log(f"{name}: waiting for the processor to store {len(acked)} acknowledged votes ...")
        try:
            result, counts = check_election(
                env["VOTE_PG_DSN"],
                target.election,
                acked,
                timeout_s=self.args.verify_timeout,
                stall_s=min(30.0, self.args.verify_timeout),
                progress=lambda n: None,
            )
        except Exception as exc:  # report, do not lose the measurements
            self.log(f"{name}: verification failed: {exc!r}")
            return {"election": target.election, "error": repr(exc)}, {}
        self.log(
            f"{name}: acked {result['acked']} stored {result['stored']} missing "
            f"{result['missing']} duplicates {result['duplicates']} "
            f"(stored but not acked {result['unacked_stored']}, {result['wait_s']}s)"
        )
        return result, counts

    # -- output -----------------------------------------------------------------------

    def _document(
        self,
        machine: dict[str, object],
        searches: dict[str, MaxSearch],
        verify_results: dict[str, dict],
        verify_counts: dict[str, dict[str, int]],
        json_path: Path,
    ) -> dict[str, object]:
        runs = report.runs_of(
            self.run_steps,
            list(self.targets),
            self.criteria.passes,
            verify_counts,
            {n: s.best for n, s in searches.items()},
            self.dead,
        )
        return {
            "date": report.now_iso(),
            "command": self.command,
            "machine": {**machine, "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]},
            "settings": {
                **asdict(self.plan),
                **asdict(self.criteria),
                "workers": self.args.workers,
                "loadgen_cpus": self.args.loadgen_cpus,
                "target_cpus": self.args.target_cpus,
                "batch": self.args.batch,
                "kafka_nodes": self.kafka_nodes,
                "alg": self.args.alg,
                "elections": {n: t.election for n, t in self.targets.items()},
            },
            "runs": runs,
            "ratios": report.ratios(runs),
            "search": {n: s.history for n, s in searches.items()},
            "verify": verify_results,
            "dead": self.dead,
            "outage": self.outage,
            "memory": self.memory,
            "ack_to_visible": self.ack_to_visible,
            "steps": [s.summary() for s in self.steps],
            "png": str(json_path.with_suffix(".png")),
            "seconds": round(time.monotonic() - self.started, 1),
        }

    def _exit_code(self, doc: dict[str, object]) -> int:
        why = report.failures(doc, self.targets, self.plan.mode, self.dead)
        for line in why:
            self.log(line)
        return 1 if why else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help=f"comma-separated, of {', '.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)})",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--max", action="store_true", help="find each target's highest passing rate (default)"
    )
    mode.add_argument("--rate", type=int, default=None, help="offered requests/s, open loop")
    p.add_argument(
        "--quick",
        action="store_true",
        help="short steps and one repeat: about 1.5 minutes with the stack up",
    )
    p.add_argument("--json", default=None, help="write results here (PNG plot beside it)")
    p.add_argument("--repeat", type=int, default=None, help="runs per measurement (3; quick 1)")
    p.add_argument(
        "--duration", type=float, default=None, help="seconds of each measured run (20; quick 3)"
    )
    p.add_argument(
        "--step-duration",
        type=float,
        default=None,
        help="seconds of each --max search step (10; quick 2)",
    )
    p.add_argument("--warmup", type=float, default=None, help="warm-up seconds (10; quick 2)")
    p.add_argument("--warmup-rate", type=int, default=300)
    p.add_argument("--start-rate", type=int, default=1000, help="first rate of the search")
    p.add_argument(
        "--confirm-failures",
        type=int,
        default=None,
        help="run a failed search step this many more times before it counts as "
        "the target's limit (1; quick 0)",
    )
    p.add_argument("--p99-bound-ms", type=float, default=100.0)
    p.add_argument("--max-error-rate", type=float, default=0.001)
    p.add_argument("--no-half-max", action="store_true", help="skip the half-max runs")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of gateway, fastapi-peer and nginx (default 1)",
    )
    p.add_argument("--loadgen-cpus", default=None, help="taskset -c list for vegeta")
    p.add_argument("--target-cpus", default=None, help="taskset -c list for the targets")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="gateway+NAME:VOTE_X=v[,...]",
        help="a further target: the gateway with these settings changed, measured "
        "interleaved with the others (name it in --targets; repeatable)",
    )
    p.add_argument("--alg", default="HS256", choices=("HS256", "EdDSA"))
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="send N votes per request to POST .../votes:batch (gateway only); the rate "
        "is then requests/s and CPU per vote counts every vote a batch acknowledged",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=60_000,
        help="distinct votes per peer before they are reused (gateway: never)",
    )
    p.add_argument(
        "--kafka-stopped",
        action="store_true",
        help="kill the stack's Kafka after the warm-up and measure the gateway "
        "answering from its spill (with --rate R --targets gateway); then "
        "restart Kafka, wait for the spill to drain, check exactly-once",
    )
    p.add_argument(
        "--memory",
        action="store_true",
        help="sample the gateway workers' RSS during the --rate runs and report "
        "its growth after --memory-baseline-s (with --targets gateway)",
    )
    p.add_argument(
        "--memory-baseline-s",
        type=float,
        default=120.0,
        help="seconds into the measured runs taken as the end of warm-up",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the PostgreSQL check")
    p.add_argument(
        "--verify-peers", action="store_true", help="also check the peers' votes in PostgreSQL"
    )
    p.add_argument("--verify-timeout", type=float, default=180.0)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.rate is not None and args.rate < 1:
        build_parser().error("--rate must be >= 1")
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return Session(args, ["gateway", *argv]).run()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        # A target or tool failed; everything started has been stopped by now.
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nbench: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
