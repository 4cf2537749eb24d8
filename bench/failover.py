"""``python -m bench failover``: lose a whole region under load and measure it end to end.

    python -m bench failover [--rate 150] [--warm 30] [--outage 60] [--after 20]
                             [--json F] [--plots DIR]

On the two simulated regions of ``deploy/local/regions`` (started if they are not up):
a gateway and a processor per region, one election, and an open-loop load at ``--rate``
votes/s split between the regions' gateways (even voters live in A, odd ones in B). The
client behaves as global DNS would: once A stops answering, A's voters, retries
included, go to B; once A is back and ready, they go home again. After ``--warm``
seconds every process of region A is killed with SIGKILL (Kafka, Redis, its PostgreSQL
node and keeper, gateway, processor); after ``--outage`` seconds A is started again,
its PostgreSQL node rejoins as the standby, and the load runs ``--after`` more seconds.
Then the run waits until every acknowledged vote is stored and both regions' Redis
agree, and reports (docs/ARCHITECTURE.md, "Regions"):

* ``acked``, ``stored``, ``missing``, ``double_counted``; ``tallies_match``: PostgreSQL's
  tallies and both regions' Redis equal a recount of both regions' ``votes.v1``;
* ``rto_ingest_s``: from the kill to the first 2xx from B for one of A's voters;
* ``rto_count_s``: from the kill to the first vote acknowledged after it being counted;
* ``rpo_pending_votes``: votes A acknowledged that were not yet in B at the kill;
* ``mm2_lag_p99_s``: before the kill, from the gateway's received_at to the vote's
  arrival in the other region's mirrored topic (a consumer tails both);
* ``pg_failover_s``: from the kill to the monitor reporting B's node as primary;

and draws a PNG timeline per region: acks/s, counted/s, spill size, mirror lag.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
import psycopg
import redis
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.env import REPO, BenchError
from bench.region_stack import REGIONS, Regions, base_port_offset
from core.event import TOPIC, decode
from core.results import tally_key
from gateway import admin

CANDIDATES = ("alice", "bob", "carol")

# The faults inside the two regions other than a region loss: (verbs of
# deploy/local/regions that cause it, verbs that heal it).
FAULTS: dict[str, tuple[list[tuple[str, ...]], list[tuple[str, ...]]]] = {
    # Lag grows, nothing is lost, the mirror catches up from its stored offsets.
    "mirror-down": ([("mirror", "stop")], [("mirror", "start")]),
    # Synchronous replication has nobody to wait for: the monitor relaxes it (wait_primary).
    "standby-down": ([("pg-kill", "B")], [("pg-start", "B")]),
    # Without the monitor nobody may promote: the primary's loss must not cause a second
    # writable node; failover happens once the monitor is back.
    "monitor-down": (
        [("monitor", "stop"), ("pg-kill", "A")],
        [("monitor", "start"), ("pg-start", "A")],
    ),
}


@dataclass(slots=True)
class Outcome:
    """What the client saw of one vote (Jepsen's ok / fail / info)."""

    home: str
    served_by: str = ""
    status: str = "info"  # ok (2xx), fail (definite 4xx), info (unknown)
    sent_at: float = 0.0
    acked_at: float = 0.0
    attempts: int = 0


@dataclass
class Timeline:
    """Samples taken every half second while the load runs."""

    spill: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {r: [] for r in REGIONS}
    )
    pg_primary: list[tuple[float, str | None]] = field(default_factory=list)
    # PostgreSQL nodes that accepted writes at each sample (split brain if ever > 1).
    writable: list[tuple[float, int]] = field(default_factory=list)


# -- the client ----------------------------------------------------------------------------


