"""The decision for every message of a batch, as a pure function (no I/O).

``plan_batch`` takes the batch's messages in Kafka order plus what PostgreSQL already
holds about the votes and voters they mention, and returns the rows to write. Keeping
this pure makes the policies testable without services and keeps the transaction
code (``processor.store``) free of rules.

Rules, in the order they are checked. First, every message must decode into an event
that ``core.event.event_problem`` accepts (schema version, text fields, time range) and
whose ``received_at`` is not later than its Kafka timestamp allows; otherwise it is
rejected ``malformed`` under its Kafka position (its own ids may be what PostgreSQL
cannot store) and goes to the dead-letter topic. Then, for an event (E, vote_id X,
voter A, choice c):

1. (X, A, c) already rejected → ``duplicate`` (a Kafka replay; nothing is written).
2. X already stored in ``votes`` with the same (A, c) → ``duplicate``; with other
   content → rejection ``duplicate_vote_id`` (the first content stored owns X).
3. Election unknown → ``unknown_election`` (also sent to the dead-letter topic).
4. ``received_at`` outside [opens_at, closes_at) → ``election_closed``; choice not a
   candidate → ``unknown_candidate``.
5. The election's policy:
   * ``first_wins`` / ``max_votes:N``: the first 1 / N votes of a voter in processing
     (Kafka) order count, later ones are rejected ``voter_already_voted``. Kafka is
     keyed by voter, so processing order is the order the gateways produced them, and a
     vote shown to the voter as counted never turns into a rejection later.
   * ``last_wins``: the vote with the greatest (received_at, vote_id) counts, whatever
     order Kafka delivers them in; the others stay in ``votes`` with ``superseded_by``
     naming the vote that replaced them, and the tally moves from the old choice to
     the new one.

Every decision is folded back into the lookup state before the next message, so
duplicates and re-votes inside one batch follow the same rules as across batches.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import msgspec

from core.elections import Election
from core.event import (
    SCHEMA_VERSION,
    UNSIGNED_VERSION,
    VoteEvent,
    authentication_problem,
    decode,
    event_problem,
)
from core.keyset import KeySet

# How far an event's received_at may be ahead of its Kafka timestamp (the producer's clock
# when the gateway produced it, never before it received the vote). Beyond it the event is
# malformed: under last_wins a far-future received_at would beat every later real vote.
MAX_RECEIVED_AHEAD_US = 300_000_000

# Rejection reasons a voter can see (vote_rejections.reason).
DUPLICATE_VOTE_ID = "duplicate_vote_id"
VOTER_ALREADY_VOTED = "voter_already_voted"
ELECTION_CLOSED = "election_closed"
UNKNOWN_CANDIDATE = "unknown_candidate"
UNKNOWN_ELECTION = "unknown_election"
MALFORMED = "malformed"
UNAUTHENTICATED = "unauthenticated"  # no MAC, an unknown event key or a wrong MAC
# Outcomes that are not rejections (metrics label vote_rows_total{outcome}).
COUNTED = "counted"
SUPERSEDED = "superseded"
DUPLICATE = "duplicate"

VoteKey = tuple[str, str]  # (election_id, vote_id)
VoterKey = tuple[str, str]  # (election_id, voter_id)
FullKey = tuple[str, str, str, str]  # (election_id, vote_id, voter_id, choice)


# The per-message records below are msgspec Structs rather than dataclasses: a batch
# makes several of them per message, and a Struct is built about 3x faster. gc=False:
# they hold only strings, numbers and each other (no cycles), so the cyclic GC need not
# track the hundreds of thousands of them a busy processor has alive.


class VoterState(msgspec.Struct, gc=False):
    """One row of ``voters``: how many of the voter's votes count and which is current."""

    counted: int
    vote_id: str
    choice: str
    received_at_us: int


class Message(msgspec.Struct, frozen=True, gc=False):
    """One Kafka message of the batch, before decoding."""

    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    # The Kafka timestamp in microseconds, None when the broker gave none.
    timestamp_us: int | None = None


def timestamp_us(kafka_timestamp: tuple[int, int]) -> int | None:
    """Microseconds of a confluent-kafka ``Message.timestamp()`` (type, ms), or None."""
    kind, ms = kafka_timestamp
    return ms * 1000 if kind != 0 and ms > 0 else None  # 0: TIMESTAMP_NOT_AVAILABLE


