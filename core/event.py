"""The Kafka event of topic ``votes.v1`` (docs/ARCHITECTURE.md, Event schema).

The gateway encodes events in ``gateway._fast`` (hand-rolled msgpack, no allocation of
intermediate dicts); this module is the schema both sides agree on and the decoder the
processor uses. A msgpack map with these exact keys::

    {v, vote_id, election_id, voter_id, choice, received_at_us, gateway_id}
"""

from __future__ import annotations

import re

import msgspec

SCHEMA_VERSION = 1
TOPIC = "votes.v1"
DLQ_TOPIC = "votes.v1.dlq"

# Field limits, the one definition the gateway (before it acknowledges) and the processor
# (before it stores) both apply; docs/ARCHITECTURE.md (Event schema). Lengths are UTF-8
# bytes: four text fields form the primary key of vote_rejections, and 4 x 256 bytes stay
# well inside PostgreSQL's b-tree entry limit (2,704 bytes).
MAX_FIELD_BYTES = 256
TEXT_FIELDS = ("vote_id", "election_id", "voter_id", "choice", "gateway_id")
# received_at_us: after the epoch and before the year 10000, a range both Python's
# datetime and PostgreSQL's timestamptz hold.
MAX_RECEIVED_AT_US = 253_402_300_800_000_000 - 1
# C0 controls, DEL and C1 controls: nothing a voter id, vote id or candidate needs, and
# what would make logs, receipts (fields joined by 0x1f) and text columns ambiguous.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


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


def field_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot be the text field ``name`` of an event, or None."""
    if not value:
        return f"{name} is empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{name} is not valid Unicode (a lone surrogate)"
    if size > MAX_FIELD_BYTES:
        return f"{name} is longer than {MAX_FIELD_BYTES} bytes in UTF-8"
    if _CONTROL.search(value):
        return f"{name} contains a control character"
    return None


def received_at_problem(received_at_us: int) -> str | None:
    """Why ``received_at_us`` cannot be an event's time, or None."""
    if not 0 < received_at_us <= MAX_RECEIVED_AT_US:
        return "received_at_us is not between the epoch and the year 10000"
    return None


def event_problem(event: VoteEvent) -> str | None:
    """Why ``event`` cannot be stored, or None: schema version, text fields, time."""
    if event.v != SCHEMA_VERSION:
        return f"unknown schema version {event.v}"
    for name in TEXT_FIELDS:
        problem = field_problem(name, getattr(event, name))
        if problem is not None:
            return problem
    return received_at_problem(event.received_at_us)


def decode(payload: bytes) -> VoteEvent:
    """Decode one event; raises ``msgspec.DecodeError``/``ValidationError`` when malformed."""
    return _decoder.decode(payload)
