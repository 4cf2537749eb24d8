"""Kafka with SASL/SCRAM: refused without valid credentials, used through VOTE_KAFKA_*.

The stack's SASL_PLAINTEXT listener (``deploy/local/stack up --secure``, which ``make
prepare`` runs) takes only clients that authenticate as its SCRAM-SHA-512 user. A client
without credentials, or with a wrong password, gets nothing into a topic; one configured
through the project's own settings (``core.kafka_security``) from the variables of
``deploy/local/stack env --secure`` gets in.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from bench.env import parse_env_lines
from bench.kafka import create_topic, delete_topics, end_offsets
from core.kafka_security import client_config
from tests.integration.conftest import STACK

pytestmark = pytest.mark.integration

SECURITY_VARS = (
    "VOTE_KAFKA_BOOTSTRAP",
    "VOTE_KAFKA_SECURITY_PROTOCOL",
    "VOTE_KAFKA_SASL_MECHANISM",
    "VOTE_KAFKA_SASL_USERNAME",
    "VOTE_KAFKA_SASL_PASSWORD_FILE",
)


@pytest.fixture(scope="module")
def secure_env(stack_env: dict[str, str]) -> dict[str, str]:
    """The VOTE_KAFKA_* variables of ``stack env --secure`` (the SASL listener's)."""
    out = subprocess.run(
        [str(STACK), "env", "--secure"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        pytest.fail(
            f"`deploy/local/stack env --secure` failed ({out.stderr.strip()}): start the "
            "stack with `deploy/local/stack up --secure` (make prepare does)",
            pytrace=False,
        )
    env = parse_env_lines(out.stdout)
    assert env["VOTE_KAFKA_BOOTSTRAP"] != stack_env["VOTE_KAFKA_BOOTSTRAP"]
    return {name: env[name] for name in SECURITY_VARS}


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[str]:
    name = f"sasl.test.{uuid.uuid4().hex[:10]}"
    config = {"bootstrap.servers": kafka_bootstrap}
    create_topic(config, name, 1)
    yield name
    delete_topics(config, [name])


def end_offset(kafka_bootstrap: str, topic: str) -> int:
    return end_offsets({"bootstrap.servers": kafka_bootstrap}, topic)[0]


def produce_one(conf: dict[str, str], topic: str) -> tuple[KafkaError | None, list[KafkaError]]:
    """Produce one message and flush: (its delivery error or None, the client's errors)."""
    client_errors: list[KafkaError] = []
    delivery: list[KafkaError | None] = []
    producer = Producer(
        {
            **conf,
            # Long enough for a loaded machine, short enough to fail inside the test.
            "message.timeout.ms": 30_000,
            "error_cb": client_errors.append,
        }
    )
    producer.produce(topic, b"v", on_delivery=lambda err, _msg: delivery.append(err))
    producer.flush(90)
    assert len(delivery) == 1, "the delivery report never came"
    return delivery[0], client_errors


def test_a_producer_without_credentials_is_refused(
    secure_env: dict[str, str], kafka_bootstrap: str, topic: str
):
    error, _ = produce_one({"bootstrap.servers": secure_env["VOTE_KAFKA_BOOTSTRAP"]}, topic)
    assert error is not None, "a producer without credentials got a message into Kafka"
    assert end_offset(kafka_bootstrap, topic) == 0


def test_a_producer_with_a_wrong_password_is_refused(
    secure_env: dict[str, str], kafka_bootstrap: str, topic: str, tmp_path: Path
):
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password")
    conf = {
        "bootstrap.servers": secure_env["VOTE_KAFKA_BOOTSTRAP"],
        **client_config({**secure_env, "VOTE_KAFKA_SASL_PASSWORD_FILE": str(wrong)}),
    }
    error, client_errors = produce_one(conf, topic)
    assert error is not None
    assert KafkaError._AUTHENTICATION in {e.code() for e in client_errors}, client_errors
    assert end_offset(kafka_bootstrap, topic) == 0


def test_a_producer_with_the_stack_credentials_gets_in(
    secure_env: dict[str, str], kafka_bootstrap: str, topic: str
):
    # The same call, with the settings as `stack env --secure` gives them: the refusals
    # above are the credentials' doing, not the listener's or the topic's.
    conf = {"bootstrap.servers": secure_env["VOTE_KAFKA_BOOTSTRAP"], **client_config(secure_env)}
    assert conf["security.protocol"] == "sasl_plaintext"
    error, _ = produce_one(conf, topic)
    assert error is None, error
    assert end_offset(kafka_bootstrap, topic) == 1
