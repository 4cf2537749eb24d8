"""fastapi-peer: what a competent team would build with the usual Python stack.

FastAPI + uvicorn (uvloop, httptools) + aiokafka + PyJWT, with the gateway's semantics
for ``POST /v1/elections/{election_id}/votes``:

* verify the bearer JWT (HS256 or EdDSA) against the same JWKS file, by ``kid``, with the
  key's own algorithm only; claims ``sub``, ``jti``, ``exp`` required, ``aud`` = election;
* validate the body (pydantic): ``{"vote_id", "choice"}`` with the gateway's patterns;
* produce the same msgpack event to ``votes.v1`` with key = voter id, ``acks=all`` and
  idempotence, and answer 202 only after the delivery report; 503 if it fails.

No election cache, rate limits, idempotency cache or spill: that is the gateway's extra
work, and it is what this comparison prices. Run by the harness as::

    uvicorn bench.peers.fastapi_peer:app --workers N   (env PEER_* from bench/targets.py)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import jwt
import msgpack
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

TOPIC = os.environ.get("PEER_TOPIC", "votes.v1")
GATEWAY_ID = f"{os.environ.get('PEER_GATEWAY_ID', 'bench-fastapi-peer')}-{os.getpid()}"
_ALG_FOR_KTY = {"oct": "HS256", "OKP": "EdDSA"}


def load_keys(path: str) -> dict[str, jwt.PyJWK]:
    with open(path) as fh:
        jwks = json.load(fh)
    keys = {}
    for jwk in jwks["keys"]:
        alg = _ALG_FOR_KTY[jwk["kty"]]
        keys[jwk["kid"]] = jwt.PyJWK({**jwk, "alg": alg}, algorithm=alg)
    return keys


KEYS = load_keys(os.environ["PEER_JWKS_FILE"]) if os.environ.get("PEER_JWKS_FILE") else {}
_receipt_file = os.environ.get("PEER_RECEIPT_KEY_FILE", "")
RECEIPT_KEY = open(_receipt_file, "rb").read() if _receipt_file else os.urandom(32)  # noqa: SIM115
LEEWAY_S = 30.0


class VoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vote_id: Annotated[str, Field(pattern=r"^[0-9A-Za-z-]{16,64}$")]
    choice: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


class VoteAccepted(BaseModel):
    vote_id: str
    status: str = "accepted"
    durability: str = "kafka"
    received_at: str
    receipt: str


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(title)
        self.status, self.title, self.detail = status, title, detail


def problem_response(status: int, title: str, detail: str = "") -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
    )


def verify(token: str, election_id: str) -> str:
    """The voter id (``sub``) of a valid token for this election, else ``Problem``."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        key = KEYS.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Problem(401, "invalid token", "unknown_kid")
        claims = jwt.decode(
            token,
            key=key.key,
            algorithms=[key.algorithm_name],
            audience=election_id,
            leeway=LEEWAY_S,
            options={"require": ["exp", "sub", "jti", "aud"]},
        )
    except jwt.InvalidAudienceError:
        raise Problem(403, "token not for this election") from None
    except jwt.PyJWTError as exc:
        raise Problem(401, "invalid token", type(exc).__name__) from None
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Problem(401, "invalid token", "missing_claim")
    return sub


def receipt(election_id: str, vote_id: str, voter_id: str, choice: str, at_us: int) -> str:
    message = "\x1f".join((election_id, vote_id, voter_id, choice, str(at_us))).encode()
    digest = hmac.new(RECEIPT_KEY, message, hashlib.sha256).digest()
    return "r1." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    producer = AIOKafkaProducer(
        bootstrap_servers=os.environ.get("PEER_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
        acks="all",
        enable_idempotence=True,
        linger_ms=float(os.environ.get("PEER_LINGER_MS", "2")),
        client_id=GATEWAY_ID,
    )
    await producer.start()
    app.state.producer = producer
    try:
        yield
    finally:
        await producer.stop()


app = FastAPI(lifespan=lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.exception_handler(Problem)
async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.status, exc.title, exc.detail)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    return problem_response(400, "malformed vote", str(exc.errors()[:1]))


@app.get("/readyz")
async def readyz() -> Response:
    return Response(status_code=200)


@app.post("/v1/elections/{election_id}/votes", status_code=202)
async def vote(
    election_id: str, body: VoteIn, request: Request, authorization: Annotated[str, Header()] = ""
) -> VoteAccepted:
    if not authorization.startswith("Bearer "):
        raise Problem(401, "missing bearer token")
    voter_id = verify(authorization[7:], election_id)
    at_us = time.time_ns() // 1000
    event: dict[str, Any] = {
        "v": 1,
        "vote_id": body.vote_id,
        "election_id": election_id,
        "voter_id": voter_id,
        "choice": body.choice,
        "received_at_us": at_us,
        "gateway_id": GATEWAY_ID,
    }
    try:
        # send_and_wait returns once the broker acknowledged (acks=all): the delivery report.
        await request.app.state.producer.send_and_wait(
            TOPIC, msgpack.packb(event), key=voter_id.encode()
        )
    except Exception as exc:  # any Kafka failure: the vote is not durable
        raise Problem(503, "vote not durable", type(exc).__name__) from None
    return VoteAccepted(
        vote_id=body.vote_id,
        received_at=datetime.fromtimestamp(at_us / 1e6, UTC).isoformat(timespec="microseconds"),
        receipt=receipt(election_id, body.vote_id, voter_id, body.choice, at_us),
    )
