"""processor.policy: the per-message decisions, without services."""

from __future__ import annotations

import itertools
import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from core.elections import Election
from core.event import VoteEvent, encode, seal
from core.keyset import ACTIVE, Key, KeySet
from processor import policy
from processor.policy import EventAuth, Lookups, Message, Plan, VoterState

KEY = Key("ev-1", b"k" * 32, ACTIVE)
AUTH = EventAuth(KeySet((KEY,)))

E = "e1"
CANDS = frozenset({"a", "b", "c"})


def ev(vote_id: str, voter: str, choice: str, t: int, election: str = E, v: int = 1) -> VoteEvent:
    return VoteEvent(v, vote_id, election, voter, choice, t, "g1")


def msgs(events: list[VoteEvent | bytes], start: int = 0, partition: int = 0) -> list[Message]:
    out = []
    for i, e in enumerate(events):
        # As a gateway would: version 1 fields sealed into a signed event.
        raw = e if isinstance(e, bytes) else seal(e, KEY) if e.v == 1 else encode(e)
        out.append(Message(partition, start + i, raw))
    return out


class Db:
    """A minimal in-memory stand-in for the three lookup tables, applying plans."""

    def __init__(self) -> None:
        self.votes: dict[tuple[str, str], list] = {}  # (e, x) -> [voter, choice, superseded_by]
        self.rejections: dict[tuple[str, str, str, str], str] = {}
        self.voters: dict[tuple[str, str], VoterState] = {}
        self.tally: Counter[tuple[str, str]] = Counter()

    def lookups(self) -> Lookups:
        return Lookups(
            votes={k: (v[0], v[1]) for k, v in self.votes.items()},
            rejected=set(self.rejections),
            voters={
                k: VoterState(s.counted, s.vote_id, s.choice, s.received_at_us)
                for k, s in self.voters.items()
            },
        )

    def apply(self, plan: Plan) -> None:
        for r in plan.votes:
            assert (r.election_id, r.vote_id) not in self.votes
            self.votes[(r.election_id, r.vote_id)] = [r.voter_id, r.choice, r.superseded_by]
        for r in plan.rejections:
            key = (r.election_id, r.vote_id, r.voter_id, r.choice)
            assert key not in self.rejections
            self.rejections[key] = r.reason
        for e, x, by in plan.supersede:
            self.votes[(e, x)][2] = by
        self.voters.update(plan.voters)
        for (e, c, _p), d in plan.tally.items():
            self.tally[(e, c)] += d

    def run(self, events: list[VoteEvent | bytes], elections: dict[str, Election], splits=()):
        """Process events in batches cut at the given indexes."""
        messages = msgs(events)
        cuts = [0, *sorted(splits), len(messages)]
        outcomes: Counter[str] = Counter()
        for lo, hi in itertools.pairwise(cuts):
            decoded = policy.decode_all(messages[lo:hi], AUTH)
            plan = policy.plan_batch(decoded, elections, self.lookups(), "t")
            self.apply(plan)
            outcomes.update(plan.outcomes)
        return outcomes

    def recount(self) -> Counter[tuple[str, str]]:
        out: Counter[tuple[str, str]] = Counter()
        for (e, _x), (_a, c, sup) in self.votes.items():
            if sup is None:
                out[(e, c)] += 1
        return out

    def check_invariants(self, events: list[VoteEvent], election: Election) -> None:
        # A: each distinct (vote_id, voter, choice) is in exactly one place.
        for e in events:
            in_votes = self.votes.get((e.election_id, e.vote_id), [None, None])[:2] == [
                e.voter_id,
                e.choice,
            ]
            in_rej = (e.election_id, e.vote_id, e.voter_id, e.choice) in self.rejections
            assert in_votes != in_rej, e
        # B: per-voter limit.
        per_voter = Counter(v[0] for v in self.votes.values() if v[2] is None)
        assert all(n <= election.max_votes for n in per_voter.values())
        # C: tallies equal a recount.
        assert +self.tally == +self.recount()


