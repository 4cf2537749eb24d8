"""How one batch's keys reach PostgreSQL: the lookup/write paths of ``processor.store``.

A batch reads what ``votes``, ``vote_rejections`` and ``voters`` already hold about its
keys and, once decided, writes its rejections and the new state of the voters it
already knew. Every ``LookupPath`` does exactly that and nothing else; the rest of the
transaction (fence, vote COPY, tallies, offsets) is the store's and the same for all.
``choose_path`` is the one place that picks a path for a batch:

* ``ArrayLookup``: keys as array parameters; the batch touches no temporary table.
* ``StagedLookup``: keys staged by binary COPY into temporary tables partitioned like
  the big ones (partitionwise joins); cheaper per key, dearer per transaction.
* ``StateLookup``: no lookup query; the member's own copy of its partitions' committed
  keys answers (``processor.state``). Used for every batch when the store has one.
"""

from __future__ import annotations

from typing import Protocol

import psycopg

from processor.policy import (
    ELECTION_CLOSED,
    UNKNOWN_CANDIDATE,
    UNKNOWN_ELECTION,
    VOTER_ALREADY_VOTED,
    Decoded,
    Lookups,
    Plan,
    RejectionRow,
    VoterKey,
    VoterState,
)
from processor.state import PartitionState

# Batches with fewer messages than this look their keys up with array parameters
# and write rejections and known voters from arrays too, touching no temporary table:
# once a transaction has used any temporary table, its COMMIT truncates *every* ON
# COMMIT DELETE ROWS table of the session (the 66 stages below). Per key the staged
# path (binary COPY, partitionwise joins) is cheaper, so it wins for large batches;
# the two cost about the same between 4,000 and 6,000 (bench/README.md, batchcost).
LOOKUP_THRESHOLD = 4000

# SQL for a timestamptz from a bigint of microseconds since the Unix epoch.
_EPOCH_US = "(timestamptz 'epoch' + {} * interval '1 microsecond')"

# `votes` and `voters` are hash-partitioned into this many partitions (001_initial.sql).
_PARTITIONS = 32

_KEY_TYPES = ["text", "text", "text", "text"]
_REJ_TYPES = ["text", "text", "text", "text", "text", "text", "int8", "int4", "int8"]
VOTER_TYPES = ["text", "text", "int4", "text", "text", "timestamptz"]

_VOTER_STATE = (
    "v.election_id, v.voter_id, v.counted, v.current_vote_id, v.current_choice,"
    "  (extract(epoch FROM v.current_received_at) * 1000000)::bigint"
)

Changed = list[tuple[VoterKey, VoterState]]


class LookupPath(Protocol):
    """Reads a batch's keys and writes its rejections and known voters.

    Called inside the batch's transaction, on the store's cursor. The PostgreSQL paths
    keep no state between batches other than what ``prepare`` set up on the connection;
    ``StateLookup`` reads a ``PartitionState`` that the store keeps in step.
    """

    def prepare(self, conn: psycopg.Connection) -> None:
        """Once per (re)connection, before the first batch."""

    def lookups(self, cur: psycopg.Cursor, decoded: list[Decoded]) -> Lookups:
        """What PostgreSQL holds about the votes and voters ``decoded`` names."""

    def write_rejections(self, cur: psycopg.Cursor, rows: list[RejectionRow]) -> None:
        """Insert ``rows`` (non-empty) into ``vote_rejections``, skipping a concurrent twin."""

    def update_voters(self, cur: psycopg.Cursor, changed: Changed) -> None:
        """Set the new state of voters (non-empty) that ``lookups`` found."""


def choose_path(messages: int, threshold: int, array: LookupPath, staged: LookupPath) -> LookupPath:
    """The path for a batch of ``messages``; one choice for its lookups and writes alike.

    Counting messages rather than decoded events: either path gives the same result.
    """
    return staged if messages >= threshold else array


def _keys(decoded: list[Decoded]) -> tuple[list[str], list[str], list[str], list[str]]:
    es: list[str] = []
    xs: list[str] = []
    voters: list[str] = []
    choices: list[str] = []
    for d in decoded:
        e = d.event
        if e is not None:
            es.append(e.election_id)
            xs.append(e.vote_id)
            voters.append(e.voter_id)
            choices.append(e.choice)
    return es, xs, voters, choices


def _voter_arrays(changed: Changed) -> tuple[list, ...]:
    """(election, voter, counted, vote_id, choice, received_at_us) arrays of ``changed``."""
    return (
        [k[0] for k, _ in changed],
        [k[1] for k, _ in changed],
        [st.counted for _, st in changed],
        [st.vote_id for _, st in changed],
        [st.choice for _, st in changed],
        [st.received_at_us for _, st in changed],
    )


