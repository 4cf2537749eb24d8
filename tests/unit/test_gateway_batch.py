"""gateway.batch: a batch's votes judged one by one, results in order, the answer's shape.

The acceptor is a stand-in recording what it was asked to make durable (its own rules
are tested in test_gateway_acceptance.py); tokens are "voter:<id>" strings checked by a
stand-in verifier; the voter rate limiter is the real one.
"""

from __future__ import annotations

import asyncio
import json

import msgspec
import pytest

from gateway import _fast
from gateway import problems as p
from gateway.acceptance import VoteRules
from gateway.batch import BatchAcceptor, decode
from gateway.elections import Election
from gateway.models import BatchAnswer, BatchVote


class FakeAcceptor:
    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.accepted: list[tuple[str, str, str, str]] = []
        self.fail = fail

    async def accept(
        self, election_id: str, voter_id: str, vote_id: str, choice: str, now: float
    ) -> tuple[bytes, bool]:
        await asyncio.sleep(0)
        if vote_id in self.fail:
            raise p.Unavailable("vote not durable: test", retry_after=1)
        if vote_id == "explodes-000000000":
            raise RuntimeError("a bug")
        self.accepted.append((election_id, voter_id, vote_id, choice))
        body = {
            "vote_id": vote_id,
            "status": "accepted",
            "durability": "kafka",
            "received_at": "2026-12-02T05:00:00Z",
            "receipt": f"r-{vote_id}",
        }
        return json.dumps(body, separators=(",", ":")).encode(), True


def verify(token: str, election_id: str, now: float) -> tuple[str, str]:
    """Tokens here are "voter:<voter>:<jti>"."""
    kind, _, rest = token.partition(":")
    if kind != "voter":
        raise p.Unauthorized("token refused: malformed", reason="malformed")
    voter, _, jti = rest.partition(":")
    return voter, jti


ELECTION = Election(
    election_id="e1",
    candidates=frozenset({"alice", "bob"}),
    policy="first_wins",
    opens_at_us=0,
)


def _vote(voter: str, vote_id: str, choice: str = "alice", jti: str = "") -> BatchVote:
    return BatchVote(token=f"voter:{voter}:{jti or vote_id}", vote_id=vote_id, choice=choice)


def _accept(batch: BatchAcceptor, votes: list[BatchVote]) -> tuple[dict, list[int]]:
    body, statuses = asyncio.run(
        batch.accept(ELECTION, votes, 1000.0, "/v1/elections/e1/votes:batch")
    )
    answer = msgspec.json.decode(body, type=BatchAnswer)  # the documented shape
    assert answer.accepted == statuses.count(202)
    return json.loads(body), statuses


def test_each_vote_is_judged_on_its_own_and_results_keep_the_order() -> None:
    acceptor = FakeAcceptor(fail={"notdurable-0000000"})
    limiter = _fast.RateLimiter(2.0, 1.0, 1000)  # one vote per voter at once
    limited: list[int] = []
    batch = BatchAcceptor(
        acceptor.accept, verify, VoteRules(limiter, on_rate_limited=lambda: limited.append(1))
    )
    votes = [
        _vote("v1", "first-vote-0000000"),
        BatchVote(token="garbage", vote_id="badtoken-000000000", choice="alice"),
        _vote("v2", "unknown-choice-000", choice="zed"),
        _vote("v1", "second-by-v1-00000"),  # the voter's bucket is empty now
        _vote("v3", "notdurable-0000000"),
        _vote("v4", "explodes-000000000"),
        _vote("v5", "last-vote-00000000", choice="bob"),
        _vote("v6", "not-the-jti-000000", jti="the-jti-0000000000"),
    ]
    doc, statuses = _accept(batch, votes)
    assert statuses == [202, 401, 422, 429, 503, 503, 202, 403]
    assert doc["accepted"] == 2 and doc["refused"] == 6
    assert [r["index"] for r in doc["results"]] == list(range(8))
    assert doc["results"][7]["problem"]["reason"] == "token_bound"
    assert [r["vote_id"] for r in doc["results"]] == [v.vote_id for v in votes]
    assert doc["results"][0] == {
        "index": 0,
        "code": 202,
        "vote_id": "first-vote-0000000",
        "status": "accepted",
        "durability": "kafka",
        "received_at": "2026-12-02T05:00:00Z",
        "receipt": "r-first-vote-0000000",
    }
    problem = doc["results"][1]["problem"]
    assert problem["status"] == 401 and problem["reason"] == "malformed"
    assert problem["instance"] == "/v1/elections/e1/votes:batch"
    assert doc["results"][3]["problem"]["status"] == 429 and limited == [1]
    # A bug in one vote's path is that vote's 503, not the batch's 500.
    assert doc["results"][5]["problem"]["status"] == 503
    # Only the two accepted votes reached the acceptor's durable path.
    assert acceptor.accepted == [
        ("e1", "v1", "first-vote-0000000", "alice"),
        ("e1", "v5", "last-vote-00000000", "bob"),
    ]


def test_votes_of_a_batch_are_made_durable_together() -> None:
    started: list[str] = []
    release = asyncio.Event()

    class Gate(FakeAcceptor):
        async def accept(self, *args: object) -> tuple[bytes, bool]:
            started.append(str(args[2]))
            await release.wait()
            return await super().accept(*args)  # type: ignore[arg-type]

    async def run() -> list[int]:
        rules = VoteRules(_fast.RateLimiter(100.0, 100.0, 1000))
        batch = BatchAcceptor(Gate().accept, verify, rules)
        task = asyncio.create_task(
            batch.accept(ELECTION, [_vote(f"v{i}", f"together-{i:09d}") for i in range(5)], 1.0, "")
        )
        while len(started) < 5:  # all five in flight before any is durable
            await asyncio.sleep(0)
        release.set()
        return (await task)[1]

    assert asyncio.run(run()) == [202] * 5


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "invalid batch"),
        (b'{"votes":[]}', "at least one vote"),
        (b'{"votes":[{"token":"t","vote_id":"short","choice":"alice"}]}', "invalid batch"),
        (b'{"votes":[{"token":"","vote_id":"long-enough-id-000","choice":"a"}]}', "invalid"),
        (b'{"votes":[],"more":1}', "invalid batch"),
    ],
)
def test_decode_refuses_a_malformed_batch_whole(body: bytes, why: str) -> None:
    with pytest.raises(p.BadRequest, match=why):
        decode(body, 10)


def test_decode_refuses_more_than_the_maximum() -> None:
    vote = {"token": "t", "vote_id": "long-enough-id-000", "choice": "alice"}
    assert len(decode(json.dumps({"votes": [vote] * 3}).encode(), 3)) == 3
    with pytest.raises(p.BadRequest, match="at most 3 votes, not 4"):
        decode(json.dumps({"votes": [vote] * 4}).encode(), 3)
