"""One PostgreSQL transaction per batch (docs/ARCHITECTURE.md, Processor).

Inside the transaction, in this order:

1. Fence: lock this batch's rows of ``consumer_offsets`` (``FOR UPDATE``) and check the
   stored next offset of every partition equals the batch's first offset. A consumer
   that lost its partitions in a rebalance but still holds a batch (a zombie) either
   blocks here until the new owner commits and then fails the check, or commits first
   and makes the new owner fail it; either way no batch is applied twice.
2. Look up what the batch's vote_ids, (vote, voter, choice) keys and voters already
   have in ``votes``, ``vote_rejections`` and ``voters``, through the batch's
   ``processor.lookup`` path (``Store.path_for``). Below ``lookup_threshold``
   messages (default ``LOOKUP_THRESHOLD``) the keys go as array parameters and the
   batch touches no temporary table; at or above it they are staged by binary COPY
   into temporary tables partitioned like the big ones (partitionwise joins).
3. Decide every message (``processor.policy.plan_batch``, pure Python).
4. Binary COPY the decided vote rows straight into ``votes``; a unique violation means
   another partition's processor stored one of these vote_ids concurrently: roll back
   and decide again (the lookups then see it).
5. Rejections, superseded votes, voter states (new voters by COPY, known ones by
   UPDATE; a concurrently inserted voter is the same race), tally deltas, the new
   offsets; commit.

What each path costs, and why the array path exists at all (a COMMIT after any use of
a temporary table truncates every temporary table of the session), is measured in
bench/README.md (`python -m bench batchcost`).
"""

from __future__ import annotations

import logging
import struct
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

from core import elections as core_elections
from core.elections import Election
from processor import policy
from processor.lookup import (
    LOOKUP_THRESHOLD,
    VOTER_TYPES,
    ArrayLookup,
    LookupPath,
    StagedLookup,
    StateLookup,
    StateMissed,
    choose_path,
)
from processor.policy import Decoded, Lookups, Plan, VoterKey, VoteRow
from processor.state import PartitionState, StateError

log = logging.getLogger("processor.store")

# PostgreSQL's binary timestamptz counts microseconds from 2000-01-01 UTC.
_PG_EPOCH_US = 946_684_800_000_000
_pack_int8 = struct.Struct("!q").pack


class _EpochMicrosDumper(Dumper):
    """Binary timestamptz from an int of microseconds since the Unix epoch.

    Registered per cursor by oid only (``cls=None``), so it serves exactly the COPYs
    that ``set_types`` a timestamptz column: the events carry ``received_at_us`` as an
    int, and building a datetime per row only for psycopg to take it apart again
    costs more than the rest of the row.
    """

    format = Format.BINARY
    oid = psycopg.postgres.types["timestamptz"].oid

    def dump(self, obj: int) -> bytes:
        return _pack_int8(obj - _PG_EPOCH_US)


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
    # The Kafka cluster of the topic ('' in a single-region deployment).
    cluster: str = ""


@dataclass(slots=True)
class BatchResult:
    plan: Plan
    tallies: list[ShardTally]


_VOTE_TYPES = ["text", "text", "text", "text", "timestamptz", "text", "int4", "int8", "text"]


