"""``POST /v1/elections/{id}/votes:batch`` through a real gateway and processor.

See docs/ARCHITECTURE.md, HTTP API. Each vote of a batch is judged on its own: 202 only
when durable, stored exactly once; a refused vote gets its problem and produces nothing;
a problem of the whole request accepts no vote at all.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.integration.gateway_fixtures import GatewayStack

pytestmark = pytest.mark.integration


def _url(stack: GatewayStack, election: str | None = None) -> str:
    return f"{stack.base_url}/v1/elections/{election or stack.election}/votes:batch"


def _post(stack: GatewayStack, body: object, **headers: str) -> httpx.Response:
    return httpx.post(
        _url(stack),
        content=body if isinstance(body, bytes) else json.dumps(body),
        headers={"content-type": "application/json", **headers},
        timeout=30,
    )


def _signed(stack: GatewayStack, voter: str, choice: str, **kw: str) -> dict[str, str]:
    """One vote of a batch: its token's jti is its vote_id, as for a single vote."""
    vote_id = str(uuid.uuid4())
    return {"token": stack.token(voter, jti=vote_id, **kw), "vote_id": vote_id, "choice": choice}


def _stored(stack: GatewayStack, prefix: str, expected: int, timeout: float = 90.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.stored_counts(prefix)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_each_vote_gets_its_own_result_and_only_accepted_ones_are_stored(
    gateway_stack: GatewayStack,
) -> None:
    stack = gateway_stack
    run = uuid.uuid4().hex[:6]
    good = [_signed(stack, f"b-{run}-{i}", stack.candidates[i % 3]) for i in range(20)]
    bad_token = {"token": "not-a-jwt", "vote_id": str(uuid.uuid4()), "choice": "alice"}
    unknown = _signed(stack, f"b-{run}-u", "zed")
    other_election = _signed(stack, f"b-{run}-o", "alice", election="some-other-election")
    # A valid token, but for another vote_id than the one it is sent with.
    not_its_jti = {**_signed(stack, f"b-{run}-j", "alice"), "vote_id": str(uuid.uuid4())}
    votes = [*good[:10], bad_token, unknown, other_election, not_its_jti, *good[10:]]
    resp = _post(stack, {"votes": votes})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["accepted"] == 20 and doc["refused"] == 4, doc["results"][:2]
    assert [r["index"] for r in doc["results"]] == list(range(len(votes)))
    codes = {r["vote_id"]: r["code"] for r in doc["results"]}
    assert codes[bad_token["vote_id"]] == 401
    assert codes[unknown["vote_id"]] == 422
    assert codes[other_election["vote_id"]] == 403
    assert codes[not_its_jti["vote_id"]] == 403
    refused = {r["vote_id"]: r for r in doc["results"] if r["code"] != 202}
    assert refused[unknown["vote_id"]]["problem"]["status"] == 422
    for r in doc["results"]:
        if r["code"] == 202:
            assert r["status"] == "accepted" and r["durability"] in ("kafka", "spill")
            assert r["receipt"] and r["received_at"]

    # Exactly once: the 20 accepted, none of the refused.
    rows = _stored(stack, f"b-{run}-", 20)
    assert rows == {v["vote_id"]: 1 for v in good}

    # A retry of the whole batch is safe: the same answers, still stored once.
    again = _post(stack, {"votes": votes}).json()
    assert again["results"] == doc["results"]
    # A vote of the batch retried alone gets the batch's answer for it.
    single = httpx.post(
        f"{stack.base_url}/v1/elections/{stack.election}/votes",
        content=json.dumps({"vote_id": good[0]["vote_id"], "choice": good[0]["choice"]}),
        headers={
            "authorization": f"Bearer {good[0]['token']}",
            "content-type": "application/json",
        },
        timeout=30,
    )
    assert single.status_code == 202
    first = next(r for r in doc["results"] if r["vote_id"] == good[0]["vote_id"])
    assert {k: v for k, v in first.items() if k not in ("index", "code")} == single.json()
    assert _stored(stack, f"b-{run}-", 20) == {v["vote_id"]: 1 for v in good}


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{not json", {}, 400),
        ({"votes": []}, {}, 400),
        ({"votes": [{"vote_id": "x" * 20}]}, {}, 400),  # fields missing
        ({"votes": [], "extra": 1}, {}, 400),
        ({"nothing": 1}, {}, 400),
        (
            {"votes": [{"token": "t", "vote_id": "y" * 20, "choice": "alice"}]},
            {"content-type": "text/plain"},
            415,
        ),
    ],
)
def test_a_bad_request_is_refused_whole_and_produces_nothing(
    gateway_stack: GatewayStack, body: object, headers: dict[str, str], status: int
) -> None:
    stack = gateway_stack
    before = stack.topic_end_offsets()
    resp = _post(stack, body, **headers)
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert stack.topic_end_offsets() == before


def test_more_votes_than_allowed_is_refused_whole(gateway_stack: GatewayStack) -> None:
    stack = gateway_stack
    run = uuid.uuid4().hex[:6]
    limit = stack.settings.batch_max_votes
    votes = [_signed(stack, f"m-{run}-{i}", "alice") for i in range(limit + 1)]
    before = stack.topic_end_offsets()
    resp = _post(stack, {"votes": votes})
    assert resp.status_code in (400, 413), resp.text
    assert stack.topic_end_offsets() == before


def test_unknown_election_is_a_404(gateway_stack: GatewayStack) -> None:
    resp = httpx.post(
        _url(gateway_stack, "no-such-election"),
        content=b'{"votes":[]}',
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 404


def test_openapi_documents_the_batch(gateway_stack: GatewayStack) -> None:
    spec = httpx.get(f"{gateway_stack.base_url}/openapi.json", timeout=30).json()
    post = spec["paths"]["/v1/elections/{election_id}/votes:batch"]["post"]
    assert "200" in post["responses"]
    assert "BatchAnswer" in spec["components"]["schemas"]