class DnsClient:
    """Sends each voter's vote to their home region's gateway, or to the other region
    while home does not answer, as a health-checked global DNS name would."""

    def __init__(self, regions: Regions, election: str, votes: list[dict[str, str]]) -> None:
        self.regions = regions
        self.election = election
        self.votes = votes
        self.route = {r: r for r in REGIONS}
        self.outcomes: dict[str, Outcome] = {}
        self.a_failed_at: float | None = None

    async def run(self, rate: float, done: Callable[[], bool]) -> None:
        """Send at ``rate`` votes/s until ``done()``; then wait for the votes in flight."""
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=200)
        # A slow answer is not a dead region: only a refused or unanswered connection
        # moves A's voters (as a DNS health check would). The long read timeout keeps the
        # client from piling retries onto a gateway that is merely slow.
        timeout = httpx.Timeout(30.0, connect=2.0)
        async with httpx.AsyncClient(timeout=timeout, limits=limits, verify=False) as client:
            tasks = []
            start = time.monotonic()
            for i, vote in enumerate(self.votes):
                due = start + i / rate
                now = time.monotonic()
                if due > now:
                    await asyncio.sleep(due - now)
                if done():
                    break
                home = REGIONS[i % 2]
                self.outcomes[vote["vote_id"]] = Outcome(home=home, sent_at=time.time())
                tasks.append(asyncio.create_task(self._send(client, vote, home)))
                if i % int(rate * 10) == 0:
                    self._progress()
            await asyncio.gather(*tasks)
            self._progress()

    def _progress(self) -> None:
        got = Counter(o.status for o in self.outcomes.values())
        print(
            f"   sent {len(self.outcomes)}: ok {got['ok']}, fail {got['fail']},"
            f" pending/info {got['info']}; A's voters go to {self.route['A']}",
            flush=True,
        )

    async def _send(self, client: httpx.AsyncClient, vote: dict[str, str], home: str) -> None:
        out = self.outcomes[vote["vote_id"]]
        headers = {"authorization": f"Bearer {vote['token']}", "content-type": "application/json"}
        deadline = time.monotonic() + 120
        delay = 0.1
        while time.monotonic() < deadline:
            target = self.route[home]
            out.attempts += 1
            try:
                resp = await client.post(
                    f"{self.regions.gateway_url(target)}/v1/elections/{self.election}/votes",
                    content=vote["body"],
                    headers=headers,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout):
                self._unreachable(target)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except httpx.HTTPError:  # sent, answer unknown: the same vote_id again is safe
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            if resp.status_code in (200, 202):
                out.status, out.served_by, out.acked_at = "ok", target, time.time()
                return
            if resp.status_code in (429, 503) or resp.status_code >= 500:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            out.status = "fail"
            return

    def _unreachable(self, region: str) -> None:
        if region == "A" and self.route["A"] == "A":
            self.route["A"] = "B"
            self.a_failed_at = time.time()


# -- mirror tails ---------------------------------------------------------------------------


class MirrorTail(threading.Thread):
    """Records when each vote of the election first arrives in a mirrored topic."""

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


# -- sampling -------------------------------------------------------------------------------


def _monitor_dsn() -> str:
    return f"postgresql://autoctl_node@127.0.0.1:{20000 + base_port_offset()}/pg_auto_failover"


def _spill_events(http: httpx.Client, url: str) -> float:
    for family in text_string_to_metric_families(http.get(url).text):
        if family.name == "vote_spill_events":
            return sum(s.value for s in family.samples)
    return 0.0


def _sample(regions: Regions, timeline: Timeline, stop: threading.Event) -> None:
    # One client for the whole run: a new one per request loads the CA bundle, which
    # holds the GIL long enough on a loaded machine to stall the load's event loop.
    http = httpx.Client(timeout=2.0, verify=False)
    while not stop.wait(0.5):
        now = time.time()
        for r in REGIONS:
            url = f"http://127.0.0.1:{regions.gateway_metrics_port(r)}/metrics"
            with contextlib.suppress(httpx.HTTPError):
                timeline.spill[r].append((now, _spill_events(http, url)))
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
        timeline.pg_primary.append((now, primary))
        writable = 0
        for port in (20001 + base_port_offset(), 20002 + base_port_offset()):
            try:
                with psycopg.connect(
                    f"postgresql://vote:vote@127.0.0.1:{port}/vote", connect_timeout=2
                ) as conn:
                    (in_recovery,) = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                writable += 0 if in_recovery else 1
            except psycopg.Error:
                pass
        timeline.writable.append((now, writable))


