"""Request/response models and problem documents of the HTTP API (no services)."""

import json

import msgspec
import pytest

from gateway import problems as p
from gateway.models import VoteAccepted, vote_request_decoder
from gateway.openapi import OPENAPI


def test_valid_vote_decodes():
    vote = vote_request_decoder.decode(
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":"alice"}'
    )
    assert vote.vote_id == "0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"
    assert vote.choice == "alice"


def test_ulid_vote_id_is_accepted():
    assert (
        vote_request_decoder.decode(b'{"vote_id":"01HZX3J5K2M8N9P0Q1R2S3T4V5","choice":"b"}').choice
        == "b"
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e"}',  # no choice
        b'{"choice":"alice"}',  # no vote_id
        b'{"vote_id":"short","choice":"alice"}',
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":""}',
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":"a b"}',
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":7}',
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":"a","x":1}',
        b'{"vote_id":"0b6c7d0e/1f2a/4b3c/8d9e/0f1a2b3c4d5e","choice":"a"}',
        b'{"vote_id":"0b6c7d0e-1f2a-4b3c-8d9e-0f1a2b3c4d5e","choice":"a\\u001fb"}',
        b"[" * 10000 + b"]" * 10000,  # deeply nested
        b'{"vote_id":' + b"[" * 5000 + b"]" * 5000 + b',"choice":"a"}',
    ],
)
def test_malformed_votes_are_refused(body):
    with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
        vote_request_decoder.decode(body)


def test_problem_document_shape():
    problem = p.RateLimited("slow down", retry_after=0.2)
    doc = json.loads(problem.body("/v1/elections/e/votes"))
    assert doc == {
        "type": "https://vote.example/problems/rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": "slow down",
        "instance": "/v1/elections/e/votes",
    }
    headers = dict(problem.headers())
    assert headers["content-type"] == "application/problem+json"
    assert headers["retry-after"] == "1"  # rounded up, never 0


def test_unauthorized_carries_www_authenticate_and_reason():
    problem = p.Unauthorized("token refused: expired", reason="expired")
    assert ("www-authenticate", 'Bearer realm="votes"') in problem.headers()
    assert json.loads(problem.body())["reason"] == "expired"


@pytest.mark.parametrize(
    ("cls", "status"),
    [
        (p.BadRequest, 400),
        (p.Unauthorized, 401),
        (p.Forbidden, 403),
        (p.ElectionNotOpen, 403),
        (p.NotFound, 404),
        (p.Conflict, 409),
        (p.PayloadTooLarge, 413),
        (p.UnsupportedMediaType, 415),
        (p.UnknownCandidate, 422),
        (p.RateLimited, 429),
        (p.Unavailable, 503),
    ],
)
def test_every_problem_has_its_status(cls, status):
    assert cls().status == status
    assert json.loads(cls().body())["status"] == status


def test_accepted_model_round_trips():
    accepted = VoteAccepted("v", "accepted", "spill", "2026-11-25T00:00:00Z", "r1.x")
    assert msgspec.json.decode(msgspec.json.encode(accepted), type=VoteAccepted) == accepted


def test_openapi_lists_every_route():
    spec = json.loads(OPENAPI)
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) == {
        "/v1/elections/{election_id}/votes",
        "/v1/elections/{election_id}/votes:batch",
        "/v1/elections/{election_id}/votes/{vote_id}",
        "/v1/elections/{election_id}/results",
        "/v1/elections/{election_id}/results/stream",
        "/livez",
        "/readyz",
        "/openapi.json",
    }
    post = spec["paths"]["/v1/elections/{election_id}/votes"]["post"]
    assert {"202", "400", "401", "409", "413", "415", "422", "429", "503"} <= set(post["responses"])
