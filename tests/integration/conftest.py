"""Fixtures for integration tests against the local stack (real Kafka, PostgreSQL, Redis).

The stack is started by ``deploy/local/stack up`` (the Makefile does it before
``make test``). If it is not running the tests fail — they are not skipped — with a
message saying so.

Isolation from other users of the same stack: each test session gets its own
PostgreSQL database (migrated, dropped at the end); tests use unique election ids,
unique topics (``unique_topic``) and unique consumer groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench import procs
from bench.env import parse_env_lines
from bench.kafka import create_topic, delete_topics
from bench.procs import Service
from core import elections, keyset
from core.event import UNSIGNED_VERSION, VoteEvent, encode, seal
from core.settings import load
from gateway import admin
from gateway.config import GatewaySettings

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "deploy" / "local" / "stack"
_HINT = "start the local stack first: `deploy/local/stack up` (make test does this)"


def _fail(msg: str) -> None:
    pytest.fail(f"{msg} — {_HINT}", pytrace=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that stop or freeze Kafka go last, so no other test runs on a recovering broker."""
    items.sort(key=lambda item: item.get_closest_marker("disruptive") is not None)


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The variables printed by ``deploy/local/stack env``, after checking each service."""
    if not STACK.exists():
        _fail(f"{STACK} not found")
    out = subprocess.run([str(STACK), "env"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        _fail(f"`deploy/local/stack env` failed: {out.stderr.strip()}")
    env = parse_env_lines(out.stdout)
    for key in ("VOTE_KAFKA_BOOTSTRAP", "VOTE_PG_DSN", "VOTE_REDIS_URL"):
        if not env.get(key):
            _fail(f"`deploy/local/stack env` does not set {key}")
    try:
        with psycopg.connect(env["VOTE_PG_DSN"], connect_timeout=5):
            pass
    except psycopg.OperationalError as exc:
        _fail(f"PostgreSQL not reachable at {env['VOTE_PG_DSN']}: {exc}")
    try:
        client = redis.Redis.from_url(env["VOTE_REDIS_URL"], socket_connect_timeout=5)
        client.ping()
        client.close()
    except redis.RedisError as exc:
        _fail(f"Redis not reachable at {env['VOTE_REDIS_URL']}: {exc}")
    admin = AdminClient({"bootstrap.servers": env["VOTE_KAFKA_BOOTSTRAP"]})
    try:
        admin.list_topics(timeout=30)  # generous: CI machines can be loaded
    except Exception as exc:  # KafkaException, or a timeout surfaced as one
        _fail(f"Kafka not reachable at {env['VOTE_KAFKA_BOOTSTRAP']}: {exc}")
    return env


@pytest.fixture(scope="session")
def kafka_bootstrap(stack_env: dict[str, str]) -> str:
    return stack_env["VOTE_KAFKA_BOOTSTRAP"]


@pytest.fixture(scope="session")
def redis_url(stack_env: dict[str, str]) -> str:
    return stack_env["VOTE_REDIS_URL"]


@pytest.fixture(scope="session")
def pg_dsn(stack_env: dict[str, str]) -> Iterator[str]:
    """A fresh database for this test session, migrated with ``processor.migrate``."""
    from bench import scratchdb

    admin_dsn = stack_env["VOTE_PG_DSN"]
    name, dsn = scratchdb.create(admin_dsn, prefix="vote_test")
    try:
        yield dsn
    finally:
        scratchdb.drop(admin_dsn, name)


def unique_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unique_topic(kafka_bootstrap: str) -> Iterator[Callable[..., str]]:
    """Factory: ``unique_topic(partitions=6, prefix="t")`` creates a topic, deleted after."""
    config = {"bootstrap.servers": kafka_bootstrap}
    created: list[str] = []

    def make(partitions: int = 6, prefix: str = "test") -> str:
        name = unique_id(prefix)
        create_topic(config, name, partitions)
        created.append(name)
        return name

    yield make
    delete_topics(config, created)


@dataclass
class EventProducer:
    """Produces ``VoteEvent``s (keyed by voter, as the gateway does) or raw bytes.

    An unsigned (version 1) event is sealed with ``signer``, the stack's event key, as a
    gateway would; other versions and raw bytes go as they are.
    """

    bootstrap: str
    signer: keyset.Key | None = None
    _producer: Producer = field(init=False)

    def __post_init__(self) -> None:
        self._producer = Producer(
            {
                "bootstrap.servers": self.bootstrap,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )

    def send(
        self, topic: str, events: Iterable[VoteEvent | bytes], partition: int | None = None
    ) -> int:
        n = 0
        for e in events:
            if isinstance(e, bytes):
                value, key = e, b"poison"
            elif e.v == UNSIGNED_VERSION and self.signer is not None:
                value, key = seal(e, self.signer), e.voter_id.encode()
            else:
                value, key = encode(e), e.voter_id.encode()
            kwargs = {} if partition is None else {"partition": partition}
            while True:
                try:
                    self._producer.produce(topic, value=value, key=key, **kwargs)
                    break
                except BufferError:
                    self._producer.poll(0.1)
            n += 1
            if n % 10000 == 0:
                self._producer.poll(0)
        left = self._producer.flush(60)
        assert left == 0, f"{left} events not delivered"
        return n


@pytest.fixture(scope="session", autouse=True)
def event_key(stack_env: dict[str, str]) -> keyset.Key:
    """The stack's signing event key (created with the other keys if missing), the one
    the processors started with ``stack_env`` verify against: every processor a test
    starts needs the file."""
    settings = load(GatewaySettings, stack_env)
    admin.init_keys(settings)
    return keyset.load(settings.event_keys_file).signing()


@pytest.fixture
def producer(kafka_bootstrap: str, event_key: keyset.Key) -> EventProducer:
    return EventProducer(kafka_bootstrap, event_key)


@pytest.fixture
def create_election(pg_dsn: str) -> Callable[..., str]:
    """Factory: ``create_election(candidates=("a","b"), policy="first_wins")`` → id;
    ``opens_at_us`` / ``closes_at_us``: the window's ends (None: open)."""

    def make(
        candidates: Iterable[str] = ("alice", "bob", "carol"),
        policy: str = "first_wins",
        opens_at_us: int | None = None,
        closes_at_us: int | None = None,
        prefix: str = "el",
    ) -> str:
        eid = unique_id(prefix)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            elections.write(
                conn,
                eid,
                candidates,
                policy,
                title=f"test {eid}",
                opens_at_us=opens_at_us,
                closes_at_us=closes_at_us,
            )
        return eid

    return make


@pytest.fixture
def start_service(stack_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory: ``start_service("processor", env={...}, args=[...])``; stopped after."""
    started: list[Service] = []

    def start(module: str, env: dict[str, str] | None = None, args: list[str] = ()) -> Service:
        full_env = {**os.environ, **stack_env, **(env or {})}
        full_env["PYTHONPATH"] = str(REPO)
        log_path = tmp_path / f"{module}-{len(started)}.log"
        svc = procs.start_service(module, [sys.executable, "-m", module, *args], full_env, log_path)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


# The chaos suite's 3-node stack, beside the checkout's single-broker one.
from tests.integration.cluster_fixtures import three_node_cluster  # noqa: E402, F401

# The gateway's HTTP fixtures (a real gateway + processor per test module).
from tests.integration.gateway_fixtures import gateway_stack  # noqa: E402, F401

# The processor's harness (a topic, an election, processors, the invariants).
from tests.integration.processor_harness import harness  # noqa: E402, F401
