"""Request and response bodies of the HTTP API (msgspec: validated while decoded)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

# Chosen by the client: 16 to 64 ASCII letters, digits and '-'. A UUID (with or without
# dashes) or a ULID fits, but nothing checks that it is one.
VoteId = Annotated[str, msgspec.Meta(pattern=r"^[0-9A-Za-z-]{16,64}$")]
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


vote_request_decoder = msgspec.json.Decoder(VoteRequest)
json_encoder = msgspec.json.Encoder()
