"""gateway.durability.DurabilityPipeline: Kafka within the deadline, else the spill, and
no waiting out the deadline vote after vote while Kafka is down.

The sink and the spill are small fakes whose behaviour each test sets; no broker, no
RocksDB. (The real pair is exercised by tests/integration/test_gateway_faults.py.)
"""

from __future__ import annotations

import asyncio

from gateway.durability import Drainer, DurabilityPipeline

DEADLINE_S = 0.05


class FakeSink:
    """Delivers at once while ``up``; while down, the futures never resolve.

    ``trouble_since`` / ``mark_trouble`` / ``confirm`` behave like KafkaSink's: a
    confirmed delivery (``confirm``, what KafkaSink._resolve does) clears the trouble.
    """

    def __init__(self) -> None:
        self.up = True
        self.produced = 0
        self.trouble_since: float | None = None
        self.pending: list[asyncio.Future] = []

    def mark_trouble(self, _reason: str) -> None:
        self.trouble_since = asyncio.get_running_loop().time()

    def confirm(self) -> None:
        self.trouble_since = None

    def produce(self, _key: bytes, _event: bytes) -> asyncio.Future:
        self.produced += 1
        future = asyncio.get_running_loop().create_future()
        if self.up:
            future.set_result(None)
            self.confirm()
        else:
            self.pending.append(future)
        return future


class FakeSpill:
    def __init__(self) -> None:
        self.events: dict[bytes, bytes] = {}

    async def write(self, _key: bytes, event: bytes) -> bytes:
        seq = len(self.events).to_bytes(8, "big")
        self.events[seq] = event
        return seq

    def delete(self, seq: bytes) -> None:
        self.events.pop(seq, None)

    def __len__(self) -> int:
        return len(self.events)


def run(scenario) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(asyncio.wait_for(scenario(), 10))


def make_pipeline() -> tuple[FakeSink, FakeSpill, DurabilityPipeline]:
    """A pipeline over fresh fakes (call inside the running loop)."""
    sink, spill = FakeSink(), FakeSpill()
    return sink, spill, DurabilityPipeline(sink, spill, DEADLINE_S)  # type: ignore[arg-type]


def test_kafka_answers_within_the_deadline() -> None:
    async def scenario() -> None:
        _sink, spill, pipeline = make_pipeline()
        assert [await pipeline.persist(b"k", b"e") for _ in range(3)] == ["kafka"] * 3
        assert len(spill) == 0

    run(scenario)


def test_after_one_missed_deadline_votes_go_to_the_spill_without_waiting() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sink, spill, pipeline = make_pipeline()
        sink.up = False
        started = loop.time()
        assert await pipeline.persist(b"k", b"first") == "spill"
        assert loop.time() - started >= DEADLINE_S  # the first one waited the deadline out
        assert pipeline.kafka_bypassed

        produced = sink.produced
        started = loop.time()
        answers = [await pipeline.persist(b"k", b"next") for _ in range(20)]
        assert answers == ["spill"] * 20
        assert loop.time() - started < DEADLINE_S  # none of the 20 waited
        assert sink.produced == produced  # nor queued behind the dead broker
        assert len(spill) == 21

    run(scenario)


def test_a_confirmed_delivery_sends_votes_to_kafka_again() -> None:
    async def scenario() -> None:
        sink, spill, pipeline = make_pipeline()
        sink.up = False
        assert await pipeline.persist(b"k", b"during the outage") == "spill"
        assert await pipeline.persist(b"k", b"still out") == "spill"
        # Kafka is back: the late report of the first vote (or a drainer probe) confirms.
        sink.up = True
        sink.pending[0].set_result(None)
        sink.confirm()
        assert await pipeline.persist(b"k", b"after") == "kafka"
        assert not pipeline.kafka_bypassed
        # The late-confirmed first vote's spilled copy is dropped; the second stays for
        # the drainer.
        assert len(spill) == 1

    run(scenario)


def test_a_delivery_error_also_bypasses_kafka() -> None:
    async def scenario() -> None:
        sink, _spill, pipeline = make_pipeline()

        def failing(_key: bytes, _event: bytes) -> asyncio.Future:
            future = asyncio.get_running_loop().create_future()
            future.set_result("broker says no")
            sink.produced += 1
            return future

        sink.produce = failing  # type: ignore[method-assign]
        assert await pipeline.persist(b"k", b"e") == "spill"
        assert pipeline.kafka_bypassed

    run(scenario)


