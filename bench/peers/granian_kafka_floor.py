"""``granian-kafka-floor``: the gateway's required parts, and none of its vote work.

The gateway's parts are fixed (docs/ARCHITECTURE.md, Flow and invariants): granian
(RSGI, uvloop), msgspec, and librdkafka through confluent-kafka with ``acks=all`` and
idempotence, answering only after the delivery report. This app is those parts and
nothing else. For each
``POST /v1/elections/{election_id}/votes`` it reads the body, decodes it with the
gateway's msgspec model, encodes the gateway's event (``_fast.encode_event``) and
produces it through the gateway's own producer (``gateway.producer.KafkaSink``, the same
settings and linger), then answers 202 once Kafka confirms it (503 if Kafka reports an
error).

It does no token check, rate limit, idempotency, election lookup, spill, receipt or
metrics, so no gateway built on these parts can be faster on the same machine: the
ratio of this floor's max to a peer's bounds the gateway's ratio to that peer. The
events are real (their own election, key and voter = the vote_id), so the processor
does the same work for them as for the other producing targets.

Run by the harness (bench/targets.py) as
``granian --interface rsgi --loop uvloop bench.peers.granian_kafka_floor:app`` with
``PEER_*`` in the environment.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import msgspec

from gateway import _fast
from gateway.models import vote_request_decoder
from gateway.producer import KafkaSink, QueueFull

_JSON = [("content-type", "application/json")]
_PREFIX = "/v1/elections/"
# The gateway signs every event (docs/ARCHITECTURE.md, Event schema); the floor pays the
# same cost with a key nobody verifies.
_SIGNER = _fast.EventSigner("floor", os.urandom(32))


class KafkaFloor:
    def __init__(self) -> None:
        self.sink: KafkaSink | None = None
        self.gateway_id = f"{os.environ.get('PEER_GATEWAY_ID', 'bench-kafka-floor')}-{os.getpid()}"

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sink = KafkaSink(
            os.environ["PEER_KAFKA_BOOTSTRAP"],
            os.environ["PEER_TOPIC"],
            loop,
            linger_ms=float(os.environ.get("PEER_LINGER_MS", "2")),
        )
        self.sink.start()
        if not self.sink.check_metadata(timeout=30.0):
            raise SystemExit("granian-kafka-floor: no Kafka metadata for the vote topic")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sink is not None:
            self.sink.close(5.0)

    async def __call__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        path = scope.path
        if path == "/readyz":
            protocol.response_bytes(200, _JSON, b'{"status":"ready"}')
            return
        parts = path[len(_PREFIX) :].split("/") if path.startswith(_PREFIX) else []
        if scope.method != "POST" or len(parts) != 2 or parts[1] != "votes":
            protocol.response_bytes(404, _JSON, b'{"status":404}')
            return
        try:
            request = vote_request_decoder.decode(await protocol())
        except msgspec.DecodeError:  # ValidationError is a DecodeError
            protocol.response_bytes(400, _JSON, b'{"status":400}')
            return
        event = _fast.encode_event(
            request.vote_id,
            parts[0],
            request.vote_id,
            request.choice,
            int(time.time() * 1_000_000),
            self.gateway_id,
            _SIGNER,
        )
        assert self.sink is not None
        try:
            error = await self.sink.produce(request.vote_id.encode(), event)
        except QueueFull:
            error = "queue full"
        if error is None:
            # The vote_id's pattern (gateway.models) needs no JSON escaping. The harness
            # reads it back to check every acknowledged vote is stored.
            protocol.response_bytes(
                202,
                _JSON,
                b'{"vote_id":"'
                + request.vote_id.encode()
                + b'","status":"accepted","durability":"kafka"}',
            )
        else:
            protocol.response_bytes(503, _JSON, b'{"status":503}')


app = KafkaFloor()
