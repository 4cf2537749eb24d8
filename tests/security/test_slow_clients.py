"""Issue 15 item 1: slow clients cannot hold the gateway.

A body that does not arrive within the body read deadline is answered 408; a client that
disconnects halfway through its body is counted as a client error (499), never as a 5xx
with an ERROR traceback; headers that do not arrive within the header read deadline
close the connection; a client cannot hold more than its share of a worker's requests.
"""

from __future__ import annotations

import contextlib
import time
import uuid

import httpx
import pytest

from bench.procs import wait_until
from tests.integration.gateway_fixtures import GatewayStack
from tests.security.edge import (
    BODY_READ_TIMEOUT_S,
    HEADER_READ_TIMEOUT_MS,
    MAX_IN_FLIGHT,
    MAX_IN_FLIGHT_PER_CLIENT,
    client_headers,
    connect,
    read_answer,
    status_counts,
    status_of,
    vote_head,
)

pytestmark = pytest.mark.integration

# Generous: the answer must come from the deadline, not from the test giving up, but a
# starved machine may be slow to send it.
MARGIN_S = 20.0


def _no_5xx_and_no_traceback(stack: GatewayStack, before: dict[str, float]) -> None:
    after = status_counts(stack)
    grown = {code: n - before.get(code, 0) for code, n in after.items() if code.startswith("5")}
    assert not any(grown.values()), f"5xx answers counted: {grown}"
    log = stack.services["gateway"].log()
    assert "Traceback" not in log, log[-3000:]
    assert '"level":"ERROR"' not in log.replace(" ", ""), log[-3000:]


def test_a_body_that_stops_arriving_is_answered_408(edge_stack: GatewayStack) -> None:
    before = status_counts(edge_stack)
    token = edge_stack.token(f"slow-{uuid.uuid4().hex[:8]}")
    with connect(edge_stack) as sock:
        sock.sendall(vote_head(edge_stack, token, 100, "X-Forwarded-For: 198.19.0.1\r\n"))
        sock.sendall(b'{"vote_id":')  # 11 of the 100 announced bytes
        started = time.monotonic()
        answer = read_answer(sock, BODY_READ_TIMEOUT_S + MARGIN_S)
    assert status_of(answer) == 408, answer[:300]
    assert time.monotonic() - started < BODY_READ_TIMEOUT_S + MARGIN_S
    wait_until(
        "the 408 counted",
        lambda: status_counts(edge_stack).get("408", 0) > before.get("408", 0),
        60,
    )
    _no_5xx_and_no_traceback(edge_stack, before)


def test_a_client_leaving_mid_body_is_a_client_error_not_a_500(edge_stack: GatewayStack) -> None:
    before = status_counts(edge_stack)
    token = edge_stack.token(f"gone-{uuid.uuid4().hex[:8]}")
    with connect(edge_stack) as sock:
        sock.sendall(vote_head(edge_stack, token, 100, "X-Forwarded-For: 198.19.0.2\r\n"))
        sock.sendall(b'{"vote_id":')
        time.sleep(0.2)  # let the gateway start waiting for the rest (not a wait for state)
    wait_until(
        "the abandoned request counted as 499",
        lambda: status_counts(edge_stack).get("499", 0) > before.get("499", 0),
        60,
        lambda: status_counts(edge_stack),
    )
    _no_5xx_and_no_traceback(edge_stack, before)


def test_headers_that_stop_arriving_close_the_connection(edge_stack: GatewayStack) -> None:
    with connect(edge_stack) as sock:
        sock.sendall(b"POST /v1/elections/x/votes HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")
        started = time.monotonic()
        answer = read_answer(sock, HEADER_READ_TIMEOUT_MS / 1000 + MARGIN_S)
        elapsed = time.monotonic() - started
    # hyper closes the connection (it may say 408 first): either way, before our margin.
    assert status_of(answer) in (None, 408), answer[:300]
    assert elapsed < HEADER_READ_TIMEOUT_MS / 1000 + MARGIN_S, "the connection stayed open"