def test_all_brokers_down_sends_votes_to_the_spill_without_waiting_at_all() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sink, _spill, pipeline = make_pipeline()
        assert await pipeline.persist(b"k", b"before") == "kafka"
        sink.up = False
        sink.mark_trouble("all brokers down")  # what librdkafka's error callback does
        started = loop.time()
        assert await pipeline.persist(b"k", b"first of the outage") == "spill"
        assert loop.time() - started < DEADLINE_S  # not even the first one waits
        assert sink.produced == 1
        # Brokers back: the drainer's first confirmed delivery ends the bypass.
        sink.up = True
        sink.confirm()
        assert await pipeline.persist(b"k", b"after") == "kafka"

    run(scenario)


class BacklogSpill:
    """A spill holding ``n`` events, with the read/delete interface the Drainer uses."""

    def __init__(self, n: int) -> None:
        self.events = {i.to_bytes(8, "big"): (b"k", b"event-%d" % i) for i in range(n)}

    def __len__(self) -> int:
        return len(self.events)

    def read(self, after: bytes, limit: int, skip: set[bytes]) -> list[tuple[bytes, bytes, bytes]]:
        seqs = [s for s in sorted(self.events) if s > after and s not in skip][:limit]
        return [(s, *self.events[s]) for s in seqs]

    def delete(self, seq: bytes) -> None:
        self.events.pop(seq, None)


def test_the_drainer_gives_the_loop_back_between_small_batches() -> None:
    """Votes share the loop with the drainer: after a Kafka stall it must not produce
    its whole backlog (up to max_in_flight, 2,000) in one turn of the loop."""

    async def scenario() -> None:
        spill = BacklogSpill(1000)
        sink = FakeSink()
        drainer = Drainer(spill, sink, batch=64)  # type: ignore[arg-type]
        most_between_turns = 0
        seen = 0

        async def other_work() -> None:  # stands for the votes being answered
            nonlocal most_between_turns, seen
            while len(spill):
                most_between_turns = max(most_between_turns, sink.produced - seen)
                seen = sink.produced
                await asyncio.sleep(0)

        await asyncio.gather(drainer.run(until_empty=True), other_work())
        assert sink.produced == 1000 and len(spill) == 0
        assert 0 < most_between_turns <= 64

    run(scenario)


class DrainableSpill(FakeSpill):
    """FakeSpill with the Drainer's read interface."""

    def read(self, after: bytes, limit: int, skip: object) -> list[tuple[bytes, bytes, bytes]]:
        seqs = [s for s in sorted(self.events) if s > after and s not in skip][:limit]  # type: ignore[operator]
        return [(s, b"k", self.events[s]) for s in seqs]


async def _spill_one_while_kafka_is_slow() -> tuple[
    FakeSink, DrainableSpill, DurabilityPipeline, asyncio.Task
]:
    """One vote whose report misses the deadline, and a drainer running beside it."""
    sink, spill = FakeSink(), DrainableSpill()
    pipeline = DurabilityPipeline(sink, spill, DEADLINE_S)  # type: ignore[arg-type]
    sink.up = False
    assert await pipeline.persist(b"k", b"slow") == "spill"
    assert len(spill) == 1 and len(pipeline.drainer.held) == 1
    pipeline.drainer.idle_s = 0.005
    task = asyncio.ensure_future(pipeline.drainer.run())
    await asyncio.sleep(0.1)  # twenty turns of the drainer
    return sink, spill, pipeline, task


def test_the_drainer_does_not_send_again_what_librdkafka_still_retries() -> None:
    """Kafka only slow: the spilled copy waits for the first produce's report, and is
    deleted when that report says delivered. Kafka gets the vote once."""

    async def scenario() -> None:
        sink, spill, pipeline, drainer = await _spill_one_while_kafka_is_slow()
        assert sink.produced == 1  # the first produce only
        sink.up = True
        sink.pending[0].set_result(None)  # librdkafka's retry got through
        await asyncio.sleep(0.05)
        assert len(spill) == 0 and not pipeline.drainer.held
        assert sink.produced == 1
        drainer.cancel()

    run(scenario)


def test_the_drainer_sends_the_copy_when_the_first_produce_fails() -> None:
    async def scenario() -> None:
        sink, spill, pipeline, drainer = await _spill_one_while_kafka_is_slow()
        sink.up = True
        sink.pending[0].set_result("message timed out")  # librdkafka gave up
        await asyncio.sleep(0.05)
        assert not pipeline.drainer.held
        assert sink.produced == 2  # the drainer sent the copy ...
        assert len(spill) == 0  # ... and deleted it once Kafka confirmed
        drainer.cancel()

    run(scenario)
