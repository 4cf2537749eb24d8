"""A member's own copy of what PostgreSQL committed about its partitions' keys.

The state path of ``processor.lookup`` (``StateLookup``) answers a batch's lookups from
here instead of querying ``votes``, ``vote_rejections`` and ``voters``
(docs/ARCHITECTURE.md, Processor). One RocksDB database per assigned Kafka partition
(``rocksdict``, on local disk: a partition's voters may outgrow memory) holds:

* every stored vote: (election, vote_id) -> (voter, choice);
* every rejected (election, vote_id, voter, choice);
* every voter's state: (election, voter) -> (counted, current vote_id, choice, received_at).

It is never trusted beyond what PostgreSQL committed:

* a partition is loaded from PostgreSQL inside a batch's transaction, after the fence has
  locked that partition's offset row, so it holds exactly what the committed batches
  before that offset wrote (``load``);
* it learns a batch's outcome only after that batch's COMMIT returned (``record``);
* it is dropped whenever that chain breaks: on every assignment change, and after any
  batch that failed in a way that leaves its commit in doubt (``forget``). A crash drops it
  with the process. The directory is the process's own and deleted at close.

What it can still miss (another stream wrote the same keys: a topic whose partition count
changed, a region's mirrored topic) the batch's writes catch: a vote_id or voter it does
not know collides with PostgreSQL's primary keys, and a known voter's UPDATE carries the
state it was decided on (``StateLookup.update_voters``). Either aborts the batch, which is
then decided again from PostgreSQL itself.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Iterable

import psycopg
import rocksdict

from processor.policy import Decoded, Lookups, VoterState

log = logging.getLogger("processor.state")

# Field separator inside keys and values: core.event refuses control characters in every
# id, so it can't occur inside one.
_SEP = "\x1f"
_VOTE = "x"
_REJECTED = "r"
_VOTER = "a"

_KEY_TYPES = ["int4", "text", "text", "text", "text"]
_VOTER_TYPES = ["int4", "text", "text", "int4", "text", "text", "int8"]


def _vote_key(e: str, x: str) -> bytes:
    return f"{_VOTE}{e}{_SEP}{x}".encode()


def _rejected_key(e: str, x: str, a: str, c: str) -> bytes:
    return f"{_REJECTED}{e}{_SEP}{x}{_SEP}{a}{_SEP}{c}".encode()


def _voter_key(e: str, a: str) -> bytes:
    return f"{_VOTER}{e}{_SEP}{a}".encode()


def _voter_value(s: VoterState) -> bytes:
    return f"{s.counted}{_SEP}{s.vote_id}{_SEP}{s.choice}{_SEP}{s.received_at_us}".encode()


def _voter_state(value: bytes) -> VoterState:
    n, x, c, t = value.decode().split(_SEP)
    return VoterState(int(n), x, c, int(t))


class _ChunkedWriter:
    """Puts into per-partition write batches, written every ``chunk`` keys so that
    loading a large partition does not hold it all in memory first."""

    def __init__(
        self, dbs: dict[int, rocksdict.Rdict], options: rocksdict.WriteOptions, chunk: int = 50_000
    ) -> None:
        self._dbs = dbs
        self._options = options
        self._chunk = chunk
        self._batches: dict[int, rocksdict.WriteBatch] = {}
        self._pending = 0
        self.written = 0

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        wb = self._batches.get(partition)
        if wb is None:
            wb = self._batches[partition] = rocksdict.WriteBatch(raw_mode=True)
        wb.put(key, value)
        self._pending += 1
        if self._pending >= self._chunk:
            self.flush()

    def flush(self) -> None:
        for p, wb in self._batches.items():
            self._dbs[p].write(wb, self._options)
        self.written += self._pending
        self._batches.clear()
        self._pending = 0


class StateError(Exception):
    """The local store could not be read or written (disk full, I/O error)."""


class PartitionState:
    """One member's state databases, one per Kafka partition it has loaded.

    ``directory``: where the member's own temporary directory is made (None: the
    system's temporary directory).
    """

    def __init__(self, directory: str | None = None) -> None:
        self._root = tempfile.mkdtemp(prefix="vote-processor-state-", dir=directory or None)
        self._dbs: dict[int, rocksdict.Rdict] = {}
        # Nothing here needs to survive a crash (it is rebuilt), so no write-ahead log.
        self._write = rocksdict.WriteOptions()
        self._write.disable_wal = True

    @property
    def partitions(self) -> set[int]:
        """The partitions loaded and trusted now."""
        return set(self._dbs)

    def missing(self, partitions: Iterable[int]) -> list[int]:
        return sorted(set(partitions) - self._dbs.keys())

    # -- loading ------------------------------------------------------------------------

    def load(self, cur: psycopg.Cursor, partitions: list[int]) -> int:
        """Fresh databases for ``partitions`` from PostgreSQL; returns the keys loaded.

        Must run inside the batch's transaction after its fence: the fence's row locks
        keep every other writer of these partitions out until this transaction ends.
        Rows of every topic with these partition numbers come along: they are committed
        facts too, only not needed.
        """
        t0 = time.monotonic()
        n = self.fill(
            partitions,
            votes=self._rows(
                cur,
                "SELECT kafka_partition, election_id, vote_id, voter_id, choice FROM votes"
                " WHERE kafka_partition = ANY(%s)",
                partitions,
                _KEY_TYPES,
            ),
            # Malformed messages are rejected under their Kafka position with an empty
            # election; nothing looks those up.
            rejected=self._rows(
                cur,
                "SELECT kafka_partition, election_id, vote_id, voter_id, choice"
                " FROM vote_rejections WHERE kafka_partition = ANY(%s) AND election_id <> ''",
                partitions,
                _KEY_TYPES,
            ),
            # A voter belongs to the partition of its current vote (Kafka is keyed by voter).
            voters=self._rows(
                cur,
                "SELECT x.kafka_partition, v.election_id, v.voter_id, v.counted,"
                "  v.current_vote_id, v.current_choice,"
                "  (extract(epoch FROM v.current_received_at) * 1000000)::bigint"
                " FROM voters v JOIN votes x"
                "  ON x.election_id = v.election_id AND x.vote_id = v.current_vote_id"
                " WHERE x.kafka_partition = ANY(%s)",
                partitions,
                _VOTER_TYPES,
            ),
        )
        log.info(
            "partition state loaded",
            extra={"partitions": partitions, "keys": n, "seconds": time.monotonic() - t0},
        )
        return n

    def fill(
        self,
        partitions: list[int],
        votes: Iterable[tuple[int, str, str, str, str]],
        rejected: Iterable[tuple[int, str, str, str, str]],
        voters: Iterable[tuple[int, str, str, int, str, str, int]],
    ) -> int:
        """Fresh databases for ``partitions`` holding exactly these rows, each led by its
        partition: votes (e, vote_id, voter, choice), rejected (e, vote_id, voter,
        choice) and voters (e, voter, counted, vote_id, choice, received_at_us)."""
        self.forget(partitions)
        dbs = {p: self._open(p) for p in partitions}
        writer = _ChunkedWriter(dbs, self._write)
        try:
            for p, e, x, a, c in votes:
                writer.put(p, _vote_key(e, x), f"{a}{_SEP}{c}".encode())
            for p, e, x, a, c in rejected:
                writer.put(p, _rejected_key(e, x, a, c), b"")
            for p, e, a, cnt, x, c, t in voters:
                writer.put(p, _voter_key(e, a), _voter_value(VoterState(cnt, x, c, t)))
            writer.flush()
        except Exception as exc:
            for p, db in dbs.items():
                self._destroy(p, db)
            if isinstance(exc, psycopg.Error):
                raise
            raise StateError(f"loading partitions {partitions}: {exc!r}") from exc
        self._dbs.update(dbs)
        return writer.written

    @staticmethod
    def _rows(
        cur: psycopg.Cursor, sql: str, partitions: list[int], types: list[str]
    ) -> Iterable[tuple]:
        # Streamed by COPY rather than fetched: a partition's state can be millions of rows.
        with cur.copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", (partitions,)) as copy:
            copy.set_types(types)
            yield from copy.rows()

    def _open(self, partition: int) -> rocksdict.Rdict:
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_keep_log_file_num(1)
        return rocksdict.Rdict(self._path(partition), options)

    def _path(self, partition: int) -> str:
        return f"{self._root}/p{partition}"

    # -- one batch ------------------------------------------------------------------------

    def lookups(self, decoded: list[Decoded]) -> Lookups:
        """What the loaded partitions know about ``decoded``'s keys (all must be loaded)."""
        lk = Lookups()
        by_partition: dict[int, list[Decoded]] = {}
        for d in decoded:
            if d.event is not None:
                by_partition.setdefault(d.msg.partition, []).append(d)
        try:
            for p, ds in by_partition.items():
                db = self._dbs[p]
                events = [d.event for d in ds]
                vote_keys = [(e.election_id, e.vote_id) for e in events]
                found = db.get([_vote_key(*k) for k in vote_keys])
                for k, v in zip(vote_keys, found, strict=True):
                    if v is not None:
                        a, c = v.decode().split(_SEP)
                        lk.votes[k] = (a, c)
                full = [(e.election_id, e.vote_id, e.voter_id, e.choice) for e in events]
                found = db.get([_rejected_key(*k) for k in full])
                lk.rejected.update(k for k, v in zip(full, found, strict=True) if v is not None)
                voter_keys = [(e.election_id, e.voter_id) for e in events]
                found = db.get([_voter_key(*k) for k in voter_keys])
                for k, v in zip(voter_keys, found, strict=True):
                    if v is not None:
                        lk.voters[k] = _voter_state(v)
        except Exception as exc:
            raise StateError(f"lookups: {exc!r}") from exc
        return lk

    def record(self, decoded: list[Decoded], after: Lookups) -> None:
        """After the batch's COMMIT: what ``after`` (its lookups, as deciding the batch left
        them) says about each of its keys, for the partitions loaded.

        Raises StateError when the store can't be written; the caller then forgets it.
        """
        batches: dict[int, rocksdict.WriteBatch] = {}
        votes, rejected, voters = after.votes, after.rejected, after.voters
        for d in decoded:
            e = d.event
            p = d.msg.partition
            if e is None or p not in self._dbs:
                continue
            wb = batches.get(p)
            if wb is None:
                wb = batches[p] = rocksdict.WriteBatch(raw_mode=True)
            eid, x, a, c = e.election_id, e.vote_id, e.voter_id, e.choice
            owner = votes.get((eid, x))
            if owner is not None:
                wb.put(_vote_key(eid, x), f"{owner[0]}{_SEP}{owner[1]}".encode())
            if (eid, x, a, c) in rejected:
                wb.put(_rejected_key(eid, x, a, c), b"")
            state = voters.get((eid, a))
            if state is not None:
                wb.put(_voter_key(eid, a), _voter_value(state))
        try:
            for p, wb in batches.items():
                self._dbs[p].write(wb, self._write)
        except Exception as exc:
            raise StateError(f"record: {exc!r}") from exc

    # -- dropping -------------------------------------------------------------------------

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Stop trusting ``partitions`` (None: all); the next batch loads them again."""
        for p in list(self._dbs) if partitions is None else list(partitions):
            db = self._dbs.pop(p, None)
            if db is not None:
                self._destroy(p, db)

    def _destroy(self, partition: int, db: rocksdict.Rdict) -> None:
        with contextlib.suppress(Exception):
            db.close()
        shutil.rmtree(self._path(partition), ignore_errors=True)

    def close(self) -> None:
        self.forget()
        shutil.rmtree(self._root, ignore_errors=True)
