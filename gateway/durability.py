"""Make one vote durable: Kafka if it confirms in time, else the spill.

See docs/ARCHITECTURE.md, Durability path.

``persist`` answers ``"kafka"`` when the delivery report says the event is replicated
within the spill deadline, ``"spill"`` when the event was synced into the local RocksDB
spill instead, and raises ``NotDurable`` when neither is possible. No other outcome
exists, so the caller cannot send a 202 for a vote that is not durable. After one miss,
or as soon as librdkafka reports every broker down, votes skip Kafka and go to the spill
at once until Kafka confirms a delivery again.

``Drainer`` re-produces spilled events and deletes each one only after Kafka confirms
it; it also adopts the slots of dead workers. A vote spilled while its first produce is
still queued in librdkafka is left to that produce: its copy is deleted when the report
says delivered and re-produced only when it says failed.
"""

from __future__ import annotations

import asyncio
import logging

from gateway import metrics
from gateway.producer import KafkaSink, QueueFull
from gateway.spill import SpillFull, SpillStore, SpillUnavailable

log = logging.getLogger("gateway.durability")


def report_spill_size() -> None:
    """The vote_spill_events gauge: own slot plus any orphan slot being drained."""
    metrics.spill_events.set(SpillStore.events_in_process())


class NotDurable(Exception):
    """Kafka did not confirm and the spill could not take the event."""


def _fire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class DurabilityPipeline:
    def __init__(self, sink: KafkaSink, spill: SpillStore, deadline_s: float) -> None:
        self.sink = sink
        self.spill = spill
        self.deadline_s = deadline_s
        self._loop = asyncio.get_running_loop()
        # The spill's one drainer: the app runs it; _spill hands it the copies whose
        # first produce is still pending.
        self.drainer = Drainer(spill, sink)

    @property
    def kafka_bypassed(self) -> bool:
        """Votes skip Kafka: waiting out the deadline for every vote of an outage would
        add it to every acknowledgement (``KafkaSink.trouble_since``)."""
        return self.sink.trouble_since is not None

    async def persist(self, key: bytes, event: bytes) -> str:
        if self.kafka_bypassed:
            return await self._spill(key, event, None)
        try:
            delivery = self.sink.produce(key, event)
        except QueueFull:
            self.sink.mark_trouble("local queue full")
            return await self._spill(key, event, None)
        # One waiter released by whichever comes first: the report or the deadline.
        # (Cheaper than asyncio.wait_for, which wraps the await in a new task.)
        waiter = self._loop.create_future()
        delivery.add_done_callback(lambda _f: _fire(waiter))
        timer = self._loop.call_later(self.deadline_s, _fire, waiter)
        await waiter
        timer.cancel()
        if delivery.done() and delivery.result() is None:
            return "kafka"
        self.sink.mark_trouble(
            f"delivery failed: {delivery.result()}"
            if delivery.done()
            else "no delivery report within the spill deadline"
        )
        return await self._spill(key, event, delivery)

    async def _spill(self, key: bytes, event: bytes, delivery: asyncio.Future | None) -> str:
        try:
            seq = await self.spill.write(key, event)
        except (SpillFull, SpillUnavailable) as exc:
            raise NotDurable(str(exc)) from exc
        metrics.spill_writes_total.inc()
        report_spill_size()
        if delivery is not None:
            # Kafka was only slow: its report may still come.
            self.drainer.hold(seq, delivery)
        return "spill"


class _Either:
    """Membership in either of two sets, without building their union for every read."""

    __slots__ = ("first", "second")

    def __init__(self, first: set[bytes], second: set[bytes]) -> None:
        self.first = first
        self.second = second

    def __contains__(self, item: object) -> bool:
        return item in self.first or item in self.second


