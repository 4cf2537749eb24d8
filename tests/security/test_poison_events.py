"""Issue 15 item 4: no event read from Kafka stalls or crashes the processor.

Hypothesis writes arbitrary byte strings, arbitrary msgpack values and events with one
poisoned field into a real topic read by a real processor. Every message must end as a
counted vote or as a rejection row with its dead-letter record (or be a replay of an
earlier message's vote), and the partition's stored offset must reach its end.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgpack
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.event import MAX_FIELD_BYTES, MAX_RECEIVED_AT_US
from tests.integration.processor_harness import Harness

pytestmark = pytest.mark.integration

FIELDS = ("v", "vote_id", "election_id", "voter_id", "choice", "received_at_us", "gateway_id")
TEXT = ("vote_id", "election_id", "voter_id", "choice", "gateway_id")

MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)
# Maps whose keys are mostly the event's own, so some of them get far into decoding.
ARBITRARY_MAPS = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8), MSGPACK_VALUES, max_size=9
).map(msgpack.packb)
NOT_MAPS = MSGPACK_VALUES.filter(lambda v: not isinstance(v, dict)).map(msgpack.packb)
POISON_TEXT = st.sampled_from(
    [
        "",
        "x" * 3000,  # over PostgreSQL's 2,704-byte index entry limit
        "\u00e9" * (MAX_FIELD_BYTES // 2 + 1),  # under the limit in characters, over in bytes
        "nul\x00",
        "bell\x07",
        "c1\u0085",
    ]
)
POISON_TIME = st.sampled_from(
    [0, -1, 2**63, 2**64 - 1, MAX_RECEIVED_AT_US + 1, 1.5, "now"]
) | st.integers(MAX_RECEIVED_AT_US + 1, 2**64 - 1)


def _event(election: str, **override: Any) -> dict[str, Any]:
    n = uuid.uuid4().hex
    return {
        "v": 1,
        "vote_id": f"pv-{n}",
        "election_id": election,
        "voter_id": f"pvoter-{n}",
        "choice": "a",
        "received_at_us": int(time.time() * 1e6),
        "gateway_id": "poison-test",
        **override,
    }


@st.composite
def payloads(draw: st.DrawFn, election: str) -> bytes:
    kind = draw(st.sampled_from(["bytes", "map", "not_map", "text", "time", "far", "v", "ok"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "map":
        return draw(ARBITRARY_MAPS)
    if kind == "not_map":
        return draw(NOT_MAPS)
    if kind == "text":
        event = _event(election, **{draw(st.sampled_from(TEXT)): draw(POISON_TEXT)})
    elif kind == "time":
        event = _event(election, received_at_us=draw(POISON_TIME))
    elif kind == "far":  # under last_wins this would beat every later real vote
        event = _event(election, received_at_us=int((time.time() + 86400 * 365) * 1e6))
    elif kind == "v":
        event = _event(election, v=draw(st.sampled_from([0, 2, 99, -1, "1"])))
    else:
        event = _event(election)
    return msgpack.packb(event)


def _dead_letters(bootstrap: str, dlq: str) -> dict[str, str]:
    """source header -> reason header of every record on the dead-letter topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}"})
    try:
        _low, high = consumer.get_watermark_offsets(TopicPartition(dlq, 0), timeout=10)
        consumer.assign([TopicPartition(dlq, 0, 0)])
        found: dict[str, str] = {}
        read = 0
        deadline = time.monotonic() + 60
        while read < high and time.monotonic() < deadline:
            for m in consumer.consume(100, timeout=1.0):
                if m.error() is None:
                    read += 1
                    headers = dict(m.headers() or [])
                    found[headers["source"].decode()] = headers["reason"].decode()
        assert read == high, f"read {read} of {high} dead letters"
        return found
    finally:
        consumer.close()


def _ids(payload: bytes) -> tuple[str, str, str, str] | None:
    """(election_id, vote_id, voter_id, choice) if the payload names them as text."""
    try:
        event = msgpack.unpackb(payload)
        ids = tuple(event[k] for k in ("election_id", "vote_id", "voter_id", "choice"))
    except Exception:
        return None
    if all(isinstance(i, str) and "\x00" not in i for i in ids):
        return ids  # type: ignore[return-value]
    return None


def _outcome(conn: psycopg.Connection, topic: str, offset: int, payload: bytes) -> str | None:
    """How the processor settled the message at ``offset``: counted, a rejection's reason,
    or None if it left no row of its own."""
    row = conn.execute(
        "SELECT reason FROM vote_rejections WHERE election_id = '' AND vote_id = %s",
        (f"kafka:{topic}:0:{offset}",),
    ).fetchone()
    if row is not None:
        return row[0]
    ids = _ids(payload)
    if ids is None:
        return None
    row = conn.execute(
        "SELECT reason FROM vote_rejections WHERE election_id = %s AND vote_id = %s"
        " AND voter_id = %s AND choice = %s AND kafka_offset = %s AND kafka_partition = 0",
        (*ids, offset),
    ).fetchone()
    if row is not None:
        return row[0]
    row = conn.execute(
        "SELECT 1 FROM votes WHERE election_id = %s AND vote_id = %s AND kafka_offset = %s",
        (ids[0], ids[1], offset),
    ).fetchone()
    return "counted" if row is not None else None


@pytest.fixture
def poison_stack(harness: Harness) -> dict[str, Any]:
    """One topic, dead-letter topic, last_wins election and processor for all examples."""
    topic = harness.topic(1)
    dlq = harness.topic(1, prefix="dlq")
    return {
        "harness": harness,
        "topic": topic,
        "dlq": dlq,
        "election": harness.election(("a", "b"), policy="last_wins"),
        "service": harness.start(harness.env(topic, dlq_topic=dlq)),
        "sent": [],
    }


@settings(
    max_examples=12,
    deadline=None,
    # One processor and topic serve every example: the fixtures are shared on purpose.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_message_is_counted_or_dead_lettered_and_the_partition_moves_on(
    data: st.DataObject,
    pg_dsn: str,
    kafka_bootstrap: str,
    producer: Any,
    poison_stack: dict[str, Any],
) -> None:
    stack = poison_stack
    topic, dlq, election = stack["topic"], stack["dlq"], stack["election"]
    batch = data.draw(st.lists(payloads(election), min_size=1, max_size=25))
    producer.send(topic, batch, partition=0)
    sent: list[bytes] = stack["sent"]
    sent += batch
    stack["harness"].drain(topic, [stack["service"]], timeout=120)

    dead = _dead_letters(kafka_bootstrap, dlq)
    with psycopg.connect(pg_dsn) as conn:
        for offset, payload in enumerate(sent):
            outcome = _outcome(conn, topic, offset, payload)
            if outcome is None:
                # Only a replay of an earlier message's vote may leave no row of its own.
                ids = _ids(payload)
                assert ids is not None, (offset, payload)
                assert ids in {_ids(p) for p in sent[:offset]}, (offset, payload)
            elif outcome != "counted":
                assert dead.get(f"{topic}:0:{offset}") == outcome, (offset, payload, outcome)