# -- checks ---------------------------------------------------------------------------------


def _recount_topics(regions: Regions, election: str) -> dict[str, int]:
    """Tally by choice of the distinct vote_ids in both regions' own votes.v1."""
    seen: dict[str, str] = {}
    for r in REGIONS:
        c = Consumer(
            {
                "bootstrap.servers": regions.env(r)["VOTE_KAFKA_BOOTSTRAP"],
                "group.id": f"bench-failover-recount-{os.getpid()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        try:
            md = c.list_topics(TOPIC, timeout=30)
            ends = {}
            for p in md.topics[TOPIC].partitions:
                lo, hi = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30)
                if hi > lo:
                    ends[p] = hi
            c.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in ends])
            deadline = time.monotonic() + 300
            while ends and time.monotonic() < deadline:
                msg = c.poll(1.0)
                if msg is None:
                    continue
                if msg.error() is None and msg.value() is not None:
                    try:
                        ev = decode(msg.value())
                        if ev.election_id == election:
                            seen.setdefault(ev.vote_id, ev.choice)
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        pass
                if msg.error() is not None or msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        finally:
            c.close()
    return dict(Counter(seen.values()))


def _redis_tally(regions: Regions, region: str, election: str) -> dict[str, int]:
    client = redis.Redis.from_url(regions.env(region)["VOTE_REDIS_URL"], socket_timeout=5)
    try:
        raw = client.hgetall(tally_key(election))
    finally:
        client.close()
    return {k.decode(): int(v) for k, v in raw.items() if int(v)}


def _pg_tally(dsn: str, election: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s", (election,)
        ).fetchall()
    return {c: int(n) for c, n in rows if n}


def _stored(dsn: str, election: str) -> tuple[set[str], set[str], int]:
    with psycopg.connect(dsn) as conn:
        votes = {
            r[0]
            for r in conn.execute("SELECT vote_id FROM votes WHERE election_id = %s", (election,))
        }
        rejected = {
            r[0]
            for r in conn.execute(
                "SELECT vote_id FROM vote_rejections WHERE election_id = %s", (election,)
            )
        }
        (double,) = conn.execute(
            "SELECT count(*) FROM (SELECT voter_id FROM votes WHERE election_id = %s"
            " AND superseded_by IS NULL GROUP BY voter_id HAVING count(*) > 1) d",
            (election,),
        ).fetchone()
    return votes, rejected, int(double)


def _p99(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 3)


# -- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, object]:
    regions = Regions()
    print("== regions up", flush=True)
    regions.up()
    # The loss of the region holding the primary is the case that needs a failover.
    regions.promote("A")
    regions.prepare_schema_and_keys()
    dsn = regions.env("A")["VOTE_PG_DSN"]
    election = f"failover-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    admin.create_election(dsn, election, list(CANDIDATES), title="bench failover")
    total = int(args.rate * (args.warm + args.outage + args.after + 60))
    print(f"== signing {total} votes", flush=True)
    votes = list(
        admin.mint_votes(
            str(regions.keys_dir / "issuer.json"), election, total, candidates=CANDIDATES
        )
    )
    for r in REGIONS:
        regions.start_services(r)
    for r in REGIONS:
        regions.wait_ready(r)
    tails = {
        "A": MirrorTail(regions.env("B")["VOTE_KAFKA_BOOTSTRAP"], f"A.{TOPIC}", election),
        "B": MirrorTail(regions.env("A")["VOTE_KAFKA_BOOTSTRAP"], f"B.{TOPIC}", election),
    }
    for t in tails.values():
        t.start()
    time.sleep(2)  # the tails take their end offsets before the first vote
    timeline = Timeline()
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=_sample, args=(regions, timeline, stop_sampling), daemon=True)
    sampler.start()
    client = DnsClient(regions, election, votes)
    marks: dict[str, float] = {}

    failures: list[BaseException] = []

    def scenario() -> None:
        try:
            steps()
        except BaseException as exc:  # reported by the main thread once the load stops
            failures.append(exc)

    def steps() -> None:
        time.sleep(args.warm)
        marks["kill"] = time.time()
        if args.fault == "region-loss":
            print("== kill -9 region A", flush=True)
            regions.kill("A")
            tails["B"].stop()  # it read from A's Kafka
        else:
            print(f"== fault: {args.fault}", flush=True)
            for verb in FAULTS[args.fault][0]:
                regions.script(*verb, timeout=300)
        time.sleep(args.outage)
        marks["return"] = time.time()
        if args.fault == "region-loss":
            print("== region A returns", flush=True)
            regions.start("A")
            regions.start_services("A")
            regions.wait_ready("A")
            client.route["A"] = "A"
        else:
            print(f"== heal: {args.fault}", flush=True)
            for verb in FAULTS[args.fault][1]:
                regions.script(*verb, timeout=900)
        marks["a_ready"] = time.time()
        time.sleep(args.after)
        marks["load_end"] = time.time()

    driver = threading.Thread(target=scenario, daemon=True)
    driver.start()
    print(f"== load: {args.rate}/s split over A and B", flush=True)
    asyncio.run(client.run(args.rate, lambda: not driver.is_alive()))
    driver.join()
    stop_sampling.set()
    sampler.join(timeout=10)
    tails["A"].stop()
    if failures:
        raise BenchError(f"the scenario failed: {failures[0]!r}")
    return _report(args, regions, election, client, tails, timeline, marks, dsn)


