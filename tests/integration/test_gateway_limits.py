"""Rate limits over HTTP: a flood from one address or for one voter gets 429 with
Retry-After, nothing of it reaches Kafka or the spill, and other clients keep voting.

The gateway here has a tight per-address limit (burst 10, 5/s) so that a few dozen
requests flood it. "Another address" is 127.0.0.2: all of 127.0.0.0/8 is loopback on
Linux, so the client can bind there and the gateway sees a different peer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.gateway_fixtures import GatewayStack, running_gateway

pytestmark = pytest.mark.integration

IP_BURST = 10


@pytest.fixture(scope="module")
def limited_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    home: Path = tmp_path_factory.mktemp("limited")
    with running_gateway(
        home,
        pg_dsn,
        kafka_bootstrap,
        redis_url,
        VOTE_RATE_IP_PER_S="5",
        VOTE_RATE_IP_BURST=str(IP_BURST),
        VOTE_RATE_VOTER_PER_S="0.5",
        VOTE_RATE_VOTER_BURST="3",
    ) as stack:
        yield stack


def _post(client: httpx.Client, stack: GatewayStack, voter: str) -> httpx.Response:
    vote_id = str(uuid.uuid4())
    return client.post(
        f"{stack.base_url}/v1/elections/{stack.election}/votes",
        content=json.dumps({"vote_id": vote_id, "choice": "bob"}),
        headers={
            "authorization": f"Bearer {stack.token(voter, jti=vote_id)}",
            "content-type": "application/json",
        },
        timeout=10,
    )


def _assert_429(resp: httpx.Response, scope: str) -> None:
    assert resp.status_code == 429, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    assert float(resp.headers["retry-after"]) >= 1
    assert resp.json()["status"] == 429
    assert scope in resp.json()["detail"]


def test_a_flood_from_one_address_is_429_and_others_keep_voting(limited_stack: GatewayStack):
    stack = limited_stack
    offsets_before = stack.topic_end_offsets()
    spill_before = stack.metric("vote_spill_writes_total")
    with httpx.Client() as flooder:
        answers = [_post(flooder, stack, f"flood-{i}") for i in range(4 * IP_BURST)]
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    # The burst goes through (plus the odd token regained meanwhile), the rest is refused.
    assert IP_BURST <= len(accepted) < 2 * IP_BURST, [r.status_code for r in answers]
    for resp in refused:
        _assert_429(resp, "address")

    # Another address is not affected by the flood.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        assert _post(other, stack, "bystander").status_code == 202

    # Only the accepted votes were produced; nothing refused went to the spill.
    produced = stack.topic_end_offsets() - offsets_before
    spilled = stack.metric("vote_spill_writes_total") - spill_before
    assert produced + spilled == len(accepted) + 1
    assert stack.metric("vote_rate_limited_total") >= len(refused)


def test_one_voter_voting_again_and_again_is_429(limited_stack: GatewayStack):
    stack = limited_stack
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3")) as client:
        answers = [_post(client, stack, "eager-voter") for _ in range(6)]
    codes = [r.status_code for r in answers]
    assert codes[:3] == [202, 202, 202], codes  # the voter's burst (the processor decides)
    assert 429 in codes[3:], codes
    for resp in answers[3:]:
        if resp.status_code == 429:
            _assert_429(resp, "voter")
