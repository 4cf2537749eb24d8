"""The named scenarios: each one fault (or a schedule of them) in the middle of the load.

A scenario is a function ``fault(ctx)`` registered with ``@scenario``: it breaks
something, waits, and heals it before it returns (``ctx`` is ``bench.chaos.runner.Chaos``:
the cluster, the fleet, a seeded ``rng``, ``sleep``, ``band`` to shade the timeline,
``note`` for the report). The runner drives the load before, during and after it, then
checks. A scenario that needs the services started differently says so in its
registration (``setup``: a context manager around the scenario that yields a ``Setup``);
a fault that needs more than the common
checks appends its own to ``ctx.checks``. A new scenario is one decorated function, here or in a
module imported by ``bench.chaos.runner``.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.chaos import faults

if TYPE_CHECKING:
    from bench.chaos.checker import Result
    from bench.chaos.client import Attempt
    from bench.chaos.runner import Chaos


@dataclass
class Setup:
    """How a scenario's services start: extra ``VOTE_*`` for the gateway and the
    processors, and whatever its fault function needs (``ctx.setup.handle``)."""

    gateway_env: dict[str, str] = field(default_factory=dict)
    processor_env: dict[str, str] = field(default_factory=dict)
    handle: Any = None


# setup(cluster_env, scenario_dir): a context manager around the whole scenario, entered
# before the services start and left after they stopped.
SetupFn = Callable[[dict[str, str], Path], AbstractContextManager[Setup]]


@contextlib.contextmanager
def plain_setup(env: dict[str, str], out: Path) -> Iterator[Setup]:
    yield Setup()


# run(session args, output directory, log) -> the scenario's result document: a scenario
# on a topology of its own (bench/chaos/regions.py), run instead of the chaos stack's
# services, load and checks.
StandaloneFn = Callable[[argparse.Namespace, Path, Callable[[str], None]], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    fault: Callable[[Chaos], None]
    setup: SetupFn = plain_setup
    # Part of `random`'s schedule (needs no setup of its own).
    composable: bool = True
    standalone: StandaloneFn | None = None


SCENARIOS: dict[str, Scenario] = {}


def scenario(
    name: str, summary: str, **options: object
) -> Callable[[Callable[[Chaos], None]], Callable[[Chaos], None]]:
    def register(fault: Callable[[Chaos], None]) -> Callable[[Chaos], None]:
        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, summary, fault, **options)  # type: ignore[arg-type]
        return fault

    return register


def standalone_scenario(name: str, summary: str) -> Callable[[StandaloneFn], StandaloneFn]:
    """Register a scenario that brings its own topology and checks (``StandaloneFn``)."""

    def register(run: StandaloneFn) -> StandaloneFn:
        def on_chaos_stack(ctx: Chaos) -> None:
            raise RuntimeError(f"{name} runs on its own topology, not the chaos stack")

        if name in SCENARIOS:
            raise ValueError(f"scenario {name!r} registered twice")
        SCENARIOS[name] = Scenario(name, summary, on_chaos_stack, composable=False, standalone=run)
        return run

    return register


def votes_leader(ctx: Chaos) -> int:
    """The node leading a votes partition chosen by the seed."""
    return ctx.cluster.leader_of(ctx.topic, ctx.rng.randrange(ctx.partitions))


@scenario("kafka-leader-kill", "kill -9 the leader of a votes partition, restart it after 10 s")
def kafka_leader_kill(ctx: Chaos) -> None:
    node = votes_leader(ctx)
    with ctx.band(f"kafka-{node} killed"):
        faults.kill_brokers(ctx, [node])
        ctx.sleep(10)
        faults.restart_stack(ctx)


@scenario("kafka-broker-pause", "SIGSTOP one broker (a votes leader) for 10 s")
def kafka_broker_pause(ctx: Chaos) -> None:
    node = votes_leader(ctx)
    with ctx.band(f"kafka-{node} paused"), faults.brokers_paused(ctx, [node]):
        ctx.sleep(10)


@scenario(
    "kafka-below-min-isr",
    "two of three brokers killed for 20 s: no write can reach min.insync.replicas=2, so "
    "the gateway must answer from its spill; all drains after the brokers return",
)
def kafka_below_min_isr(ctx: Chaos) -> None:
    nodes = sorted(ctx.rng.sample(faults.NODES, 2))
    with ctx.band(f"kafka-{nodes[0]},{nodes[1]} killed"):
        faults.kill_brokers(ctx, nodes)
        ctx.sleep(20)
        faults.restart_stack(ctx)


@scenario("kafka-full-restart", "kill -9 all three brokers, then restart them")
def kafka_full_restart(ctx: Chaos) -> None:
    with ctx.band("all brokers killed"):
        faults.kill_brokers(ctx, list(faults.NODES))
        ctx.sleep(5)
        faults.restart_stack(ctx)


@scenario(
    "gateway-kill-in-spill",
    "all brokers frozen so the gateway spills; kill -9 a worker mid spill writes; its "
    "successor (or the other worker) drains its spill slot",
)
def gateway_kill_in_spill(ctx: Chaos) -> None:
    with ctx.band("all brokers paused"), faults.brokers_paused(ctx, list(faults.NODES)):
        ctx.sleep(5)
        with ctx.band("worker killed"):
            faults.kill_gateway_worker(ctx)
            ctx.sleep(5)


@scenario(
    "lost-delivery-report",
    "all brokers frozen for 3 s, three times: past the spill deadline, so a vote is both "
    "in the spill and (once Kafka answers) in Kafka; it must count once",
)
def lost_delivery_report(ctx: Chaos) -> None:
    for _ in range(3):
        with ctx.band("brokers paused"), faults.brokers_paused(ctx, list(faults.NODES)):
            ctx.sleep(3)
        ctx.sleep(4)


@scenario(
    "postgres-restart",
    "PostgreSQL crashes (immediate shutdown) and comes back 10 s later",
)
def postgres_restart(ctx: Chaos) -> None:
    with ctx.band("postgres down"):
        faults.crash_postgres(ctx)
        ctx.sleep(10)
        faults.restart_stack(ctx)


@scenario("postgres-slow", "PostgreSQL frozen 0.7 s of every second for 20 s")
def postgres_slow(ctx: Chaos) -> None:
    with ctx.band("postgres stalling"):
        faults.stutter_postgres(ctx, 20)


@scenario(
    "redis-down",
    "Redis killed for 15 s (restarts empty): results fall back to PostgreSQL, and the "
    "tallies in Redis heal once it is back",
)
def redis_down(ctx: Chaos) -> None:
    with ctx.band("redis down"):
        faults.kill_redis(ctx)
        ctx.sleep(3)
        ctx.note(f"results while Redis is down: {ctx.results_source()}")
        ctx.sleep(12)
        faults.restart_stack(ctx)


@scenario(
    "rebalance-storm",
    "processor members join and leave every 5 s for 40 s (left gracefully or killed)",
)
def rebalance_storm(ctx: Chaos) -> None:
    with ctx.band("members joining and leaving"):
        for i in range(4):
            extra = ctx.fleet.start_processor()
            ctx.sleep(5)
            if i % 2:
                ctx.fleet.kill_processor(extra)
            else:
                extra.stop()
            ctx.sleep(5)


@scenario(
    "processor-kill",
    "five times, a processor member kills itself (kill -9) at a random failpoint of a "
    "random batch: before the COPY, after the COPY, or after the commit and before Redis",
)
def processor_kill(ctx: Chaos) -> None:
    from core.failpoints import POINTS

    for _ in range(5):
        point = ctx.rng.choice([p for p in POINTS if p.startswith("processor.")])
        batch = ctx.rng.randint(1, 3)
        with ctx.band(f"kill {point.removeprefix('processor.')}"):
            victim = ctx.fleet.start_processor({"VOTE_FAILPOINTS": f"{point}=kill@{batch}"})
            deadline = time.monotonic() + 60
            while victim.alive() and time.monotonic() < deadline:
                ctx.sleep(0.2)
            if victim.alive():
                ctx.note(f"a member armed to die at {point} (pass {batch}) lived 60 s; killed")
                ctx.fleet.kill_processor(victim)
            else:
                ctx.log(f"a member died at {point}, pass {batch}")
        ctx.sleep(2)


@scenario(
    "random",
    "a seeded schedule of the other scenarios' faults, back to back, for 5 minutes",
    composable=False,
)
def random_schedule(ctx: Chaos) -> None:
    pool = [s for s in SCENARIOS.values() if s.composable]
    end = time.monotonic() + ctx.schedule_s
    while time.monotonic() < end:
        chosen = ctx.rng.choice(pool)
        ctx.log(f"random: {chosen.name}")
        with ctx.band(chosen.name):
            chosen.fault(ctx)
        ctx.sleep(ctx.rng.uniform(3, 8))


def poison_events(election: str, tag: str) -> list[tuple[str, bytes | None]]:
    """(what, Kafka value) of every kind of event the gateway never writes: undecodable
    bytes, fields too long for an index, timestamps out of range, unknown schema
    versions, unknown elections, a NUL in a text field, an empty message."""
    import msgspec

    def event(n: int, **fields: object) -> bytes:
        base: dict[str, object] = {
            "v": 1,
            "vote_id": f"poison-{tag}-{n}",
            "election_id": election,
            "voter_id": f"poison-voter-{tag}-{n}",
            "choice": "alice",
            "received_at_us": int(time.time() * 1e6),
            "gateway_id": "chaos-poison",
        }
        return msgspec.msgpack.encode({**base, **fields})

    return [
        ("undecodable bytes", b"\xc1 not msgpack"),
        ("a map missing fields", msgspec.msgpack.encode({"v": 1, "vote_id": 7})),
        ("empty message", None),
        ("vote_id of 5,000 characters", event(1, vote_id="p" * 5000)),
        ("voter_id of 3,000 characters", event(2, voter_id="v" * 3000)),
        ("choice of 300 characters", event(3, choice="c" * 300)),
        ("received_at_us 0", event(4, received_at_us=0)),
        ("received_at_us -1", event(5, received_at_us=-1)),
        ("received_at_us int64 max", event(6, received_at_us=2**63 - 1)),
        ("received_at_us in the year 300,000", event(7, received_at_us=9_400_000_000 * 10**6)),
        ("schema version 2", event(8, v=2)),
        ("schema version 0", event(9, v=0)),
        ("unknown election", event(10, election_id=f"chaos-no-such-election-{tag}")),
        ("NUL in voter_id", event(11, voter_id="a\x00b")),
    ]


def produce_poison(ctx: Chaos) -> list[tuple[str, int, int]]:
    """Write the poison straight into the votes topic; (what, partition, offset) of each."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": ctx.cluster.bootstrap, "acks": "all"})
    written: list[tuple[str, int, int]] = []
    errors: list[str] = []

    def delivered(what: str) -> Callable[[object, object], None]:
        def report(err: object, msg: object) -> None:
            if err is not None:
                errors.append(f"{what}: {err}")
            else:
                written.append((what, msg.partition(), msg.offset()))  # type: ignore[attr-defined]

        return report

    tag = f"{ctx.rng.getrandbits(32):08x}"
    for what, value in poison_events(ctx.election, tag):
        producer.produce(
            ctx.topic, value=value, key=f"poison-{tag}".encode(), on_delivery=delivered(what)
        )
    left = producer.flush(60)
    if left or errors:
        ctx.note(f"poison: {left} not delivered, errors {errors}")
    ctx.poison.extend(written)
    if check_poison not in ctx.checks:
        ctx.checks.append(check_poison)
    ctx.log(f"poison: wrote {len(written)} events")
    return written