class Decoded(msgspec.Struct, gc=False):
    msg: Message
    event: VoteEvent | None
    error: str | None  # why decoding failed
    reason: str = MALFORMED  # the rejection when event is None


@dataclass(frozen=True, slots=True)
class EventAuth:
    """The event keys, and whether unsigned (schema version 1) events are still taken."""

    keys: KeySet
    accept_unsigned: bool = False


class VoteRow(msgspec.Struct, gc=False):
    election_id: str
    vote_id: str
    voter_id: str
    choice: str
    received_at_us: int
    gateway_id: str
    partition: int
    offset: int
    superseded_by: str | None = None


class RejectionRow(msgspec.Struct, gc=False):
    election_id: str
    vote_id: str
    voter_id: str
    choice: str
    reason: str
    detail: str | None
    received_at_us: int | None
    partition: int
    offset: int


@dataclass(slots=True)
class DeadLetter:
    msg: Message
    reason: str
    detail: str


@dataclass(slots=True)
class Plan:
    votes: list[VoteRow] = field(default_factory=list)
    rejections: list[RejectionRow] = field(default_factory=list)
    # Votes already in PostgreSQL that a vote of this batch replaced:
    # (election_id, vote_id, superseded_by).
    supersede: list[tuple[str, str, str]] = field(default_factory=list)
    # New absolute state of every voter this batch changed.
    voters: dict[VoterKey, VoterState] = field(default_factory=dict)
    # (election_id, candidate_id, kafka partition) -> delta.
    tally: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    # received_at of each vote counted by this batch (for vote_ack_to_count_seconds).
    counted_received_at_us: list[int] = field(default_factory=list)


def decode_storable(
    value: bytes | None, timestamp_us: int | None, auth: EventAuth
) -> tuple[VoteEvent | None, str, str | None]:
    """The event in ``value``; or None, the rejection reason and why it cannot be stored
    under its own ids.

    ``unauthenticated``: no gateway signed it (no MAC, an unknown or revoked event key,
    a wrong MAC), so its ids are not to be believed. ``malformed``: undecodable bytes and
    every event ``core.event.event_problem`` refuses: an oversized field would fail its
    batch's index insert, a NUL or a received_at outside PostgreSQL's range its lookups,
    again and again, stopping the partition. ``timestamp_us`` (the Kafka timestamp)
    bounds how far received_at may lie ahead.
    """
    if value is None:
        return None, MALFORMED, "empty message"
    try:
        e = decode(value)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return None, MALFORMED, str(exc)[:200]
    if e.v == SCHEMA_VERSION:
        unauthentic = authentication_problem(value, e, auth.keys)
    elif e.v == UNSIGNED_VERSION and not auth.accept_unsigned:
        unauthentic = "an unsigned event (schema version 1)"
    else:
        unauthentic = None
    if unauthentic is not None:
        return None, UNAUTHENTICATED, unauthentic
    problem = event_problem(e)
    ahead = timestamp_us is not None and e.received_at_us > timestamp_us + MAX_RECEIVED_AHEAD_US
    if problem is None and ahead:
        problem = "received_at_us is later than its Kafka timestamp"
    if problem is not None:
        return None, MALFORMED, problem
    return e, MALFORMED, None


def decode_all(messages: list[Message], auth: EventAuth) -> list[Decoded]:
    out: list[Decoded] = []
    for m in messages:
        e, reason, error = decode_storable(m.value, m.timestamp_us, auth)
        out.append(Decoded(m, e, error, reason))
    return out


@dataclass(slots=True)
class Lookups:
    """What PostgreSQL holds about the keys a batch mentions (read inside its transaction)."""

    votes: dict[VoteKey, tuple[str, str]] = field(default_factory=dict)  # -> (voter, choice)
    rejected: set[FullKey] = field(default_factory=set)
    voters: dict[VoterKey, VoterState] = field(default_factory=dict)


