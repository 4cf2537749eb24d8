"""Prometheus metrics of the gateway (docs/ARCHITECTURE.md, Metrics).

granian runs several worker processes, so these use prometheus_client's multiprocess
mode: ``python -m gateway`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before any worker imports this module, and serves the merged view on the metrics port.

The few updates every vote makes go through ``Buffered*`` wrappers, which count in plain
Python and add their counts to the shared values once a second (``flush``).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

# How often the app adds the buffered counts to the shared values: what a scrape can lag.
FLUSH_INTERVAL_S = 1.0

# Buckets sized for an ack budget of well under 100 ms.
_ACK_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

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
# What requests cost PostgreSQL: a flood of made-up election ids shows here first.
postgres_queries_total = Counter(
    "vote_postgres_queries_total", "Queries the gateway sent to PostgreSQL, by query", ["query"]
)
election_lookups_refused_total = Counter(
    "vote_election_lookups_refused_total",
    "Election lookups refused because the most allowed at once were in flight",
)


class BufferedCounter:
    """A counter child's increments, held in this process until ``flush``.

    In multiprocess mode every ``inc`` of prometheus_client writes an mmap'd file (pid
    check, struct pack, two stores), which costs far more than counting in a Python int
    (bench/README.md has the figures); the loop adds the total once a second. Only for
    metrics updated from the event loop's thread: there is no lock.
    """

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pending = 0
        _BUFFERS.append(self)

    def inc(self) -> None:
        self._pending += 1

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._child.inc(pending)


class BufferedHistogram:
    """A histogram child's observations, held in this process until ``flush``.

    Finds the bucket as ``Histogram.observe`` does (the first upper bound >= the value)
    and on ``flush`` adds each bucket's count and the sum to the child's values —
    prometheus_client 0.26's ``_upper_bounds``, ``_buckets`` and ``_sum``.
    tests/unit/test_gateway_metrics_buffer.py checks the result against ``observe``.
    """

    __slots__ = ("_bounds", "_child", "_counts", "_sum")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._bounds = list(child._upper_bounds)  # ends with +inf: every value has a bucket
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        _BUFFERS.append(self)

    def observe(self, amount: float) -> None:
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount

    def flush(self) -> None:
        if not any(self._counts):
            return
        counts, self._counts = self._counts, [0] * len(self._bounds)
        total, self._sum = self._sum, 0.0
        self._child._sum.inc(total)
        for bucket, n in zip(self._child._buckets, counts, strict=True):
            if n:
                bucket.inc(n)


_BUFFERS: list[BufferedCounter | BufferedHistogram] = []


def flush() -> None:
    """Add every buffered count to the shared values (call it on the event loop)."""
    for buffer in _BUFFERS:
        buffer.flush()


ack_kafka = BufferedHistogram(ack_seconds.labels("kafka"))
ack_spill = BufferedHistogram(ack_seconds.labels("spill"))
kafka_delivery = BufferedHistogram(kafka_delivery_seconds)

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

    # Buffered: in multiprocess mode every prometheus_client value shares one
    # non-reentrant lock, and a collection can start inside a metric write that holds it
    # (any allocation may trigger one), on whichever thread allocates. Observing straight
    # into the histogram from here deadlocked that thread. The buffer takes no lock (a
    # pause racing a flush on another thread may go uncounted); ``flush`` publishes it.
    by_generation = [BufferedHistogram(gc_pause_seconds.labels(str(g))) for g in range(3)]
    started = 0.0

    def callback(phase: str, info: dict[str, int]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(callback)
