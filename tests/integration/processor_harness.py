"""The processor's test harness on the real stack: a topic, an election, a processor's
environment and start, waiting until it has drained a topic and Redis has caught up,
the invariants of docs/ARCHITECTURE.md (Flow and invariants) checked in PostgreSQL and
Redis, and ``python -m processor verify``. The ``harness`` fixture (registered in
conftest.py) gives one per test.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from bench.kafka import end_offsets
from bench.procs import Service, wait_until
from core import elections
from core.elections import Election
from core.event import VoteEvent

REPO = Path(__file__).resolve().parents[2]
# The shared conftest's helper types, for annotations only.
EventProducer = Any


def stored_offsets(pg_dsn: str, topic: str, group: str) -> dict[int, int]:
    with psycopg.connect(pg_dsn) as conn:
        return dict(
            conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets"
                " WHERE consumer_group = %s AND topic = %s",
                (group, topic),
            ).fetchall()
        )


def run_cli(env: dict[str, str], stack_env: dict[str, str], *args: str) -> tuple[int, str]:
    out = subprocess.run(
        [sys.executable, "-m", "processor", *args],
        cwd=REPO,
        env={**stack_env, **env, "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=180,
    )
    return out.returncode, out.stdout + out.stderr


def db_state(pg_dsn: str, election: str) -> dict:
    with psycopg.connect(pg_dsn) as conn:
        votes = {
            x: (a, c, sup)
            for x, a, c, sup in conn.execute(
                "SELECT vote_id, voter_id, choice, superseded_by FROM votes WHERE election_id = %s",
                (election,),
            )
        }
        rejections = {
            (x, a, c): r
            for x, a, c, r in conn.execute(
                "SELECT vote_id, voter_id, choice, reason FROM vote_rejections"
                " WHERE election_id = %s",
                (election,),
            )
        }
        tallies = dict(
            conn.execute(
                "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s",
                (election,),
            ).fetchall()
        )
        el: Election = elections.load(conn, [election])[election]
    return {"votes": votes, "rejections": rejections, "tallies": tallies, "election": el}


def redis_tallies(redis_url: str, election: str) -> dict[str, int]:
    """The election's tallies in Redis, without the candidates at 0."""
    r = redis.Redis.from_url(redis_url)
    try:
        cached = {k.decode(): int(v) for k, v in r.hgetall(f"tally:{election}").items()}
    finally:
        r.close()
    return {c: n for c, n in cached.items() if n}