def check_poison(ctx: Chaos, result: Result) -> None:
    """Each poison event has a rejection row and a dead-letter record (by its position)."""
    import uuid

    import psycopg
    from confluent_kafka import Consumer, TopicPartition

    from core.event import DLQ_TOPIC

    env = ctx.cluster.env()
    with psycopg.connect(env["VOTE_PG_DSN"]) as conn:
        rejected = {
            (int(p), int(o)): reason
            for p, o, reason in conn.execute(
                "SELECT kafka_partition, kafka_offset, reason FROM vote_rejections"
                " WHERE kafka_partition = ANY(%s) AND kafka_offset = ANY(%s)",
                ([p for _, p, _ in ctx.poison], [o for _, _, o in ctx.poison]),
            ).fetchall()
        }
    sources: set[str] = set()
    consumer = Consumer(
        {"bootstrap.servers": env["VOTE_KAFKA_BOOTSTRAP"], "group.id": f"chaos-{uuid.uuid4()}"}
    )
    try:
        tp = TopicPartition(DLQ_TOPIC, 0)
        low, high = consumer.get_watermark_offsets(tp, timeout=30)
        consumer.assign([TopicPartition(DLQ_TOPIC, 0, max(low, ctx.dlq_start))])
        deadline = time.monotonic() + 120
        position = max(low, ctx.dlq_start)
        while position < high and time.monotonic() < deadline:
            for m in consumer.consume(1000, timeout=1.0):
                if m.error() is None:
                    position = m.offset() + 1
                    for k, v in m.headers() or []:
                        if k == "source":
                            sources.add(v.decode())
    finally:
        consumer.close()
    missing_rejection = [w for w, p, o in ctx.poison if (p, o) not in rejected]
    missing_dead_letter = [w for w, p, o in ctx.poison if f"{ctx.topic}:{p}:{o}" not in sources]
    result.extra["poison_sent"] = len(ctx.poison)
    result.extra["poison_rejected"] = len(ctx.poison) - len(missing_rejection)
    result.extra["poison_dead_lettered"] = len(ctx.poison) - len(missing_dead_letter)
    if missing_rejection:
        result.failures.append(f"poison without a rejection row: {missing_rejection}")
    if missing_dead_letter:
        result.failures.append(f"poison without a dead-letter record: {missing_dead_letter}")