def elections(policy_text: str) -> dict[str, Election]:
    return {E: Election(E, policy_text, CANDS)}


def test_first_wins_keeps_first_and_ignores_replays() -> None:
    db = Db()
    events = [
        ev("v1", "alice", "a", 10),
        ev("v1", "alice", "a", 11),  # Kafka duplicate (other gateway retry): no-op
        ev("v2", "alice", "b", 12),  # second vote: rejected
        ev("v2", "alice", "b", 12),  # duplicate of a rejected vote: no-op
        ev("v3", "bob", "b", 5),
    ]
    out = db.run(events, elections("first_wins"))
    assert out == Counter(counted=2, duplicate=2, voter_already_voted=1)
    assert db.tally == Counter({(E, "a"): 1, (E, "b"): 1})
    assert db.rejections == {(E, "v2", "alice", "b"): "voter_already_voted"}
    db.check_invariants(events, elections("first_wins")[E])


def test_duplicate_vote_id_with_other_content_is_rejected_once() -> None:
    db = Db()
    events = [
        ev("v1", "alice", "a", 10),
        ev("v1", "mallory", "b", 11),
        ev("v1", "alice", "c", 12),
        ev("v1", "mallory", "b", 13),  # replay of the rejected one
    ]
    out = db.run(events, elections("first_wins"), splits=[2])
    assert out == Counter(counted=1, duplicate_vote_id=2, duplicate=1)
    assert set(db.rejections) == {(E, "v1", "mallory", "b"), (E, "v1", "alice", "c")}
    db.check_invariants(events, elections("first_wins")[E])


def test_last_wins_latest_received_at_counts_even_out_of_order() -> None:
    db = Db()
    events = [
        ev("v2", "alice", "b", 20),  # the latest arrives first
        ev("v1", "alice", "a", 10),  # an older re-vote delivered late: superseded
        ev("v3", "alice", "c", 20),  # same received_at, greater vote_id: wins
        ev("v3", "alice", "c", 20),  # replay
        ev("v0", "alice", "a", 20),  # same received_at, smaller vote_id: loses
    ]
    for splits in ([], [1], [1, 2], [2, 4]):
        db = Db()
        out = db.run(events, elections("last_wins"), splits=splits)
        assert out == Counter(counted=2, superseded=2, duplicate=1), splits
        assert db.tally == Counter({(E, "c"): 1, (E, "b"): 0, (E, "a"): 0}) or +db.tally == {
            (E, "c"): 1
        }
        assert db.votes[(E, "v2")][2] == "v3"
        assert db.votes[(E, "v1")][2] == "v2"
        assert db.votes[(E, "v0")][2] == "v3"
        assert db.voters[(E, "alice")].vote_id == "v3"
        db.check_invariants(events, elections("last_wins")[E])


def test_max_votes_counts_first_n() -> None:
    db = Db()
    events = [ev(f"v{i}", "alice", "abc"[i % 3], i + 1) for i in range(5)]
    out = db.run(events, elections("max_votes:3"), splits=[2])
    assert out == Counter(counted=3, voter_already_voted=2)
    assert db.voters[(E, "alice")].counted == 3
    db.check_invariants(events, elections("max_votes:3")[E])