def plan_batch(
    decoded: list[Decoded],
    elections: dict[str, Election],
    lookups: Lookups,
    topic: str,
) -> Plan:
    """Decide every message; ``lookups`` is updated in place as decisions are made."""
    # This loop runs for every message the processor sees, so it is written for speed:
    # no helper call on the common path, containers bound to locals,
    # counts kept in ints and folded into plan.outcomes at the end.
    plan = Plan()
    votes = lookups.votes
    rejected = lookups.rejected
    voters = lookups.voters
    plan_votes = plan.votes
    plan_voters = plan.voters
    tally = plan.tally
    outcomes = plan.outcomes
    counted_at = plan.counted_received_at_us
    n_counted = n_duplicate = 0
    # last_wins only: votes inserted by this batch, so a later re-vote in the batch can
    # supersede them before they are written.
    pending: dict[VoteKey, VoteRow] = {}
    # Per election, once per batch: whether last_wins, else how many votes may count.
    # The limit is computed when a vote first reaches the policy step, so an election
    # with a broken policy text fails only batches with votes that need it.
    limits: dict[str, int] = {}

    def reject(e: VoteEvent, m: Message, reason: str, detail: str | None = None) -> None:
        plan.rejections.append(
            RejectionRow(
                e.election_id,
                e.vote_id,
                e.voter_id,
                e.choice,
                reason,
                detail,
                e.received_at_us,
                m.partition,
                m.offset,
            )
        )
        rejected.add((e.election_id, e.vote_id, e.voter_id, e.choice))
        outcomes[reason] += 1

    for d in decoded:
        m = d.msg
        e = d.event
        if e is None:
            detail = d.error or "undecodable"
            plan.rejections.append(
                RejectionRow(
                    "",
                    f"kafka:{topic}:{m.partition}:{m.offset}",
                    "",
                    "",
                    d.reason,
                    detail,
                    None,
                    m.partition,
                    m.offset,
                )
            )
            outcomes[d.reason] += 1
            plan.dead_letters.append(DeadLetter(m, d.reason, detail))
            continue

        eid = e.election_id
        x = e.vote_id
        a = e.voter_id
        c = e.choice
        if (eid, x, a, c) in rejected:
            n_duplicate += 1
            continue
        xkey = (eid, x)
        owner = votes.get(xkey)
        if owner is not None:
            if owner == (a, c):
                n_duplicate += 1
            else:
                reject(e, m, DUPLICATE_VOTE_ID, "vote_id already used for another vote")
            continue

        g = e.gateway_id
        election = elections.get(eid)
        if election is None:
            reject(e, m, UNKNOWN_ELECTION, None)
            plan.dead_letters.append(DeadLetter(m, UNKNOWN_ELECTION, eid))
            continue
        t = e.received_at_us
        if not election.is_open_at(t):
            reject(e, m, ELECTION_CLOSED, None)
            continue
        if c not in election.candidates:
            reject(e, m, UNKNOWN_CANDIDATE, None)
            continue

        vkey = (eid, a)
        state = voters.get(vkey)
        if election.last_wins:
            row = VoteRow(eid, x, a, c, t, g, m.partition, m.offset)
            plan_votes.append(row)
            votes[xkey] = (a, c)
            pending[xkey] = row
            if state is not None and (t, x) <= (state.received_at_us, state.vote_id):
                # An older re-vote delivered late: kept for the audit, never counted.
                row.superseded_by = state.vote_id
                outcomes[SUPERSEDED] += 1
            else:
                if state is not None:
                    old = pending.get((eid, state.vote_id))
                    if old is not None:
                        old.superseded_by = x
                    else:
                        plan.supersede.append((eid, state.vote_id, x))
                    tally[(eid, state.choice, m.partition)] -= 1
                tally[(eid, c, m.partition)] += 1
                voters[vkey] = plan_voters[vkey] = VoterState(1, x, c, t)
                n_counted += 1
                counted_at.append(t)
        else:
            limit = limits.get(eid)
            if limit is None:
                limit = limits[eid] = election.max_votes
            counted = state.counted if state is not None else 0
            if counted >= limit:
                reject(e, m, VOTER_ALREADY_VOTED, None)
                continue
            plan_votes.append(VoteRow(eid, x, a, c, t, g, m.partition, m.offset))
            votes[xkey] = (a, c)
            voters[vkey] = plan_voters[vkey] = VoterState(counted + 1, x, c, t)
            tally[(eid, c, m.partition)] += 1
            n_counted += 1
            counted_at.append(t)

    if n_counted:
        outcomes[COUNTED] += n_counted
    if n_duplicate:
        outcomes[DUPLICATE] += n_duplicate
    # A move A→B→A inside one batch nets to zero; don't write zero deltas.
    for k in [k for k, v in tally.items() if v == 0]:
        del tally[k]
    return plan
