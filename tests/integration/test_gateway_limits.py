"""Rate limits over HTTP: a flood from one address or for one voter gets 429 with
Retry-After, nothing of it reaches Kafka or the spill, and other clients keep voting.

The gateway here has a tight per-address limit (burst 10, 5/s) so that a few dozen
requests flood it. "Another address" is 127.0.0.2: all of 127.0.0.0/8 is loopback on
Linux, so the client can bind there and the gateway sees a different peer.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.procs import wait_until
from tests.integration.gateway_fixtures import GatewayStack, running_gateway

pytestmark = pytest.mark.integration

IP_BURST = 10
IP_PER_S = 5


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
        VOTE_RATE_IP_PER_S=str(IP_PER_S),
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
    flood = f"flood-{uuid.uuid4().hex[:6]}-"
    with httpx.Client() as flooder:
        started = time.monotonic()
        answers = [_post(flooder, stack, f"{flood}{i}") for i in range(4 * IP_BURST)]
        took = time.monotonic() - started
    accepted = [r for r in answers if r.status_code == 202]
    refused = [r for r in answers if r.status_code != 202]
    # The burst goes through, plus the tokens regained while the flood lasted (a slow
    # machine takes longer to send it); the rest is refused.
    regained = int(IP_PER_S * took) + 1
    assert IP_BURST <= len(accepted) <= IP_BURST + regained, [r.status_code for r in answers]
    assert refused
    for resp in refused:
        _assert_429(resp, "address")
    assert stack.metric("vote_rate_limited_total") >= len(refused)

    # Another address is not affected by the flood.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        bystander = _post(other, stack, f"{flood}bystander")
    assert bystander.status_code == 202, bystander.text

    # What is counted is exactly the accepted votes, each once: nothing refused reached
    # Kafka or the spill (however a vote went, via Kafka or via the spill, it ends here).
    expected = {r.json()["vote_id"] for r in [*accepted, bystander]}
    stored: dict[str, int] = {}

    def all_accepted_stored() -> bool:
        nonlocal stored
        stored = stack.stored_counts(flood)
        return len(stored) >= len(expected)

    wait_until("the accepted votes stored", all_accepted_stored, 120, lambda: f"{stored}")
    assert set(stored) == expected
    assert set(stored.values()) == {1}


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
