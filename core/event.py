"""The Kafka event of topic ``votes.v1`` (docs/ARCHITECTURE.md, Event schema).

The gateway encodes events in ``gateway._fast`` (hand-rolled msgpack, no allocation of
intermediate dicts); this module is the schema both sides agree on and the decoder the
processor uses. A msgpack map with these exact keys, in this order::

    {v: 2, vote_id, election_id, voter_id, choice, received_at_us, gateway_id, kid, mac}

``mac`` is HMAC-SHA256, under the event key ``kid`` (``core.keyset``), of every byte of
the encoded map before the MAC's own 32 bytes, so it covers every field and the key id.
Version 1 events are the same map without ``kid`` and ``mac``; the processor takes them
only while ``VOTE_PROCESSOR_ACCEPT_UNSIGNED_EVENTS`` says so (an upgrade's drain).
"""

from __future__ import annotations

import hashlib
import hmac
import re

import msgspec

from core.keyset import Key, KeySet

SCHEMA_VERSION = 2  # what the gateway writes: signed
UNSIGNED_VERSION = 1  # before events carried a MAC
MAC_BYTES = 32
# The encoded tail of a signed event: fixstr "mac", bin 8 of 32 bytes, then the MAC.
_MAC_HEAD = b"\xa3mac\xc4\x20"
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


# omit_defaults: an unsigned (version 1) event encodes without kid and mac.
class VoteEvent(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=True):
    v: int
    vote_id: str
    election_id: str
    voter_id: str
    choice: str
    received_at_us: int
    gateway_id: str
    kid: str = ""
    mac: bytes = b""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(VoteEvent)


def encode(event: VoteEvent) -> bytes:
    """Reference encoder (the gateway's compiled one must produce equal bytes)."""
    return _encoder.encode(event)


def seal(event: VoteEvent, key: Key) -> bytes:
    """``event``'s fields as a signed (version 2) event under ``key``; the gateway's
    compiled encoder must produce exactly these bytes."""
    unsigned = msgspec.structs.replace(event, v=SCHEMA_VERSION, kid=key.kid, mac=bytes(MAC_BYTES))
    body = encode(unsigned)[:-MAC_BYTES]
    return body + hmac.digest(key.secret, body, hashlib.sha256)


def authentication_problem(payload: bytes, event: VoteEvent, keys: KeySet) -> str | None:
    """Why the signed ``event`` decoded from ``payload`` is not authentic, or None."""
    secret = keys.get(event.kid)
    if secret is None:
        return f"unknown event key {event.kid[:64]!r}"
    body, mac = payload[:-MAC_BYTES], payload[-MAC_BYTES:]
    if not body.endswith(_MAC_HEAD) or len(event.mac) != MAC_BYTES:
        return "the MAC is not the event's last field"
    if not hmac.compare_digest(hmac.digest(secret, body, hashlib.sha256), mac):
        return "wrong MAC"
    return None


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
    if event.v not in (SCHEMA_VERSION, UNSIGNED_VERSION):
        return f"unknown schema version {event.v}"
    for name in TEXT_FIELDS:
        problem = field_problem(name, getattr(event, name))
        if problem is not None:
            return problem
    return received_at_problem(event.received_at_us)


def decode(payload: bytes) -> VoteEvent:
    """Decode one event; raises ``msgspec.DecodeError``/``ValidationError`` when malformed."""
    return _decoder.decode(payload)