def test_one_client_cannot_take_every_request_slot(edge_stack: GatewayStack) -> None:
    """A client holding its share of slow requests is refused more (429), other clients
    are not; past the worker's cap everyone gets 503 at once, not a hung request."""
    vote_id = uuid.uuid4().hex
    hog_voter = f"hog-{uuid.uuid4().hex[:8]}"
    token = edge_stack.token(hog_voter, jti=vote_id)
    hog = client_headers()["x-forwarded-for"]
    with contextlib.ExitStack() as held:
        for _ in range(MAX_IN_FLIGHT_PER_CLIENT):
            sock = held.enter_context(connect(edge_stack))
            sock.sendall(vote_head(edge_stack, token, 100, f"X-Forwarded-For: {hog}\r\n"))

        def hog_refused() -> bool:
            # The held requests reach the gateway in their own time on a loaded machine.
            resp = edge_stack.vote(
                hog_voter,
                edge_stack.candidates[0],
                vote_id=vote_id,
                token=token,
                headers={"x-forwarded-for": hog},
                timeout=30,
            )
            return _refused_for_slots(resp)

        wait_until("the hog's next request refused", hog_refused, BODY_READ_TIMEOUT_S, interval=0.5)

        resp = edge_stack.vote(
            f"other-{uuid.uuid4().hex[:8]}",
            edge_stack.candidates[0],
            headers=client_headers(),
            timeout=30,
        )
        assert resp.status_code == 202, resp.text


def _refused_for_slots(resp: httpx.Response) -> bool:
    """A 429 for holding too many requests, not for the address's rate limit."""
    return resp.status_code == 429 and "in flight" in resp.json()["detail"]


def test_slow_batches_hold_request_slots_like_single_votes(edge_stack: GatewayStack) -> None:
    """A batch is a request in flight too: a client holding its share with batch bodies
    that never arrive gets 429 for its next batch and its next vote, and each held batch
    is answered 408 at the body deadline, no 5xx."""
    before = status_counts(edge_stack)
    hog = client_headers()["x-forwarded-for"]
    token = edge_stack.token(f"batch-hog-{uuid.uuid4().hex[:8]}")
    vote_id = uuid.uuid4().hex
    batch_body = {
        "votes": [
            {
                "token": edge_stack.token(f"b-{vote_id[:8]}", jti=vote_id),
                "vote_id": vote_id,
                "choice": edge_stack.candidates[0],
            }
        ]
    }
    url = f"{edge_stack.base_url}/v1/elections/{edge_stack.election}"
    with contextlib.ExitStack() as held:
        sockets = []
        for _ in range(MAX_IN_FLIGHT_PER_CLIENT):
            sock = held.enter_context(connect(edge_stack))
            sock.sendall(
                vote_head(edge_stack, token, 100, f"X-Forwarded-For: {hog}\r\n", "votes:batch")
            )
            sockets.append(sock)

        def hog_refused() -> bool:
            resp = httpx.post(
                f"{url}/votes:batch", json=batch_body, headers={"x-forwarded-for": hog}, timeout=30
            )
            return _refused_for_slots(resp)

        # Each try spends the hog's address budget (RATE_IP_BURST): a few tries only.
        wait_until("the hog's next batch refused", hog_refused, BODY_READ_TIMEOUT_S, interval=1.0)
        answers = [read_answer(sock, BODY_READ_TIMEOUT_S + MARGIN_S) for sock in sockets]
    assert [status_of(answer) for answer in answers] == [408] * MAX_IN_FLIGHT_PER_CLIENT
    # The slots are free again: the same batch from the same client is now answered.
    resp = httpx.post(
        f"{url}/votes:batch", json=batch_body, headers={"x-forwarded-for": hog}, timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["results"][0]["code"] == 202
    _no_5xx_and_no_traceback(edge_stack, before)


def test_past_the_workers_cap_requests_are_refused_at_once(edge_stack: GatewayStack) -> None:
    with contextlib.ExitStack() as held:
        for i in range(MAX_IN_FLIGHT):
            if i % MAX_IN_FLIGHT_PER_CLIENT == 0:
                address = client_headers()["x-forwarded-for"]
                token = edge_stack.token(f"cap-{uuid.uuid4().hex[:8]}")
            sock = held.enter_context(connect(edge_stack))
            sock.sendall(vote_head(edge_stack, token, 100, f"X-Forwarded-For: {address}\r\n"))

        def refused_at_once() -> bool:
            resp = edge_stack.vote(
                f"late-{uuid.uuid4().hex[:8]}",
                edge_stack.candidates[0],
                headers=client_headers(),
                timeout=30,
            )
            if resp.status_code == 503:
                assert resp.headers["retry-after"]
                return True
            return False

        wait_until(
            "a request past the cap refused", refused_at_once, BODY_READ_TIMEOUT_S, interval=0.05
        )