class ArrayLookup:
    """Keys as array parameters; no temporary table (see LOOKUP_THRESHOLD)."""

    def prepare(self, conn: psycopg.Connection) -> None:
        pass

    def lookups(self, cur: psycopg.Cursor, decoded: list[Decoded]) -> Lookups:
        """The staged path's three lookups, with the keys as array parameters.

        Each key is one index probe: a nested loop from ``unnest`` into the primary key,
        forced as in the staged path (a hash join chosen for a young `votes` table scans
        all of it). For `votes` and `voters` the Append prunes to the key's one
        partition at run time, dearer per key than the staged partitionwise join but
        fine for a few hundred keys. Not ``CROSS JOIN LATERAL (… OFFSET 0)``, which
        forces the same plan without the SETs but is slow to start at a thousand keys.
        Arrays go in binary (``%b``), cheaper than text. A key repeated in the batch is
        probed twice; the dicts absorb that.
        """
        lk = Lookups()
        es, xs, voters, choices = _keys(decoded)
        if not es:
            return lk
        # One round trip; like the staged path's, these hold for the rest of the batch.
        cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
        cur.execute(
            "SELECT v.election_id, v.vote_id, v.voter_id, v.choice"
            " FROM unnest(%b::text[], %b::text[]) AS k(e, x)"
            " JOIN votes v ON v.election_id = k.e AND v.vote_id = k.x",
            (es, xs),
        )
        lk.votes = {(e, x): (a, c) for e, x, a, c in cur.fetchall()}
        cur.execute(
            "SELECT r.election_id, r.vote_id, r.voter_id, r.choice"
            " FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[]) AS k(e, x, a, c)"
            " JOIN vote_rejections r ON r.election_id = k.e AND r.vote_id = k.x"
            "  AND r.voter_id = k.a AND r.choice = k.c",
            (es, xs, voters, choices),
        )
        lk.rejected = {(e, x, a, c) for e, x, a, c in cur.fetchall()}
        cur.execute(
            "SELECT " + _VOTER_STATE + " FROM unnest(%b::text[], %b::text[]) AS k(e, a)"
            " JOIN voters v ON v.election_id = k.e AND v.voter_id = k.a",
            (es, voters),
        )
        lk.voters = {(e, a): VoterState(n, x, c, t) for e, a, n, x, c, t in cur.fetchall()}
        return lk

    def write_rejections(self, cur: psycopg.Cursor, rows: list[RejectionRow]) -> None:
        # DO NOTHING only guards against a concurrent twin from another partition; the
        # lookups already filtered replays.
        cur.execute(
            "INSERT INTO vote_rejections (election_id, vote_id, voter_id, choice, reason,"
            "  detail, received_at, kafka_partition, kafka_offset)"
            " SELECT e, x, a, c, r, d, "
            + _EPOCH_US.format("t")
            + ", p, o FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],"
            "  %b::text[], %b::text[], %b::int8[], %b::int4[], %b::int8[])"
            "  AS u(e, x, a, c, r, d, t, p, o)"
            " ON CONFLICT DO NOTHING",
            (
                [r.election_id for r in rows],
                [r.vote_id for r in rows],
                [r.voter_id for r in rows],
                [r.choice for r in rows],
                [r.reason for r in rows],
                [r.detail for r in rows],
                [r.received_at_us for r in rows],
                [r.partition for r in rows],
                [r.offset for r in rows],
            ),
        )

    def update_voters(self, cur: psycopg.Cursor, changed: Changed) -> None:
        cur.execute(
            "UPDATE voters v SET counted = s.n, current_vote_id = s.x,"
            "  current_choice = s.c, current_received_at = "
            + _EPOCH_US.format("s.t")
            + " FROM unnest(%b::text[], %b::text[], %b::int4[], %b::text[], %b::text[],"
            "  %b::int8[]) AS s(e, a, n, x, c, t)"
            " WHERE v.election_id = s.e AND v.voter_id = s.a",
            _voter_arrays(changed),
        )


def _partitioned_stage(table: str, columns: str, key: str) -> list[str]:
    """A temporary table hash-partitioned exactly like ``votes`` / ``voters``.

    Joining it to its twin lets the planner join partition to partition
    (enable_partitionwise_join): every probe goes straight to the one index it needs,
    where a join through the parent re-runs partition pruning for every key, which
    costs more than the index probe itself. Should a migration re-partition the big
    tables, the join still works, only slower.
    ON COMMIT DELETE ROWS is not inherited by partitions, so each gets its own.
    """
    return [
        f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) PARTITION BY HASH ({key})",
        *(
            f"CREATE TEMP TABLE IF NOT EXISTS {table}_p{i:02d} PARTITION OF {table}"
            f" FOR VALUES WITH (MODULUS {_PARTITIONS}, REMAINDER {i}) ON COMMIT DELETE ROWS"
            for i in range(_PARTITIONS)
        ),
    ]