def postgres_tallies(pg_dsn: str, election: str) -> dict[str, int]:
    """The election's tallies in PostgreSQL (``election_tallies``), without the zeros."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s",
            (election,),
        ).fetchall()
    return {c: n for c, n in rows if n}


def assert_invariants(
    pg_dsn: str, redis_url: str, election: str, acked: Iterable[VoteEvent]
) -> dict:
    """A, B and the tally half of C, checked straight in PostgreSQL and Redis."""
    st = db_state(pg_dsn, election)
    votes, rejections = st["votes"], st["rejections"]
    # A: every acknowledged vote is stored exactly once, in votes or rejected.
    for e in acked:
        in_votes = votes.get(e.vote_id, (None, None, None))[:2] == (e.voter_id, e.choice)
        in_rej = (e.vote_id, e.voter_id, e.choice) in rejections
        assert in_votes != in_rej, f"{e} in votes={in_votes} rejections={in_rej}"
    # B: no voter over the policy's allowance.
    per_voter = Counter(a for a, _c, sup in votes.values() if sup is None)
    limit = st["election"].max_votes
    assert not [a for a, n in per_voter.items() if n > limit]
    # C: tallies equal a recount, in PostgreSQL and in Redis.
    recount = Counter(c for _a, c, sup in votes.values() if sup is None)
    assert {c: n for c, n in st["tallies"].items() if n} == dict(recount)
    assert redis_tallies(redis_url, election) == dict(recount)
    return st


@dataclass
class Harness:
    """The stack, a producer and the processors of one test, with the steps every test
    takes: a topic, an election, a processor's environment and start, waiting until it
    has drained a topic and Redis has caught up, the invariants, ``processor verify``."""

    pg_dsn: str
    redis_url: str
    kafka_bootstrap: str
    stack_env: dict[str, str]
    producer: EventProducer
    group: str
    topic: Callable[..., str]  # unique_topic(partitions, prefix=...)
    election: Callable[..., str]  # create_election(candidates, policy, ...)
    _start: Callable[..., Service]

    def env(self, topic: str, **extra: str) -> dict[str, str]:
        """A processor's variables on ``topic``, this test's group; ``extra`` as
        ``batch_max_messages="300"`` → ``VOTE_PROCESSOR_BATCH_MAX_MESSAGES``."""
        env = {
            "VOTE_PG_DSN": self.pg_dsn,
            "VOTE_PROCESSOR_TOPIC": topic,
            "VOTE_PROCESSOR_DLQ_TOPIC": f"{topic}.dlq",
            "VOTE_PROCESSOR_GROUP": self.group,
            "VOTE_PROCESSOR_METRICS_PORT": "0",
            "VOTE_PROCESSOR_BATCH_MAX_MS": "50",
            "VOTE_PROCESSOR_LOG_LEVEL": "INFO",
        }
        env.update({f"VOTE_PROCESSOR_{k.upper()}": v for k, v in extra.items()})
        return env

    def start(self, env: dict[str, str]) -> Service:
        """``python -m processor`` with ``env``; stopped after the test."""
        return self._start("processor", env=env)

    def end_offsets(self, topic: str) -> dict[int, int]:
        return end_offsets({"bootstrap.servers": self.kafka_bootstrap}, topic)

    def stored_offsets(self, topic: str) -> dict[int, int]:
        return stored_offsets(self.pg_dsn, topic, self.group)

    def drain(self, topic: str, services: Iterable[Service] = (), timeout: float = 300.0) -> None:
        """Until the stored offset of every non-empty partition is its end (invariant C),
        failing at once if a processor exits."""
        ends = self.end_offsets(topic)
        services = list(services)
        stored: dict[int, int] = {}

        def drained() -> bool:
            nonlocal stored
            for svc in services:
                if svc.proc.poll() is not None:
                    raise AssertionError(f"processor exited {svc.proc.returncode}:\n{svc.log()}")
            stored = self.stored_offsets(topic)
            return all(stored.get(p, 0) == end for p, end in ends.items() if end > 0)

        def detail() -> str:
            logs = "\n".join(s.log()[-3000:] for s in services)
            return f"ends {ends} stored {stored}\n{logs}"

        wait_until("the topic drained", drained, timeout, detail)

    def redis_caught_up(self, election: str, timeout: float = 60.0) -> None:
        """Until Redis holds PostgreSQL's tallies of ``election``: the Redis write follows
        the commit, and a flushed election is written again at its next batch."""
        wait_until(
            f"Redis tallies of {election} equal to PostgreSQL's",
            lambda: (
                redis_tallies(self.redis_url, election) == postgres_tallies(self.pg_dsn, election)
            ),
            timeout,
            lambda: (
                f"redis {redis_tallies(self.redis_url, election)}"
                f" postgres {postgres_tallies(self.pg_dsn, election)}"
            ),
        )

    def invariants(self, election: str, acked: Iterable[VoteEvent]) -> dict:
        """``assert_invariants`` once Redis has caught up with the commits."""
        self.redis_caught_up(election)
        return assert_invariants(self.pg_dsn, self.redis_url, election, acked)

    def cli(self, env: dict[str, str], *args: str) -> tuple[int, str]:
        return run_cli(env, self.stack_env, *args)

    def verify(self, env: dict[str, str], election: str) -> dict:
        rc, out = self.cli(env, "verify", "--election", election)
        start = out.index("{")
        report = json.loads(out[start : out.rindex("}") + 1])
        assert (rc == 0) == report["ok"], out
        return report


@pytest.fixture
def harness(
    pg_dsn: str,
    redis_url: str,
    kafka_bootstrap: str,
    stack_env: dict[str, str],
    unique_topic: Callable[..., str],
    producer: EventProducer,
    create_election: Callable[..., str],
    start_service: Callable[..., Service],
) -> Harness:
    return Harness(
        pg_dsn,
        redis_url,
        kafka_bootstrap,
        stack_env,
        producer,
        f"test-proc-{uuid.uuid4().hex[:10]}",
        unique_topic,
        create_election,
        start_service,
    )