@scenario(
    "poison",
    "a producer writes straight into votes.v1, three times 10 s apart, every kind of event "
    "the gateway never writes; no partition may stall, each must become a rejection row "
    "and a dead-letter record",
)
def poison(ctx: Chaos) -> None:
    for _ in range(3):
        with ctx.band("poison written"):
            produce_poison(ctx)
        ctx.sleep(10)


@contextlib.contextmanager
def through_toxiproxy(env: dict[str, str], out: Path) -> Iterator[Setup]:
    """The gateway reaches Kafka, and the processors PostgreSQL, through Toxiproxy."""
    from urllib.parse import urlsplit

    from bench.chaos import toxiproxy
    from bench.procs import free_port

    pairs = env.get("STACK_KAFKA_PROXIES")
    if not pairs:
        raise RuntimeError("the chaos stack has no proxied Kafka listeners (STACK_KAFKA_PROXIES)")
    with toxiproxy.running(env, out) as proxy:
        bootstrap = []
        for i, pair in enumerate(pairs.split(","), 1):
            listen, upstream = (int(x) for x in pair.split("="))
            proxy.proxy(f"kafka-{i}", listen, upstream)
            bootstrap.append(f"127.0.0.1:{listen}")
        dsn = env["VOTE_PG_DSN"]
        pg_port = urlsplit(dsn).port
        pg_listen = free_port()
        proxy.proxy("postgres", pg_listen, int(pg_port or 5432))
        yield Setup(
            gateway_env={"VOTE_KAFKA_BOOTSTRAP": ",".join(bootstrap)},
            processor_env={"VOTE_PG_DSN": dsn.replace(f":{pg_port}/", f":{pg_listen}/")},
            handle=proxy,
        )


