"""A real gateway (``python -m gateway``) and processor as subprocesses for HTTP tests.

Each test module gets its own topic, consumer group, key directory, spill directory and
ports, on the session's test database, so modules cannot see each other's votes.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest

from bench import scrape
from bench.kafka import create_topic, delete_topics, end_offsets
from bench.procs import Service, free_port, start_service, wait_until
from core.settings import load
from gateway import admin
from gateway.config import GatewaySettings

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GatewayStack:
    env: dict[str, str]
    base_url: str
    topic: str
    election: str
    candidates: list[str]
    settings: GatewaySettings
    issuer_file: str
    pg_dsn: str
    kafka_bootstrap: str
    services: dict[str, Service] = field(default_factory=dict)

    def token(self, voter: str, election: str | None = None, **kw: object) -> str:
        return admin.mint_token(self.issuer_file, election or self.election, voter, **kw)

    def vote(
        self,
        voter: str,
        choice: str = "alice",
        vote_id: str | None = None,
        token: str | None = None,
        election: str | None = None,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """POST one vote; by default a fresh vote_id and the token that authorizes it
        (one token, one vote: its jti is the vote_id). ``headers``: more request headers
        (a client's ``X-Forwarded-For``, say)."""
        election = election or self.election
        vote_id = vote_id or str(uuid.uuid4())
        token = token or self.token(voter, election, jti=vote_id)
        return httpx.post(
            f"{self.base_url}/v1/elections/{election}/votes",
            content=json.dumps({"vote_id": vote_id, "choice": choice}),
            headers={
                "authorization": f"Bearer {token}",
                "content-type": "application/json",
                **(headers or {}),
            },
            timeout=timeout,
        )

    def topic_end_offsets(self) -> int:
        """Sum of the high watermarks of every partition: grows iff anything was produced."""
        return sum(end_offsets({"bootstrap.servers": self.kafka_bootstrap}, self.topic).values())

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Service:
        log_path = Path(self.env["VOTE_STACK_DIR"]) / f"{name}.log"
        service = start_service(
            name, [sys.executable, *args], {**self.env, **(extra_env or {})}, log_path, REPO
        )
        self.services[name] = service
        return service

    def metric(self, name: str) -> float:
        """Sum of a gateway metric's samples over its label sets, from /metrics."""
        return scrape.total(f"http://127.0.0.1:{self.env['VOTE_METRICS_PORT']}/metrics", name)

    def stored_counts(self, voter_prefix: str = "") -> dict[str, int]:
        """vote_id -> number of rows in ``votes`` for this stack's election, of the voters
        whose id starts with ``voter_prefix`` (tests sharing the stack keep apart so)."""
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT vote_id, count(*) FROM votes WHERE election_id = %s"
                " AND starts_with(voter_id, %s) GROUP BY vote_id",
                (self.election, voter_prefix),
            ).fetchall()
        return dict(rows)

    def wait_ready(self, timeout: float = 180.0) -> None:
        # Generous: on a starved CI machine a fresh broker can take a minute to answer
        # metadata for a new topic ("Coordinator load in progress").
        gateway = self.services["gateway"]
        last = "(no answer)"

        def ready() -> bool:
            nonlocal last
            if gateway.proc.poll() is not None:
                raise RuntimeError(f"gateway exited:\n{gateway.log_tail()}")
            try:
                resp = httpx.get(self.base_url + "/readyz", timeout=10)
            except httpx.HTTPError as exc:
                last = repr(exc)
                return False
            last = resp.text
            return resp.status_code == 200

        wait_until(
            "gateway /readyz", ready, timeout, lambda: f"last /readyz: {last}\n{gateway.log_tail()}"
        )


@contextlib.contextmanager
def running_gateway(
    home: Path, pg_dsn: str, kafka_bootstrap: str, redis_url: str, **overrides: str
) -> Iterator[GatewayStack]:
    """A gateway and a processor on a fresh topic under ``home``; stopped on exit.

    ``overrides`` are extra ``VOTE_*`` variables (``VOTE_WORKERS="2"``, say).
    """
    topic = f"votes.test.{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {
        **os.environ,
        "VOTE_STACK_DIR": str(home),
        "VOTE_PG_DSN": pg_dsn,
        "VOTE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VOTE_REDIS_URL": redis_url,
        "VOTE_TOPIC": topic,
        "VOTE_PROCESSOR_TOPIC": topic,
        "VOTE_PROCESSOR_GROUP": f"vote-processor-{topic}",
        "VOTE_PROCESSOR_METRICS_PORT": "0",
        "VOTE_HTTP_PORT": str(port),
        "VOTE_METRICS_PORT": str(free_port()),
        "VOTE_WORKERS": "1",
        # One client address sends everything here; the per-address limits have their own
        # tests.
        "VOTE_RATE_IP_PER_S": "100000",
        "VOTE_RATE_IP_BURST": "100000",
        "VOTE_MAX_IN_FLIGHT_PER_CLIENT": "100000",
        **overrides,
    }
    create_topic({"bootstrap.servers": kafka_bootstrap}, topic, 3)
    settings = load(GatewaySettings, env)
    admin.init_keys(settings)
    election = f"it-{uuid.uuid4().hex[:8]}"
    candidates = ["alice", "bob", "carol"]
    admin.create_election(pg_dsn, election, candidates)
    stack = GatewayStack(
        env,
        f"http://127.0.0.1:{port}",
        topic,
        election,
        candidates,
        settings,
        os.path.join(admin.keys_dir(settings), "issuer.json"),
        pg_dsn,
        kafka_bootstrap,
    )
    try:
        stack.start("processor", "-m", "processor")
        stack.start("gateway", "-m", "gateway")
        stack.wait_ready()
        yield stack
    finally:
        for service in stack.services.values():
            service.stop()
        delete_topics({"bootstrap.servers": kafka_bootstrap}, [topic])


@pytest.fixture(scope="module")
def gateway_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    """A gateway and a processor on a fresh topic; both stopped at the end of the module."""
    home = tmp_path_factory.mktemp("gateway")
    with running_gateway(home, pg_dsn, kafka_bootstrap, redis_url) as stack:
        yield stack
