"""Accepting one vote: the rules it must pass once its token is verified (``VoteRules``),
then durable once per ``vote_id``, and the 202 body that says so (``VoteAcceptor``).

Both serve a vote sent alone and each vote of a batch, so the two routes cannot drift
apart (docs/ARCHITECTURE.md, "HTTP API").

The first request for a ``vote_id`` makes the event durable (``DurabilityPipeline``) and
signs its receipt; a retry with the same content gets the first answer's bytes; a retry
with other content is a conflict. A retry that arrives while the first request is still
being made durable waits on the first one's pending answer instead of producing the event
a second time (docs/ARCHITECTURE.md, "Flow and invariants").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from core import keyset
from gateway import _fast
from gateway import problems as p
from gateway.durability import DurabilityPipeline, NotDurable
from gateway.elections import Election
from gateway.models import json_encoder


class VoteRules:
    """What a vote must pass between its verified token and ``VoteAcceptor.accept``.

    ``on_token_bound`` and ``on_rate_limited`` count the refusals (metrics); they are
    called just before the problem is raised.
    """

    def __init__(
        self,
        voter_limiter: _fast.RateLimiter,
        on_rate_limited: Callable[[], None] = lambda: None,
        on_token_bound: Callable[[], None] = lambda: None,
    ) -> None:
        self.voter_limiter = voter_limiter
        self.on_rate_limited = on_rate_limited
        self.on_token_bound = on_token_bound

    def check(
        self, election: Election, voter_id: str, jti: str, vote_id: str, choice: str, now: float
    ) -> None:
        """Raise the problem refusing this vote, if any: the cheap checks first, the rate
        limit (which spends the voter's budget) last."""
        if vote_id != jti:
            # One token, one vote, on every worker without shared state: the vote_id a
            # token authorizes is its jti (docs/ARCHITECTURE.md, "Trust boundaries").
            self.on_token_bound()
            raise p.Forbidden(
                "this token authorizes only the vote whose vote_id is its jti",
                reason="token_bound",
            )
        if choice not in election.candidates:
            raise p.UnknownCandidate(f"{choice!r} is not a candidate of {election.election_id!r}")
        retry = self.voter_limiter.acquire(voter_id, now)
        if retry:
            self.on_rate_limited()
            raise p.RateLimited("too many requests for this voter", retry_after=retry)


class _Pending:
    """Marks a vote_id whose first request is still being made durable."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future


class VoteAcceptor:
    """One per worker: the idempotency cache, the durability pipeline and the receipt key.

    ``idempotency`` maps ``vote_id`` to ``(content digest, answer)``, where the answer is
    the 202 body or a ``_Pending`` while the first request is in flight.
    """

    def __init__(
        self,
        durability: DurabilityPipeline,
        idempotency: _fast.IdempotencyCache,
        receipt_key: bytes,
        gateway_id: str,
        signer: _fast.EventSigner,
    ) -> None:
        self.durability = durability
        self.idempotency = idempotency
        self.gateway_id = gateway_id
        self.signer = signer  # the worker replaces it when the event key file changes
        self.use_receipt_key(receipt_key)

    def use_receipt_key(self, key: bytes) -> None:
        """Sign receipts with ``key`` from now on. A receipt reads
        ``<key id>.r1.<signature>``: the id tells a verifier which key signed it."""
        self.receipt_key = key
        self._receipt_prefix = (keyset.key_id("rk", key) + ".").encode()

    async def accept(
        self, election_id: str, voter_id: str, vote_id: str, choice: str, now: float
    ) -> tuple[bytes, bool]:
        """Make the vote durable once per vote_id; the 202 body and whether Kafka (not the
        spill) confirmed it.

        Raises ``Conflict`` for a vote_id already used with other content, ``BadRequest``
        for a field the processor would refuse (core.event's rules, checked by the
        encoder) and ``Unavailable`` when the vote could not be made durable; the vote_id
        is then forgotten, so a retry is a fresh attempt.
        """
        digest = f"{election_id}\x1f{voter_id}\x1f{choice}".encode()
        seen = self.idempotency.get(vote_id)
        if seen is not None:
            if seen[0] != digest:
                raise p.Conflict(f"vote_id {vote_id!r} was used with other content")
            first = seen[1]
            if isinstance(first, _Pending):
                first = await asyncio.shield(first.future)
            # A retry: the cache keeps only the first answer's bytes, which name the
            # durability (vote_id and receipt cannot hold a quote).
            return first, b'"durability":"kafka"' in first

        pending = _Pending(asyncio.get_running_loop().create_future())
        self.idempotency.put(vote_id, digest, pending)
        try:
            received_at_us = int(now * 1_000_000)
            try:
                event = _fast.encode_event(
                    vote_id,
                    election_id,
                    voter_id,
                    choice,
                    received_at_us,
                    self.gateway_id,
                    self.signer,
                )
            except ValueError as exc:
                # A field the processor would refuse as malformed: never acknowledge it.
                raise p.BadRequest(f"vote cannot be counted: {_field_source(str(exc))}") from None
            try:
                durability = await self.durability.persist(voter_id.encode(), event)
            except NotDurable as exc:
                # The reason (RocksDB's or the OS's words) is for the log, not the client.
                raise p.Unavailable(
                    "the vote could not be made durable; retry", retry_after=1, internal=str(exc)
                ) from None
            receipt = _fast.sign_receipt(
                self.receipt_key, vote_id, election_id, voter_id, choice, received_at_us
            )
            answer = (
                b'{"vote_id":'
                + json_encoder.encode(vote_id)
                + b',"status":"accepted","durability":"'
                + durability.encode()
                + b'","received_at":"'
                + received_at_text(received_at_us).encode()
                + b'","receipt":"'
                + self._receipt_prefix
                + receipt.encode()
                + b'"}'
            )
        except BaseException as exc:
            # Not accepted: forget the vote_id so a retry is a fresh attempt.
            self.idempotency.discard(vote_id)
            if not pending.future.done():
                pending.future.set_exception(
                    exc
                    if isinstance(exc, p.Problem)
                    else p.Unavailable("vote not accepted; retry", retry_after=1)
                )
                pending.future.exception()  # mark retrieved: followers may not exist
            raise
        self.idempotency.discard(vote_id)
        self.idempotency.put(vote_id, digest, answer)
        pending.future.set_result(answer)
        return answer, durability == "kafka"


def _field_source(problem: str) -> str:
    """core.event's words, naming where the client put the field."""
    if problem.startswith("voter_id"):
        return "the token's sub (voter_id) " + problem.removeprefix("voter_id ")
    return problem


_last_second = [-1, ""]  # the last second formatted, and its text


def received_at_text(us: int) -> str:
    """``received_at`` as RFC 3339 UTC with a ``Z`` suffix: ``YYYY-MM-DDTHH:MM:SS.ffffffZ``,
    the six-digit fraction left out when it is zero (``…:SSZ``). Every vote needs one and
    the date and time of day change once a second, so that part is formatted once a
    second."""
    second, micro = divmod(us, 1_000_000)
    if second != _last_second[0]:
        _last_second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_last_second[1]}.{micro:06d}Z" if micro else f"{_last_second[1]}Z"
