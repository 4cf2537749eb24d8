"""The edge suite's gateway and tools.

``edge_stack``: one real gateway (and processor) on the local stack for every edge test
of the package, with short deadlines and small caps so each defect of issue 15 shows
quickly. 127.0.0.1 is its trusted proxy: a test speaks for a client of its own with an
``X-Forwarded-For`` address (``client_headers``), so its rate-limit budget, in-flight
requests and streams are its own.

Also raw HTTP/1.1 over a socket, for what httpx will not send (half a body, slow
headers), and the gateway's answer counts from /metrics.
"""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import pytest

from bench import scrape
from tests.integration.gateway_fixtures import GatewayStack, running_gateway

BODY_READ_TIMEOUT_S = 3.0
HEADER_READ_TIMEOUT_MS = 2000
MAX_HEADER_BYTES = 16384
RATE_IP_PER_S = 0.1
RATE_IP_BURST = 20
NEGATIVE_TTL_S = 60.0
MAX_IN_FLIGHT = 8
MAX_IN_FLIGHT_PER_CLIENT = 3
MAX_STREAMS = 4
MAX_STREAMS_PER_CLIENT = 2

_client_numbers = itertools.count(1)


def client_headers() -> dict[str, str]:
    """Headers that make the next request come from a client no other test uses."""
    n = next(_client_numbers)
    return {"x-forwarded-for": f"198.18.{n // 250}.{n % 250 + 1}"}


@pytest.fixture(scope="package")
def edge_stack(
    tmp_path_factory: pytest.TempPathFactory, pg_dsn: str, kafka_bootstrap: str, redis_url: str
) -> Iterator[GatewayStack]:
    home = tmp_path_factory.mktemp("security")
    with running_gateway(
        home,
        pg_dsn,
        kafka_bootstrap,
        redis_url,
        VOTE_TRUSTED_PROXIES="127.0.0.1/32",
        VOTE_RATE_IP_PER_S=str(RATE_IP_PER_S),
        VOTE_ELECTION_NEGATIVE_TTL_S=str(NEGATIVE_TTL_S),
        VOTE_RATE_IP_BURST=str(RATE_IP_BURST),
        VOTE_BODY_READ_TIMEOUT_S=str(BODY_READ_TIMEOUT_S),
        VOTE_HEADER_READ_TIMEOUT_MS=str(HEADER_READ_TIMEOUT_MS),
        VOTE_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        VOTE_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
        VOTE_MAX_IN_FLIGHT_PER_CLIENT=str(MAX_IN_FLIGHT_PER_CLIENT),
        VOTE_MAX_STREAMS=str(MAX_STREAMS),
        VOTE_MAX_STREAMS_PER_CLIENT=str(MAX_STREAMS_PER_CLIENT),
    ) as stack:
        yield stack


def status_counts(stack: GatewayStack) -> dict[str, float]:
    """vote_requests_total by status code."""
    url = f"http://127.0.0.1:{stack.env['VOTE_METRICS_PORT']}/metrics"
    return scrape.by_label(url, "vote_requests_total", "code")


def connect(stack: GatewayStack) -> socket.socket:
    host, port = stack.base_url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes or ``timeout`` passes (b"" if nothing)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    received = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if received.count(b"\r\n\r\n") and _complete(received):
                return received
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return received


def _complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/"):
        return None
    return int(answer.split(b" ", 2)[1])


def vote_head(
    stack: GatewayStack, token: str, length: int, extra: str = "", route: str = "votes"
) -> bytes:
    """The head of a vote request (``route="votes:batch"`` for a batch) whose body is
    still to be sent."""
    return (
        f"POST /v1/elections/{stack.election}/{route} HTTP/1.1\r\n"
        f"Host: gateway\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()