def _wait_converged(
    regions: Regions, dsn: str, election: str, acked: set[str], timeout_s: float
) -> tuple[set[str], set[str], int, dict[str, dict[str, int]]]:
    """Wait until every acknowledged vote is stored and both Redis agree with PostgreSQL."""
    deadline = time.monotonic() + timeout_s
    while True:
        votes, rejected, double = _stored(dsn, election)
        tallies = {"postgres": _pg_tally(dsn, election)}
        for r in REGIONS:
            try:
                tallies[f"redis_{r}"] = _redis_tally(regions, r, election)
            except redis.RedisError:
                tallies[f"redis_{r}"] = {}
        done = not (acked - votes - rejected) and all(
            t == tallies["postgres"] for t in tallies.values()
        )
        if done or time.monotonic() > deadline:
            return votes, rejected, double, tallies
        time.sleep(2)


def _report(
    args: argparse.Namespace,
    regions: Regions,
    election: str,
    client: DnsClient,
    tails: dict[str, MirrorTail],
    timeline: Timeline,
    marks: dict[str, float],
    dsn: str,
) -> dict[str, object]:
    outcomes = client.outcomes
    acked = {v for v, o in outcomes.items() if o.status == "ok"}
    print(f"== waiting until the {len(acked)} acknowledged votes are stored", flush=True)
    votes, rejected, double, tallies = _wait_converged(
        regions, dsn, election, acked, args.converge_timeout
    )
    recount = _recount_topics(regions, election)
    kill = marks["kill"]
    # RTO of ingestion: A's voters answered by B after the kill.
    moved = [o.acked_at for o in outcomes.values() if o.home == "A" and o.served_by == "B"]
    rto_ingest = min((t for t in moved if t > kill), default=None)
    with psycopg.connect(dsn) as conn:
        (first_counted,) = conn.execute(
            "SELECT extract(epoch FROM min(counted_at)) FROM votes"
            " WHERE election_id = %s AND received_at > to_timestamp(%s)",
            (election, kill),
        ).fetchone()
        counted_rows = conn.execute(
            "SELECT gateway_id, floor(extract(epoch FROM counted_at)) AS s, count(*)"
            " FROM votes WHERE election_id = %s GROUP BY 1, 2",
            (election,),
        ).fetchall()
    # RPO: acknowledged by A before the kill and not in B's mirrored topic at the kill.
    a_before = [v for v, o in outcomes.items() if o.served_by == "A" and 0 < o.acked_at <= kill]
    mirrored_a = tails["A"].arrived
    pending = [v for v in a_before if mirrored_a.get(v, float("inf")) > kill]
    lags = [
        tail.arrived[v] - tail.received_at[v]
        for tail in tails.values()
        for v in tail.arrived
        if tail.arrived[v] <= kill
    ]
    # The mirror's lag over the whole run (mirror-down: it grows, then catches up).
    lags_all = [t.arrived[v] - t.received_at[v] for t in tails.values() for v in t.arrived]
    failed_over = next((t for t, p in timeline.pg_primary if t > kill and p == "B"), None)
    report: dict[str, object] = {
        "scenario": args.fault,
        "max_writable_pg_nodes": max((n for _, n in timeline.writable), default=None),
        "writable_pg_nodes_during_fault": sorted(
            {n for t, n in timeline.writable if kill < t < marks["return"]}
        ),
        "mm2_lag_max_s": round(max(lags_all), 3) if lags_all else None,
        "election": election,
        "rate": args.rate,
        "phases_s": {"warm": args.warm, "outage": args.outage, "after": args.after},
        "sent": len(outcomes),
        "acked": len(acked),
        "info": sum(1 for o in outcomes.values() if o.status == "info"),
        "fail": sum(1 for o in outcomes.values() if o.status == "fail"),
        "stored": len(acked & (votes | rejected)),
        "missing": len(acked - votes - rejected),
        "double_counted": double,
        "tallies": {**tallies, "recount_votes_v1": recount},
        "tallies_match": all(t == recount for t in tallies.values()),
        "rto_ingest_s": None if rto_ingest is None else round(rto_ingest - kill, 3),
        "rto_count_s": None if first_counted is None else round(float(first_counted) - kill, 3),
        "rpo_pending_votes": len(pending),
        "acked_by_a_before_kill": len(a_before),
        "mm2_lag_p99_s": _p99(lags),
        "mm2_lag_median_s": round(statistics.median(lags), 3) if lags else None,
        "mm2_lag_samples": len(lags),
        "pg_failover_s": None if failed_over is None else round(failed_over - kill, 3),
        "a_back_ready_s": round(marks["a_ready"] - marks["return"], 3),
        "a_voters_served_by_b": len(moved),
    }
    if args.plots:
        report["plots"] = _plot(Path(args.plots), client, tails, timeline, marks, counted_rows)
    return report


