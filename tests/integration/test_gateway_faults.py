"""Faults under load: Kafka frozen or killed, a worker killed.

See docs/ARCHITECTURE.md, Durability path and Failure and recovery.

Clients keep voting throughout. Whatever happens, every vote that got a 202 must end up in
PostgreSQL exactly once, the spill must drain to zero once Kafka is back, and no request
may get a 500. These tests stop or freeze the shared broker, so they run last
(``disruptive``, see conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.env import STACK_SCRIPT
from bench.memory import worker_pids
from bench.outage import kafka_pids
from bench.procs import wait_until
from tests.integration.gateway_fixtures import GatewayStack, running_gateway

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]


class Voters:
    """Client threads that keep sending fresh votes and remember every 202."""

    def __init__(self, stack: GatewayStack, clients: int = 6) -> None:
        self.stack = stack
        self.acked: dict[str, str] = {}  # vote_id -> durability
        self.outcomes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._vote_forever, args=(i,), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> Voters:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _vote_forever(self, client: int) -> None:
        url = f"{self.stack.base_url}/v1/elections/{self.stack.election}/votes"
        run = uuid.uuid4().hex[:6]
        n = 0
        with httpx.Client(timeout=15) as http:
            while not self._stop.is_set():
                n += 1
                vote_id = str(uuid.uuid4())
                body = json.dumps({"vote_id": vote_id, "choice": self.stack.candidates[n % 3]})
                headers = {
                    "authorization": (
                        f"Bearer {self.stack.token(f'f-{run}-{client}-{n}', jti=vote_id)}"
                    ),
                    "content-type": "application/json",
                }
                try:
                    resp = http.post(url, content=body, headers=headers)
                except httpx.HTTPError as exc:  # a killed worker drops its connections
                    outcome = type(exc).__name__
                    time.sleep(0.05)
                else:
                    outcome = str(resp.status_code)
                    if resp.status_code == 202:
                        with self._lock:
                            self.acked[vote_id] = resp.json()["durability"]
                    elif resp.status_code == 503:
                        time.sleep(0.05)
                with self._lock:
                    self.outcomes[outcome] += 1

    def count(self, durability: str | None = None) -> int:
        with self._lock:
            if durability is None:
                return len(self.acked)
            return sum(1 for d in self.acked.values() if d == durability)


def kafka_pid() -> int:
    """The local stack's one broker (its pid file under the stack directory).

    These tests take Kafka away: with a three-node cluster stopping one broker only
    moves partition leaders, and nothing would reach the spill.
    """
    pids = kafka_pids(dict(os.environ))
    assert len(pids) == 1, f"these tests need the single-broker stack, found brokers {pids}"
    return pids[0]


def gateway_workers(stack: GatewayStack) -> list[int]:
    """granian's worker processes: the children of the gateway's main process."""
    return worker_pids(stack.services["gateway"].proc.pid)


def assert_acked_stored_exactly_once(stack: GatewayStack, voters: Voters) -> None:
    # The spill is empty again: everything went to Kafka...
    wait_until(
        "the spill to drain",
        lambda: stack.metric("vote_spill_events") == 0,
        detail=lambda: (
            f"vote_spill_events={stack.metric('vote_spill_events')}\n"
            + stack.services["gateway"].log_tail(60)
        ),
    )
    acked = set(voters.acked)

    # ...and from there into PostgreSQL, each acknowledged vote exactly once.
    wait_until(
        "every acknowledged vote in PostgreSQL", lambda: acked <= set(stack.stored_counts()), 300
    )
    rows = stack.stored_counts()
    assert set(rows.values()) == {1}, "a vote was stored twice"
    # Votes whose answer the client never saw (a killed worker) may be stored too; a vote
    # the client saw refused may not.
    assert not voters.outcomes.get("500"), voters.outcomes


def test_kafka_frozen_and_a_worker_killed_during_spill_writes(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> None:
    gateway = running_gateway(tmp_path, pg_dsn, kafka_bootstrap, redis_url, VOTE_WORKERS="2")
    with gateway as stack:
        with Voters(stack) as voters:
            wait_until("votes acknowledged through Kafka", lambda: voters.count("kafka") >= 50)
            broker = kafka_pid()
            os.kill(broker, signal.SIGSTOP)  # Kafka stops answering; its sockets stay open
            try:
                spilled = stack.metric("vote_spill_writes_total")
                wait_until(
                    "votes acknowledged from the spill",
                    lambda: stack.metric("vote_spill_writes_total") >= spilled + 40,
                )
                victim = gateway_workers(stack)[0]
                os.kill(victim, signal.SIGKILL)  # mid spill writes: its flock dies with it
                after_kill = voters.count("spill")
                wait_until(
                    "spill acknowledgements after the kill",
                    lambda: voters.count("spill") >= after_kill + 40,
                )
                wait_until(
                    "granian to respawn the worker",
                    lambda: (
                        len(gateway_workers(stack)) == 2 and victim not in gateway_workers(stack)
                    ),
                )
            finally:
                os.kill(broker, signal.SIGCONT)
            resumed = voters.count("kafka")
            wait_until(
                "acknowledgements through Kafka again",
                lambda: voters.count("kafka") >= resumed + 50,
                300,
            )
        assert voters.count("spill") >= 80, voters.outcomes
        assert_acked_stored_exactly_once(stack, voters)


def test_kafka_killed_and_restarted_mid_load(
    tmp_path: Path, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> None:
    with running_gateway(tmp_path, pg_dsn, kafka_bootstrap, redis_url) as stack:
        with Voters(stack) as voters:
            wait_until("votes acknowledged through Kafka", lambda: voters.count("kafka") >= 50)
            os.kill(kafka_pid(), signal.SIGKILL)
            down = voters.count("spill")
            wait_until(
                "acknowledgements from the spill while Kafka is down",
                lambda: voters.count("spill") >= down + 100,
            )
            # `stack up` starts what is not running and waits until the broker answers.
            restart = subprocess.run(
                [str(STACK_SCRIPT), "up"], capture_output=True, text=True, timeout=900
            )
            assert restart.returncode == 0, restart.stderr
            resumed = voters.count("kafka")
            wait_until(
                "acknowledgements through Kafka again",
                lambda: voters.count("kafka") >= resumed + 50,
                300,
            )
        assert_acked_stored_exactly_once(stack, voters)
