"""A patient voting client under open-loop load, with every attempt logged.

Like a real voting app, it retries the *same* ``vote_id`` after a connection error, a
timeout, a 5xx or a 429 (waiting at least the ``Retry-After`` it was given), up to a cap.
Each vote ends with one of the three outcomes Jepsen keeps apart:

* ``ok``   — a 2xx: the gateway promised the vote is durable;
* ``fail`` — every attempt got a definite 4xx: the vote was certainly not accepted;
* ``info`` — anything else at the cap (a timeout, a reset, a 503): it may or may not count.

Load is open loop: votes start on a fixed schedule whatever the answers, so a stalled
gateway meets a growing backlog as it would in production. A semaphore bounds the
requests in flight (the connection pool); time spent waiting for it counts as latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

OK, FAIL, INFO = "ok", "fail", "info"
# A scheduled vote the client never got to send before it gave up (not an operation).
UNSENT = "unsent"


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 10
    max_elapsed_s: float = 90.0  # from the first attempt
    timeout_s: float = 10.0  # one attempt
    backoff_s: float = 0.2  # doubled per attempt, capped
    backoff_cap_s: float = 5.0


@dataclass(slots=True)
class Attempt:
    at_s: float  # since the load began
    status: int | None  # None: no HTTP answer
    error: str  # exception name, or "" when an answer came
    latency_s: float
    region: str = ""  # the region it was sent to (RegionRoutes), "" with one gateway
    retry_after: str | None = None  # the answer's Retry-After header


@dataclass(slots=True)
class Vote:
    vote_id: str
    voter_id: str
    choice: str
    token: str = field(repr=False)
    body: bytes = field(repr=False)
    scheduled_s: float
    attempts: list[Attempt] = field(default_factory=list)
    outcome: str = ""
    done_s: float | None = None
    durability: str = ""
    home: str = ""  # the voter's region (RegionRoutes), "" with one gateway

    @property
    def latency_s(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.scheduled_s

    @property
    def served_by(self) -> str:
        """The region of the last attempt (the one that answered, for an ``ok`` vote)."""
        return self.attempts[-1].region if self.attempts else ""


def classify(attempts: list[Attempt]) -> str:
    """The outcome of a finished vote from its attempts (pure)."""
    if attempts and attempts[-1].status is not None and 200 <= attempts[-1].status < 300:
        return OK
    if attempts and all(a.status is not None and 400 <= a.status < 500 for a in attempts):
        return FAIL
    return INFO


def retryable(attempt: Attempt) -> bool:
    # 408: the gateway gave up reading the request (its body deadline), so it was never
    # accepted and the same request again is safe.
    return attempt.status is None or attempt.status in (408, 429) or attempt.status >= 500


def retry_delay(attempt_no: int, retry_after: str | None, policy: RetryPolicy) -> float:
    """Exponential backoff with jitter, never shorter than the server's Retry-After."""
    delay = min(policy.backoff_cap_s, policy.backoff_s * 2**attempt_no) * random.uniform(0.5, 1.0)
    if retry_after:
        with contextlib.suppress(ValueError):  # an HTTP date: the backoff stands
            delay = max(delay, float(retry_after))
    return delay