# (what, Toxiproxy toxic type, its attributes, seconds)
NETWORK_TOXICS = (
    ("latency 200 ms", "latency", {"latency": 200}, 10.0),
    ("connections reset", "reset_peer", {"timeout": 0}, 5.0),
    ("black hole", "timeout", {"timeout": 0}, 10.0),
)


@scenario(
    "network",
    "through Toxiproxy: 200 ms latency, connection resets, then a black hole, first between "
    "the gateway and every broker, then between the processors and PostgreSQL",
    setup=through_toxiproxy,
    composable=False,
)
def network(ctx: Chaos) -> None:
    proxy = ctx.setup.handle
    links = (
        ("gateway-kafka", [f"kafka-{n}" for n in faults.NODES]),
        ("processor-postgres", ["postgres"]),
    )
    for link, proxies in links:
        for what, kind, attributes, seconds in NETWORK_TOXICS:
            with ctx.band(f"{link}: {what}"):
                ctx.log(f"{link}: {what}")
                try:
                    for name in proxies:
                        proxy.add(name, kind, kind, **attributes)
                    ctx.sleep(seconds)
                finally:
                    proxy.reset()
            ctx.sleep(3)


# Small enough to fill within seconds at a few hundred votes/s (a few thousand events).
SPILL_TMPFS = "512k"
# The brokers stay down at least this long, and on until the spill is full (the client
# sees a 503) or this much longer: a low --rate fills it later.
SPILL_FULL_MIN_S = 40.0
SPILL_FULL_MAX_S = 120.0


