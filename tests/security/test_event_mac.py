"""Issue 15 item 5 (the event MAC): anyone who can write to Kafka cannot vote.

Each event carries HMAC-SHA256 under a rotating event key whose id travels in the event
(docs/ARCHITECTURE.md, Event schema and Trust boundaries). The processor counts what a
gateway signed and dead-letters the rest as ``unauthenticated``: no MAC, an unknown or
revoked key, a wrong MAC, or a field changed after signing.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import msgspec
import psycopg
import pytest

from core import keyset
from core.event import VoteEvent, encode, seal
from gateway import admin
from gateway.config import GatewaySettings
from tests.integration.processor_harness import Harness

pytestmark = pytest.mark.integration


def _event(election: str, voter: str) -> VoteEvent:
    return VoteEvent(
        2, f"mac-{uuid.uuid4().hex}", election, voter, "a", int(time.time() * 1e6), "gw"
    )


def _rejection(conn: psycopg.Connection, topic: str, offset: int) -> str | None:
    row = conn.execute(
        "SELECT reason FROM vote_rejections WHERE election_id = '' AND vote_id = %s",
        (f"kafka:{topic}:0:{offset}",),
    ).fetchone()
    return None if row is None else row[0]


def test_only_events_a_gateway_signed_are_counted(tmp_path: Any, harness: Harness) -> None:
    settings = msgspec.structs.replace(
        GatewaySettings(stack_dir=str(tmp_path)),
        event_keys_file=os.path.join(tmp_path, "keys", "event_keys.json"),
    )
    admin.init_keys(settings)
    old = keyset.load(settings.event_keys_file).signing()
    admin.init_keys(settings, rotate=True)  # old is retired: it still verifies
    new = keyset.load(settings.event_keys_file).signing()
    assert new.kid != old.kid
    stranger = keyset.Key(new.kid, os.urandom(32), keyset.ACTIVE)  # right kid, wrong secret
    unknown = keyset.Key("ev-999", os.urandom(32), keyset.ACTIVE)

    topic = harness.topic(1)
    election = harness.election(("a", "b"))
    env = harness.env(topic, dlq_topic=harness.topic(1, prefix="dlq"))
    env["VOTE_EVENT_KEYS_FILE"] = settings.event_keys_file
    service = harness.start(env)

    signed_new = seal(_event(election, "mac-voter-1"), new)
    signed_old = seal(_event(election, "mac-voter-2"), old)
    tampered = bytearray(seal(_event(election, "mac-voter-3"), new))
    tampered[tampered.index(b"mac-voter-3") + 10] ^= 0x01  # mac-voter-2 after signing
    payloads = [
        signed_new,  # 0: counted
        signed_old,  # 1: counted (retired keys still verify)
        encode(msgspec.structs.replace(_event(election, "mac-voter-4"), v=1)),  # 2: no MAC
        seal(_event(election, "mac-voter-5"), stranger),  # 3: wrong MAC
        seal(_event(election, "mac-voter-6"), unknown),  # 4: unknown key
        bytes(tampered),  # 5: changed after signing
    ]
    harness.producer.send(topic, payloads, partition=0)
    harness.drain(topic, [service], timeout=120)
    with psycopg.connect(harness.pg_dsn) as conn:
        counted = conn.execute(
            "SELECT voter_id, kafka_offset FROM votes WHERE election_id = %s ORDER BY 2",
            (election,),
        ).fetchall()
        assert counted == [("mac-voter-1", 0), ("mac-voter-2", 1)]
        for offset in range(2, 6):
            assert _rejection(conn, topic, offset) == "unauthenticated", offset

    # Revoking the old key: what it signs is refused from then on, without a restart.
    admin.revoke_key(settings, old.kid)
    late = seal(_event(election, "mac-voter-7"), old)
    fresh = seal(_event(election, "mac-voter-8"), new)
    deadline = time.monotonic() + 60
    offset = 6
    while True:  # the processor notices the changed file at its next batch
        harness.producer.send(topic, [late, fresh], partition=0)
        harness.drain(topic, [service], timeout=120)
        with psycopg.connect(harness.pg_dsn) as conn:
            if _rejection(conn, topic, offset) == "unauthenticated":
                break
        assert time.monotonic() < deadline, "the revoked key still verifies"
        offset += 2
    assert service.proc.poll() is None