_STAGES = [
    # Staging tables live per connection; ON COMMIT DELETE ROWS empties them cheaply.
    *_partitioned_stage(
        "stage_keys", "election_id text, vote_id text, voter_id text, choice text", "vote_id"
    ),
    *_partitioned_stage("stage_voter_keys", "election_id text, voter_id text", "voter_id"),
    """CREATE TEMP TABLE IF NOT EXISTS stage_rejections (
           election_id text, vote_id text, voter_id text, choice text, reason text,
           detail text, received_at_us bigint, kafka_partition integer,
           kafka_offset bigint) ON COMMIT DELETE ROWS""",
    """CREATE TEMP TABLE IF NOT EXISTS stage_voters (
           election_id text, voter_id text, counted integer, current_vote_id text,
           current_choice text, current_received_at timestamptz) ON COMMIT DELETE ROWS""",
]


class StagedLookup:
    """Keys staged by binary COPY into per-connection temporary tables.

    Its voter COPY writes timestamptz from ints: the store registers that dumper on the
    batch's cursor.
    """

    def prepare(self, conn: psycopg.Connection) -> None:
        for stmt in _STAGES:
            conn.execute(stmt)

    def lookups(self, cur: psycopg.Cursor, decoded: list[Decoded]) -> Lookups:
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
        # Index probes, partition against partition, whatever the table statistics say:
        # a hash join would scan all of `votes` for every batch.
        cur.execute("SET LOCAL enable_hashjoin = off")
        cur.execute("SET LOCAL enable_mergejoin = off")
        cur.execute("SET LOCAL enable_partitionwise_join = on")
        # A key repeated in the batch yields its row twice below; the dicts absorb that.
        cur.execute(
            "SELECT v.election_id, v.vote_id, v.voter_id, v.choice"
            " FROM stage_keys k JOIN votes v"
            "  ON v.election_id = k.election_id AND v.vote_id = k.vote_id"
        )
        lk.votes = {(e, x): (a, c) for e, x, a, c in cur.fetchall()}
        # vote_rejections is not partitioned. A join rather than IN (…): the semi-join
        # first de-duplicates the keys in a hash table, which costs more than probing
        # the few repeated keys twice.
        cur.execute(
            "SELECT r.election_id, r.vote_id, r.voter_id, r.choice"
            " FROM stage_keys k JOIN vote_rejections r"
            "  ON r.election_id = k.election_id AND r.vote_id = k.vote_id"
            "  AND r.voter_id = k.voter_id AND r.choice = k.choice"
        )
        lk.rejected = {(e, x, a, c) for e, x, a, c in cur.fetchall()}
        # The voter keys again, partitioned like `voters`; copied server-side, which is
        # cheaper than a second COPY from here.
        cur.execute("INSERT INTO stage_voter_keys SELECT election_id, voter_id FROM stage_keys")
        cur.execute(
            "SELECT " + _VOTER_STATE + " FROM stage_voter_keys k JOIN voters v"
            "  ON v.election_id = k.election_id AND v.voter_id = k.voter_id"
        )
        lk.voters = {(e, a): VoterState(n, x, c, t) for e, a, n, x, c, t in cur.fetchall()}
        return lk

    def write_rejections(self, cur: psycopg.Cursor, rows: list[RejectionRow]) -> None:
        with cur.copy("COPY stage_rejections FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_REJ_TYPES)
            for r in rows:
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
        # DO NOTHING: see ArrayLookup.write_rejections.
        cur.execute(
            "INSERT INTO vote_rejections (election_id, vote_id, voter_id, choice, reason,"
            "  detail, received_at, kafka_partition, kafka_offset)"
            " SELECT election_id, vote_id, voter_id, choice, reason, detail, "
            + _EPOCH_US.format("received_at_us")
            + ", kafka_partition, kafka_offset FROM stage_rejections ON CONFLICT DO NOTHING"
        )

    def update_voters(self, cur: psycopg.Cursor, changed: Changed) -> None:
        with cur.copy("COPY stage_voters FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(VOTER_TYPES)
            write = copy.write_row
            for (e, a), s in changed:
                write((e, a, s.counted, s.vote_id, s.choice, s.received_at_us))
        cur.execute(
            "UPDATE voters v SET counted = s.counted, current_vote_id = s.current_vote_id,"
            "  current_choice = s.current_choice,"
            "  current_received_at = s.current_received_at"
            " FROM stage_voters s"
            " WHERE v.election_id = s.election_id AND v.voter_id = s.voter_id"
        )


class StateMissed(Exception):
    """The state did not know a key that another stream wrote; decide again from PostgreSQL."""


# Rejections the policy gives a vote whose vote_id it believes new. Rule 2 of
# processor.policy comes first: if the vote_id is stored after all (through another
# partition), the reason must be duplicate_vote_id instead.
# Up to this many vote_ids, StateLookup.confirm probes them with ANY lists, else by a join.
_FEW_PROBES = 32
_POLICY_REJECTIONS = frozenset(
    {VOTER_ALREADY_VOTED, ELECTION_CLOSED, UNKNOWN_CANDIDATE, UNKNOWN_ELECTION}
)


class StateLookup:
    """Keys answered by the member's ``PartitionState``; no lookup query.

    Partitions the state has not loaded yet are loaded first, inside the transaction
    (after the fence). Rejections go through the PostgreSQL path their count calls for
    (``choose_path``): mostly a handful, so arrays and no temporary table. Known voters
    are updated only where the row still holds the state the batch was decided on, so
    a state that missed another stream's write can't count a voter twice.
    """

    def __init__(
        self, state: PartitionState, array: LookupPath, staged: LookupPath, threshold: int
    ) -> None:
        self.state = state
        self._array = array
        self._staged = staged
        self._threshold = threshold
        self._read: dict[VoterKey, VoterState] = {}

    def prepare(self, conn: psycopg.Connection) -> None:
        pass

    def lookups(self, cur: psycopg.Cursor, decoded: list[Decoded]) -> Lookups:
        missing = self.state.missing(d.msg.partition for d in decoded if d.event is not None)
        if missing:
            self.state.load(cur, missing)
        lk = self.state.lookups(decoded)
        # plan_batch replaces these entries as it decides; update_voters needs the old ones.
        self._read = dict(lk.voters)
        return lk

    def confirm(self, cur: psycopg.Cursor, plan: Plan) -> None:
        """Raises StateMissed if a vote_id the plan rejected as new is stored in ``votes``.

        A vote_id stored through another partition is unknown to this one's state. Were
        the vote counted, its COPY would collide; rejected, nothing would, and it would
        carry the policy's reason instead of duplicate_vote_id. So those few vote_ids
        are probed in ``votes``.
        """
        keys = [
            (r.election_id, r.vote_id) for r in plan.rejections if r.reason in _POLICY_REJECTIONS
        ]
        if not keys:
            return
        if len(keys) <= _FEW_PROBES:
            # Plain ANY lists, planned with their values: only the vote_ids' own partitions
            # are set up and probed.
            cur.execute(
                "SELECT election_id, vote_id FROM votes"
                " WHERE election_id = ANY(%s) AND vote_id = ANY(%s)",
                (sorted({k[0] for k in keys}), [k[1] for k in keys]),
            )
        else:
            # Beyond a few, the ANY lists' index scans cost more than ArrayLookup's
            # forced nested loop, one probe per key (bench/README.md, batchcost).
            cur.execute("SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off")
            cur.execute(
                "SELECT v.election_id, v.vote_id FROM unnest(%b::text[], %b::text[]) AS k(e, x)"
                " JOIN votes v ON v.election_id = k.e AND v.vote_id = k.x",
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
        wanted = set(keys)
        found = next((k for k in cur.fetchall() if k in wanted), None)
        if found is not None:
            raise StateMissed(f"vote_id {found[1]!r} was stored through another partition")

    def write_rejections(self, cur: psycopg.Cursor, rows: list[RejectionRow]) -> None:
        choose_path(len(rows), self._threshold, self._array, self._staged).write_rejections(
            cur, rows
        )

    def update_voters(self, cur: psycopg.Cursor, changed: Changed) -> None:
        """Raises StateMissed unless every row still held the state read."""
        old = [self._read[k] for k, _ in changed]
        cur.execute(
            "UPDATE voters v SET counted = s.n, current_vote_id = s.x,"
            "  current_choice = s.c, current_received_at = "
            + _EPOCH_US.format("s.t")
            + " FROM unnest(%b::text[], %b::text[], %b::int4[], %b::text[], %b::text[],"
            "  %b::int8[], %b::int4[], %b::text[]) AS s(e, a, n, x, c, t, was_n, was_x)"
            " WHERE v.election_id = s.e AND v.voter_id = s.a"
            # (counted, current vote) only ever moves forward: it versions the row.
            "  AND v.counted = s.was_n AND v.current_vote_id = s.was_x",
            (*_voter_arrays(changed), [st.counted for st in old], [st.vote_id for st in old]),
        )
        if cur.rowcount != len(changed):
            raise StateMissed(
                f"{len(changed) - cur.rowcount} of {len(changed)} known voters changed meanwhile"
            )
