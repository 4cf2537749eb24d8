"""``python -m bench failover``: lose a whole region under load and measure it end to end.

    python -m bench failover [--rate 100] [--warm 30] [--outage 60] [--after 20]
                             [--fault region-loss|mirror-down|standby-down|monitor-down]
                             [--json F] [--plots DIR]

On the two simulated regions of ``deploy/local/regions`` (started if they are not up):
a gateway and a processor per region, one election, and the chaos suite's patient
open-loop client (``bench.chaos.client.Load``, in processes of ``RATE_PER_PROCESS``) at
``--rate`` votes/s, its voters spread over both regions' gateways by ``RegionRoutes`` as
global DNS would: once A refuses connections, A's voters, retries included, go to B;
once A is back and ready, they go home again. After ``--warm`` seconds every process of
region A is killed with SIGKILL (Kafka, Redis, its PostgreSQL node and keeper, gateway,
processor), or ``--fault`` breaks something inside the regions instead; after
``--outage`` seconds A is started again (its PostgreSQL node rejoins as the standby,
MirrorMaker is restarted) or the fault healed, and the load runs ``--after`` more
seconds. Then the chaos checks run across both regions (``check_regions``), the run
waits for MirrorMaker to copy both regions' ``votes.v1`` to the end, and it reports
(docs/ARCHITECTURE.md, "Regions"; every time from the moment A's processes stopped):

* ``acked``, ``stored``, ``missing``, ``double_counted``; ``tallies_match``: PostgreSQL's
  tallies and both regions' Redis equal a recount of both regions' ``votes.v1``;
* ``rto_ingest_s``: from the kill to the first 2xx from B for one of A's voters;
* ``rto_count_s``: from the kill to the first vote counted after it;
* ``rpo_pending_votes``: votes A acknowledged that were not yet in B at the kill;
* ``mm2_lag_p99_s``: before the kill, from a vote's arrival in its region's
  ``votes.v1`` to its arrival in the other region's copy (consumers tail all four
  topics); ``received_to_mirror_p99_s`` counts from the gateway's received_at instead;
* ``pg_failover_s``: from the kill to the monitor reporting B's node as primary;
* what the region alerts read from the processors during the fault, and how many
  PostgreSQL nodes took writes at once (split brain if ever 2);

and draws a PNG timeline per region: acks/s, counted/s, spill size, mirror lag.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import httpx
import msgspec
import psycopg
import redis
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition

from bench.chaos.checker import (
    Result,
    count_in_postgres,
    end_offsets,
    lag,
    recount_from_kafka,
    stored_offsets,
    wait_for,
)
from bench.chaos.client import OK, Load, RegionRoutes, RetryPolicy, Vote, VoteSource
from bench.chaos.timeline import Sampler, Timeline
from bench.env import REPO, BenchError
from bench.outage import spilled_events
from bench.region_stack import REGIONS, Regions, base_port_offset
from bench.scrape import samples
from core import keyset
from core.event import TOPIC, decode
from core.results import tally_key
from core.settings import load as load_settings
from gateway import admin
from processor.policy import EventAuth
from processor.settings import ProcessorSettings

CANDIDATES = ("alice", "bob", "carol")
# Votes/s one load process sends (LoadProcesses): httpx's few ms of CPU a request.
RATE_PER_PROCESS = 10.0

# The faults inside the two regions other than a region loss: (verbs of
# deploy/local/regions that cause it, verbs that heal it).
FAULTS: dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]] = {
    # Lag grows, nothing is lost, the mirror catches up from its stored offsets.
    "mirror-down": ([("mirror", "stop")], [("mirror", "start")]),
    # Synchronous replication has nobody to wait for: the monitor relaxes it (wait_primary).
    "standby-down": ([("pg-kill", "B")], [("pg-start", "B")]),
    # Without the monitor nobody may promote: the primary's loss must not cause a second
    # writable node. The primary returns before the monitor, which then finds it healthy
    # (a monitor back while the primary is still gone fails over: the region-loss case).
    "monitor-down": (
        [("monitor", "stop"), ("pg-kill", "A")],
        [("pg-start", "A"), ("monitor", "start")],
    ),
}


@dataclass
class PgTimeline:
    """The PostgreSQL formation every half second while the load runs."""

    primary: list[tuple[float, str | None]] = field(default_factory=list)
    # PostgreSQL nodes that accepted writes at each sample (split brain if ever > 1).
    writable: list[tuple[float, int]] = field(default_factory=list)
    # What the region alerts read from the processors (deploy/prometheus/rules.yml), per
    # sample: the largest MirrorMaker heartbeat age and the fewest synchronous standbys
    # any region's processor reports (None: no processor answered).
    mirror_age: list[tuple[float, float | None]] = field(default_factory=list)
    sync_standbys: list[tuple[float, float | None]] = field(default_factory=list)


# -- mirror tails ---------------------------------------------------------------------------


class MirrorTail(threading.Thread):
    """Records when each vote of the election first arrives in a topic: a region's own
    ``votes.v1`` or its mirror in the other region. The difference of the two arrivals is
    MirrorMaker's lag alone; from the gateway's received_at it includes the gateway's own
    produce (and, for a spilled vote, the spill)."""

    def __init__(self, bootstrap: str, topic: str, election: str) -> None:
        super().__init__(daemon=True)
        self.topic = topic
        self.election = election
        self.arrived: dict[str, float] = {}
        self.received_at: dict[str, float] = {}
        self._halt = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-failover-tail-{os.getpid()}-{topic}",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
                "fetch.min.bytes": 1,
                "log_level": 2,  # region A's loss is expected, not news
            }
        )

    def run(self) -> None:
        c = self._consumer
        try:
            md = c.list_topics(self.topic, timeout=30)
            parts = list(md.topics[self.topic].partitions)
            c.assign([TopicPartition(self.topic, p, OFFSET_END) for p in parts])
            while not self._halt.is_set():
                msg = c.poll(0.2)
                if msg is None or msg.error() is not None or msg.value() is None:
                    continue
                now = time.time()
                try:
                    ev = decode(msg.value())
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if ev.election_id == self.election and ev.vote_id not in self.arrived:
                    self.arrived[ev.vote_id] = now
                    self.received_at[ev.vote_id] = ev.received_at_us / 1e6
        except KafkaException:
            pass
        finally:
            c.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


# -- the load -------------------------------------------------------------------------------


class LoadProcesses:
    """The chaos client's ``Load`` in ``n`` processes, each with voters of its own at
    ``rate / n`` votes/s and its own ``RegionRoutes``. httpx costs milliseconds of CPU per
    request, more than one process gets of a crowded machine: a starved client measures
    its own queue instead of the regions. Processes are forked before the run starts any
    thread; their votes come back, on one clock, when ``finish`` returns."""

    def __init__(
        self,
        n: int,
        urls: dict[str, str],
        issuer_file: str,
        election: str,
        rate: float,
        policy: RetryPolicy,
        prefill_each: int,
        max_in_flight: int = 16,
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self._go = ctx.Event()
        self._stop = ctx.Event()
        self._restored = ctx.Value("i", 0)  # how many restores were asked for
        self._restore_region = ctx.Array("c", 8)
        # per process: votes sent, acknowledged, regions refusing now (a bit per region)
        self._counts = ctx.Array("l", 3 * n)
        self._pipes = []
        self._procs = []
        self.urls = urls
        self.policy = policy
        self.votes: list[Vote] = []
        self.down: dict[str, float] = {}
        self.wall0 = time.time()
        for i in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=self._child,
                args=(i, child, issuer_file, election, rate / n, prefill_each, max_in_flight),
                daemon=True,
                name=f"failover-load-{i}",
            )
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)
        for pipe in self._pipes:  # each has signed its votes
            if not pipe.poll(900) or pipe.recv() != "ready":
                raise BenchError("a load process did not get ready")

    def _child(
        self,
        i: int,
        pipe: Connection,
        issuer_file: str,
        election: str,
        rate: float,
        prefill: int,
        max_in_flight: int,
    ) -> None:
        # One vote per voter: which of a voter's two votes is "first" across two regions'
        # topics is not an order a recount could reproduce.
        source = VoteSource(issuer_file, election, list(CANDIDATES), os.getpid(), 0)
        source.prefill(prefill)
        routes = RegionRoutes(self.urls)
        load = Load("", source, rate, self.policy, max_in_flight, routes)
        pipe.send("ready")
        self._go.wait()
        load.start()
        wall0 = time.time() - load.now()
        restored = 0
        while not self._stop.wait(0.2):
            if self._restored.value != restored:
                restored = self._restored.value
                routes.restore(self._restore_region.value.decode())
            votes = list(load.votes)
            self._counts[3 * i] = len(votes)
            self._counts[3 * i + 1] = sum(1 for v in votes if v.outcome == OK)
            self._counts[3 * i + 2] = sum(
                1 << k for k, r in enumerate(routes.regions) if r in routes.down
            )
        unfinished = load.finish(timeout_s=self.policy.max_elapsed_s + 60)
        down = {r: wall0 + t for r, t in routes.down.items()}
        pipe.send((wall0, load.votes, unfinished, down))
        pipe.close()

    def start(self) -> None:
        self.wall0 = time.time()
        self._go.set()

    def stop(self) -> None:
        """No new votes (those started still finish)."""
        self._stop.set()

    def now(self) -> float:
        """Seconds since the load began (the samplers' clock)."""
        return time.time() - self.wall0

    def restore(self, region: str) -> None:
        """The region answers again: every process sends its voters home."""
        self._restore_region.value = region.encode()
        with self._restored.get_lock():
            self._restored.value += 1

    def progress(self) -> str:
        counts = list(self._counts)
        sent, ok = sum(counts[0::3]), sum(counts[1::3])
        regions = list(self.urls)
        refusing = sorted(
            {r for bits in counts[2::3] for k, r in enumerate(regions) if bits & (1 << k)}
        )
        return f"sent {sent}, acknowledged {ok}; regions refusing: {refusing or 'none'}"

    def finish(self) -> int:
        """Stop scheduling, wait for every vote's outcome; returns how many had none."""
        self.stop()
        unfinished = 0
        for pipe, proc in zip(self._pipes, self._procs, strict=True):
            if not pipe.poll(self.policy.max_elapsed_s + 180):
                raise BenchError(f"{proc.name} did not report its votes")
            wall0, votes, left, down = pipe.recv()
            shift = wall0 - self.wall0  # onto this process's clock
            for v in votes:
                v.scheduled_s += shift
                if v.done_s is not None:
                    v.done_s += shift
                for a in v.attempts:
                    a.at_s += shift
            self.votes.extend(votes)
            unfinished += left
            for r, t in down.items():
                self.down[r] = min(self.down.get(r, t), t)
            proc.join(30)
        return unfinished


# -- sampling -------------------------------------------------------------------------------


def _monitor_dsn() -> str:
    return f"postgresql://autoctl_node@127.0.0.1:{20000 + base_port_offset()}/pg_auto_failover"


def _gauge(urls: list[str], family: str, pick: Callable[..., float]) -> float | None:
    values = []
    for url in urls:
        with contextlib.suppress(httpx.HTTPError):
            values += [s.value for s in samples(url, family) or []]
    return pick(values) if values else None


def _sample_pg(timeline: PgTimeline, stop: threading.Event, processor_urls: list[str]) -> None:
    """Which node the monitor calls primary, how many nodes accept writes, and what the
    processors' region gauges say."""
    while not stop.wait(0.5):
        now = time.time()
        timeline.mirror_age.append(
            (now, _gauge(processor_urls, "vote_mirror_heartbeat_age_seconds", max))
        )
        timeline.sync_standbys.append((now, _gauge(processor_urls, "vote_pg_sync_standbys", min)))
        try:
            with psycopg.connect(_monitor_dsn(), connect_timeout=2) as conn:
                rows = conn.execute(
                    "SELECT nodename, reportedstate FROM pgautofailover.node"
                ).fetchall()
            primary = next(
                (n.upper() for n, s in rows if s in ("primary", "wait_primary", "single")), None
            )
        except psycopg.Error:
            primary = None
        timeline.primary.append((now, primary))
        timeline.writable.append((now, _writable_nodes()))


def _writable_at(port: int, out: dict[int, tuple[float, float]]) -> None:
    """Record (asked, answered) when the node on ``port`` says it takes writes."""
    asked = time.time()
    try:
        with psycopg.connect(
            f"postgresql://vote:vote@127.0.0.1:{port}/vote", connect_timeout=2
        ) as conn:
            (in_recovery,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return
    if not in_recovery:
        out[port] = (asked, time.time())


def _writable_nodes() -> int:
    """PostgreSQL nodes taking writes at the same time: both asked at once, and counted
    as two only when their answers' windows overlap (asked one after the other, a
    switchover's hand-over between the two questions would look like two primaries)."""
    found: dict[int, tuple[float, float]] = {}
    threads = [
        threading.Thread(target=_writable_at, args=(port, found))
        for port in (20001 + base_port_offset(), 20002 + base_port_offset())
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return writable_at_once(list(found.values()))


def writable_at_once(windows: list[tuple[float, float]]) -> int:
    """How many nodes took writes at the same time, from each writable node's (asked,
    answered) window: all of them only if every window overlaps every other, else at
    most one (pure)."""
    if len(windows) > 1 and max(w[0] for w in windows) <= min(w[1] for w in windows):
        return len(windows)
    return min(len(windows), 1)


# -- checks ---------------------------------------------------------------------------------


def _redis_tally(url: str, election: str) -> dict[str, int]:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        raw = client.hgetall(tally_key(election))
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


def _nonzero(tally: dict[str, int]) -> dict[str, int]:
    return {k: int(v) for k, v in tally.items() if v}


def check_regions(
    name: str, regions: Regions, election: str, votes: list[Vote], timeout_s: float
) -> Result:
    """The chaos checks across both regions once they are healed: each region's spill
    drained and stored offsets at the end of its own ``votes.v1``; every acknowledged
    vote stored once (``bench.chaos.checker.count_in_postgres``); PostgreSQL's tallies and
    both regions' Redis equal to one recount of both regions' ``votes.v1`` (a vote that
    reached both, a retry moved to B say, counts once)."""
    r = Result(name)
    settings = {reg: load_settings(ProcessorSettings, regions.env(reg)) for reg in REGIONS}
    dsn = settings["A"].pg_dsn
    drained, caught_up, at_end = [], [], []
    for reg in REGIONS:
        metrics_url = f"http://127.0.0.1:{regions.gateway_metrics_port(reg)}/metrics"
        drained.append(
            wait_for(
                f"region {reg}'s spill to drain",
                lambda url=metrics_url: spilled_events(url) == 0,
                timeout_s,
                r.notes,
            )
        )
        s = settings[reg]
        ends_at: dict[str, bool] = {}

        def at_log_end(s: ProcessorSettings = s, ends_at: dict[str, bool] = ends_at) -> bool:
            ends = end_offsets(s.kafka_bootstrap, s.vote_topic)
            stored = stored_offsets(dsn, s.processor_group, s.vote_topic, s.processor_cluster)
            ends_at["ok"] = all(stored.get(p, 0) == end for p, end in ends.items() if end)
            return lag(ends, stored) == 0

        caught_up.append(
            wait_for(
                f"region {reg}'s stored offsets to reach its log end",
                at_log_end,
                timeout_s,
                r.notes,
            )
        )
        at_end.append(ends_at.get("ok", False))
    r.spill_drained, r.lag_zero, r.offsets_at_end = all(drained), all(caught_up), all(at_end)
    r.lag = 0 if r.lag_zero else None
    count_in_postgres(dsn, election, votes, r)

    redis_tallies: dict[str, dict[str, int]] = {}

    def redis_agrees() -> bool:
        count_in_postgres(dsn, election, votes, r)
        for reg in REGIONS:
            redis_tallies[reg] = _redis_tally(settings[reg].redis_url, election)
        return all(t == _nonzero(r.pg_tallies) for t in redis_tallies.values())

    wait_for("both regions' Redis to equal PostgreSQL", redis_agrees, 60, r.notes)
    r.redis_tallies = redis_tallies.get("B", {})
    auth = EventAuth(
        keyset.load(settings["A"].event_keys_path), settings["A"].processor_accept_unsigned_events
    )
    seen: set[str] = set()
    voted: set[str] = set()
    recount: Counter[str] = Counter()
    for reg in REGIONS:
        s = settings[reg]
        tally, copies, dups = recount_from_kafka(
            s.kafka_bootstrap,
            s.vote_topic,
            election,
            set(CANDIDATES),
            {},
            auth,
            seen=seen,
            voted=voted,
        )
        recount += tally
        r.kafka_copies += copies
        r.kafka_duplicate_copies += dups
    r.kafka_recount = dict(recount)
    tallies = [_nonzero(r.pg_tallies), *(redis_tallies.get(reg, {}) for reg in REGIONS)]
    r.tallies_match = all(t == _nonzero(r.kafka_recount) for t in tallies)
    if not r.tallies_match:
        r.notes.append(
            f"tallies differ: postgres {r.pg_tallies} redis {redis_tallies}"
            f" recount of both votes.v1 {r.kafka_recount}"
        )
    r.extra["redis_tallies_by_region"] = redis_tallies
    # processor verify reads one cluster's topic; across regions the recount above and
    # count_in_postgres cover its checks.
    r.verify_ok = r.lost == 0 and r.double_counted == 0 and r.tallies_match
    return r


def _max_in(series: list[tuple[float, float | None]], start: float, end: float) -> float | None:
    found = [v for t, v in series if start <= t <= end and v is not None]
    return round(max(found), 3) if found else None


def _min_in(series: list[tuple[float, float | None]], start: float, end: float) -> float | None:
    found = [v for t, v in series if start <= t <= end and v is not None]
    return round(min(found), 3) if found else None


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3)


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    """One run; its report (the figures above and the checks' outcome)."""
    return measure(args)[0]


def measure(args: argparse.Namespace) -> tuple[dict[str, object], Result]:
    """One run: its report, and the chaos checks' ``Result`` behind it."""
    regions = Regions()
    print("== regions up", flush=True)
    regions.up()
    # The loss of the region holding the primary is the case that needs a failover. A
    # previous run's services are stopped first: a switchover waits for their sessions.
    for r in REGIONS:
        regions.stop_services(r)
    regions.promote("A")
    regions.prepare_schema_and_keys()
    dsn = regions.env("A")["VOTE_PG_DSN"]
    election = f"failover-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    admin.create_election(dsn, election, list(CANDIDATES), title="bench failover")
    for r in REGIONS:
        regions.start_services(r)
    for r in REGIONS:
        regions.wait_ready(r)
    # Patient: a vote waits out a region's loss (its retries go to the other region).
    policy = RetryPolicy(max_attempts=40, max_elapsed_s=180, timeout_s=20, backoff_cap_s=2)
    # Signed ahead (a millisecond each, in parallel); A's return takes a minute or two more.
    total = int(args.rate * (args.warm + args.outage + args.after + 120))
    processes = max(1, math.ceil(args.rate / RATE_PER_PROCESS))
    print(f"== signing {total} votes in {processes} load processes", flush=True)
    load = LoadProcesses(
        processes,
        {r: f"{regions.gateway_url(r)}/v1/elections/{election}/votes" for r in REGIONS},
        str(regions.keys_dir / "issuer.json"),
        election,
        args.rate,
        policy,
        total // processes + 1,
    )
    tails = {
        "A": MirrorTail(regions.env("B")["VOTE_KAFKA_BOOTSTRAP"], f"A.{TOPIC}", election),
        "B": MirrorTail(regions.env("A")["VOTE_KAFKA_BOOTSTRAP"], f"B.{TOPIC}", election),
        "A-source": MirrorTail(regions.env("A")["VOTE_KAFKA_BOOTSTRAP"], TOPIC, election),
        "B-source": MirrorTail(regions.env("B")["VOTE_KAFKA_BOOTSTRAP"], TOPIC, election),
    }
    for t in tails.values():
        t.start()
    time.sleep(2)  # the tails take their end offsets before the first vote
    pg = PgTimeline()
    counters = {r: Timeline() for r in REGIONS}  # spill and consumer lag per region (bench.chaos)
    stop_pg = threading.Event()
    processor_urls = [
        f"http://127.0.0.1:{regions.processor_metrics_port(r)}/metrics" for r in REGIONS
    ]
    pg_sampler = threading.Thread(
        target=_sample_pg, args=(pg, stop_pg, processor_urls), daemon=True
    )
    marks: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        for r in REGIONS:
            s = load_settings(ProcessorSettings, regions.env(r))
            stack.enter_context(
                Sampler(
                    counters[r],
                    load.now,
                    f"http://127.0.0.1:{regions.gateway_metrics_port(r)}/metrics",
                    s.kafka_bootstrap,
                    s.vote_topic,
                    s.pg_dsn,
                    s.processor_group,
                    s.processor_cluster,
                )
            )
        pg_sampler.start()
        stack.callback(lambda: (stop_pg.set(), pg_sampler.join(10)))
        print(f"== load: {args.rate}/s split over A and B", flush=True)
        load.start()
        wall0 = load.wall0
        stack.callback(load.stop)
        _phase(load, args.warm)
        marks["kill"] = marks["fault_start"] = time.time()
        if args.fault == "region-loss":
            print("== kill -9 region A", flush=True)
            # The figures count from the moment the region stopped, not from the start of
            # the script that looks for its processes.
            marks["kill"] = regions.kill("A")
            marks["killed"] = time.time()
            tails["B"].stop()  # these two read from A's Kafka
            tails["A-source"].stop()
        else:
            print(f"== fault: {args.fault}", flush=True)
            for verb in FAULTS[args.fault][0]:
                regions.script(*verb, timeout=300)
            marks["killed"] = time.time()
        _phase(load, args.outage)
        marks["return"] = time.time()
        if args.fault == "region-loss":
            print("== region A returns", flush=True)
            regions.start("A")
            regions.start_services("A")
            regions.wait_ready("A")
            load.restore("A")
        else:
            print(f"== heal: {args.fault}", flush=True)
            for verb in FAULTS[args.fault][1]:
                regions.script(*verb, timeout=900)
        marks["a_ready"] = time.time()
        _phase(load, args.after)
        marks["load_end"] = time.time()
        print("== load stopped; waiting for the votes in flight", flush=True)
        unfinished = load.finish()
    result = check_regions(args.fault, regions, election, load.votes, args.converge_timeout)
    # MirrorMaker has caught up once each region's copy holds as many records as the
    # original (more after a re-copy); the tails keep running meanwhile, so the lag of
    # the backlog a fault left is in mm2_lag_max_s.
    caught_up = wait_for(
        "MirrorMaker to copy both regions' votes.v1 to the end",
        lambda: all(_mirror_behind(regions, r) <= 0 for r in REGIONS),
        args.converge_timeout,
        result.notes,
    )
    marks["mirror_caught_up"] = time.time()
    time.sleep(1)  # the tails read the last copies
    for key in ("A", "B", "A-source", "B-source"):
        if tails[key].is_alive():
            tails[key].stop()
    if not caught_up:
        result.failures.append("MirrorMaker did not catch up")
    result.extra["mirror_heartbeat_age_at_end_s"] = _gauge(
        processor_urls, "vote_mirror_heartbeat_age_seconds", max
    )
    if unfinished:
        result.notes.append(f"{unfinished} votes had no outcome when the client gave up")
    report = _report(args, regions, election, load, wall0, result, tails, counters, pg, marks)
    return report, result


def _mirror_behind(regions: Regions, source: str) -> int:
    """How many records of ``source``'s votes.v1 its copy in the other region lacks."""
    other = next(r for r in REGIONS if r != source)
    original = end_offsets(regions.env(source)["VOTE_KAFKA_BOOTSTRAP"], TOPIC)
    copy = end_offsets(regions.env(other)["VOTE_KAFKA_BOOTSTRAP"], f"{source}.{TOPIC}")
    return sum(original.values()) - sum(copy.values())


def _phase(load: LoadProcesses, seconds: float) -> None:
    """Sleep through a phase of the run, printing progress every 10 s."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(10.0, left))
        print(f"   {load.now():6.1f}s {load.progress()}", flush=True)


def _report(
    args: argparse.Namespace,
    regions: Regions,
    election: str,
    load: LoadProcesses,
    wall0: float,
    result: Result,
    tails: dict[str, MirrorTail],
    counters: dict[str, Timeline],
    pg: PgTimeline,
    marks: dict[str, float],
) -> dict[str, object]:
    votes = load.votes
    kill = marks["kill"]

    def done_at(v: Vote) -> float:
        return wall0 + (v.done_s or 0.0)

    acked = [v for v in votes if v.outcome == OK]
    # RTO of ingestion: A's voters answered by B after the kill.
    moved = [done_at(v) for v in acked if v.home == "A" and v.served_by == "B"]
    rto_ingest = min((t for t in moved if t > kill), default=None)
    # The client's half of it: its first attempt at B for one of A's voters (what DNS
    # takes to move them); the rest is the wait for an answer, queue included.
    first_at_b = min(
        (
            wall0 + a.at_s
            for v in votes
            if v.home == "A"
            for a in v.attempts
            if a.region == "B" and wall0 + a.at_s > kill
        ),
        default=None,
    )
    # What a vote waited for its answer around the loss: the median latency of the
    # votes acknowledged in the outage (from their schedule, the client's queue included).
    outage_latency = [
        v.latency_s
        for v in acked
        if v.latency_s is not None and kill < done_at(v) < marks["return"]
    ]
    dsn = regions.env("A")["VOTE_PG_DSN"]
    with psycopg.connect(dsn) as conn:
        # Counting again: the first vote counted once the fault was complete (the kill
        # of a whole region takes a moment, and B may still commit on A's primary in it).
        (first_counted,) = conn.execute(
            "SELECT extract(epoch FROM min(counted_at)) FROM votes"
            " WHERE election_id = %s AND counted_at > to_timestamp(%s)",
            (election, marks["killed"]),
        ).fetchone()
        counted_rows = conn.execute(
            "SELECT split_part(gateway_id, '-', 2), floor(extract(epoch FROM counted_at)), count(*)"
            " FROM votes WHERE election_id = %s GROUP BY 1, 2",
            (election,),
        ).fetchall()
    # RPO: acknowledged by A before the kill and not in B's mirrored topic at the kill.
    a_before = [v.vote_id for v in acked if v.served_by == "A" and done_at(v) <= kill]
    mirrored_a = tails["A"].arrived
    pending = [v for v in a_before if mirrored_a.get(v, float("inf")) > kill]
    # MirrorMaker's lag: from a vote's arrival in its region's votes.v1 to its arrival in
    # the other region's copy; before the kill, and over the whole run (mirror-down: it
    # grows, then catches up).
    lag_at = [
        (tails[r].arrived[v], tails[r].arrived[v] - tails[f"{r}-source"].arrived[v])
        for r in REGIONS
        for v in tails[r].arrived
        if v in tails[f"{r}-source"].arrived
    ]
    lags = [lag for t, lag in lag_at if t <= kill]
    lags_all = [lag for _, lag in lag_at]
    # From the gateway's received_at to the copy in the other region.
    ack_to_mirror = [
        tail.arrived[v] - tail.received_at[v]
        for tail in (tails["A"], tails["B"])
        for v in tail.arrived
        if tail.arrived[v] <= kill
    ]
    failed_over = next((t for t, p in pg.primary if t > kill and p == "B"), None)
    report: dict[str, object] = {
        "scenario": args.fault,
        "election": election,
        "rate": args.rate,
        "phases_s": {"warm": args.warm, "outage": args.outage, "after": args.after},
        "sent": len(votes),
        "acked": result.acked,
        "info": result.indeterminate,
        "fail": result.failed,
        "unsent": result.unsent,
        "stored": result.stored,
        "missing": result.lost,
        "double_counted": result.double_counted,
        "tallies": {
            "postgres": result.pg_tallies,
            **{f"redis_{r}": t for r, t in result.extra["redis_tallies_by_region"].items()},
            "recount_votes_v1": result.kafka_recount,
        },
        "tallies_match": result.tallies_match,
        "drained": result.spill_drained and result.lag_zero and result.offsets_at_end,
        "rto_ingest_s": None if rto_ingest is None else round(rto_ingest - kill, 3),
        "first_attempt_at_b_s": None if first_at_b is None else round(first_at_b - kill, 3),
        "ack_latency_p50_in_outage_s": (
            round(statistics.median(outage_latency), 3) if outage_latency else None
        ),
        "rto_count_s": None if first_counted is None else round(float(first_counted) - kill, 3),
        "rpo_pending_votes": len(pending),
        "acked_by_a_before_kill": len(a_before),
        "mm2_lag_p99_s": _p99(lags),
        "mm2_lag_median_s": round(statistics.median(lags), 3) if lags else None,
        "mm2_lag_samples": len(lags),
        "mm2_lag_max_s": round(max(lags_all), 3) if lags_all else None,
        "received_to_mirror_p99_s": _p99(ack_to_mirror),
        "pg_failover_s": None if failed_over is None else round(failed_over - kill, 3),
        "max_writable_pg_nodes": max((n for _, n in pg.writable), default=None),
        "writable_pg_nodes_during_fault": sorted(
            {n for t, n in pg.writable if kill < t < marks["return"]}
        ),
        # The region alerts' inputs during the fault (VoteMirrorLagHigh: > 5 s for 1 m,
        # VoteMirrorDown: > 60 s for 2 m, VotePgNoSyncStandby: 0 for 1 m).
        "mirror_heartbeat_age_max_s": _max_in(pg.mirror_age, kill, marks["a_ready"]),
        "mirror_caught_up_s": round(marks["mirror_caught_up"] - marks["a_ready"], 3),
        "mirror_heartbeat_age_at_end_s": result.extra["mirror_heartbeat_age_at_end_s"],
        "sync_standbys_min_during_fault": _min_in(pg.sync_standbys, kill, marks["a_ready"]),
        "a_back_ready_s": round(marks["a_ready"] - marks["return"], 3),
        "kill_script_s": round(marks["killed"] - marks["fault_start"], 3),
        "a_voters_served_by_b": len(moved),
        "notes": result.notes,
    }
    report["failures"] = result.failures
    report["passed"] = bool(
        not result.failures
        and report["missing"] == 0
        and report["double_counted"] == 0
        and report["tallies_match"]
        and report["drained"]
        and (report["max_writable_pg_nodes"] or 0) <= 1
    )
    if getattr(args, "plots", None):
        report["plots"] = _plot(Path(args.plots), load, wall0, tails, counters, marks, counted_rows)
    return report


def _plot(
    directory: Path,
    load: LoadProcesses,
    wall0: float,
    tails: dict[str, MirrorTail],
    counters: dict[str, Timeline],
    marks: dict[str, float],
    counted_rows: list[tuple[str, float, int]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for r in REGIONS:
        fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
        acks: Counter[int] = Counter(
            int(v.done_s or 0) for v in load.votes if v.outcome == OK and v.served_by == r
        )
        counted: Counter[int] = Counter()
        for region, sec, n in counted_rows:
            if region == r:
                counted[int(float(sec) - wall0)] += n
        tail, source = tails[r], tails[f"{r}-source"]
        lag = sorted(
            (tail.arrived[v] - wall0, tail.arrived[v] - source.arrived[v])
            for v in tail.arrived
            if v in source.arrived
        )
        series = [
            ("acks/s (2xx by this region)", sorted(acks.items())),
            ("counted/s (acked here)", sorted(counted.items())),
            ("spill events", [(t, v) for t, v in counters[r].spill if v is not None]),
            (f"mirror lag of {r}'s votes (s)", lag),
        ]
        for ax, (title, points) in zip(axes, series, strict=True):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, lw=1)
            ax.set_ylabel(title, fontsize=8)
            for name, t in marks.items():
                if name in ("kill", "return"):
                    ax.axvline(t - wall0, color="red" if name == "kill" else "green", ls="--", lw=1)
        axes[0].set_title(f"region {r}: the fault (red), healed (green)")
        axes[-1].set_xlabel("seconds since the load began")
        path = directory / f"failover-region-{r}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        files.append(str(path.relative_to(REPO) if path.is_relative_to(REPO) else path))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench failover", description=__doc__)
    parser.add_argument(
        "--fault",
        choices=["region-loss", *FAULTS],
        default="region-loss",
        help="what happens after --warm (default: every process of region A is killed)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="votes/s over both regions")
    parser.add_argument("--warm", type=float, default=30.0, help="seconds before the kill")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds A stays down")
    parser.add_argument("--after", type=float, default=20.0, help="seconds of load after A is back")
    parser.add_argument("--converge-timeout", type=float, default=300.0)
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--plots", help="directory for the PNG timelines")
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench failover: {exc}")
        return 2
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0 if report["passed"] else 1
