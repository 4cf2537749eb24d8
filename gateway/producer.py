"""The Kafka side of the durability path: one idempotent librdkafka producer per worker.

librdkafka calls delivery callbacks only from ``poll()``. A dedicated thread polls and
collects the reports; each poll hands the whole batch to the event loop with one
``call_soon_threadsafe``, instead of one cross-thread hop per vote.

An idempotent producer can deliver nothing until a broker has given it a producer id,
which a broker that has just started may refuse for seconds ("coordinator load in
progress"). librdkafka's statistics, once a second, say whether it has one
(``producer_id_assigned``, a /readyz check), so traffic is not sent to a worker that
could only spill it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import msgspec
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from gateway import metrics

log = logging.getLogger("gateway.producer")


class QueueFull(Exception):
    """librdkafka's local queue is full: the vote must go to the spill right away."""


STATS_INTERVAL_MS = 1000


class _Idempotence(msgspec.Struct):
    idemp_state: str


class _Stats(msgspec.Struct):
    """The part of librdkafka's statistics JSON read here (its STATISTICS.md, "eos")."""

    eos: _Idempotence | None = None


_STATS_DECODER = msgspec.json.Decoder(_Stats)

# (the vote's future, the delivery error or None, librdkafka's produce-to-report seconds)
Report = tuple[asyncio.Future, KafkaError | None, float]


class KafkaSink:
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        loop: asyncio.AbstractEventLoop,
        *,
        linger_ms: float = 2.0,
        compression: str = "lz4",
        queue_max_messages: int = 200_000,
        extra: dict[str, object] | None = None,
    ) -> None:
        conf: dict[str, object] = {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,  # implies acks=all, bounded in-flight, no reorder
            "acks": "all",
            "compression.type": compression,
            "linger.ms": linger_ms,
            "queue.buffering.max.messages": queue_max_messages,
            # A vote not confirmed in 2 minutes has long been spilled; fail it so the
            # queue cannot hold stale work forever. The spill copy is what counts.
            "message.timeout.ms": 120_000,
            "socket.keepalive.enable": True,
            # Only for producer_id_assigned: the JSON is a few KB, parsed on the poll thread.
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "error_cb": self._on_client_error,
        }
        conf.update(extra or {})
        self.topic = topic
        self._loop = loop
        self._producer = Producer(conf)
        self._reports: list[Report] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        # Loop time since which Kafka is in trouble (None: trusted): it missed a spill
        # deadline, failed a delivery, refused a message or lost every broker. The next
        # confirmed delivery clears it. While set, votes go straight to the spill.
        self.trouble_since: float | None = None
        self.metadata_ok = False
        # librdkafka's idempotence state (``eos.idemp_state`` of its statistics); the
        # producer can deliver only in "Assigned". None until the first statistics.
        self.idempotence_state: str | None = None

    @property
    def producer_id_assigned(self) -> bool:
        """A broker has given this producer its id: deliveries can be confirmed."""
        return self.idempotence_state == "Assigned"

    def start(self) -> None:
        self._thread.start()

    def produce(self, key: bytes, value: bytes) -> asyncio.Future:
        """Queue one event; the returned future resolves to ``None`` or the ``KafkaError``."""
        future = self._loop.create_future()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            # Look the list up now, not at produce time: the poll thread hands the list
            # to the loop and starts a new one, and a report for an older message (one
            # that waited out a Kafka stall) must land in the list that is still open.
            self._reports.append((future, err, msg.latency() or 0.0))

        try:
            self._producer.produce(self.topic, value, key, on_delivery=on_delivery)
        except BufferError:
            raise QueueFull from None
        except KafkaException as exc:
            log.warning("produce failed", extra={"error": str(exc)})
            raise QueueFull from exc
        return future

    def mark_trouble(self, reason: str) -> None:
        """Kafka is not to be waited for until it confirms a delivery again."""
        if self.trouble_since is None:
            log.warning(
                "kafka in trouble: spilling until it confirms a delivery again",
                extra={"reason": reason},
            )
        self.trouble_since = self._loop.time()

    def _on_client_error(self, err: KafkaError) -> None:
        # Runs on the poll thread, inside poll(); an attribute store is atomic under the GIL.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.mark_trouble(str(err))
        else:
            log.info("kafka client error", extra={"error": str(err)})

    def _on_stats(self, stats_json: str) -> None:
        # Runs on the poll thread, inside poll(); an attribute store is atomic under the GIL.
        try:
            stats = _STATS_DECODER.decode(stats_json)
        except msgspec.DecodeError:
            return
        self.idempotence_state = stats.eos.idemp_state if stats.eos else None

    def _poll_forever(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.005)
            if self._reports:
                # Callbacks run inside poll() on this thread, so swapping the list here
                # cannot race with them.
                batch, self._reports = self._reports, []
                try:
                    self._loop.call_soon_threadsafe(self._resolve, batch)
                except RuntimeError:  # loop closed during shutdown
                    return

    def _resolve(self, batch: list[Report]) -> None:
        ok = False
        observe_latency = metrics.kafka_delivery.observe
        for future, err, latency in batch:
            if err is not None:
                metrics.kafka_delivery_errors_total.inc()
            else:
                ok = True
                observe_latency(latency)
            if not future.done():
                future.set_result(err)
        if ok and self.trouble_since is not None:
            log.info("kafka confirms deliveries again; producing directly")
            self.trouble_since = None

    def check_metadata(self, timeout: float = 5.0) -> bool:
        """Blocking metadata probe for /readyz (run it in a thread)."""
        try:
            md = self._producer.list_topics(self.topic, timeout=timeout)
            topic = md.topics.get(self.topic)
            self.metadata_ok = topic is not None and topic.error is None and bool(md.brokers)
        except KafkaException:
            self.metadata_ok = False
        return self.metadata_ok

    def close(self, flush_timeout: float = 10.0) -> int:
        """Flush what is queued, stop polling; returns how many messages never left."""
        remaining = self._producer.flush(flush_timeout)
        self._stop.set()
        self._thread.join(timeout=2)
        if self._reports:
            # close() runs off the loop (in a thread): futures are resolved on the loop.
            batch, self._reports = self._reports, []
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(self._resolve, batch)
        return remaining