class Store:
    """The processor's PostgreSQL connection and its batch transaction."""

    def __init__(
        self,
        dsn: str,
        group: str,
        topic: str,
        lookup_threshold: int = LOOKUP_THRESHOLD,
        cluster: str = "",
        state: bool = False,
        state_dir: str | None = None,
    ) -> None:
        """``lookup_threshold``: batches with fewer messages than this take the array
        path (no temporary table); 0 sends every batch through the staged path.
        ``cluster`` names the Kafka cluster ``topic`` lives in: offsets and tally shards
        are keyed by it (docs/ARCHITECTURE.md, "Regions"); '' in a single region.
        ``state``: answer lookups from a ``PartitionState`` (in a new directory under
        ``state_dir``) instead of PostgreSQL; the threshold then only picks how
        rejections are written."""
        if lookup_threshold < 0:
            raise ValueError("lookup_threshold must be >= 0")
        self._dsn = dsn
        self.group = group
        self.topic = topic
        self.cluster = cluster
        self.lookup_threshold = lookup_threshold
        self._array: LookupPath = ArrayLookup()
        self._staged: LookupPath = StagedLookup()
        self._state: StateLookup | None = None
        if state:
            self._state = StateLookup(
                PartitionState(state_dir), self._array, self._staged, lookup_threshold
            )
        # After a batch the state could not decide (a key another stream wrote), the
        # next attempt asks PostgreSQL.
        self._ask_postgres = False
        self.conn = self._connect()

    def _connect(self) -> psycopg.Connection:
        # autocommit: every batch opens its own transaction explicitly, and the
        # lookups made outside a batch (offsets on assignment, elections) don't leave
        # the session idle in a transaction.
        conn = psycopg.connect(self._dsn, autocommit=True, application_name="vote-processor")
        for path in (self._array, self._staged):
            path.prepare(conn)
        return conn

    def reconnect(self) -> None:
        try:
            self.conn.close()
        finally:
            self.conn = self._connect()

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            if self._state is not None:
                self._state.state.close()

    def forget_state(self, partitions: list[int] | None = None) -> None:
        """The state of ``partitions`` (None: all) is no longer to be trusted: their
        assignment changed, or a batch's commit is in doubt. Their next batch loads
        them again from PostgreSQL."""
        if self._state is not None:
            self._state.state.forget(partitions)

    def load_state(self, cur: psycopg.Cursor, partitions: list[int]) -> int:
        """Load ``partitions``' state now, inside the caller's transaction (a batch does it
        by itself when it needs to); returns the voters loaded, 0 without a state."""
        if self._state is None:
            return 0
        return self._state.state.load(cur, partitions)

    # -- reads outside a batch -------------------------------------------------------

    def stored_offsets(self, partitions: list[int]) -> dict[int, int]:
        rows = self.conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer_group = %s AND cluster = %s AND topic = %s"
            " AND partition = ANY(%s)",
            (self.group, self.cluster, self.topic, partitions),
        ).fetchall()
        return {p: o for p, o in rows}

    def rewind_offsets(self, offsets: dict[int, int]) -> None:
        """Move stored offsets back (never forward) to ``offsets``; see Processor._on_assign."""
        parts = sorted(offsets)
        self.conn.execute(
            "UPDATE consumer_offsets c SET next_offset = t.o, updated_at = now()"
            " FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
            " WHERE c.consumer_group = %s AND c.cluster = %s AND c.topic = %s"
            " AND c.partition = t.p AND c.next_offset > t.o",
            (parts, [offsets[p] for p in parts], self.group, self.cluster, self.topic),
        )  # one statement on an autocommit connection: atomic

    def start_offsets(self, offsets: dict[int, int]) -> None:
        """Store ``offsets`` as the next offsets, forward or back: where a takeover of a
        lost region's mirrored topic starts (processor/regions.py)."""
        parts = sorted(offsets)
        self.conn.execute(
            "INSERT INTO consumer_offsets (consumer_group, cluster, topic, partition,"
            "  next_offset)"
            " SELECT %s, %s, %s, p, o FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
            " ON CONFLICT (consumer_group, cluster, topic, partition)"
            " DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()",
            (self.group, self.cluster, self.topic, parts, [offsets[p] for p in parts]),
        )

    def elections_in_partitions(self, partitions: list[int]) -> set[str]:
        """Elections with tallies from these partitions of our topic."""
        rows = self.conn.execute(
            "SELECT DISTINCT election_id FROM tallies"
            " WHERE cluster = %s AND topic = %s AND kafka_partition = ANY(%s)",
            (self.cluster, self.topic, partitions),
        ).fetchall()
        return {r[0] for r in rows}

    def load_elections(self, ids: list[str] | None = None) -> dict[str, Election]:
        return core_elections.load(self.conn, ids)

    def shard_tallies(self, election_id: str) -> list[ShardTally]:
        return shard_tallies(self.conn, election_id)

    # -- the batch ---------------------------------------------------------------------

    def path_for(self, messages: int) -> LookupPath:
        """The lookup/write path of a batch of ``messages``: the state's when the store
        has one (unless the last attempt needs PostgreSQL's answer), else by size (see
        ``LOOKUP_THRESHOLD``)."""
        if self._state is not None and not self._ask_postgres:
            return self._state
        return choose_path(messages, self.lookup_threshold, self._array, self._staged)

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
        args = (decoded, elections, first_offsets, next_offsets, allow_gap)
        path = self.path_for(len(decoded))
        try:
            result, lookups = self._transaction(path, *args, after_copy, before_commit)
        except StateMissed as exc:
            # The state did not know a key another stream wrote (nothing committed): this
            # batch is decided again, from PostgreSQL.
            log.info("decided again from PostgreSQL", extra={"detail": str(exc)})
            self._ask_postgres = True
            return self.apply_batch(*args, after_copy, before_commit)
        except VoteIdRace:
            # Nothing committed; if the state was the path, it may never have seen that
            # vote_id or voter (another partition's): PostgreSQL decides the next attempt.
            self._ask_postgres = True
            raise
        except StateError as exc:
            # The local store is unusable (disk full, I/O error): PostgreSQL answers from
            # now on, starting with this batch (rolled back, nothing committed).
            log.error("state store failed, looking keys up in PostgreSQL", exc_info=exc)
            self._drop_state()
            return self.apply_batch(*args, after_copy, before_commit)
        except BaseException:
            # Fenced, or an error that may have hit COMMIT itself: whether this batch is in
            # PostgreSQL is unknown here, so the state can't follow it.
            self.forget_state()
            raise
        self._ask_postgres = False
        if self._state is not None:
            try:
                if path is self._state:
                    self._state.state.record_plan(result.plan)
                else:  # decided from PostgreSQL: what it answered is news to the state
                    self._state.state.record(decoded, lookups)
            except StateError as exc:
                log.error("state store failed, looking keys up in PostgreSQL", exc_info=exc)
                self._drop_state()
        return result

    def _drop_state(self) -> None:
        if self._state is not None:
            self._state.state.close()
            self._state = None

    def _transaction(
        self,
        path: LookupPath,
        decoded: list[Decoded],
        elections: dict[str, Election],
        first_offsets: dict[int, int],
        next_offsets: dict[int, int],
        allow_gap: dict[int, int] | None,
        after_copy: Callable[[], None] | None,
        before_commit: Callable[[Plan], None] | None,
    ) -> tuple[BatchResult, Lookups]:
        """The batch's transaction; returns its result and its lookups as deciding left
        them (what PostgreSQL holds about the batch's keys once it committed)."""
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            self._fence(cur, first_offsets, allow_gap or {})
            register_epoch_dumper(cur)
            lookups = self._lookups(cur, decoded, path)
            known_voters = set(lookups.voters)  # plan_batch adds the new ones
            plan = policy.plan_batch(decoded, elections, lookups, self.topic)
            self._confirm(cur, plan, path)
            self._write_votes(cur, plan)
            if after_copy is not None:
                after_copy()
            self._write_rejections(cur, plan, path)
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
            self._write_voters(cur, plan, known_voters, path)
            tallies = self._write_tallies(cur, plan, next_offsets)
            cur.execute(
                "UPDATE consumer_offsets c SET next_offset = t.o, updated_at = now()"
                " FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
                " WHERE c.consumer_group = %s AND c.cluster = %s AND c.topic = %s"
                " AND c.partition = t.p",
                (
                    list(next_offsets),
                    list(next_offsets.values()),
                    self.group,
                    self.cluster,
                    self.topic,
                ),
            )
            if before_commit is not None:
                before_commit(plan)
        return BatchResult(plan, tallies), lookups

    def _fence(
        self, cur: psycopg.Cursor, first_offsets: dict[int, int], allow_gap: dict[int, int]
    ) -> None:
        parts = sorted(first_offsets)
        # A partition seen for the first time starts where its first batch starts.
        cur.execute(
            "INSERT INTO consumer_offsets (consumer_group, cluster, topic, partition,"
            "  next_offset)"
            " SELECT %s, %s, %s, p, o FROM unnest(%s::int4[], %s::int8[]) AS t(p, o)"
            " ON CONFLICT DO NOTHING",
            (self.group, self.cluster, self.topic, parts, [first_offsets[p] for p in parts]),
        )
        # ORDER BY: two transactions lock overlapping partitions in the same order.
        cur.execute(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer_group = %s AND cluster = %s AND topic = %s"
            " AND partition = ANY(%s) ORDER BY partition FOR UPDATE",
            (self.group, self.cluster, self.topic, parts),
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

    def _lookups(self, cur: psycopg.Cursor, decoded: list[Decoded], path: LookupPath) -> Lookups:
        return path.lookups(cur, decoded)

    def _confirm(self, cur: psycopg.Cursor, plan: Plan, path: LookupPath) -> None:
        if path is self._state:
            self._state.confirm(cur, plan)

    def _write_votes(self, cur: psycopg.Cursor, plan: Plan) -> None:
        if not plan.votes:
            return
        # Straight into `votes`: COPY routes rows to the partitions in multi-row buffers,
        # about twice as fast as staging them and INSERT … SELECT. The lookups (under the
        # fence) saw none of these vote_ids, so the only possible conflict is a vote_id
        # stored through another partition (meanwhile, or ever on the state path, which
        # knows its own partitions only): the unique violation aborts the transaction
        # and the batch is decided again (from PostgreSQL, see apply_batch).
        try:
            copy_votes(cur, plan.votes)
        except psycopg.errors.UniqueViolation as exc:
            raise VoteIdRace(f"vote_id taken concurrently: {exc.diag.message_detail}") from exc

    def _write_rejections(self, cur: psycopg.Cursor, plan: Plan, path: LookupPath) -> None:
        if plan.rejections:
            path.write_rejections(cur, plan.rejections)

    def _write_voters(
        self, cur: psycopg.Cursor, plan: Plan, known: set[VoterKey], path: LookupPath
    ) -> None:
        """New voters (not in the lookups) by COPY, the ``known`` ones by UPDATE."""
        if not plan.voters:
            return
        changed = [(k, s) for k, s in plan.voters.items() if k in known]
        # Same reasoning as _write_votes: under the fence the lookups saw none of the new
        # voters, so a unique violation is another partition's processor inserting the
        # voter meanwhile; deciding again then sees its state (no double count).
        if len(changed) < len(plan.voters):
            try:
                with cur.copy(
                    "COPY voters (election_id, voter_id, counted, current_vote_id,"
                    "  current_choice, current_received_at) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(VOTER_TYPES)
                    write = copy.write_row
                    for (e, a), s in plan.voters.items():
                        if (e, a) not in known:
                            write((e, a, s.counted, s.vote_id, s.choice, s.received_at_us))
            except psycopg.errors.UniqueViolation as exc:
                raise VoteIdRace(f"voter inserted concurrently: {exc.diag.message_detail}") from exc
        if changed:
            path.update_voters(cur, changed)

    def _write_tallies(
        self, cur: psycopg.Cursor, plan: Plan, next_offsets: dict[int, int]
    ) -> list[ShardTally]:
        if not plan.tally:
            return []
        items = sorted(plan.tally.items())
        cur.execute(
            "INSERT INTO tallies AS t (election_id, candidate_id, cluster, topic,"
            "  kafka_partition, votes, as_of_offset)"
            " SELECT e, c, %s, %s, p, d, o"
            " FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int8[], %s::int8[])"
            "  AS u(e, c, p, d, o)"
            " ON CONFLICT (election_id, candidate_id, cluster, topic, kafka_partition)"
            " DO UPDATE"
            " SET votes = t.votes + EXCLUDED.votes, as_of_offset = EXCLUDED.as_of_offset"
            " RETURNING t.election_id, t.candidate_id, t.topic, t.kafka_partition, t.votes,"
            "  t.as_of_offset, t.cluster",
            (
                self.cluster,
                self.topic,
                [k[0] for k, _ in items],
                [k[1] for k, _ in items],
                [k[2] for k, _ in items],
                [d for _, d in items],
                [next_offsets[k[2]] for k, _ in items],
            ),
        )
        return [ShardTally(*r) for r in cur.fetchall()]


def copy_votes(cur: psycopg.Cursor, rows: list[VoteRow], table: str = "votes") -> None:
    """Binary COPY of ``rows`` into ``table`` (``votes`` or a table like it), as a batch
    writes them; the cursor needs ``register_epoch_dumper``."""
    with cur.copy(
        f"COPY {table} (election_id, vote_id, voter_id, choice, received_at,"
        "  gateway_id, kafka_partition, kafka_offset, superseded_by)"
        " FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_VOTE_TYPES)
        write = copy.write_row
        for r in rows:
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


def register_epoch_dumper(cur: psycopg.Cursor) -> None:
    """Binary COPY of received_at_us ints into timestamptz columns, on this cursor."""
    cur.adapters.register_dumper(None, _EpochMicrosDumper)


def shard_tallies(conn: psycopg.Connection, election_id: str) -> list[ShardTally]:
    """Every shard row of an election's tallies, for a full Redis write."""
    rows = conn.execute(
        "SELECT election_id, candidate_id, topic, kafka_partition, votes, as_of_offset,"
        "  cluster FROM tallies WHERE election_id = %s",
        (election_id,),
    ).fetchall()
    return [ShardTally(*r) for r in rows]


def group_by_election(tallies: list[ShardTally]) -> dict[str, list[ShardTally]]:
    out: dict[str, list[ShardTally]] = defaultdict(list)
    for t in tallies:
        out[t.election_id].append(t)
    return out
