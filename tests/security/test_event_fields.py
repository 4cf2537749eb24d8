"""Issue 15 item 3: the gateway never acknowledges a vote the processor would refuse as
malformed. Both apply core.event's field limits (UTF-8 bytes, no control characters);
see docs/ARCHITECTURE.md, Event schema."""

from __future__ import annotations

import uuid

import pytest

from bench.procs import wait_until
from core.event import MAX_FIELD_BYTES
from tests.integration.gateway_fixtures import GatewayStack

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("label", "tail", "problem"),
    [
        ("320 ASCII characters", "v" * 307, "longer than 256 bytes in UTF-8"),
        ("143 characters, 273 bytes", "\u00e9" * 130, "longer than 256 bytes in UTF-8"),
        ("a control character", "\u0085", "contains a control character"),
    ],
)
def test_a_sub_the_processor_would_refuse_gets_a_400_and_produces_nothing(
    gateway_stack: GatewayStack, label: str, tail: str, problem: str
) -> None:
    stack = gateway_stack
    voter = f"sub-{uuid.uuid4().hex[:8]}-{tail}"
    before = stack.topic_end_offsets()
    answer = stack.vote(voter)
    assert answer.status_code == 400, (label, answer.text)
    assert answer.headers["content-type"] == "application/problem+json"
    assert "the token's sub (voter_id)" in answer.json()["detail"]
    assert problem in answer.json()["detail"]
    assert stack.topic_end_offsets() == before, "a refused vote reached Kafka"


def test_a_sub_of_exactly_the_limit_is_acknowledged_and_counted(
    gateway_stack: GatewayStack,
) -> None:
    """At the limit, in multi-byte characters, the vote is acknowledged and stored."""
    stack = gateway_stack
    prefix = f"lim-{uuid.uuid4().hex[:8]}-"
    voter = prefix + "\u00e9" * ((MAX_FIELD_BYTES - len(prefix)) // 2)
    voter += "x" * (MAX_FIELD_BYTES - len(voter.encode()))
    assert len(voter.encode()) == MAX_FIELD_BYTES
    vote_id = str(uuid.uuid4())
    answer = stack.vote(voter, vote_id=vote_id)
    assert answer.status_code == 202, answer.text
    wait_until(
        "the vote stored", lambda: stack.stored_counts(prefix) == {vote_id: 1}, 60, lambda: ""
    )
