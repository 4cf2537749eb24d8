"""``POST /v1/elections/{id}/votes:batch``: many signed votes in one request.

For edge aggregators and offline-first clients, such as a polling-station terminal that
queued its voters' votes while the network was down. Each vote carries its own token and
gets its own result, under the same rules as a vote sent alone (docs/ARCHITECTURE.md,
"HTTP API"):

* a vote's result is ``202`` only once that vote is durable (Kafka or the spill), with
  the same body as ``POST .../votes`` would have answered, receipt included;
* any other result is that vote's RFC 9457 problem (bad token, unknown candidate, rate
  limit, conflict, not durable ...), and changes nothing for it; the other votes of the
  batch are not affected;
* a retry of the whole batch is safe: every vote is idempotent by its ``vote_id``.

What concerns the request as a whole (path, election, content type, size, JSON shape,
number of votes, the election's window) is answered with one problem for the request,
and then no vote of it is accepted.

All votes of a batch are made durable together: their events go to Kafka in the same
linger window, so the batch costs the broker about one produce request rather than one
per vote.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import msgspec

from gateway import problems as p
from gateway.acceptance import VoteRules
from gateway.elections import Election
from gateway.models import BatchRequest, BatchVote, batch_request_decoder, json_encoder

log = logging.getLogger("gateway")

# verify(token, election_id, now) -> (voter_id, jti); raises the Problem refusing the token.
Verify = Callable[[str, str, float], tuple[str, str]]
# accept(election_id, voter_id, vote_id, choice, now) -> (202 body, via Kafka): what makes
# a single vote durable once per vote_id; raises the Problem that refuses it.
Accept = Callable[[str, str, str, str, float], Awaitable[tuple[bytes, bool]]]


def decode(body: bytes, max_votes: int) -> list[BatchVote]:
    """The batch's votes, or one ``BadRequest`` for the whole request."""
    try:
        request: BatchRequest = batch_request_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise p.BadRequest(f"invalid batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise p.BadRequest(f"body is not valid JSON: {exc}") from None
    if not request.votes:
        raise p.BadRequest("a batch needs at least one vote")
    if len(request.votes) > max_votes:
        raise p.BadRequest(f"a batch holds at most {max_votes} votes, not {len(request.votes)}")
    return request.votes


class BatchAcceptor:
    """Accepts the votes of one batch, each on its own, all at once."""

    def __init__(self, accept: Accept, verify: Verify, rules: VoteRules) -> None:
        self.accept_one = accept
        self.verify = verify
        self.rules = rules

    async def accept(
        self, election: Election, votes: Sequence[BatchVote], now: float, instance: str
    ) -> tuple[bytes, list[int]]:
        """The answer's body and the status of each vote, in the order of ``votes``."""
        results = await asyncio.gather(
            *(self._one(election, vote, now, instance) for vote in votes)
        )
        statuses = [status for status, _ in results]
        accepted = statuses.count(202)
        body = (
            b'{"accepted":'
            + str(accepted).encode()
            + b',"refused":'
            + str(len(statuses) - accepted).encode()
            + b',"results":['
            + b",".join(
                b'{"index":' + str(i).encode() + b"," + part for i, (_, part) in enumerate(results)
            )
            + b"]}"
        )
        return body, statuses

    async def _one(
        self, election: Election, vote: BatchVote, now: float, instance: str
    ) -> tuple[int, bytes]:
        """(status, the vote's result without its leading ``{"index":i,``)."""
        try:
            voter_id, jti = self.verify(vote.token, election.election_id, now)
            self.rules.check(election, voter_id, jti, vote.vote_id, vote.choice, now)
            answer, _via_kafka = await self.accept_one(
                election.election_id, voter_id, vote.vote_id, vote.choice, now
            )
        except p.Problem as problem:
            return problem.status, _refused(vote.vote_id, problem, instance)
        except Exception:
            # A bug on one vote's path is that vote's 503, not the whole batch's 500.
            log.exception("a vote of a batch failed", extra={"vote_id": vote.vote_id})
            problem = p.Unavailable("vote not accepted; retry", retry_after=1)
            return problem.status, _refused(vote.vote_id, problem, instance)
        # The 202 body of a single vote, as an object: {"vote_id":...,"receipt":...}.
        return 202, b'"code":202,' + answer[1:]


def _refused(vote_id: str, problem: p.Problem, instance: str) -> bytes:
    return (
        b'"code":'
        + str(problem.status).encode()
        + b',"vote_id":'
        + json_encoder.encode(vote_id)
        + b',"problem":'
        + problem.body(instance, "")
        + b"}"
    )
