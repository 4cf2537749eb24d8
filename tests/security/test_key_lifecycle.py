"""Issue 15 item 7: keys rotate, retire and revoke, and a running gateway follows its key
files without a restart (docs/ARCHITECTURE.md, Trust boundaries)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgpack
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from bench.procs import wait_until
from core import keyset
from gateway import admin
from gateway._fast import reference
from tests.integration.gateway_fixtures import REPO, GatewayStack, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keyed(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    home = tmp_path_factory.mktemp("keys")
    with running_gateway(home, pg_dsn, kafka_bootstrap, redis_url) as stack:
        yield stack


def _status(stack: GatewayStack, kid_alg: str = "HS256") -> int:
    """The answer to a fresh vote signed with the issuer's newest active key of kid_alg."""
    vote_id = str(uuid.uuid4())
    token = stack.token(f"kl-{vote_id[:8]}", jti=vote_id, alg=kid_alg)
    return stack.vote("", vote_id=vote_id, token=token, timeout=15).status_code


def _last_event_kid(stack: GatewayStack) -> str:
    consumer = Consumer(
        {"bootstrap.servers": stack.kafka_bootstrap, "group.id": f"kid-{uuid.uuid4().hex}"}
    )
    try:
        newest: tuple[int, str] = (-1, "")
        for p in consumer.list_topics(stack.topic, timeout=10).topics[stack.topic].partitions:
            _low, high = consumer.get_watermark_offsets(TopicPartition(stack.topic, p), timeout=10)
            if high == 0:
                continue
            consumer.assign([TopicPartition(stack.topic, p, high - 1)])
            for m in consumer.consume(1, timeout=10):
                if m.error() is None and m.timestamp()[1] > newest[0]:
                    newest = (m.timestamp()[1], msgpack.unpackb(m.value())["kid"])
        return newest[1]
    finally:
        consumer.close()


def test_rotate_retire_and_revoke_reach_a_running_gateway(keyed: GatewayStack) -> None:
    stack = keyed
    settings = stack.settings
    gateway_pid = stack.services["gateway"].proc.pid
    old_token_vote = str(uuid.uuid4())
    old_token = stack.token("kl-old", jti=old_token_vote)  # signed with hs-1
    assert _status(stack) == 202
    assert _last_event_kid(stack) == "ev-1"

    # Rotation: new token kids and a new event key; the gateway picks them up.
    admin.init_keys(settings, rotate=True)
    wait_until("a token of the new kid accepted", lambda: _status(stack) == 202, 30)
    wait_until(
        "events signed with the new event key",
        lambda: _status(stack) == 202 and _last_event_kid(stack) == "ev-2",
        30,
    )

    # Retiring hs-1: the issuer stops signing with it; its tokens still verify.
    admin.retire_key(settings, "hs-1")
    issuer = json.loads(Path(stack.issuer_file).read_text())
    assert {k["kid"]: k.get("status", "active") for k in issuer["keys"]}["hs-1"] == "retired"
    # Revoking it: its tokens are refused from then on.
    admin.revoke_key(settings, "hs-1")

    def refused() -> bool:
        answer = stack.vote("", vote_id=old_token_vote, token=old_token, timeout=15)
        return answer.status_code == 401 and answer.json()["reason"] == "unknown_kid"

    wait_until("a revoked kid refused", refused, 30)
    assert _status(stack) == 202  # hs-2 still good
    # Revoking the event key that signs would leave nothing to sign with: refused.
    with pytest.raises(ValueError):
        admin.revoke_key(settings, "ev-2")
    assert stack.services["gateway"].proc.pid == gateway_pid, "the gateway was restarted"
    assert stack.services["gateway"].proc.poll() is None


def test_a_receipt_names_its_key_and_verifies_with_it(keyed: GatewayStack) -> None:
    stack = keyed
    vote_id = str(uuid.uuid4())
    voter = f"kl-r-{vote_id[:8]}"
    answer = stack.vote(voter, vote_id=vote_id, timeout=15)
    assert answer.status_code == 202, answer.text
    kid, signature = answer.json()["receipt"].split(".", 1)
    key = keyset.read_secret(stack.settings.receipt_key_file)
    assert kid == keyset.key_id("rk", key)
    received_at_us = stored_received_at_us(stack, vote_id)
    assert signature == reference.sign_receipt(
        key, vote_id, stack.election, voter, "alice", received_at_us
    )


def stored_received_at_us(stack: GatewayStack, vote_id: str) -> int:
    query = (
        "SELECT (extract(epoch FROM received_at) * 1000000)::bigint FROM votes"
        " WHERE election_id = %s AND vote_id = %s"
    )
    found: list[int] = []

    def stored() -> bool:
        with psycopg.connect(stack.pg_dsn) as conn:
            row = conn.execute(query, (stack.election, vote_id)).fetchone()
        if row is not None:
            found.append(row[0])
        return row is not None

    wait_until("the vote stored", stored, 60)
    return found[0]


def test_the_receipt_key_must_be_long_enough(tmp_path: Path, keyed: GatewayStack) -> None:
    stack = keyed
    short = tmp_path / "receipt.key"
    short.write_bytes(os.urandom(16))
    result = subprocess.run(
        [sys.executable, "-m", "gateway"],
        cwd=REPO,
        env={**stack.env, "VOTE_RECEIPT_KEY_FILE": str(short), "VOTE_HTTP_PORT": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "shorter than 32 bytes" in result.stderr + result.stdout