def test_poison_and_bad_events() -> None:
    window = {E: Election(E, "first_wins", CANDS, opens_at_us=100, closes_at_us=200)}
    events: list[VoteEvent | bytes] = [
        b"\xc1not msgpack",
        ev("v1", "alice", "a", 150, v=9),
        ev("v2", "bob", "a", 150, election="nope"),
        ev("v3", "carol", "a", 99),
        ev("v4", "dave", "zz", 150),
        ev("", "erin", "a", 150),
        ev("v6", "frank\x00", "a", 150),
        ev("v7", "gina", "a", 150),
    ]
    messages = msgs(events)
    plan = policy.plan_batch(policy.decode_all(messages, AUTH), window, Lookups(), "votes.v1")
    reasons = [(r.vote_id, r.reason) for r in plan.rejections]
    assert reasons == [
        ("kafka:votes.v1:0:0", "malformed"),
        # What core.event refuses may be what PostgreSQL cannot store (a NUL, an empty or
        # oversized field): named by its Kafka position, never by its own ids.
        ("kafka:votes.v1:0:1", "malformed"),
        ("v2", "unknown_election"),
        ("v3", "election_closed"),
        ("v4", "unknown_candidate"),
        ("kafka:votes.v1:0:5", "malformed"),
        ("kafka:votes.v1:0:6", "malformed"),
    ]
    assert [d.msg.offset for d in plan.dead_letters] == [0, 1, 2, 5, 6]
    assert [v.vote_id for v in plan.votes] == ["v7"]


def test_only_authentic_events_are_decided() -> None:
    window = {E: Election(E, "first_wins", CANDS)}
    other_secret = Key("ev-1", b"x" * 32, ACTIVE)
    good = seal(ev("v1", "alice", "a", 150), KEY)
    tampered = good.replace(b"alice", b"alicf")
    events: list[VoteEvent | bytes] = [
        good,
        encode(ev("v2", "bob", "a", 150)),  # unsigned (version 1)
        seal(ev("v3", "carol", "a", 150), other_secret),  # the right kid, another secret
        seal(ev("v4", "dave", "a", 150), Key("ev-2", b"k" * 32, ACTIVE)),  # unknown kid
        tampered,
    ]
    plan = policy.plan_batch(policy.decode_all(msgs(events), AUTH), window, Lookups(), "t")
    assert [v.vote_id for v in plan.votes] == ["v1"]
    assert [(r.vote_id, r.reason) for r in plan.rejections] == [
        (f"kafka:t:0:{i}", "unauthenticated") for i in range(1, 5)
    ]
    assert [d.reason for d in plan.dead_letters] == ["unauthenticated"] * 4
    # While an upgrade drains older gateways' events, unsigned ones may be taken.
    lenient = EventAuth(KeySet((KEY,)), accept_unsigned=True)
    plan = policy.plan_batch(policy.decode_all(msgs(events[:2]), lenient), window, Lookups(), "t")
    assert [v.vote_id for v in plan.votes] == ["v1", "v2"]


def test_zero_net_tally_moves_are_dropped() -> None:
    db = Db()
    events = [ev("v1", "al", "a", 1), ev("v2", "al", "b", 2), ev("v3", "al", "a", 3)]
    db.run(events, elections("last_wins"), splits=[1])
    # Second batch: a→b→a nets to zero for the partition; nothing is written.
    assert +db.tally == {(E, "a"): 1}


vote_events = st.lists(
    st.tuples(
        st.sampled_from(["x1", "x2", "x3", "x4", "x5", "x6"]),
        st.sampled_from(["al", "bo", "cy"]),
        st.sampled_from(["a", "b", "c", "zz"]),
        st.integers(1, 6),
    ),
    max_size=25,
)


@settings(max_examples=200, deadline=None)
@given(
    raw=vote_events,
    policy_text=st.sampled_from(["first_wins", "last_wins", "max_votes:2"]),
    seed=st.integers(0, 10**6),
)
def test_any_batching_gives_the_same_state_and_invariants(raw, policy_text, seed) -> None:
    """Where batches are cut must not change the outcome (replays after a crash)."""
    events = [ev(x, a, c, t) for x, a, c, t in raw]
    el = elections(policy_text)
    whole = Db()
    whole.run(events, el)
    whole.check_invariants(events, el[E])
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(events)), k=min(3, max(0, len(events) - 1))))
    split = Db()
    split.run(events, el, splits=cuts)
    assert split.votes == whole.votes
    assert split.rejections == whole.rejections
    assert +split.tally == +whole.tally
    # Replaying everything again (Kafka duplicates of every event) changes nothing.
    again = split.run(events, el)
    assert set(again) <= {"duplicate"}
    assert split.votes == whole.votes