class Drainer:
    """Re-produces one spill store's events in order until it is empty.

    While Kafka looks down it sends a single event as a probe rather than the whole
    backlog, so librdkafka's queue does not fill with events that cannot leave.

    It shares the event loop with the votes being answered, so it reads and produces at
    most ``batch`` events per turn of the loop: a whole backlog produced at once would
    hold the loop right after a Kafka stall, when the votes in flight are nearest their
    spill deadline.

    It reads the store only when it holds an event that is neither in flight nor held
    (``hold``), so a long held backlog is not scanned again and again.
    """

    def __init__(
        self,
        spill: SpillStore,
        sink: KafkaSink,
        *,
        max_in_flight: int = 2000,
        batch: int = 64,
        idle_s: float = 0.05,
    ) -> None:
        self.spill = spill
        self.sink = sink
        self.max_in_flight = max_in_flight
        self.batch = batch
        self.idle_s = idle_s
        # Spilled events whose first produce is still queued in librdkafka, which keeps
        # retrying it (up to message.timeout.ms). Sending them again would double
        # Kafka's work for every vote of a slow spell, just when Kafka is slowest. Only
        # this process knows of them: after a crash the successor drains the whole slot.
        self.held: set[bytes] = set()
        self._in_flight: set[bytes] = set()
        self._healthy = True
        self._cursor = b""

    def hold(self, seq: bytes, first_delivery: asyncio.Future) -> None:
        """Leave spilled ``seq`` to its first produce: when that report says delivered
        the copy is deleted, when it says failed the copy is sent like any other."""
        if first_delivery.done():
            self._on_first_report(seq, first_delivery)
        else:
            self.held.add(seq)
            first_delivery.add_done_callback(lambda f: self._on_first_report(seq, f))

    def _on_first_report(self, seq: bytes, delivery: asyncio.Future) -> None:
        self.held.discard(seq)
        if delivery.result() is None:
            self.spill.delete(seq)
            report_spill_size()

    async def run(self, until_empty: bool = False) -> None:
        while True:
            if len(self.spill) == 0 and not self._in_flight:
                if until_empty:
                    return
                await asyncio.sleep(self.idle_s)
                continue
            if len(self.spill) <= len(self._in_flight) + len(self.held):
                # Every stored event is in flight or held: nothing to read. (A held event
                # is never in flight: the drainer skips it until it is released.)
                await asyncio.sleep(self.idle_s)
                continue
            limit = self.max_in_flight if self._healthy else 1
            budget = limit - len(self._in_flight)
            if budget <= 0:
                await asyncio.sleep(self.idle_s if self._healthy else 0.5)
                continue
            skip = _Either(self._in_flight, self.held) if self.held else self._in_flight
            entries = self.spill.read(self._cursor, min(budget, self.batch), skip)
            if not entries:
                self._cursor = b""  # wrap around: pick up events whose retry failed
                await asyncio.sleep(self.idle_s)
                continue
            for seq, key, event in entries:
                try:
                    delivery = self.sink.produce(key, event)
                except QueueFull:
                    self._healthy = False
                    break
                self._in_flight.add(seq)
                delivery.add_done_callback(lambda f, seq=seq: self._on_report(seq, f))
                self._cursor = seq
            await asyncio.sleep(0)

    def _on_report(self, seq: bytes, delivery: asyncio.Future) -> None:
        self._in_flight.discard(seq)
        if delivery.result() is None:
            self._healthy = True
            self.spill.delete(seq)
            # Read in the moment between its write and its hold (so sent twice after
            # all): it is in Kafka now, and holding it longer would only make the check
            # in run() count an event that is gone.
            self.held.discard(seq)
        else:
            self._healthy = False
            if seq < self._cursor or not self._cursor:
                self._cursor = b""
        report_spill_size()


async def adopt_orphans(
    root: str, sink: KafkaSink, loop: asyncio.AbstractEventLoop, max_events: int
) -> int:
    """Drain every slot left by a dead worker, then remove it; returns how many events
    were re-produced.

    Opening and closing RocksDB take tens of milliseconds, so they run in a thread: on
    the event loop they would hold up every vote in flight, and push some past the
    spill deadline.
    """
    drained = 0
    for slot, fd in list(SpillStore.orphan_slots(root)):
        store = await asyncio.to_thread(SpillStore, slot, fd, loop, max_events)
        try:
            n = len(store)
            if n:
                log.info("adopting spill slot", extra={"slot": slot, "events": n})
                await Drainer(store, sink).run(until_empty=True)
                drained += n
        finally:
            if await asyncio.to_thread(store.retire):
                log.info("removed drained spill slot", extra={"slot": slot})
            report_spill_size()
    return drained
