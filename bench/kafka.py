"""Kafka topics for the harness and the tests: create one and wait for its leaders, read
where each partition ends. ``config`` is librdkafka's (``bench.env.kafka_config``, or
just ``{"bootstrap.servers": ...}``)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create_topic(
    config: dict[str, str],
    name: str,
    partitions: int,
    replication_factor: int = -1,
    timeout_s: float = 30.0,
) -> None:
    """Create ``name`` and return once every partition has a leader (before that, the
    first produce to it may stall). ``replication_factor`` -1: the broker's default."""
    admin = AdminClient(config)
    admin.create_topics([NewTopic(name, partitions, replication_factor=replication_factor)])[
        name
    ].result(timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        md = admin.list_topics(name, timeout=10).topics.get(name)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {name} has no leader for every partition")
        time.sleep(0.2)


def delete_topics(config: dict[str, str], names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Best effort: the names are unique, a leftover harms nobody."""
    names = list(names)
    if not names:
        return
    futures = AdminClient(config).delete_topics(names, operation_timeout=timeout_s)
    for future in futures.values():
        with contextlib.suppress(Exception):
            future.result(timeout=timeout_s)


def watermarks(
    config: dict[str, str], topic: str, timeout_s: float = 30.0
) -> dict[int, tuple[int, int]]:
    """partition → (its low watermark, its high watermark: the offset the next message
    will get). Asked again until ``timeout_s`` while Kafka answers with an error: for a
    while after a broker restarts, a partition's leader moves and the old one says "not
    leader"."""
    consumer = Consumer({**config, "group.id": f"probe-{uuid.uuid4().hex}"})
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                md = consumer.list_topics(topic, timeout=timeout_s).topics[topic]
                return {
                    p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
                    for p in md.partitions
                }
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        consumer.close()


def end_offsets(config: dict[str, str], topic: str, timeout_s: float = 30.0) -> dict[int, int]:
    """partition → its high watermark (``watermarks``)."""
    return {p: high for p, (_low, high) in watermarks(config, topic, timeout_s).items()}