@contextlib.contextmanager
def spill_on_tmpfs(env: dict[str, str], out: Path) -> Iterator[Setup]:
    """The gateway's spill directory on a tmpfs of ``SPILL_TMPFS`` (mounted as root)."""
    spill = out / "spill"
    spill.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SPILL_TMPFS}", "chaos-spill", str(spill)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    try:
        yield Setup(gateway_env={"VOTE_SPILL_DIR": str(spill)})
    finally:
        subprocess.run(["umount", "--lazy", str(spill)], capture_output=True, timeout=60)


@scenario(
    "spill-disk-full",
    f"the spill on a {SPILL_TMPFS} tmpfs; all brokers killed for 40 s and on until the spill "
    "is full (at most 120 s): then 503 with Retry-After, never 2xx; everything drains after "
    "Kafka returns",
    setup=spill_on_tmpfs,
    composable=False,
)
def spill_disk_full(ctx: Chaos) -> None:
    ctx.checks.append(check_full_spill_refused)
    with ctx.band("all brokers killed"):
        faults.kill_brokers(ctx, list(faults.NODES))
        ctx.sleep(SPILL_FULL_MIN_S)
        deadline = time.monotonic() + SPILL_FULL_MAX_S - SPILL_FULL_MIN_S
        while not refused_503(ctx) and time.monotonic() < deadline:
            ctx.sleep(1)
        ctx.log(f"spill full (the client saw {len(refused_503(ctx))} answers 503)")
        faults.restart_stack(ctx)


def refused_503(ctx: Chaos) -> list[Attempt]:
    """Every attempt answered 503 so far."""
    return [a for v in list(ctx.load.votes) for a in list(v.attempts) if a.status == 503]


def check_full_spill_refused(ctx: Chaos, result: Result) -> None:
    """The spill filled up and the gateway said so: 503 with ``Retry-After`` (a 2xx
    without a durable copy would show as lost)."""
    refused = refused_503(ctx)
    without = sum(1 for a in refused if not a.retry_after)
    result.extra["answers_503"] = len(refused)
    result.extra["answers_503_without_retry_after"] = without
    if not refused:
        result.failures.append("the spill never filled (no 503): a higher --rate fills it")
    if without:
        result.failures.append(f"{without} answers 503 without Retry-After")