class VoteSource:
    """Signed votes for one election: fresh voters, and now and then a second vote by a
    voter who already voted (a new ``vote_id`` and another choice), which the election's
    policy must reject or supersede but never count twice."""

    def __init__(
        self,
        issuer_file: str,
        election: str,
        candidates: list[str],
        seed: int,
        revote_every: int = 20,
    ) -> None:
        from gateway import admin

        self._admin = admin
        self._issuer_file = issuer_file
        self._election = election
        self._fresh = admin.mint_votes(issuer_file, election, 10**9, "HS256", seed, candidates)
        self._rng = random.Random(seed)
        self._candidates = candidates
        self._revote_every = revote_every
        self._recent: list[dict[str, str]] = []
        self._n = 0
        self._ready: deque[tuple[str, str, str, str, bytes]] = deque()

    def __iter__(self) -> Iterator[tuple[str, str, str, str, bytes]]:
        return self

    def prefill(self, n: int) -> None:
        """Sign ``n`` votes now: signing costs about a millisecond a vote, which the load
        generator should not spend while it keeps the schedule."""
        self._ready.extend(self._make() for _ in range(n))

    def __next__(self) -> tuple[str, str, str, str, bytes]:
        """(vote_id, voter_id, choice, token, body)."""
        return self._ready.popleft() if self._ready else self._make()

    def _make(self) -> tuple[str, str, str, str, bytes]:
        self._n += 1
        if self._revote_every and self._n % self._revote_every == 0 and self._recent:
            first = self._rng.choice(self._recent)
            vote_id = f"re-{self._rng.getrandbits(96):024x}"
            choice = self._rng.choice([c for c in self._candidates if c != first["choice"]])
            body = json.dumps({"vote_id": vote_id, "choice": choice}).encode()
            # A token authorizes one vote: its jti is the vote_id.
            token = self._admin.mint_token(
                self._issuer_file, self._election, first["voter_id"], jti=vote_id
            )
            return vote_id, first["voter_id"], choice, token, body
        v = next(self._fresh)
        self._recent.append(v)
        if len(self._recent) > 1000:
            del self._recent[:500]
        return v["vote_id"], v["voter_id"], v["choice"], v["token"], v["body"].encode()


class RegionRoutes:
    """Where each vote goes when the voters live in several regions, as a health-checked
    global DNS name would send them: voters are spread over the regions in turn; a vote,
    retries included, goes to its voter's home region unless that region refused a
    connection since it was last ``restore``d, and then to the next region in order.

    Only a connection that could not be made moves a region's voters: a slow or reset
    answer is a busy gateway, and moving on it would pile retries onto the other region.
    """

    def __init__(self, urls: dict[str, str]) -> None:
        self.urls = dict(urls)  # region -> the votes URL of its gateways
        self.regions = list(urls)
        self.down: dict[str, float] = {}  # region -> when (load clock) it first refused

    def home_of(self, n: int) -> str:
        return self.regions[n % len(self.regions)]

    def pick(self, home: str) -> str:
        """The region a vote of ``home``'s voters goes to now."""
        at = self.regions.index(home)
        for region in self.regions[at:] + self.regions[:at]:
            if region not in self.down:
                return region
        return home  # every region refuses: keep trying home

    def refused(self, region: str, at_s: float) -> None:
        self.down.setdefault(region, at_s)

    def restore(self, region: str) -> None:
        """The region answers again (its readiness probe passed): its voters go home."""
        self.down.pop(region, None)


