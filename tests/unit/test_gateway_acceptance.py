"""gateway.acceptance: VoteRules refuses what a verified token does not allow, cheapest
check first; VoteAcceptor makes one durable event per vote_id, gives the first answer to
every retry with the same content, a conflict for other content, and makes a retry wait
on a first request still in flight.

The durability pipeline is a fake whose outcome each test sets (the real one has its own
tests in test_gateway_durability.py and tests/integration/test_gateway_faults.py); the
idempotency cache, the event encoder and the receipt signer are the real compiled ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from core import event as core_event
from core import keyset
from gateway import _fast
from gateway import problems as p
from gateway.acceptance import VoteAcceptor, VoteRules
from gateway.durability import NotDurable
from gateway.elections import Election
from gateway.models import VoteAccepted

RECEIPT_KEY = b"k" * 32
EVENT_KEY = keyset.Key("ev-1", b"event-key-0123456789abcdef-0123456", keyset.ACTIVE)
NOW = 1_800_000_000.25
VOTE_ID = "0123456789abcdef0123456789abcdef"


class FakeDurability:
    """``persist`` answers ``outcome`` (or raises it) once ``release`` is set."""

    def __init__(self, outcome: str | BaseException = "kafka") -> None:
        self.outcome = outcome
        self.persisted: list[tuple[bytes, bytes]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def persist(self, key: bytes, event: bytes) -> str:
        self.persisted.append((key, event))
        await self.release.wait()
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 10))


def make(outcome: str | BaseException = "kafka") -> tuple[FakeDurability, VoteAcceptor]:
    durability = FakeDurability(outcome)
    acceptor = VoteAcceptor(
        durability,  # type: ignore[arg-type]
        _fast.IdempotencyCache(100),
        RECEIPT_KEY,
        "gw-test-slot-0",
        _fast.EventSigner(EVENT_KEY.kid, EVENT_KEY.secret),
    )
    return durability, acceptor


def test_first_vote_is_made_durable_and_answered_with_a_receipt() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        answer, via_kafka = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW)
        assert via_kafka
        accepted = msgspec.json.decode(answer, type=VoteAccepted)
        assert accepted.vote_id == VOTE_ID
        assert accepted.status == "accepted"
        assert accepted.durability == "kafka"
        assert accepted.received_at == "2027-01-15T08:00:00.250000Z"
        received_at_us = int(NOW * 1_000_000)
        # "<receipt key id>.r1.<signature>"
        assert accepted.receipt == keyset.key_id("rk", RECEIPT_KEY) + "." + _fast.sign_receipt(
            RECEIPT_KEY, VOTE_ID, "e1", "alice", "a", received_at_us
        )
        [(key, event)] = durability.persisted
        assert key == b"alice"  # the voter keys the partition
        decoded = core_event.decode(event)
        assert (decoded.vote_id, decoded.election_id, decoded.voter_id, decoded.choice) == (
            VOTE_ID,
            "e1",
            "alice",
            "a",
        )
        assert decoded.received_at_us == received_at_us
        assert decoded.gateway_id == "gw-test-slot-0"
        # Signed with the worker's event key: the processor can tell it from a forgery.
        assert decoded.kid == EVENT_KEY.kid
        assert (
            core_event.authentication_problem(event, decoded, keyset.KeySet((EVENT_KEY,))) is None
        )

    run(scenario)


def test_a_spilled_vote_says_so_and_so_does_its_retry() -> None:
    async def scenario() -> None:
        durability, acceptor = make("spill")
        answer, via_kafka = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW)
        assert not via_kafka
        assert msgspec.json.decode(answer, type=VoteAccepted).durability == "spill"
        again, again_via_kafka = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW + 5)
        assert again == answer
        assert not again_via_kafka
        assert len(durability.persisted) == 1

    run(scenario)


def test_a_retry_with_the_same_content_gets_the_first_answer_without_a_second_event() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        first, _ = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW)
        again, via_kafka = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW + 7)
        assert again == first  # the same received_at and receipt, not a new one
        assert via_kafka
        assert len(durability.persisted) == 1

    run(scenario)


@pytest.mark.parametrize(
    ("election_id", "voter_id", "choice"),
    [("e1", "alice", "b"), ("e1", "bob", "a"), ("e2", "alice", "a")],
)
def test_the_same_vote_id_with_other_content_is_a_conflict(
    election_id: str, voter_id: str, choice: str
) -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        first, _ = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW)
        with pytest.raises(p.Conflict):
            await acceptor.accept(election_id, voter_id, VOTE_ID, choice, NOW)
        assert len(durability.persisted) == 1
        # The conflict changed nothing: the first answer still stands.
        assert (await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))[0] == first

    run(scenario)


def test_a_retry_during_the_first_request_waits_for_its_answer() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        durability.release.clear()
        first = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)  # the first request is now waiting in persist
        second = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW + 1))
        await asyncio.sleep(0)
        assert not first.done() and not second.done()
        durability.release.set()
        assert await second == await first
        assert len(durability.persisted) == 1

    run(scenario)


def test_a_conflicting_retry_during_the_first_request_does_not_wait() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        durability.release.clear()
        first = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        with pytest.raises(p.Conflict):
            await acceptor.accept("e1", "alice", VOTE_ID, "b", NOW)
        durability.release.set()
        await first

    run(scenario)


def test_not_durable_is_unavailable_for_everyone_waiting_and_forgets_the_vote_id() -> None:
    async def scenario() -> None:
        durability, acceptor = make(NotDurable("spill full"))
        durability.release.clear()
        first = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        durability.release.set()
        for waiter in (first, second):
            with pytest.raises(p.Unavailable) as refused:
                await waiter
            assert refused.value.retry_after == 1
        # Forgotten: the next retry is a fresh attempt, and this time it succeeds.
        durability.outcome = "kafka"
        answer, via_kafka = await acceptor.accept("e1", "alice", VOTE_ID, "a", NOW)
        assert via_kafka
        assert msgspec.json.decode(answer, type=VoteAccepted).vote_id == VOTE_ID
        assert len(durability.persisted) == 2

    run(scenario)


def test_a_first_request_cancelled_midway_releases_its_followers_with_unavailable() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        durability.release.clear()
        first = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        first.cancel()  # e.g. the worker shutting down while Kafka is slow
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(p.Unavailable):
            await second
        assert acceptor.idempotency.get(VOTE_ID) is None

    run(scenario)


def test_a_follower_cancelled_while_waiting_leaves_the_first_request_alone() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        durability.release.clear()
        first = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(acceptor.accept("e1", "alice", VOTE_ID, "a", NOW))
        await asyncio.sleep(0)
        second.cancel()  # the retrying client went away
        with pytest.raises(asyncio.CancelledError):
            await second
        durability.release.set()
        answer, _ = await first
        assert msgspec.json.decode(answer, type=VoteAccepted).vote_id == VOTE_ID

    run(scenario)


def test_a_vote_id_needing_json_escapes_is_answered_as_valid_json() -> None:
    async def scenario() -> None:
        _durability, acceptor = make("kafka")
        vote_id = 'odd"vote\\id-0123456789'
        answer, _ = await acceptor.accept("e1", "alice", vote_id, "a", NOW)
        assert msgspec.json.decode(answer, type=VoteAccepted).vote_id == vote_id

    run(scenario)


def test_a_field_the_processor_would_refuse_is_400_and_nothing_is_produced() -> None:
    async def scenario() -> None:
        durability, acceptor = make("kafka")
        with pytest.raises(p.BadRequest) as refused:
            await acceptor.accept("e1", "voter\x01with-a-control-char", VOTE_ID, "a", NOW)
        assert "the token's sub (voter_id)" in refused.value.detail
        assert durability.persisted == []
        assert acceptor.idempotency.get(VOTE_ID) is None  # a corrected retry is fresh

    run(scenario)


ELECTION = Election(
    election_id="e1",
    candidates=frozenset({"alice", "bob"}),
    policy="first_wins",
    opens_at_us=0,
)


def test_vote_rules_refuse_in_order_and_only_a_passing_vote_spends_the_voters_budget() -> None:
    refused: list[str] = []
    rules = VoteRules(
        _fast.RateLimiter(0.001, 1.0, 100),  # one vote per voter, then none for a long time
        on_rate_limited=lambda: refused.append("rate"),
        on_token_bound=lambda: refused.append("bound"),
    )
    # The vote_id must be the token's jti, even when the choice is bad too.
    with pytest.raises(p.Forbidden) as bound:
        rules.check(ELECTION, "v1", "jti-1", "other-id", "zed", NOW)
    assert bound.value.extra == {"reason": "token_bound"}
    with pytest.raises(p.UnknownCandidate):
        rules.check(ELECTION, "v1", "jti-1", "jti-1", "zed", NOW)
    # Neither refusal spent v1's one vote: it still passes, and only then is v1 limited.
    rules.check(ELECTION, "v1", "jti-1", "jti-1", "alice", NOW)
    with pytest.raises(p.RateLimited) as limited:
        rules.check(ELECTION, "v1", "jti-2", "jti-2", "bob", NOW)
    assert limited.value.retry_after > 0
    rules.check(ELECTION, "v2", "jti-3", "jti-3", "bob", NOW)  # another voter's own budget
    assert refused == ["bound", "rate"]
