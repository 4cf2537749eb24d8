"""The burst that ``make run`` drives through a running gateway, and its summary.

    python -m bench.burst [--votes 10000] [--rate R | --concurrency 64] [--gateway URL]

Creates a fresh election, pre-signs one vote for each of N distinct voters, sends them
over HTTP, re-sends a sample with the same vote_id to show that retries are idempotent,
waits for the processor to store them and prints what happened. ``--rate R`` sends them
with vegeta at R votes/s (open loop: the latencies are the gateway's, not a client's
queue); without it, an httpx client sends them closed-loop over ``--concurrency``
connections (no Go toolchain needed).

It says how many votes were signed, not sent (vegeta's schedule ran out), sent,
acknowledged, turned away under load (429/503 with Retry-After), left without an answer
(a timeout: may or may not be stored) and stored. It exits non-zero only for what is
wrong (``BurstCount.problems``): an acknowledged vote not stored, a vote stored twice, a
valid vote refused with any other code, a retry of an acknowledged vote not answered 202,
or nothing acknowledged at all. (For load testing proper use ``python -m bench gateway``:
open loop, peers.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import psycopg

from bench.loadgen import StepResult, Vegeta
from core import settings as settings_mod
from gateway import admin
from gateway.config import GatewaySettings
from processor.settings import ProcessorSettings

# Answers the gateway gives a valid vote by design when it is overloaded: the client retries.
OVERLOAD_CODES = frozenset({429, 503})
# No answer at all (vegeta's code 0: a timeout or a reset): the vote may or may not be stored.
NO_ANSWER = frozenset({0, "transport-error"})


@dataclass(frozen=True)
class BurstCount:
    """What happened to the burst's votes, and what of it is wrong.

    ``codes`` and ``retry_codes`` count answers (a closed-loop client answers a 429/503
    by trying again, so there can be more answers than votes sent)."""

    signed: int
    sent: int
    codes: Mapping[int | str, int]
    acknowledged: frozenset[str]
    stored: frozenset[str]
    duplicate_rows: int
    retried: int
    retry_codes: Mapping[int | str, int]

    @property
    def not_sent(self) -> int:
        return self.signed - self.sent

    @property
    def missing(self) -> frozenset[str]:
        """Acknowledged but not stored: the one outcome a 202 promises never happens."""
        return self.acknowledged - self.stored

    @property
    def stored_unacknowledged(self) -> int:
        """Stored although the client saw no 202 (a timeout after Kafka had it): allowed."""
        return len(self.stored - self.acknowledged)

    def _count(self, codes: Mapping[int | str, int], kind: frozenset) -> int:
        return sum(n for code, n in codes.items() if code in kind)

    def _wrong(self, codes: Mapping[int | str, int]) -> dict[int | str, int]:
        allowed = {202} | OVERLOAD_CODES | NO_ANSWER
        return {code: n for code, n in codes.items() if code not in allowed}

    def problems(self) -> list[str]:
        """Each thing that is actually wrong; empty when the run is good, however loaded."""
        found = []
        if self.missing:
            sample = ", ".join(sorted(self.missing)[:3])
            found.append(f"{len(self.missing)} acknowledged votes are not stored (e.g. {sample})")
        if self.duplicate_rows:
            found.append(f"{self.duplicate_rows} votes are stored more than once")
        if wrong := self._wrong(self.codes):
            found.append(f"valid votes refused with {wrong} (only 202, 429 or 503 are right)")
        if retry_wrong := self._wrong(self.retry_codes):
            found.append(f"retries of acknowledged votes answered {retry_wrong}, not 202")
        if not self.acknowledged and self.sent:
            found.append("no vote was acknowledged")
        return found

    def lines(self) -> list[str]:
        """The counts, one per line, as ``make run`` prints them."""
        return [
            f"signed:         {self.signed}",
            f"not sent:       {self.not_sent}"
            + (" (the sender's schedule ran out: the machine is loaded)" if self.not_sent else ""),
            f"sent:           {self.sent}",
            f"acknowledged:   {len(self.acknowledged)}",
            f"turned away:    {self._count(self.codes, OVERLOAD_CODES)} answers 429/503 "
            "(overload, with Retry-After)",
            f"no answer:      {self._count(self.codes, NO_ANSWER)} (timeouts: stored or not)",
            f"stored:         {len(self.stored)} ({len(self.acknowledged & self.stored)} "
            f"acknowledged, {self.stored_unacknowledged} without an answer)",
            f"not stored:     {len(self.missing)} of the acknowledged",
            f"duplicates:     {self.duplicate_rows}",
            f"retries:        {self.retried} acknowledged votes re-sent with the same vote_id "
            f"-> {dict(self.retry_codes)}",
        ]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _send_all(
    base: str, election: str, votes: list[dict[str, str]], concurrency: int
) -> tuple[dict[str, int], list[float], Counter, float]:
    acked: dict[str, int] = {}
    latencies: list[float] = []
    codes: Counter = Counter()
    queue: asyncio.Queue = asyncio.Queue()
    for vote in votes:
        queue.put_nowait(vote)
    url = f"{base}/v1/elections/{election}/votes"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            vote = queue.get_nowait()
            headers = {
                "authorization": f"Bearer {vote['token']}",
                "content-type": "application/json",
            }
            for attempt in range(5):
                started = time.perf_counter()
                try:
                    resp = await client.post(url, content=vote["body"], headers=headers)
                except httpx.HTTPError:
                    codes["transport-error"] += 1
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                latencies.append(time.perf_counter() - started)
                codes[resp.status_code] += 1
                if resp.status_code == 202:
                    acked[vote["vote_id"]] = acked.get(vote["vote_id"], 0) + 1
                    break
                if resp.status_code not in (429, 503):
                    break
                await asyncio.sleep(float(resp.headers.get("retry-after", "1")))

    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return acked, latencies, codes, elapsed


def _send_open_loop(base: str, election: str, votes: list[dict[str, str]], rate: int) -> StepResult:
    """All votes at ``rate``/s through vegeta (percentiles corrected for the generator's
    own lateness, see bench.loadgen)."""
    from bench.corpus import vegeta_target
    from bench.env import bench_dir, ensure_vegeta, stack_env

    env = stack_env()
    vegeta = Vegeta(ensure_vegeta(env), bench_dir(env), timeout_s=10.0)
    url = f"{base}/v1/elections/{election}/votes"
    lines = [vegeta_target(url, v) for v in votes]
    return vegeta.step("gateway", "burst", lines, rate, len(votes) / rate)


def _wait_stored(
    dsn: str, election: str, acknowledged: frozenset[str], timeout_s: float
) -> tuple[frozenset[str], int]:
    """(vote_ids stored, rows beyond one per vote_id) once every acknowledged vote is
    stored or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            ids = [
                vote_id
                for (vote_id,) in conn.execute(
                    "SELECT vote_id FROM votes WHERE election_id = %s", (election,)
                )
            ]
            stored = frozenset(ids)
            if acknowledged <= stored or time.monotonic() > deadline:
                return stored, len(ids) - len(stored)
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.burst",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--votes", type=int, default=10_000)
    parser.add_argument(
        "--rate", type=int, default=None, help="send with vegeta at this many votes/s (open loop)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="connections of the closed-loop httpx client (without --rate)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=200,
        help="how many acknowledged votes to send again with the same vote_id",
    )
    parser.add_argument("--gateway", default=None, help="default http://VOTE_HTTP_HOST:PORT")
    parser.add_argument("--election", default=None)
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the processor to store every vote",
    )
    args = parser.parse_args(argv)
    settings = settings_mod.load(GatewaySettings)
    processor = settings_mod.load(ProcessorSettings)
    base = args.gateway or f"http://{settings.http_host}:{settings.http_port}"
    election = args.election or f"demo-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    candidates = ["alice", "bob", "carol"]

    admin.create_election(settings.pg_dsn, election, candidates, title="make run demo")
    issuer = os.path.join(admin.keys_dir(settings), "issuer.json")
    t0 = time.perf_counter()
    votes = list(admin.mint_votes(issuer, election, args.votes, candidates=candidates))
    print(
        f"election {election}: {len(votes)} votes of distinct voters signed in "
        f"{time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    open_loop: StepResult | None = None
    if args.rate:
        from bench.env import BenchError

        try:
            open_loop = _send_open_loop(base, election, votes, args.rate)
        except BenchError as exc:  # no Go toolchain to build vegeta with
            print(f"vegeta unavailable ({exc}); sending closed-loop with httpx instead")
    if open_loop is not None:
        acked = dict.fromkeys(open_loop.acked_ids, 1)
        codes = Counter({int(k) if k.isdigit() else k: v for k, v in open_loop.codes.items()})
        sent = open_loop.requests
    else:
        acked, latencies, codes, elapsed = asyncio.run(
            _send_all(base, election, votes, args.concurrency)
        )
        sent = len(votes)
    # Retries of the same vote_id must get 202 again and must not add a vote.
    resent = [v for v in votes if v["vote_id"] in acked][: args.retries]
    _, _, re_codes, _ = asyncio.run(_send_all(base, election, resent, 16))
    acknowledged = frozenset(acked)
    stored, extra_rows = _wait_stored(settings.pg_dsn, election, acknowledged, args.timeout)
    count = BurstCount(
        signed=len(votes),
        sent=sent,
        codes=codes,
        acknowledged=acknowledged,
        stored=stored,
        duplicate_rows=extra_rows,
        retried=len(resent),
        retry_codes=re_codes,
    )

    tally = _results(base, election)
    print()
    if open_loop is not None:
        print(
            f"requests/s:     {open_loop.rate:,} offered, open loop ({open_loop.requests} "
            f"requests in {open_loop.duration_s:.2f}s with vegeta: "
            f"{open_loop.command.split(' -targets')[0]} ...)"
        )
        print(
            f"ack latency:    p50 {open_loop.p50_ms:.1f} ms   p99 {open_loop.p99_ms:.1f} ms   "
            f"p99.9 {open_loop.p999_ms:.1f} ms"
        )
    else:
        print(
            f"requests/s:     {len(latencies) / elapsed:,.0f} "
            f"({len(latencies)} requests in {elapsed:.2f}s, {args.concurrency} connections,"
            " closed loop, httpx client on the same 2 cores)"
        )
        print(
            f"ack latency:    p50 {_percentile(latencies, 0.50) * 1000:.1f} ms   "
            f"p99 {_percentile(latencies, 0.99) * 1000:.1f} ms   "
            f"mean {statistics.fmean(latencies) * 1000:.1f} ms"
        )
    print(f"status codes:   {dict(codes)}")
    for line in count.lines():
        print(line)
    print(f"live tally:     {tally}")
    print(f"results:        {base}/v1/elections/{election}/results")
    print(f"results (SSE):  {base}/v1/elections/{election}/results/stream")
    print(
        f"metrics:        http://{settings.http_host}:{settings.metrics_port}/metrics "
        f"(gateway), http://127.0.0.1:{processor.processor_metrics_port}/metrics (processor)"
    )
    print(f"openapi:        {base}/openapi.json")
    problems = count.problems()
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    if not problems:
        print("OK: every acknowledged vote is stored exactly once")
    return 1 if problems else 0


def _results(base: str, election: str) -> object:
    try:
        resp = httpx.get(f"{base}/v1/elections/{election}/results", timeout=5)
        if resp.status_code == 200:
            doc = resp.json()
            return {
                "tallies": doc.get("tallies"),
                "total": doc.get("total"),
                "source": doc.get("source"),
            }
        return f"HTTP {resp.status_code}"
    except httpx.HTTPError as exc:
        return f"unavailable ({exc})"


if __name__ == "__main__":
    raise SystemExit(main())
