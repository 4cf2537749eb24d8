"""One member of the consumer group: the consume → transaction → cache loop.

This module ties the pieces together: batches from Kafka, their transaction in
``processor.store``, dead letters through ``processor.deadletter`` and the Redis
tallies through ``processor.cache`` after the commit.

Offsets live in PostgreSQL (``consumer_offsets``), written in each batch's
transaction; Kafka's own committed offsets are never used. On assignment the consumer
is positioned at the stored offsets (or the beginning); on revoke/lost nothing needs
to be undone because an uncommitted batch simply never happened, and the fence in
``Store.apply_batch`` stops a batch that a zombie still holds. A member runs batches
one at a time: its rebalance callbacks are served inside its own ``consume()``, i.e.
never while one of its batch transactions is open.

``python -m processor`` runs several members in threads of one process
(``processor.members``, ``VOTE_PROCESSOR_MEMBERS``): each ``Processor`` has its own
consumer, PostgreSQL connection, Redis client and dead-letter producer and shares
nothing with the others but the module-level metrics, so they are exactly as
independent as members in separate processes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka import Message as KafkaMessage

from core import failpoints, keyset
from core.elections import Election
from core.jsonlog import FieldsAdapter
from processor import metrics
from processor.cache import TallyCache, TallyPublisher
from processor.deadletter import DeadLetterError, DeadLetters
from processor.policy import EventAuth, Message, Plan, decode_all, timestamp_us
from processor.settings import ProcessorSettings
from processor.store import BatchResult, Fenced, Store, VoteIdRace

log = logging.getLogger("processor")

T = TypeVar("T")

_ELECTIONS_TTL_S = 5.0
_LATENCY_SAMPLES = 1000


class Processor:
    """One member of the ``vote-processor`` consumer group.

    ``member`` numbers the members that one process runs (``processor.members``); it
    goes into the Kafka ``client.id`` and into every log record.
    """

    def __init__(self, settings: ProcessorSettings, member: int = 0) -> None:
        self.s = settings
        self.member = member
        self.log = FieldsAdapter(log, {"member": member})
        self.topic = settings.vote_topic
        self._stop = False
        self._assigned: set[int] = set()
        self._next: dict[int, int] = {}  # committed next offset per assigned partition
        self._gap_ok: dict[int, int] = {}
        self._rebalances = 0
        self._target = settings.processor_batch_max_messages
        self._elections: dict[str, Election] = {}
        self._elections_at = 0.0
        self._last_lag = 0.0
        # Event keys are re-read when their file changes (a rotation, a revocation).
        self._keys_watch = keyset.FileWatch(settings.event_keys_path)
        self.auth = EventAuth(
            keyset.load(settings.event_keys_path), settings.processor_accept_unsigned_events
        )
        self.store = Store(
            settings.pg_dsn,
            settings.processor_group,
            self.topic,
            lookup_threshold=settings.processor_lookup_threshold,
            cluster=settings.processor_cluster,
            state=settings.processor_lookup == "state",
            state_dir=settings.processor_state_dir or None,
        )
        self.tallies = TallyPublisher(
            TallyCache(settings.redis_url), self.store.shard_tallies, self.log
        )
        self.dead_letters = DeadLetters(
            settings.kafka_bootstrap,
            settings.processor_dlq_topic,
            self.topic,
            settings.kafka_client_config(),
        )
        self.consumer = Consumer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "group.id": settings.processor_group,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "client.id": f"vote-processor-{os.getpid()}-{member}",
                # Short enough that a killed member's partitions move on quickly.
                "session.timeout.ms": 10000,
                # Heartbeats are also how a member learns that the group rebalances
                # (another member joined or left): the partitions move within this.
                "heartbeat.interval.ms": 500,
                "max.poll.interval.ms": 300000,
                "fetch.max.bytes": 64 * 1024 * 1024,
                "max.partition.fetch.bytes": 8 * 1024 * 1024,
                "queued.min.messages": 200000,
                # Let the broker gather up to 100 ms of votes per fetch. With the default
                # (answer as soon as one byte is there) a processor that keeps up asks
                # again for every few votes, which costs the broker CPU the gateway
                # needs (bench/README.md). 100 ms is under the batch's own time bound
                # (processor_batch_max_ms), so results are not made later by it.
                "fetch.wait.max.ms": 100,
                "fetch.min.bytes": 1 << 20,
                **settings.kafka_client_config(),
            }
        )

    # -- lifecycle ---------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        """Finish the current batch, then leave the group and exit."""
        self._stop = True

    def run(self) -> None:
        self.consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        self.log.info(
            "processor started", extra={"topic": self.topic, "group": self.s.processor_group}
        )
        try:
            while not self._stop:
                messages = self._collect()
                if messages:
                    self._process(messages)
                else:
                    self._idle()
        finally:
            self.close()
            self.log.info("processor stopped")

    def close(self) -> None:
        """Leave the group and release the connections (the end of ``run``)."""
        # close() leaves the group at once, so the partitions move without waiting
        # for the session timeout.
        self.consumer.close()
        self.dead_letters.close()
        self.store.close()
        self.tallies.close()

    # -- rebalance callbacks -------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ids = [tp.partition for tp in partitions]
        # Another member may have moved these partitions on since we last held them.
        self.store.forget_state(ids)
        self._before_assign(consumer, ids)
        stored = self._retry_db(lambda: self.store.stored_offsets(ids))
        stored = self._rewind_past_log_end(consumer, stored)
        # The previous owner may have died between its commit and its Redis write, and
        # those partitions may see no new vote for a long time: rewrite their elections'
        # tallies from PostgreSQL once (absolute, versioned values; see processor/cache.py).
        self.tallies.mark_stale(self._retry_db(lambda: self.store.elections_in_partitions(ids)))
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
            if tp.partition in stored:
                self._next[tp.partition] = stored[tp.partition]
        consumer.assign(partitions)
        self._assigned = set(ids)
        self._rebalances += 1
        self._gap_ok.clear()
        self.log.info("partitions assigned", extra={"partitions": ids, "offsets": stored})

    def _before_assign(self, consumer: Consumer, partitions: list[int]) -> None:
        """Called first on assignment; a takeover stores its start offsets here."""

    def _rewind_past_log_end(self, consumer: Consumer, stored: dict[int, int]) -> dict[int, int]:
        """Stored offsets beyond a partition's log end belong to an older incarnation of
        the topic (deleted and recreated, or a broker whose data was wiped). Skipping to
        them would silently drop the first messages of the new log, so start that
        partition again from its first message instead: ``votes`` dedups by vote_id,
        so re-reading is exactly-once."""
        rewind: dict[int, int] = {}
        for p, offset in stored.items():
            try:
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), timeout=30
                )
            except KafkaException as exc:
                self.log.warning("no watermarks", extra={"partition": p, "error": str(exc)})
                continue
            if 0 <= high < offset:
                rewind[p] = max(low, 0)
        if rewind:
            self.log.error(
                "stored offsets are beyond the log end: the topic was recreated or lost"
                " data; re-reading those partitions from their start",
                extra={"stored": {p: stored[p] for p in rewind}, "restart_at": rewind},
            )
            metrics.OFFSET_REWINDS.inc(len(rewind))
            self._retry_db(lambda: self.store.rewind_offsets(rewind))
            stored = {**stored, **rewind}
        return stored

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._drop([tp.partition for tp in partitions])
        consumer.unassign()
        self.log.info(
            "partitions revoked", extra={"partitions": [tp.partition for tp in partitions]}
        )

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may already own them; the offset fence makes sure that a batch
        # we still hold for them can't be applied twice.
        self._drop([tp.partition for tp in partitions])
        consumer.unassign()
        self.log.warning(
            "partitions lost", extra={"partitions": [tp.partition for tp in partitions]}
        )

    def _drop(self, ids: list[int]) -> None:
        self.store.forget_state(ids)
        self._assigned.difference_update(ids)
        self._rebalances += 1
        self._gap_ok.clear()
        for p in ids:
            self._next.pop(p, None)
            with contextlib.suppress(KeyError):
                metrics.LAG.remove(str(p))

    # -- batching ----------------------------------------------------------------------

    def _collect(self) -> list[KafkaMessage]:
        """Messages up to the adaptive count, the byte bound or the time bound."""
        gen = self._rebalances
        # Wait for the first message alone: consume(n, timeout) would hold it until n
        # messages or the timeout, and at a moderate rate that timeout (not the batch's
        # time bound) would decide how late votes show up in the results.
        first = self.consumer.poll(0.5)
        if first is None:
            return []
        msgs = self._usable([first])
        nbytes = sum(len(m.value() or b"") for m in msgs)
        deadline = time.monotonic() + self.s.processor_batch_max_ms / 1000
        while len(msgs) < self._target and nbytes < self.s.processor_batch_max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop:
                break
            more = self._usable(
                self.consumer.consume(num_messages=self._target - len(msgs), timeout=remaining)
            )
            msgs += more
            nbytes += sum(len(m.value() or b"") for m in more)
        if self._rebalances != gen:
            # Assignment changed while collecting: keep only partitions still ours, and
            # drop the copies re-fetched from the stored offsets.
            seen: set[tuple[int, int]] = set()
            kept = []
            for m in msgs:
                key = (m.partition(), m.offset())
                if key[0] in self._assigned and key not in seen:
                    seen.add(key)
                    kept.append(m)
            msgs = kept
        msgs.sort(key=lambda m: (m.partition(), m.offset()))
        return msgs

    def _usable(self, got: list[KafkaMessage]) -> list[KafkaMessage]:
        out = []
        for m in got:
            err = m.error()
            if err is None:
                out.append(m)
            elif err.code() != KafkaError._PARTITION_EOF:
                if err.fatal():
                    raise KafkaException(err)
                self.log.warning("consumer error", extra={"error": str(err)})
        return out

    # -- one batch ---------------------------------------------------------------------

    def _process(self, kmsgs: list[KafkaMessage]) -> None:
        first: dict[int, int] = {}
        nxt: dict[int, int] = {}
        messages: list[Message] = []
        for m in kmsgs:
            p, o = m.partition(), m.offset()
            first.setdefault(p, o)
            nxt[p] = o + 1
            messages.append(Message(p, o, m.value(), m.key(), timestamp_us(m.timestamp())))
        self._reload_keys()
        decoded = decode_all(messages, self.auth)
        self._refresh_elections(
            force={d.event.election_id for d in decoded if d.event is not None}
            - self._elections.keys()
        )
        started = time.monotonic()
        result: BatchResult | None = None
        backoff = 0.2
        while result is None:
            try:
                failpoints.hit("processor.before_copy")
                result = self.store.apply_batch(
                    decoded,
                    self._elections,
                    first,
                    nxt,
                    dict(self._gap_ok),
                    after_copy=lambda: failpoints.hit("processor.after_copy"),
                    # Inside the transaction: never a commit without its dead letters.
                    before_commit=lambda plan: self.dead_letters.send(plan.dead_letters),
                )
            except Fenced as f:
                metrics.COMMITS.labels("fenced").inc()
                self.log.warning("batch fenced", extra={"stored": f.stored, "first": first})
                self._reseek(first, f.stored)
                return
            except VoteIdRace as exc:
                metrics.COMMITS.labels("race").inc()
                self.log.info("vote_id race, retrying batch", extra={"detail": str(exc)})
            except (psycopg.Error, KafkaException, DeadLetterError) as exc:
                metrics.COMMITS.labels("error").inc()
                self.log.error("batch failed, retrying", extra={"error": repr(exc)})
                if self._stop:
                    return  # nothing was committed; the next owner starts at `first`
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                if isinstance(exc, psycopg.OperationalError) or self.store.conn.closed:
                    self._retry_db(self.store.reconnect)
        db_seconds = time.monotonic() - started
        failpoints.hit("processor.after_commit")
        metrics.COMMITS.labels("ok").inc()
        metrics.BATCHES.inc()
        metrics.BATCH_SECONDS.observe(db_seconds)
        metrics.BATCH_SIZE.observe(len(kmsgs))
        plan = result.plan
        for outcome, n in plan.outcomes.items():
            metrics.ROWS.labels(outcome).inc(n)
        self._next.update(nxt)
        self._commit_to_kafka(nxt)
        self.tallies.publish(result, self._elections.keys())
        self._observe_latency(plan)
        self._adapt(len(kmsgs), db_seconds)
        self._update_lag(force=True)
        self.log.debug("batch committed", extra={"messages": len(kmsgs), "seconds": db_seconds})

    def _commit_to_kafka(self, nxt: dict[int, int]) -> None:
        """Tell Kafka where we are, after PostgreSQL has it. Never read back: it is for
        MirrorMaker 2's checkpoints (the other region translates them into where a
        takeover of our mirrored topic starts) and for Kafka's lag tools."""
        if not self.s.processor_cluster:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(self.topic, p, o) for p, o in nxt.items()],
                asynchronous=True,
            )
        except KafkaException as exc:  # advisory only: the next batch commits again
            self.log.debug("kafka commit failed", extra={"error": str(exc)})

    def _reload_keys(self) -> None:
        if not self._keys_watch.changed():
            return
        try:
            keys = keyset.load(self._keys_watch.path)
        except keyset.KeyFileError as exc:
            self.log.error(
                "event keys not reloaded, keeping the old ones", extra={"error": str(exc)}
            )
            return
        self.auth = EventAuth(keys, self.auth.accept_unsigned)
        self.log.info("event keys reloaded", extra={"kids": [k.kid for k in keys.keys]})

    def _reseek(self, first: dict[int, int], stored: dict[int, int]) -> None:
        """After a fenced (rolled-back) batch: continue from what PostgreSQL holds."""
        for p, f in first.items():
            target = stored.get(p, f)
            if p not in self._assigned:
                continue
            try:
                self.consumer.seek(TopicPartition(self.topic, p, target))
            except KafkaException as exc:
                self.log.warning("seek failed", extra={"partition": p, "error": str(exc)})
                self._gap_ok.pop(p, None)
                continue
            # If the broker still delivers from beyond `target` after this seek, the
            # offsets in between don't exist (e.g. transaction markers): accept the gap.
            if p in stored and f > stored[p]:
                self._gap_ok[p] = stored[p]

    # -- after commit ------------------------------------------------------------------

    def _observe_latency(self, plan: Plan) -> None:
        stamps = plan.counted_received_at_us
        if not stamps:
            return
        now_us = time.time() * 1e6
        step = max(1, len(stamps) // _LATENCY_SAMPLES)
        for t in stamps[::step]:
            metrics.ACK_TO_COUNT.observe(max(0.0, (now_us - t) / 1e6))

    def _adapt(self, n: int, seconds: float) -> None:
        target_s = self.s.processor_batch_target_ms / 1000
        lo, hi = self.s.processor_batch_min_messages, self.s.processor_batch_max_messages
        if seconds > target_s:
            self._target = max(lo, int(self._target * 0.7))
        elif n >= self._target and seconds < target_s / 2:
            self._target = min(hi, int(self._target * 1.5) + 1)

    def _update_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_lag < 1.0:
            return
        self._last_lag = now
        for p in list(self._assigned):
            try:
                lo, hi = self.consumer.get_watermark_offsets(
                    TopicPartition(self.topic, p), cached=True
                )
            except KafkaException:
                continue
            if hi < 0:
                continue
            metrics.LAG.labels(str(p)).set(max(0, hi - self._next.get(p, max(lo, 0))))

    def _idle(self) -> None:
        self._update_lag()
        self._refresh_elections()
        self.tallies.heal()

    # -- helpers -----------------------------------------------------------------------

    def _refresh_elections(self, force: set[str] | None = None) -> None:
        """Reload the election cache every few seconds; look up unknown ids at once."""
        now = time.monotonic()
        if now - self._elections_at >= _ELECTIONS_TTL_S:
            self._elections = self._retry_db(self.store.load_elections)
            self._elections_at = now
        elif force:
            # An election created after the last reload must not be rejected as unknown.
            ids = sorted(force)
            self._elections.update(self._retry_db(lambda: self.store.load_elections(ids)))

    def _retry_db(self, fn: Callable[[], T]) -> T:
        delay = 0.2
        while True:
            try:
                return fn()
            except psycopg.OperationalError as exc:
                self.log.error("database unavailable", extra={"error": repr(exc)})
                if self._stop:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                with contextlib.suppress(psycopg.OperationalError):
                    self.store.reconnect()
