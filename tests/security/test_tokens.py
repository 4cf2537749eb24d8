"""Issue 15 item 6: tokens have a bounded lifetime and a known issuer, and one token
authorizes one vote, whichever gateway worker answers (docs/ARCHITECTURE.md, Trust
boundaries): the vote_id a token authorizes is its jti."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from bench.procs import wait_until
from tests.integration.gateway_fixtures import GatewayStack, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def two_workers(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    home = tmp_path_factory.mktemp("tokens")
    with running_gateway(home, pg_dsn, kafka_bootstrap, redis_url, VOTE_WORKERS="2") as stack:
        yield stack


def _post(stack: GatewayStack, token: str, vote_id: str, choice: str = "alice") -> httpx.Response:
    # A fresh connection per request, so the kernel spreads them over both workers.
    return httpx.post(
        f"{stack.base_url}/v1/elections/{stack.election}/votes",
        content=json.dumps({"vote_id": vote_id, "choice": choice}),
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        timeout=15,
    )


def _signed(stack: GatewayStack, **claims: Any) -> str:
    """An HS256 token of the stack's issuer key with exactly these claims."""
    doc = json.loads(Path(stack.issuer_file).read_text())
    jwk = next(k for k in reversed(doc["keys"]) if k["alg"] == "HS256")
    secret = base64.urlsafe_b64decode(jwk["k"] + "==")
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": jwk["kid"]})


def _claims(stack: GatewayStack, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    jti = str(uuid.uuid4())
    base = {
        "iss": json.loads(Path(stack.issuer_file).read_text())["iss"],
        "sub": f"tok-{jti[:8]}",
        "aud": stack.election,
        "iat": now,
        "nbf": now - 1,
        "exp": now + 600,
        "jti": jti,
    }
    return {**base, **overrides}


def _reason(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    return answer.json()["reason"]


def test_a_token_is_bound_to_one_vote_id_on_every_worker(two_workers: GatewayStack) -> None:
    stack = two_workers
    vote_id = str(uuid.uuid4())
    token = stack.token(f"bound-{vote_id[:8]}", jti=vote_id)
    first = _post(stack, token, vote_id)
    assert first.status_code == 202, first.text
    for _ in range(12):
        # The same token and vote_id: an idempotent retry, whichever worker answers.
        again = _post(stack, token, vote_id)
        assert again.status_code == 202, again.text
        assert again.json()["vote_id"] == vote_id
        # The same token for another vote_id: refused everywhere.
        assert _reason(_post(stack, token, str(uuid.uuid4())), 403) == "token_bound"
        assert _reason(_post(stack, token, str(uuid.uuid4()), "bob"), 403) == "token_bound"
    # Retries that reached the other worker may be produced again (the processor dedups
    # them); no refused vote is stored: the voter has exactly the one vote.
    voter = f"bound-{vote_id[:8]}"
    wait_until("the vote stored", lambda: stack.stored_counts(voter) == {vote_id: 1}, 60)


@pytest.mark.parametrize(
    ("label", "overrides", "reason"),
    [
        ("exp = 1e300", {"exp": 1e300}, "lifetime_too_long"),
        ("two days from iat", {"exp": int(time.time()) + 2 * 86400}, "lifetime_too_long"),
        ("issued an hour from now", {"iat": int(time.time()) + 3600}, "issued_in_future"),
        ("another issuer", {"iss": "someone-else"}, "wrong_issuer"),
        ("no issuer", {"iss": None}, "missing_claim"),
    ],
)
def test_lifetime_issuer_and_issued_at_are_checked(
    two_workers: GatewayStack, label: str, overrides: dict[str, Any], reason: str
) -> None:
    stack = two_workers
    claims = _claims(stack, **overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    answer = _post(stack, _signed(stack, **claims), claims["jti"])
    assert _reason(answer, 401) == reason, label


def test_a_well_formed_token_of_the_issuer_is_accepted(two_workers: GatewayStack) -> None:
    """The same helper's token without a defect is accepted (the refusals above are real)."""
    stack = two_workers
    claims = _claims(stack)
    answer = _post(stack, _signed(stack, **claims), claims["jti"])
    assert answer.status_code == 202, answer.text
