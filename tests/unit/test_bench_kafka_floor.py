"""bench/peers/granian_kafka_floor.py: the floor answers 202 only after Kafka confirms,
with the gateway's event, and produces nothing for a request it cannot decode.

The sink is a fake whose delivery outcome each test sets; the floor against the real
broker runs in ``python -m bench gateway --targets granian-kafka-floor``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.peers.granian_kafka_floor import KafkaFloor
from bench.targets import TargetConfig, make_target
from core.event import decode

VOTE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


class FakeSink:
    def __init__(self, error: object = None) -> None:
        self.error = error
        self.produced: list[tuple[bytes, bytes]] = []

    def produce(self, key: bytes, value: bytes) -> asyncio.Future:
        self.produced.append((key, value))
        future = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, future.set_result, self.error)
        return future


@dataclass
class Scope:
    path: str
    method: str = "POST"
    proto: str = "http"


class Protocol:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.answers: list[tuple[int, bytes]] = []

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, _headers: list, body: bytes) -> None:
        self.answers.append((status, body))


def _post(sink: FakeSink, body: bytes, path: str = "/v1/elections/e1/votes") -> Protocol:
    floor = KafkaFloor()
    floor.sink = sink  # type: ignore[assignment]
    protocol = Protocol(body)
    asyncio.run(floor(Scope(path), protocol))
    return protocol


def test_a_vote_is_produced_as_the_gateways_event_and_acknowledged_after_delivery() -> None:
    sink = FakeSink()
    protocol = _post(sink, json.dumps({"vote_id": VOTE_ID, "choice": "alice"}).encode())
    [(status, body)] = protocol.answers
    assert status == 202
    assert json.loads(body) == {"vote_id": VOTE_ID, "status": "accepted", "durability": "kafka"}
    [(key, value)] = sink.produced
    event = decode(value)
    assert key == VOTE_ID.encode()
    assert (event.vote_id, event.election_id, event.voter_id, event.choice) == (
        VOTE_ID,
        "e1",
        VOTE_ID,
        "alice",
    )


def test_a_delivery_error_is_a_503() -> None:
    sink = FakeSink(error="broker down")
    protocol = _post(sink, json.dumps({"vote_id": VOTE_ID, "choice": "alice"}).encode())
    assert [status for status, _ in protocol.answers] == [503]


@pytest.mark.parametrize("body", [b"{", b'{"vote_id": "x", "choice": "alice"}', b"[]"])
def test_a_body_that_does_not_decode_is_a_400_and_produces_nothing(body: bytes) -> None:
    sink = FakeSink()
    protocol = _post(sink, body)
    assert [status for status, _ in protocol.answers] == [400]
    assert sink.produced == []


def test_other_paths_are_404_and_produce_nothing() -> None:
    sink = FakeSink()
    protocol = _post(sink, b"{}", path="/v1/elections/e1/results")
    assert [status for status, _ in protocol.answers] == [404]
    assert sink.produced == []


def test_the_harness_runs_it_under_granian_as_a_producing_target(tmp_path: Path) -> None:
    cfg = TargetConfig(env={"VOTE_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}, run_dir=tmp_path, workers=2)
    target = make_target("granian-kafka-floor", "e1", cfg)
    argv = target.service.argv
    assert argv[argv.index("--interface") + 1] == "rsgi"
    assert argv[argv.index("--workers") + 1] == "2"
    assert argv[-1] == "bench.peers.granian_kafka_floor:app"
    assert target.produces and not target.fresh_votes
    assert target.service.env["PEER_TOPIC"] == cfg.topic
