"""gateway.producer.KafkaSink: every delivery report reaches its future, in any order.

librdkafka is replaced by a fake whose ``poll`` fires the callbacks a test schedules, so
the order of reports (a message held up by a Kafka stall reporting after newer ones) is
under the test's control. No broker needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import pytest

from gateway import producer as producer_mod


class FakeMessage:
    """What a delivery callback gets: librdkafka's produce-to-report time."""

    def latency(self) -> float:
        return 0.004


class FakeProducer:
    def __init__(self, _conf: dict) -> None:
        self.callbacks: list[Callable] = []
        self.deliver: list[int] = []  # indexes of callbacks the next polls fire
        self.lock = threading.Lock()

    def produce(self, _topic: str, _value: bytes, _key: bytes, on_delivery: Callable) -> None:
        with self.lock:
            self.callbacks.append(on_delivery)

    def poll(self, _timeout: float) -> int:
        with self.lock:
            due, self.deliver = self.deliver[:1], self.deliver[1:]
        for i in due:
            self.callbacks[i](None, FakeMessage())
        threading.Event().wait(0.001)
        return len(due)

    def flush(self, _timeout: float) -> int:
        return 0


@contextlib.contextmanager
def running_sink() -> Iterator[tuple[producer_mod.KafkaSink, FakeProducer]]:
    """A started KafkaSink over a FakeProducer (inside the running loop); closed after."""
    sink = producer_mod.KafkaSink("fake:9092", "t", asyncio.get_running_loop())
    sink.start()
    try:
        yield sink, sink._producer  # type: ignore[misc]
    finally:
        sink.close(1)


def test_a_late_report_after_newer_ones_still_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer_mod, "Producer", FakeProducer)

    async def scenario() -> None:
        with running_sink() as (sink, fake):
            stalled = sink.produce(b"k", b"old")  # waits out a "Kafka stall"
            newer = [sink.produce(b"k", b"new") for _ in range(3)]
            with fake.lock:
                fake.deliver += [1, 2, 3]  # the newer ones report first ...
            await asyncio.wait_for(asyncio.gather(*newer), 5)
            await asyncio.sleep(0.05)  # ... their batch has been handed to the loop
            with fake.lock:
                fake.deliver.append(0)  # ... then the old one
            assert await asyncio.wait_for(stalled, 5) is None

    asyncio.run(scenario())


def test_all_brokers_down_marks_trouble_until_a_delivery_is_confirmed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producer_mod, "Producer", FakeProducer)

    async def scenario() -> None:
        with running_sink() as (sink, fake):
            assert sink.trouble_since is None
            other = producer_mod.KafkaError(producer_mod.KafkaError._TRANSPORT)
            sink._on_client_error(other)  # one broker connection lost: not yet trouble
            assert sink.trouble_since is None
            down = producer_mod.KafkaError(producer_mod.KafkaError._ALL_BROKERS_DOWN)
            sink._on_client_error(down)  # librdkafka calls this from poll()
            assert sink.trouble_since is not None
            delivered = sink.produce(b"k", b"v")
            with fake.lock:
                fake.deliver.append(0)
            assert await asyncio.wait_for(delivered, 5) is None
            assert sink.trouble_since is None

    asyncio.run(scenario())


def test_confirmed_deliveries_feed_the_delivery_latency_histogram(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(producer_mod, "Producer", FakeProducer)
    histogram = producer_mod.metrics.kafka_delivery_seconds

    def observed() -> tuple[float, float]:
        count = total = 0.0
        for family in histogram.collect():
            for sample in family.samples:
                if sample.name.endswith("_count"):
                    count = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
        return count, total

    async def scenario() -> None:
        with running_sink() as (sink, fake):
            producer_mod.metrics.flush()  # what earlier tests left in the buffer
            before = observed()
            futures = [sink.produce(b"k", b"v") for _ in range(3)]
            with fake.lock:
                fake.deliver += [0, 1, 2]
            await asyncio.wait_for(asyncio.gather(*futures), 5)
            producer_mod.metrics.flush()  # what the app does once a second
            count, total = observed()
            assert count - before[0] == 3
            assert total - before[1] == pytest.approx(3 * FakeMessage().latency())

    asyncio.run(scenario())


# What librdkafka 2.x puts under "eos" in its statistics (STATISTICS.md), abridged.
ASSIGNED_STATS = (
    '{"name":"rdkafka#producer-1","type":"producer","msg_cnt":0,"brokers":{},"topics":{},'
    '"eos":{"idemp_state":"Assigned","idemp_stateage":449,"txn_state":"Init",'
    '"txn_stateage":3,"txn_may_enq":false,"producer_id":0,"producer_epoch":0,"epoch_cnt":1}}'
)


@pytest.mark.parametrize(
    ("stats", "state", "assigned"),
    [
        (ASSIGNED_STATS, "Assigned", True),
        (ASSIGNED_STATS.replace('"Assigned"', '"WaitPID"'), "WaitPID", False),
        ('{"name":"rdkafka#producer-1","type":"producer"}', None, False),  # no eos object
        ("not json", "unchanged", False),  # ignored: the last state read stays
    ],
)
def test_statistics_say_whether_the_producer_has_its_id(
    stats: str, state: str | None, assigned: bool
) -> None:
    async def scenario() -> None:
        sink = producer_mod.KafkaSink("127.0.0.1:1", "t", asyncio.get_running_loop())
        sink.idempotence_state = "unchanged"
        sink._on_stats(stats)
        assert sink.idempotence_state == state
        assert sink.producer_id_assigned is assigned

    asyncio.run(scenario())


def test_real_librdkafka_statistics_are_read_without_a_broker() -> None:
    """librdkafka's own JSON, not a sample: with nothing listening it has no producer id."""

    async def scenario() -> None:
        sink = producer_mod.KafkaSink(
            "127.0.0.1:1",
            "t",
            asyncio.get_running_loop(),
            extra={"statistics.interval.ms": 50, "log_level": 0},
        )
        sink.start()
        try:
            for _ in range(100):
                if sink.idempotence_state is not None:
                    break
                await asyncio.sleep(0.05)
            assert sink.idempotence_state is not None
            assert sink.idempotence_state != "Assigned"
            assert not sink.producer_id_assigned
        finally:
            sink.close(0.1)

    asyncio.run(scenario())