class Load:
    """Open-loop load at ``rate`` votes/s on ``url`` from a thread of its own.

    ``start()`` begins, ``stop()`` stops scheduling new votes, ``finish()`` waits until every
    started vote has its outcome. ``votes`` holds every vote, in schedule order.
    """

    def __init__(
        self,
        url: str,
        source: VoteSource,
        rate: float,
        policy: RetryPolicy | None = None,
        max_in_flight: int = 32,
        routes: RegionRoutes | None = None,
    ) -> None:
        self.url = url  # ignored when ``routes`` spreads the voters over regions
        self.routes = routes
        self.source = source
        self.rate = rate
        self.policy = policy or RetryPolicy()
        self.max_in_flight = max_in_flight
        self.votes: list[Vote] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._main, name="chaos-load", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def finish(self, timeout_s: float = 300.0) -> int:
        """Wait for every started vote's outcome; returns how many had none by then:
        ``info`` if a request was made (the client gave up without knowing), else
        ``unsent``."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive() and self._loop is not None:
                # Give up on the rest, so nothing is sent while the checker counts.
                self._loop.call_soon_threadsafe(self._cancel_all)
                self._thread.join(60)
        if self._error is not None:
            raise RuntimeError(f"the load failed: {self._error!r}") from self._error
        unfinished = [v for v in list(self.votes) if not v.outcome]
        for v in unfinished:
            # Never sent (still waiting for a connection): the client made no request.
            v.outcome, v.done_s = (INFO if v.attempts else UNSENT), self.now()
        return len(unfinished)

    def _main(self) -> None:
        import uvloop

        try:
            uvloop.run(self._run())
        except BaseException as exc:  # reported by finish()
            self._error = exc

    def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        limits = httpx.Limits(
            max_connections=self.max_in_flight, max_keepalive_connections=self.max_in_flight
        )
        gate = asyncio.Semaphore(self.max_in_flight)
        tasks = self._tasks
        async with httpx.AsyncClient(limits=limits, timeout=self.policy.timeout_s) as http:
            n = 0
            while not self._stop.is_set():
                due = n / self.rate
                wait = due - self.now()
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.05))
                    continue
                vote_id, voter, choice, token, body = next(self.source)
                vote = Vote(vote_id, voter, choice, token, body, due)
                if self.routes is not None:
                    vote.home = self.routes.home_of(n)
                self.votes.append(vote)
                task = asyncio.create_task(self._vote(http, gate, vote))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _vote(self, http: httpx.AsyncClient, gate: asyncio.Semaphore, vote: Vote) -> None:
        headers = {"authorization": f"Bearer {vote.token}", "content-type": "application/json"}
        policy = self.policy
        first = self.now()
        while True:
            retry_after = None
            region = self.routes.pick(vote.home) if self.routes is not None else ""
            url = self.routes.urls[region] if self.routes is not None else self.url
            async with gate:
                if not vote.attempts and self._stop.is_set():
                    # Still queued for a connection when the load ended: never sent, so
                    # not an operation (``unsent``). Sending the backlog now would only
                    # make the checks wait for a load the box could not carry.
                    return
                started = self.now()
                try:
                    resp = await http.post(url, content=vote.body, headers=headers)
                except asyncio.CancelledError:
                    # Given up mid-request: the gateway may have accepted it.
                    vote.attempts.append(
                        Attempt(started, None, "Abandoned", self.now() - started, region)
                    )
                    raise
                except httpx.HTTPError as exc:
                    attempt = Attempt(
                        started, None, type(exc).__name__, self.now() - started, region
                    )
                    if self.routes is not None and isinstance(
                        exc, httpx.ConnectError | httpx.ConnectTimeout
                    ):
                        self.routes.refused(region, started)
                else:
                    retry_after = resp.headers.get("retry-after")
                    attempt = Attempt(
                        started, resp.status_code, "", self.now() - started, region, retry_after
                    )
                    if 200 <= resp.status_code < 300:
                        vote.durability = resp.json().get("durability", "")
            vote.attempts.append(attempt)
            n = len(vote.attempts)
            if not retryable(attempt) or n >= policy.max_attempts:
                break
            delay = retry_delay(n - 1, retry_after, policy)
            if self.now() + delay - first > policy.max_elapsed_s:
                break
            await asyncio.sleep(delay)
        vote.outcome = classify(vote.attempts)
        vote.done_s = self.now()


def write_attempts(path: Path, votes: list[Vote]) -> None:
    """Every attempt of every vote, one JSON line per vote (with regions: the voter's
    home, and the region of each attempt as its fifth field)."""
    with open(path, "w") as out:
        for v in votes:
            line: dict[str, object] = {
                "vote_id": v.vote_id,
                "voter_id": v.voter_id,
                "choice": v.choice,
                "scheduled_s": round(v.scheduled_s, 4),
                "outcome": v.outcome,
                "durability": v.durability,
                "attempts": [
                    [round(a.at_s, 4), a.status, a.error, round(a.latency_s, 4)]
                    + ([a.region] if a.region else [])
                    for a in v.attempts
                ],
            }
            if v.home:
                line["home"] = v.home
            out.write(json.dumps(line) + "\n")
