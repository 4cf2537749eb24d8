"""Prometheus metrics of the gateway (DESIGN §8).

granian runs several worker processes, so these use prometheus_client's multiprocess
mode: ``python -m gateway`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before any worker imports this module, and serves the merged view on the metrics port.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Buckets sized for an ack budget of well under 100 ms.
_ACK_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                0.075, 0.1, 0.25, 0.5, 1.0, 2.5)

requests_total = Counter("vote_requests_total", "HTTP requests answered, by status code", ["code"])
ack_seconds = Histogram(
    "vote_ack_seconds",
    "Time from request received to 202, by how the vote was made durable",
    ["durability"],
    buckets=_ACK_BUCKETS,
)
spill_events = Gauge(
    "vote_spill_events",
    "Events waiting in the local RocksDB spill for Kafka",
    multiprocess_mode="livesum",
)
spill_writes_total = Counter("vote_spill_writes_total", "Events written to the spill")
# librdkafka's own time from produce() to the delivery report (the message's latency()):
# Kafka's share of vote_ack_seconds{durability="kafka"}. When the ack tail grows, this
# tells a slow broker (it grows too) from a busy worker (it does not).
kafka_delivery_seconds = Histogram(
    "vote_kafka_delivery_seconds",
    "Time from produce to Kafka's delivery report, as librdkafka measures it",
    buckets=_ACK_BUCKETS,
)
kafka_delivery_errors_total = Counter(
    "vote_kafka_delivery_errors_total", "Delivery reports that carried an error"
)
rate_limited_total = Counter(
    "vote_rate_limited_total", "Requests refused by a rate limit", ["scope"]
)
token_rejections_total = Counter(
    "vote_token_rejections_total", "Tokens refused, by reason", ["reason"]
)

ack_kafka = ack_seconds.labels("kafka")
ack_spill = ack_seconds.labels("spill")

# A collection of the oldest generation stops every request in flight; operators need to
# see it to tell a GC pause from a slow Kafka in the ack tail.
gc_pause_seconds = Histogram(
    "vote_gc_pause_seconds",
    "Pauses of Python's cyclic garbage collector in the gateway workers, by generation",
    ["generation"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)


def observe_gc_pauses() -> None:
    """Time every collection of this process into ``vote_gc_pause_seconds``."""
    import gc
    import time

    by_generation = [gc_pause_seconds.labels(str(g)) for g in range(3)]
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
