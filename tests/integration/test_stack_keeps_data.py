"""``deploy/local/stack up`` never destroys data (issue 13).

A plain ``up`` after a broker of the 3-node cluster was killed must restart that broker
into the same cluster, with the topics it holds; asking ``up`` for another node count is
refused, and only ``stack reset`` may replace the cluster.
"""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bench.chaos.cluster import NODES, Cluster
from bench.kafka import create_topic
from bench.procs import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]

MESSAGES = 200


def _produce(bootstrap: str, topic: str) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(MESSAGES):
        producer.produce(topic, value=f"m{i}".encode(), key=f"k{i}".encode())
    assert producer.flush(120) == 0, "messages not delivered"


def _read_all(bootstrap: str, topic: str) -> list[bytes]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"keep-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        seen: list[bytes] = []

        def all_read() -> bool:
            for m in consumer.consume(500, timeout=1.0):
                if m.error() is None:
                    seen.append(m.value())
            return len(seen) >= MESSAGES

        wait_until(f"{MESSAGES} messages of {topic}", all_read, 180, lambda: len(seen))
        return seen
    finally:
        consumer.close()


def test_plain_up_after_a_broker_kill_restarts_the_same_cluster_with_its_data(
    three_node_cluster: Cluster,
) -> None:
    cluster = three_node_cluster
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    topic = f"keep.{uuid.uuid4().hex[:10]}"
    create_topic({"bootstrap.servers": cluster.bootstrap}, topic, 3, NODES, timeout_s=60)
    _produce(cluster.bootstrap, topic)
    cluster_id = cluster.cluster_id()

    victim = cluster.leader_of(topic, 0)
    cluster.kill_broker(victim)
    # What the README suggests for starting what is not running.
    up = cluster.stack("up")
    assert up.returncode == 0, up.stderr
    assert cluster.broker_pid(victim) is not None

    assert cluster.cluster_id() == cluster_id
    wait_until(
        "all brokers registered",
        lambda: len(admin.list_topics(timeout=30).brokers) == NODES,
        180,
    )
    assert sorted(_read_all(cluster.bootstrap, topic)) == sorted(
        f"m{i}".encode() for i in range(MESSAGES)
    )

    # Another node count is refused, and the cluster keeps running as it was.
    other = cluster.stack("up", "--kafka-nodes", "1")
    assert other.returncode != 0
    assert "stack reset --kafka-nodes 1" in other.stderr, other.stderr
    assert cluster.cluster_id() == cluster_id
    admin.delete_topics([topic])
