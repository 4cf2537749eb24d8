"""The Kafka event of topic ``votes.v1`` (docs/ARCHITECTURE.md, Event schema).

The gateway encodes events in ``gateway._fast`` (hand-rolled msgpack, no allocation of
intermediate dicts); this module is the schema both sides agree on and the decoder the
processor uses. A msgpack map with these exact keys::

    {v, vote_id, election_id, voter_id, choice, received_at_us, gateway_id}
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1
TOPIC = "votes.v1"
DLQ_TOPIC = "votes.v1.dlq"


class VoteEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=False):
    v: int
    vote_id: str
    election_id: str
    voter_id: str
    choice: str
    received_at_us: int
    gateway_id: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(VoteEvent)


def encode(event: VoteEvent) -> bytes:
    """Reference encoder (the gateway's compiled one must produce equal bytes)."""
    return _encoder.encode(event)


def decode(payload: bytes) -> VoteEvent:
    """Decode one event; raises ``msgspec.DecodeError``/``ValidationError`` when malformed."""
    return _decoder.decode(payload)
