"""Issue 15 item 10: the protocol at the edges — methods, media types, the Bearer scheme,
duplicate JSON keys, oversized headers and an OpenAPI document that lists every answer."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.integration.gateway_fixtures import GatewayStack
from tests.security.edge import MAX_HEADER_BYTES, client_headers, connect, read_answer, status_of

pytestmark = pytest.mark.integration


def _votes_url(stack: GatewayStack) -> str:
    return f"{stack.base_url}/v1/elections/{stack.election}/votes"


def _vote(
    stack: GatewayStack,
    *,
    body: bytes | None = None,
    content_type: str = "application/json",
    scheme: str = "Bearer",
) -> httpx.Response:
    voter = f"edge-{uuid.uuid4().hex[:8]}"
    vote_id = uuid.uuid4().hex
    if body is None:
        body = f'{{"vote_id":"{vote_id}","choice":"{stack.candidates[0]}"}}'.encode()
    else:
        body = body.replace(b"%s", vote_id.encode())
    return httpx.post(
        _votes_url(stack),
        content=body,
        headers={
            "content-type": content_type,
            "authorization": f"{scheme} {stack.token(voter, jti=vote_id)}",
            **client_headers(),
        },
        timeout=30,
    )


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("TRACE", "/livez", "GET"),
        ("POST", "/readyz", "GET"),
        ("DELETE", "/openapi.json", "GET"),
        ("GET", "/v1/elections/e/votes", "POST"),
        ("PUT", "/v1/elections/e/results", "GET"),
        ("POST", "/v1/elections/e/results/stream", "GET"),
    ],
)
def test_a_wrong_method_is_405_with_allow(
    edge_stack: GatewayStack, method: str, path: str, allow: str
) -> None:
    resp = httpx.request(method, edge_stack.base_url + path, headers=client_headers(), timeout=30)
    assert resp.status_code == 405, resp.text
    assert resp.headers["allow"] == allow
    assert resp.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(edge_stack: GatewayStack, scheme: str) -> None:
    resp = _vote(edge_stack, scheme=scheme)
    assert resp.status_code == 202, resp.text


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/json ;charset=UTF-8",
    ],
)
def test_content_type_is_parsed_as_a_media_type(
    edge_stack: GatewayStack, content_type: str
) -> None:
    assert _vote(edge_stack, content_type=content_type).status_code == 202


@pytest.mark.parametrize(
    "content_type", ["application/jsonx", "application/json-patch+json", "text/json", ""]
)
def test_other_media_types_are_415(edge_stack: GatewayStack, content_type: str) -> None:
    resp = _vote(edge_stack, content_type=content_type)
    assert resp.status_code == 415, resp.text


@pytest.mark.parametrize(
    "body",
    [
        b'{"vote_id":"%s","choice":"alice","choice":"bob"}',
        b'{"vote_id":"%s","vote_id":"%s","choice":"alice"}',
        b'{"vote_id":"%s","choice":"alice","ch\\u006fice":"bob"}',
    ],
)
def test_a_duplicate_key_is_400_and_nothing_is_counted(
    edge_stack: GatewayStack, body: bytes
) -> None:
    resp = _vote(edge_stack, body=body)
    assert resp.status_code == 400, resp.text
    assert "duplicate" in resp.json()["detail"]


def test_an_oversized_header_is_refused(edge_stack: GatewayStack) -> None:
    with connect(edge_stack) as sock:
        sock.sendall(
            b"GET /livez HTTP/1.1\r\nHost: gateway\r\nX-Big: "
            + b"a" * (MAX_HEADER_BYTES * 2)
            + b"\r\n\r\n"
        )
        answer = read_answer(sock, 30)
    # 431, or the connection closed without an answer: never a 200.
    assert status_of(answer) in (None, 431), answer[:200]


def test_openapi_lists_404_for_the_results_stream(edge_stack: GatewayStack) -> None:
    spec = httpx.get(edge_stack.base_url + "/openapi.json", timeout=30).json()
    stream = spec["paths"]["/v1/elections/{election_id}/results/stream"]["get"]
    assert "404" in stream["responses"]
    unknown = httpx.get(
        f"{edge_stack.base_url}/v1/elections/nope-{uuid.uuid4().hex[:8]}/results/stream",
        headers=client_headers(),
        timeout=30,
    )
    assert unknown.status_code == 404
