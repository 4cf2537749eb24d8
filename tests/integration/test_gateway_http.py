"""Votes over HTTP through a real gateway and processor into PostgreSQL.

See docs/ARCHITECTURE.md, HTTP API, and invariant A of Flow and invariants.

Every acknowledged vote must be stored exactly once; refused requests must get their
problem document and produce nothing to Kafka or the spill.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import jwt
import msgspec
import pytest

from bench.procs import wait_until
from bench.scrape import samples
from gateway.models import VoteAccepted
from tests.integration.gateway_fixtures import GatewayStack, running_gateway

pytestmark = pytest.mark.integration


def _stored(
    stack: GatewayStack, voter_prefix: str, expected: int, timeout: float = 60.0
) -> dict[str, int]:
    """vote_id -> row count in `votes` for the election's voters with this prefix, once
    `expected` ids are there."""
    deadline = time.monotonic() + timeout
    while True:
        rows = stack.stored_counts(voter_prefix)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_every_acknowledged_vote_is_stored_exactly_once(gateway_stack: GatewayStack):
    stack = gateway_stack
    run = uuid.uuid4().hex[:6]
    acked: dict[str, dict] = {}
    with httpx.Client(timeout=10) as client:
        for i in range(300):
            vote_id = str(uuid.uuid4())
            body = json.dumps({"vote_id": vote_id, "choice": stack.candidates[i % 3]})
            headers = {
                "authorization": f"Bearer {stack.token(f'v-{run}-{i}', jti=vote_id)}",
                "content-type": "application/json",
            }
            url = f"{stack.base_url}/v1/elections/{stack.election}/votes"
            resp = client.post(url, content=body, headers=headers)
            assert resp.status_code == 202, resp.text
            acked[vote_id] = resp.json()
            if i % 5 == 0:  # a client retry after a lost answer: same vote_id, same content
                again = client.post(url, content=body, headers=headers)
                assert again.status_code == 202
                assert again.json() == acked[vote_id], "a retry must get the same answer"
    for answer in acked.values():
        assert answer["status"] == "accepted"
        assert answer["durability"] in ("kafka", "spill")
        # "<receipt key id>.r1.<signature>"
        assert re.fullmatch(r"rk-[A-Za-z0-9_-]{10}\.r1\.[A-Za-z0-9_-]{43}", answer["receipt"])

    # Only this test's voters: other tests vote in the same election (module-scoped stack).
    stored = _stored(stack, f"v-{run}-", len(acked))
    assert set(stored) == set(acked), "stored votes differ from acknowledged votes"
    assert set(stored.values()) == {1}, "a vote was stored more than once"


def test_same_vote_id_with_other_content_is_409(gateway_stack: GatewayStack):
    stack = gateway_stack
    vote_id = str(uuid.uuid4())
    token = stack.token(f"conflict-{vote_id}", jti=vote_id)
    first = stack.vote("", "alice", vote_id, token)
    assert first.status_code == 202
    other = stack.vote("", "bob", vote_id, token)
    assert other.status_code == 409
    assert other.headers["content-type"] == "application/problem+json"
    assert other.json()["status"] == 409


def _problem(resp: httpx.Response, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    doc = resp.json()
    assert doc["status"] == status
    assert doc["type"].startswith("https://") and doc["title"] and doc["detail"]
    assert doc["request_id"] == resp.headers["x-request-id"]
    return doc


def test_bad_requests_get_problems_and_produce_nothing(gateway_stack: GatewayStack):
    stack = gateway_stack
    url = f"{stack.base_url}/v1/elections/{stack.election}/votes"
    before = stack.topic_end_offsets()
    spill_writes_before = stack.metric("vote_spill_writes_total")
    good_vote_id = str(uuid.uuid4())
    good_body = json.dumps({"vote_id": good_vote_id, "choice": "alice"})
    voter = f"bad-{uuid.uuid4().hex[:6]}"
    token = stack.token(voter, jti=good_vote_id)

    def post(
        body: str | bytes, token: str = token, ctype: str = "application/json", target: str = url
    ) -> httpx.Response:
        return httpx.post(
            target,
            content=body,
            timeout=10,
            headers={"authorization": f"Bearer {token}", "content-type": ctype},
        )

    # 401: forged signature, garbage, expired, alg none, missing header.
    header, claims, sig = token.split(".")
    forged = f"{header}.{claims}.{sig[:-4]}AAAA"
    assert _problem(post(good_body, forged), 401)["reason"] == "bad_signature"
    assert _problem(post(good_body, "not-a-jwt"), 401)["reason"] == "malformed"
    expired = stack.token(voter, ttl_s=-3600)
    assert _problem(post(good_body, expired), 401)["reason"] == "expired"
    none_token = jwt.encode(
        {"sub": voter, "aud": stack.election, "exp": time.time() + 60, "jti": "x"},
        None,
        algorithm="none",
        headers={"kid": "hs-1"},
    )
    assert _problem(post(good_body, none_token), 401)["reason"] == "unsupported_alg"
    no_auth = httpx.post(url, content=good_body, headers={"content-type": "application/json"})
    _problem(no_auth, 401)
    # 401: tokens PyJWT signs correctly but the gateway must still refuse.
    with open(stack.issuer_file) as fh:
        issuer_doc = json.load(fh)
    issuer = {k["alg"]: k for k in issuer_doc["keys"]}
    secret = base64.urlsafe_b64decode(issuer["HS256"]["k"] + "==")
    ed_public = base64.urlsafe_b64decode(issuer["EdDSA"]["x"] + "==")
    now = time.time()
    claims = {
        "iss": issuer_doc["iss"],
        "sub": voter,
        "aud": stack.election,
        "exp": now + 60,
        "nbf": now - 1,
        "jti": "j",
    }
    unknown_kid = jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "hs-retired"})
    assert _problem(post(good_body, unknown_kid), 401)["reason"] == "unknown_kid"
    not_yet = jwt.encode(
        {**claims, "nbf": now + 3600},
        secret,
        algorithm="HS256",
        headers={"kid": issuer["HS256"]["kid"]},
    )
    assert _problem(post(good_body, not_yet), 401)["reason"] == "not_yet_valid"
    # alg confusion: HMAC keyed with the Ed25519 public key, under the Ed25519 key's kid.
    confused = jwt.encode(
        claims, ed_public, algorithm="HS256", headers={"kid": issuer["EdDSA"]["kid"]}
    )
    assert _problem(post(good_body, confused), 401)["reason"] == "alg_mismatch"
    # 403: a valid token, but for another election.
    other = stack.token(voter, election="some-other-election")
    assert _problem(post(good_body, other), 403)["reason"] == "wrong_audience"
    # 400: malformed JSON, wrong shape, deeply nested.
    _problem(post("{not json"), 400)
    _problem(post(json.dumps({"vote_id": "x", "choice": "alice"})), 400)
    _problem(post("[" * 2000 + "]" * 2000), 400)
    # 404: unknown election (checked before the token).
    _problem(post(good_body, target=f"{stack.base_url}/v1/elections/nope-{voter}/votes"), 404)
    # 413, 415, 422.
    _problem(post("x" * 100_000), 413)
    _problem(post(good_body, ctype="text/plain"), 415)
    _problem(post(json.dumps({"vote_id": good_vote_id, "choice": "mallory"})), 422)
    # 405 for the wrong method.
    _problem(httpx.get(url), 405)
    # The load balancer's request id is kept, so its logs and ours line up.
    traced = httpx.post(
        url, content="{", headers={"x-request-id": "lb-7f3a", "content-type": "application/json"}
    )
    assert _problem(traced, 401)["request_id"] == "lb-7f3a"

    assert stack.topic_end_offsets() == before, "a refused request reached Kafka"
    # Earlier votes may have been spilled (Kafka slower than the 50 ms deadline); what
    # matters is that no refused request wrote to the spill.
    assert stack.metric("vote_spill_writes_total") == spill_writes_before, (
        "a refused request reached the spill"
    )
    # And the server keeps answering good requests.
    assert stack.vote(voter + "-ok").status_code == 202


def test_closed_election_is_403(gateway_stack: GatewayStack):
    from gateway import admin

    stack = gateway_stack
    closed = f"closed-{uuid.uuid4().hex[:6]}"
    admin.create_election(stack.pg_dsn, closed, ["alice"], closes_at=time.time() - 60)
    resp = stack.vote("late-voter", election=closed)
    assert _problem(resp, 403)["type"].endswith("election-not-open")


def test_health_and_openapi(gateway_stack: GatewayStack):
    base = gateway_stack.base_url
    assert httpx.get(base + "/livez").json() == {"status": "ok"}
    ready = httpx.get(base + "/readyz").json()
    assert ready["status"] == "ready" and all(ready["checks"].values())
    spec = httpx.get(base + "/openapi.json").json()
    assert "/v1/elections/{election_id}/votes" in spec["paths"]
    _problem(httpx.get(base + "/no/such/route"), 404)


def test_metrics_are_exposed(gateway_stack: GatewayStack):
    port = gateway_stack.env["VOTE_METRICS_PORT"]
    answer = gateway_stack.vote(f"metrics-{uuid.uuid4().hex[:6]}")
    assert answer.status_code == 202
    # A refused token too, so that this test does not depend on others having sent one.
    _problem(gateway_stack.vote("metrics-forger", token="not.a.token"), 401)
    # Per-request counts reach the shared values once a second (metrics.FLUSH_INTERVAL_S).
    # The labelled sample is there, at 0, from the first request on: wait for the count.
    deadline = time.monotonic() + 10
    while True:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if re.search(r'^vote_requests_total\{code="202"\} [1-9]', text, re.M):
            break
        assert time.monotonic() < deadline, "no 202 counted within 10 s"
        time.sleep(0.2)
    for name in (
        "vote_requests_total",
        "vote_ack_seconds_bucket",
        "vote_spill_events",
        "vote_token_rejections_total",
    ):
        assert name in text, f"{name} missing from /metrics"
    # The acknowledgement is timed under the durability its answer states.
    durability = answer.json()["durability"]
    acks = {
        s.labels["durability"]: s.value
        for s in samples(f"http://127.0.0.1:{port}/metrics", "vote_ack_seconds") or []
        if s.name == "vote_ack_seconds_count"
    }
    assert acks.get(durability, 0) >= 1, acks


def _get(stack: GatewayStack, path: str, token: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{stack.base_url}{path}", headers=headers, timeout=10)


def test_a_vote_is_followed_through_its_status_and_the_results(gateway_stack: GatewayStack):
    """POST → the real 202 body as VoteAccepted → GET …/votes/{id} until counted → GET
    …/results counting it, through the running gateway and processor."""
    stack = gateway_stack
    voter = f"follow-{uuid.uuid4().hex[:6]}"
    vote_id = str(uuid.uuid4())
    token = stack.token(voter, jti=vote_id)
    resp = stack.vote(voter, "carol", vote_id, token)
    assert resp.status_code == 202, resp.text
    accepted = msgspec.json.decode(resp.content, type=VoteAccepted)
    assert msgspec.to_builtins(accepted) == resp.json(), "fields VoteAccepted does not name"
    assert (accepted.vote_id, accepted.status) == (vote_id, "accepted")
    assert accepted.durability in ("kafka", "spill")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", accepted.received_at)
    assert re.fullmatch(r"rk-[A-Za-z0-9_-]{10}\.r1\.[A-Za-z0-9_-]{43}", accepted.receipt)

    status_path = f"/v1/elections/{stack.election}/votes/{vote_id}"
    seen: list[dict] = []

    def counted() -> bool:
        answer = _get(stack, status_path, token)
        assert answer.status_code == 200, answer.text
        seen.append(answer.json())
        return seen[-1]["status"] == "counted"

    wait_until("the vote counted", counted, 60, lambda: seen[-3:])
    assert seen[-1] == {"vote_id": vote_id, "status": "counted"}
    assert {s["status"] for s in seen} <= {"pending", "counted"}
    # Another voter asking about this vote_id learns nothing: the answer of an unknown one.
    other = _get(stack, status_path, stack.token(f"{voter}-other"))
    assert (other.status_code, other.json()) == (200, {"vote_id": vote_id, "status": "pending"})
    _problem(_get(stack, status_path), 401)

    results_path = f"/v1/elections/{stack.election}/results"
    got: list[dict] = []

    def carol_counted() -> bool:
        answer = _get(stack, results_path)
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-cache"
        got.append(answer.json())
        return got[-1]["tallies"].get("carol", 0) >= 1

    wait_until("the results to count it", carol_counted, 60, lambda: got[-1:])
    doc = got[-1]
    assert doc["election_id"] == stack.election
    assert set(doc["tallies"]) == set(stack.candidates)  # every candidate, 0 included
    assert doc["total"] == sum(doc["tallies"].values())
    assert doc["source"] in ("redis", "postgres") and doc["as_of"] > 0
    _problem(_get(stack, f"/v1/elections/nope-{voter}/results"), 404)


def test_a_retry_sent_while_the_first_is_being_made_durable_waits_for_it(
    tmp_path, pg_dsn: str, kafka_bootstrap: str, redis_url: str
):
    """The same vote twice at once. Kafka's delivery report comes only after the
    producer's linger (1.5 s here, with the spill deadline far beyond it), so the second
    request arrives while the first is still being made durable: it must wait for that
    outcome and answer the same bytes, and the vote must reach Kafka once."""
    linger_s = 1.5
    with running_gateway(
        tmp_path,
        pg_dsn,
        kafka_bootstrap,
        redis_url,
        VOTE_KAFKA_LINGER_MS=str(int(linger_s * 1000)),
        VOTE_SPILL_DEADLINE_MS="60000",
    ) as stack:
        before = stack.topic_end_offsets()
        vote_id = str(uuid.uuid4())
        token = stack.token("twice", jti=vote_id)

        def send() -> tuple[float, float, httpx.Response]:
            started = time.monotonic()
            resp = stack.vote("twice", "bob", vote_id, token)
            return started, time.monotonic(), resp

        with ThreadPoolExecutor(2) as pool:
            first, second = pool.map(lambda _: send(), range(2))
        for _started, _answered, resp in (first, second):
            assert resp.status_code == 202, resp.text
            assert msgspec.json.decode(resp.content, type=VoteAccepted).durability == "kafka"
        assert first[2].content == second[2].content  # the same receipt and received_at
        # Both were in flight together, and neither was answered before the delivery report.
        assert max(first[0], second[0]) < min(first[1], second[1])
        assert min(first[1] - first[0], second[1] - second[0]) >= linger_s * 0.6
        wait_until(
            "the vote in Kafka", lambda: stack.topic_end_offsets() > before, 30, lambda: before
        )
        assert stack.topic_end_offsets() == before + 1, "the retry produced a second event"
