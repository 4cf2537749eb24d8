"""A real gateway (``python -m gateway``) and processor as subprocesses for HTTP tests.

Each test module gets its own topic, consumer group, key directory, spill directory and
ports, on the session's test database, so modules cannot see each other's votes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client.parser import text_string_to_metric_families

from core.settings import load
from gateway import admin
from gateway.config import GatewaySettings
from tests.integration.services import Service, start_process, wait_until

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def topic_end_offsets(self) -> int:
        """Sum of the high watermarks of every partition: grows iff anything was produced."""
        consumer = Consumer(
            {"bootstrap.servers": self.kafka_bootstrap, "group.id": f"probe-{uuid.uuid4().hex}"}
        )
        try:
            md = consumer.list_topics(self.topic, timeout=10)
            total = 0
            for pid in md.topics[self.topic].partitions:
                _low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, pid), timeout=10
                )
                total += high
            return total
        finally:
            consumer.close()

    def start(self, name: str, *args: str, extra_env: dict[str, str] | None = None) -> Service:
        log_path = Path(self.env["VOTE_STACK_DIR"]) / f"{name}.log"
        service = start_process(
            name, [sys.executable, *args], {**self.env, **(extra_env or {})}, log_path, REPO
        )
        self.services[name] = service
        return service

    def metric(self, name: str) -> float:
        """Sum of a gateway metric's samples over its label sets, from /metrics."""
        text = httpx.get(
            f"http://127.0.0.1:{self.env['VOTE_METRICS_PORT']}/metrics", timeout=10
        ).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

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


def create_topic(bootstrap: str, name: str, partitions: int = 3) -> None:
    client = AdminClient({"bootstrap.servers": bootstrap})
    futures = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=-1)]
    )
    futures[name].result(timeout=30)
    # Wait until the topic's metadata is visible, so the gateway's first probe finds it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        md = client.list_topics(name, timeout=5)
        if name in md.topics and md.topics[name].error is None:
            return
        time.sleep(0.1)


def delete_topic(bootstrap: str, name: str) -> None:
    client = AdminClient({"bootstrap.servers": bootstrap})
    for future in client.delete_topics([name]).values():
        with contextlib.suppress(Exception):  # best-effort cleanup
            future.result(timeout=30)


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
    create_topic(kafka_bootstrap, topic)
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
        delete_topic(kafka_bootstrap, topic)


@pytest.fixture(scope="module")
def gateway_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    """A gateway and a processor on a fresh topic; both stopped at the end of the module."""
    home = tmp_path_factory.mktemp("gateway")
    with running_gateway(home, pg_dsn, kafka_bootstrap, redis_url) as stack:
        yield stack