def _per_second(times: list[float], t0: float) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for t in times:
        out[int(t - t0)] += 1
    return out


def _plot(
    directory: Path,
    client: DnsClient,
    tails: dict[str, MirrorTail],
    timeline: Timeline,
    marks: dict[str, float],
    counted_rows: list[tuple[str, float, int]],
) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    t0 = min(o.sent_at for o in client.outcomes.values())
    files = []
    for r in REGIONS:
        fig, axes = plt.subplots(4, 1, figsize=(10, 9), sharex=True)
        acks = _per_second([o.acked_at for o in client.outcomes.values() if o.served_by == r], t0)
        counted: dict[int, int] = defaultdict(int)
        for gw, sec, n in counted_rows:
            if gw == f"gw-{r}":
                counted[int(float(sec) - t0)] += n
        tail = tails[r]
        lag = sorted(
            (tail.arrived[v] - t0, tail.arrived[v] - tail.received_at[v]) for v in tail.arrived
        )
        spill = timeline.spill[r]
        series = [
            ("acks/s (2xx by this region)", sorted(acks.items())),
            ("counted/s (acked here)", sorted(counted.items())),
            ("spill events", [(t - t0, v) for t, v in spill]),
            (f"mirror lag of {r}'s votes (s)", lag),
        ]
        for ax, (title, points) in zip(axes, series, strict=True):
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, lw=1)
            ax.set_ylabel(title, fontsize=8)
            for name, t in marks.items():
                if name in ("kill", "return"):
                    ax.axvline(t - t0, color="red" if name == "kill" else "green", ls="--", lw=1)
        axes[0].set_title(f"region {r}: kill of A (red), A returns (green)")
        axes[-1].set_xlabel("seconds since the first vote")
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
    parser.add_argument("--rate", type=float, default=150.0, help="votes/s over both regions")
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
    ok = report["missing"] == 0 and report["double_counted"] == 0 and report["tallies_match"]
    return 0 if ok else 1
