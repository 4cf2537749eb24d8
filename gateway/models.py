"""Request and response bodies of the HTTP API (msgspec: validated while decoded)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Chosen by the client: 16 to 64 ASCII letters, digits and '-'. A UUID (with or without
# dashes) or a ULID fits, but nothing checks that it is one.
VOTE_ID_PATTERN = r"^[0-9A-Za-z-]{16,64}$"
VoteId = Annotated[str, msgspec.Meta(pattern=VOTE_ID_PATTERN)]
CandidateId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class VoteRequest(msgspec.Struct, forbid_unknown_fields=True):
    vote_id: VoteId
    choice: CandidateId


class VoteAccepted(msgspec.Struct):
    vote_id: str
    status: Literal["accepted"]
    durability: Literal["kafka", "spill"]
    received_at: str
    receipt: str


# A token is a compact JWS of a few hundred bytes; the bound keeps one batch's body bounded.
Token = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]


class BatchVote(msgspec.Struct, forbid_unknown_fields=True):
    """One vote of ``POST .../votes:batch``: what ``POST .../votes`` takes, plus the
    voter's token that would have been its ``Authorization`` header."""

    token: Token
    vote_id: VoteId
    choice: CandidateId


class BatchRequest(msgspec.Struct, forbid_unknown_fields=True):
    votes: list[BatchVote]


class BatchResult(msgspec.Struct, omit_defaults=True):
    """One vote's result: ``code`` 202 with the fields of ``VoteAccepted``, or its HTTP
    error code with the RFC 9457 ``problem``."""

    index: int
    code: int
    vote_id: str
    status: Literal["accepted"] | None = None
    durability: Literal["kafka", "spill"] | None = None
    received_at: str | None = None
    receipt: str | None = None
    problem: dict[str, Any] | None = None


class BatchAnswer(msgspec.Struct):
    accepted: int
    refused: int
    results: list[BatchResult]


vote_request_decoder = msgspec.json.Decoder(VoteRequest)
batch_request_decoder = msgspec.json.Decoder(BatchRequest)
json_encoder = msgspec.json.Encoder()

# Once a body has decoded as a VoteRequest, every '"' in it delimits a string: the keys
# are the two known names and the values match patterns without quotes or backslashes,
# so neither can hold an escaped quote. Two keys and two values are eight quotes; any
# other count means a key came twice.
_QUOTES_IN_A_VOTE = 8


class DuplicateKey(ValueError):
    """The JSON object names a key twice (msgspec would keep the last one)."""


def decode_vote_request(body: bytes) -> VoteRequest:
    """The vote, or msgspec's DecodeError/ValidationError, or DuplicateKey."""
    request = vote_request_decoder.decode(body)
    if body.count(b'"') != _QUOTES_IN_A_VOTE:
        raise DuplicateKey("duplicate key: the vote names a key twice")
    return request
