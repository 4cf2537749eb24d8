"""One PostgreSQL transaction per batch (DESIGN §7).

Inside the transaction, in this order:

1. Fence: lock this batch's rows of ``consumer_offsets`` (``FOR UPDATE``) and check the
   stored next offset of every partition equals the batch's first offset. A consumer
   that lost its partitions in a rebalance but still holds a batch (a zombie) either
   blocks here until the new owner commits and then fails the check, or commits first
   and makes the new owner fail it; either way no batch is applied twice.
2. Look up what the batch's vote_ids, (vote, voter, choice) keys and voters already
   have in ``votes``, ``vote_rejections`` and ``voters``.
3. Decide every message (``processor.policy.plan_batch``, pure Python).
4. Binary COPY the decided vote rows into a temporary staging table and
   ``INSERT INTO votes SELECT … ON CONFLICT DO NOTHING``; if fewer rows went in than
   planned, another partition's processor stored one of these vote_ids concurrently:
   roll back and decide again (the lookups then see it).
5. Rejections, superseded votes, voter states, tally deltas, the new offsets; commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg

from processor import policy
from processor.policy import Decoded, Election, Lookups, Plan, VoterState

log = logging.getLogger("processor.store")

_EPOCH_US = "(timestamptz 'epoch' + {} * interval '1 microsecond')"


class Fenced(Exception):
    """The stored offsets do not continue where this batch starts."""

    def __init__(self, stored: dict[int, int]) -> None:
        super().__init__(f"stored offsets {stored} do not match the batch")
        self.stored = stored


class VoteIdRace(Exception):
    """A vote_id of this batch was stored by another transaction meanwhile; retry."""


@dataclass(frozen=True, slots=True)
class ShardTally:
    election_id: str
    candidate_id: str
    topic: str
    partition: int
    votes: int
    as_of_offset: int


@dataclass(slots=True)
class BatchResult:
    plan: Plan
    tallies: list[ShardTally]


_SESSION_SETUP = [
    # Staging tables live per connection; ON COMMIT DELETE ROWS empties them cheaply.
    """CREATE TEMP TABLE IF NOT EXISTS stage_keys (
           election_id text, vote_id text, voter_id text, choice text) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_votes (
           election_id text, vote_id text, voter_id text, choice text,
           received_at_us bigint, gateway_id text, kafka_partition integer,
           kafka_offset bigint, superseded_by text) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_rejections (
           election_id text, vote_id text, voter_id text, choice text, reason text,
           detail text, received_at_us bigint, kafka_partition integer,
           kafka_offset bigint) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_voters (
           election_id text, voter_id text, counted integer, current_vote_id text,
           current_choice text, current_received_at_us bigint) ON COMMIT DELETE ROWS""",
]

_KEY_TYPES = ["text", "text", "text", "text"]
_VOTE_TYPES = ["text", "text", "text", "text", "int8", "text", "int4", "int8", "text"]
_REJ_TYPES = ["text", "text", "text", "text", "text", "text", "int8", "int4", "int8"]
_VOTER_TYPES = ["text", "text", "int4", "text", "text", "int8"]


class Store:
    """The processor's PostgreSQL connection and its batch transaction."""

    def __init__(self, dsn: str, group: str, topic: str) -> None:
        self._dsn = dsn
        self.group = group
        self.topic = topic
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        # autocommit: every batch opens its own transaction explicitly, and the
        # lookups made outside a batch (offsets on assignment, elections) don't leave
        # the session idle in a transaction.
        conn = psycopg.connect(self._dsn, autocommit=True, application_name="vote-processor")
        for stmt in _SESSION_SETUP:
            conn.execute(stmt)
        # Offsets are the last thing written: a commit may wait for the WAL flush,
        # but durability of the batch is exactly what we want here, so keep it on.
        return conn

    def reconnect(self) -> None:
        try:
            self.conn.close()
        finally:
            self.conn = self._connect()

    def close(self) -> None:
        self.conn.close()

    # -- reads outside a batch -------------------------------------------------------

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)",
            (self.group, self.topic, partitions),
        ).fetchall()
        return {p: o for p, o in rows}

    def rewind_offsets(self, offsets: dict[int, int]) -> None:
        """Move stored offsets back (never forward) to ``offsets``; see Processor._on_assign."""
        parts = sorted(offsets)
        self.conn.execute(
            "UPDATE consumer_offsets c SET next_offset = t.o, updated_at = now()"
            " FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
            " WHERE c.consumer_group = %s AND c.topic = %s AND c.partition = t.p"
            " AND c.next_offset > t.o",
            (parts, [offsets[p] for p in parts], self.group, self.topic),
        )  # one statement on an autocommit connection: atomic

    def elections_in_partitions(self, partitions: list[int]) -> set[str]:
        """Elections with tallies from these partitions of our topic."""
        rows = self.conn.execute(
            "SELECT DISTINCT election_id FROM tallies"
            " WHERE topic = %s AND kafka_partition = ANY(%s)",
            (self.topic, partitions),
        ).fetchall()
        return {r[0] for r in rows}

    def load_elections(self, ids: list[str] | None = None) -> dict[str, Election]:
        return load_elections(self.conn, ids)

    def shard_tallies(self, election_id: str) -> list[ShardTally]:
        return shard_tallies(self.conn, election_id)

    # -- the batch ---------------------------------------------------------------------

    def apply_batch(
        self,
        decoded: list[Decoded],
        elections: dict[str, Election],
        first_offsets: dict[int, int],
        next_offsets: dict[int, int],
        allow_gap: dict[int, int] | None = None,
        after_copy: Callable[[], None] | None = None,
        before_commit: Callable[[Plan], None] | None = None,
    ) -> BatchResult:
        """Apply one batch atomically; raises Fenced, VoteIdRace or psycopg errors.

        ``allow_gap[p] = o``: the stored offset of p is o and the broker has no message
        between o and the batch's first offset (confirmed by an earlier re-seek).
        ``before_commit`` runs last inside the transaction (dead letters are produced
        there, so a message is never committed without its dead letter).
        """
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            self._fence(cur, first_offsets, allow_gap or {})
            lookups = self._lookups(cur, decoded)
            plan = policy.plan_batch(decoded, elections, lookups, self.topic)
            self._write_votes(cur, plan)
            if after_copy is not None:
                after_copy()
            self._write_rejections(cur, plan)
            if plan.supersede:
                cur.execute(
                    "UPDATE votes v SET superseded_by = s.by"
                    " FROM unnest(%s::text[], %s::text[], %s::text[]) AS s(e, x, by)"
                    " WHERE v.election_id = s.e AND v.vote_id = s.x",
                    (
                        [s[0] for s in plan.supersede],
                        [s[1] for s in plan.supersede],
                        [s[2] for s in plan.supersede],
                    ),
                )
            self._write_voters(cur, plan)
            tallies = self._write_tallies(cur, plan, next_offsets)
            cur.execute(
                "UPDATE consumer_offsets c SET next_offset = t.o, updated_at = now()"
                " FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
                " WHERE c.consumer_group = %s AND c.topic = %s AND c.partition = t.p",
                (list(next_offsets), list(next_offsets.values()), self.group, self.topic),
            )
            if before_commit is not None:
                before_commit(plan)
        return BatchResult(plan, tallies)

    def _fence(
        self, cur: psycopg.Cursor, first_offsets: dict[int, int], allow_gap: dict[int, int]
    ) -> None:
        parts = sorted(first_offsets)
        # A partition seen for the first time starts where its first batch starts.
        cur.execute(
            "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
            " SELECT %s, %s, p, o FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
            " ON CONFLICT DO NOTHING",
            (self.group, self.topic, parts, [first_offsets[p] for p in parts]),
        )
        # ORDER BY: two transactions lock overlapping partitions in the same order.
        cur.execute(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer_group = %s AND topic = %s AND partition = ANY(%s)"
            " ORDER BY partition FOR UPDATE",
            (self.group, self.topic, parts),
        )
        stored = {p: o for p, o in cur.fetchall()}
        bad = {}
        for p in parts:
            s = stored[p]
            first = first_offsets[p]
            if s == first or (first > s and allow_gap.get(p) == s):
                continue
            bad[p] = s
        if bad:
            raise Fenced(bad)

    def _lookups(self, cur: psycopg.Cursor, decoded: list[Decoded]) -> Lookups:
        lk = Lookups()
        # The batch's keys go in by binary COPY (psycopg's array parameters are dumped
        # in Python and cost more than the queries); duplicates are harmless here.
        n = 0
        with cur.copy("COPY stage_keys FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_KEY_TYPES)
            write = copy.write_row
            for d in decoded:
                e = d.event
                if e is not None:
                    write((e.election_id, e.vote_id, e.voter_id, e.choice))
                    n += 1
        if not n:
            return lk
        # Index probes, one partition each (run-time pruning), whatever the table
        # statistics say: a hash join would scan all of `votes` for every batch.
        cur.execute("SET LOCAL enable_hashjoin = off")
        cur.execute("SET LOCAL enable_mergejoin = off")
        cur.execute(
            "SELECT v.election_id, v.vote_id, v.voter_id, v.choice FROM votes v"
            " WHERE (v.election_id, v.vote_id) IN"
            "  (SELECT election_id, vote_id FROM stage_keys)"
        )
        lk.votes = {(e, x): (a, c) for e, x, a, c in cur.fetchall()}
        cur.execute(
            "SELECT r.election_id, r.vote_id, r.voter_id, r.choice FROM vote_rejections r"
            " WHERE (r.election_id, r.vote_id, r.voter_id, r.choice) IN"
            "  (SELECT election_id, vote_id, voter_id, choice FROM stage_keys)"
        )
        lk.rejected = {(e, x, a, c) for e, x, a, c in cur.fetchall()}
        cur.execute(
            "SELECT v.election_id, v.voter_id, v.counted, v.current_vote_id,"
            "  v.current_choice,"
            "  (extract(epoch FROM v.current_received_at) * 1000000)::bigint"
            " FROM voters v WHERE (v.election_id, v.voter_id) IN"
            "  (SELECT election_id, voter_id FROM stage_keys)"
        )
        lk.voters = {(e, a): VoterState(n, x, c, t) for e, a, n, x, c, t in cur.fetchall()}
        return lk

    def _write_votes(self, cur: psycopg.Cursor, plan: Plan) -> None:
        if not plan.votes:
            return
        with cur.copy("COPY stage_votes FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_VOTE_TYPES)
            write = copy.write_row
            for r in plan.votes:
                write(
                    (
                        r.election_id,
                        r.vote_id,
                        r.voter_id,
                        r.choice,
                        r.received_at_us,
                        r.gateway_id,
                        r.partition,
                        r.offset,
                        r.superseded_by,
                    )
                )
        cur.execute(
            "INSERT INTO votes (election_id, vote_id, voter_id, choice, received_at,"
            "  gateway_id, kafka_partition, kafka_offset, superseded_by)"
            " SELECT election_id, vote_id, voter_id, choice, "
            + _EPOCH_US.format("received_at_us")
            + ", gateway_id, kafka_partition, kafka_offset, superseded_by FROM stage_votes"
            " ON CONFLICT DO NOTHING"
        )
        if cur.rowcount != len(plan.votes):
            raise VoteIdRace(f"{len(plan.votes) - cur.rowcount} vote_ids taken concurrently")

    def _write_rejections(self, cur: psycopg.Cursor, plan: Plan) -> None:
        if not plan.rejections:
            return
        with cur.copy("COPY stage_rejections FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_REJ_TYPES)
            for r in plan.rejections:
                copy.write_row(
                    (
                        r.election_id,
                        r.vote_id,
                        r.voter_id,
                        r.choice,
                        r.reason,
                        r.detail,
                        r.received_at_us,
                        r.partition,
                        r.offset,
                    )
                )
        # DO NOTHING only guards against a concurrent twin from another partition; the
        # lookups already filtered replays.
        cur.execute(
            "INSERT INTO vote_rejections (election_id, vote_id, voter_id, choice, reason,"
            "  detail, received_at, kafka_partition, kafka_offset)"
            " SELECT election_id, vote_id, voter_id, choice, reason, detail, "
            + _EPOCH_US.format("received_at_us")
            + ", kafka_partition, kafka_offset FROM stage_rejections ON CONFLICT DO NOTHING"
        )

    def _write_voters(self, cur: psycopg.Cursor, plan: Plan) -> None:
        if not plan.voters:
            return
        with cur.copy("COPY stage_voters FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_VOTER_TYPES)
            write = copy.write_row
            for (e, a), s in plan.voters.items():
                write((e, a, s.counted, s.vote_id, s.choice, s.received_at_us))
        cur.execute(
            "INSERT INTO voters (election_id, voter_id, counted, current_vote_id,"
            "  current_choice, current_received_at)"
            " SELECT election_id, voter_id, counted, current_vote_id, current_choice, "
            + _EPOCH_US.format("current_received_at_us")
            + " FROM stage_voters"
            " ON CONFLICT (election_id, voter_id) DO UPDATE SET counted = EXCLUDED.counted,"
            "  current_vote_id = EXCLUDED.current_vote_id,"
            "  current_choice = EXCLUDED.current_choice,"
            "  current_received_at = EXCLUDED.current_received_at"
        )

    def _write_tallies(
        self, cur: psycopg.Cursor, plan: Plan, next_offsets: dict[int, int]
    ) -> list[ShardTally]:
        if not plan.tally:
            return []
        items = sorted(plan.tally.items())
        cur.execute(
            "INSERT INTO tallies AS t (election_id, candidate_id, topic, kafka_partition,"
            "  votes, as_of_offset)"
            " SELECT e, c, %s, p, d, o"
            " FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int8[], %s::int8[])"
            "  AS u(e, c, p, d, o)"
            " ON CONFLICT (election_id, candidate_id, topic, kafka_partition) DO UPDATE"
            " SET votes = t.votes + EXCLUDED.votes, as_of_offset = EXCLUDED.as_of_offset"
            " RETURNING t.election_id, t.candidate_id, t.topic, t.kafka_partition, t.votes,"
            "  t.as_of_offset",
            (
                self.topic,
                [k[0] for k, _ in items],
                [k[1] for k, _ in items],
                [k[2] for k, _ in items],
                [d for _, d in items],
                [next_offsets[k[2]] for k, _ in items],
            ),
        )
        return [ShardTally(*r) for r in cur.fetchall()]


def load_elections(conn: psycopg.Connection, ids: list[str] | None = None) -> dict[str, Election]:
    """Elections (all, or those in ``ids``) with their candidates and policy."""
    rows = conn.execute(
        "SELECT e.election_id, e.policy,"
        "  CASE WHEN e.opens_at = '-infinity' THEN NULL"
        "   ELSE (extract(epoch FROM e.opens_at) * 1000000)::bigint END,"
        "  CASE WHEN e.closes_at = 'infinity' THEN NULL"
        "   ELSE (extract(epoch FROM e.closes_at) * 1000000)::bigint END,"
        "  coalesce(array_agg(c.candidate_id) FILTER (WHERE c.candidate_id IS NOT NULL),"
        "   '{}')"
        " FROM elections e LEFT JOIN candidates c USING (election_id)"
        " WHERE %(all)s OR e.election_id = ANY(%(ids)s)"
        " GROUP BY e.election_id",
        {"all": ids is None, "ids": ids or []},
    ).fetchall()
    out: dict[str, Election] = {}
    for eid, pol, opens, closes, cands in rows:
        out[eid] = Election(eid, pol, frozenset(cands), opens, closes)
    return out


def shard_tallies(conn: psycopg.Connection, election_id: str) -> list[ShardTally]:
    """Every shard row of an election's tallies, for a full Redis write."""
    rows = conn.execute(
        "SELECT election_id, candidate_id, topic, kafka_partition, votes, as_of_offset"
        " FROM tallies WHERE election_id = %s",
        (election_id,),
    ).fetchall()
    return [ShardTally(*r) for r in rows]


def group_by_election(tallies: list[ShardTally]) -> dict[str, list[ShardTally]]:
    out: dict[str, list[ShardTally]] = defaultdict(list)
    for t in tallies:
        out[t.election_id].append(t)
    return out
