"""A member's own copy of what PostgreSQL committed about its partitions' keys.

The state path of ``processor.lookup`` (``StateLookup``) answers a batch's lookups from
here instead of querying ``votes``, ``vote_rejections`` and ``voters``
(docs/ARCHITECTURE.md, Processor). One RocksDB database per assigned Kafka partition
(``rocksdict``, on local disk: a partition's voters may outgrow memory) holds one record
per voter, since Kafka is keyed by voter and so a voter's keys all come through one
partition: (election, voter) -> the voter's state (``counted`` 0 when ``voters`` has no
row), the (vote_id, choice) of every vote stored for the voter and of every rejected one.
One read per message answers all three lookups.

It is never trusted beyond what PostgreSQL committed:

* a partition is loaded from PostgreSQL inside a batch's transaction, after the fence has
  locked that partition's offset row, so it holds exactly what the committed batches
  before that offset wrote (``load``);
* it learns a batch's outcome only after that batch's COMMIT returned (``record``);
* it is dropped whenever that chain breaks: on every assignment change, and after any
  batch that failed in a way that leaves its commit in doubt (``forget``). A crash drops it
  with the process. The directory is the process's own and deleted at close; one a killed
  process left behind is removed by the next store made beside it.

What it can still miss (another stream wrote the same keys: a vote_id reused by another
voter, a topic whose partition count changed, a region's mirrored topic) the batch
catches (``StateLookup``): a vote_id or voter it does not know collides with
PostgreSQL's primary keys, a known voter's UPDATE carries the state it was decided on,
and the vote_ids of policy rejections are probed. Each makes the batch be decided again
from PostgreSQL itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable

import msgspec
import psycopg
import rocksdict

from processor.policy import Decoded, Lookups, Plan, VoterState

log = logging.getLogger("processor.state")

_PREFIX = "vote-processor-state-"

# Between election and voter in a key: core.event refuses control characters in every id.
_SEP = b"\x1f"

# One row per (partition, election, voter): its voters row (NULLs if none), and the
# (vote_id, choice) arrays of its stored votes and of its rejected ones.
_RECORD_TYPES = [
    "int4",
    "text",
    "text",
    "int4",
    "text",
    "text",
    "int8",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
]
_RECORDS = """
WITH v AS (
  SELECT kafka_partition AS p, election_id AS e, voter_id AS a,
         array_agg(vote_id) AS xs, array_agg(choice) AS cs
  FROM votes WHERE kafka_partition = ANY(%(p)s) GROUP BY 1, 2, 3),
r AS (
  SELECT kafka_partition AS p, election_id AS e, voter_id AS a,
         array_agg(vote_id) AS xs, array_agg(choice) AS cs
  FROM vote_rejections WHERE kafka_partition = ANY(%(p)s) AND election_id <> ''
  GROUP BY 1, 2, 3),
k AS (
  SELECT coalesce(v.p, r.p) AS p, coalesce(v.e, r.e) AS e, coalesce(v.a, r.a) AS a,
         v.xs AS vxs, v.cs AS vcs, r.xs AS rxs, r.cs AS rcs
  FROM v FULL JOIN r ON v.p = r.p AND v.e = r.e AND v.a = r.a)
SELECT k.p, k.e, k.a, w.counted, w.current_vote_id, w.current_choice,
       (extract(epoch FROM w.current_received_at) * 1000000)::bigint,
       k.vxs, k.vcs, k.rxs, k.rcs
FROM k LEFT JOIN voters w ON w.election_id = k.e AND w.voter_id = k.a
"""


class _Record(msgspec.Struct, array_like=True, gc=False):
    """One voter's keys in a partition (see the module docstring)."""

    counted: int = 0  # 0: no row in `voters`
    vote_id: str = ""
    choice: str = ""
    received_at_us: int = 0
    votes: list[tuple[str, str]] = []
    rejected: list[tuple[str, str]] = []


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Record).decode


def _copy(old: _Record | None) -> _Record:
    """A record to edit: ``old``'s fields (lists copied), or an empty one."""
    if old is None:
        return _Record()
    return _Record(
        old.counted,
        old.vote_id,
        old.choice,
        old.received_at_us,
        list(old.votes),
        list(old.rejected),
    )


def _key(e: str, a: str) -> bytes:
    return e.encode() + _SEP + a.encode()


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
        self._root = tempfile.mkdtemp(prefix=_PREFIX, dir=directory or None)
        # Held while this store lives: a directory whose lock is free was left by a
        # process that died (killed, crashed), and the next store removes it.
        self._lock = os.open(os.path.join(self._root, "lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _remove_orphans(os.path.dirname(self._root))
        self._dbs: dict[int, rocksdict.Rdict] = {}
        # The records the last lookups read (None: no record), the base of record().
        self._read: dict[tuple[int, str, str], _Record | None] = {}
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
        """Fresh databases for ``partitions`` from PostgreSQL; returns the voters loaded.

        Must run inside the batch's transaction after its fence: the fence's row locks
        keep every other writer of these partitions out until this transaction ends.
        Rows of every topic with these partition numbers come along: they are committed
        facts too, only not needed.
        """
        t0 = time.monotonic()
        # Streamed by COPY rather than fetched: a partition can hold millions of voters.
        with cur.copy(f"COPY ({_RECORDS}) TO STDOUT (FORMAT BINARY)", {"p": partitions}) as copy:
            copy.set_types(_RECORD_TYPES)
            n = self.fill(partitions, copy.rows())
        log.info(
            "partition state loaded",
            extra={"partitions": partitions, "voters": n, "seconds": time.monotonic() - t0},
        )
        return n

    def fill(self, partitions: list[int], rows: Iterable[tuple]) -> int:
        """Fresh databases for ``partitions`` holding exactly ``rows``: (partition,
        election, voter, counted, current vote_id, choice, received_at_us, the vote_ids
        and choices stored, the vote_ids and choices rejected); the voters-row fields
        None for a voter without one, an array None for none."""
        self.forget(partitions)
        dbs = {p: self._open(p) for p in partitions}
        writer = _ChunkedWriter(dbs, self._write)
        try:
            for p, e, a, n, x, c, t, vxs, vcs, rxs, rcs in rows:
                rec = _Record(
                    n or 0,
                    x or "",
                    c or "",
                    t or 0,
                    list(zip(vxs, vcs, strict=True)) if vxs else [],
                    list(zip(rxs, rcs, strict=True)) if rxs else [],
                )
                writer.put(p, _key(e, a), _encode(rec))
            writer.flush()
        except Exception as exc:
            for p, db in dbs.items():
                self._destroy(p, db)
            if isinstance(exc, psycopg.Error):
                raise
            raise StateError(f"loading partitions {partitions}: {exc!r}") from exc
        self._dbs.update(dbs)
        return writer.written

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
        self._read.clear()
        wanted: dict[int, dict[tuple[str, str], None]] = {}
        for d in decoded:
            e = d.event
            if e is not None:
                wanted.setdefault(d.msg.partition, {})[(e.election_id, e.voter_id)] = None
        votes, rejected, voters = lk.votes, lk.rejected, lk.voters
        try:
            for p, keys in wanted.items():
                found = self._dbs[p].get([_key(e, a) for e, a in keys])
                for (e, a), value in zip(keys, found, strict=True):
                    if value is None:
                        self._read[(p, e, a)] = None
                        continue
                    rec = _decode(value)
                    self._read[(p, e, a)] = rec
                    for x, c in rec.votes:
                        votes[(e, x)] = (a, c)
                    for x, c in rec.rejected:
                        rejected.add((e, x, a, c))
                    if rec.counted:
                        voters[(e, a)] = VoterState(
                            rec.counted, rec.vote_id, rec.choice, rec.received_at_us
                        )
        except Exception as exc:
            raise StateError(f"lookups: {exc!r}") from exc
        return lk

    def record_plan(self, plan: Plan) -> None:
        """After the COMMIT of a batch these lookups answered: its new votes, rejections
        and voter states, added to the records the lookups read. Proportional to what the
        batch wrote; ``record`` is the general form.

        Raises StateError when the store can't be written; the caller then forgets it.
        """
        dbs = self._dbs
        read = self._read
        changed: dict[tuple[int, str, str], _Record] = {}

        def edit(k: tuple[int, str, str]) -> _Record:
            rec = changed.get(k)
            if rec is None:
                rec = changed[k] = _copy(read.get(k))
            return rec

        try:
            # A voter's state changes only with a vote of this batch: its partition.
            partition_of: dict[tuple[str, str], int] = {}
            for v in plan.votes:
                if v.partition in dbs:
                    edit((v.partition, v.election_id, v.voter_id)).votes.append(
                        (v.vote_id, v.choice)
                    )
                    partition_of[(v.election_id, v.voter_id)] = v.partition
            for r in plan.rejections:
                # Malformed ones are recorded under their Kafka position, no election.
                if r.election_id and r.partition in dbs:
                    edit((r.partition, r.election_id, r.voter_id)).rejected.append(
                        (r.vote_id, r.choice)
                    )
            for (e, a), st in plan.voters.items():
                p = partition_of.get((e, a))
                if p is not None:
                    rec = changed[(p, e, a)]
                    rec.counted = st.counted
                    rec.vote_id = st.vote_id
                    rec.choice = st.choice
                    rec.received_at_us = st.received_at_us
            self._write_records(changed)
        except Exception as exc:
            raise StateError(f"record: {exc!r}") from exc
        finally:
            self._read.clear()

    def _write_records(self, changed: dict[tuple[int, str, str], _Record]) -> None:
        batches: dict[int, rocksdict.WriteBatch] = {}
        for (p, e, a), rec in changed.items():
            wb = batches.get(p)
            if wb is None:
                wb = batches[p] = rocksdict.WriteBatch(raw_mode=True)
            wb.put(_key(e, a), _encode(rec))
        for p, wb in batches.items():
            self._dbs[p].write(wb, self._write)

    def record(self, decoded: list[Decoded], after: Lookups) -> None:
        """After the batch's COMMIT: what ``after`` (its lookups, as deciding the batch left
        them) says about each of its voters, for the partitions loaded.

        Raises StateError when the store can't be written; the caller then forgets it.
        """
        votes, rejected, voters = after.votes, after.rejected, after.voters
        dbs = self._dbs
        read = self._read
        try:
            # Voters the lookups did not read (a retry decided from PostgreSQL).
            unread: dict[int, dict[tuple[str, str], None]] = {}
            for d in decoded:
                ev = d.event
                p = d.msg.partition
                if ev is not None and p in dbs and (p, ev.election_id, ev.voter_id) not in read:
                    unread.setdefault(p, {})[(ev.election_id, ev.voter_id)] = None
            for p, keys in unread.items():
                found = dbs[p].get([_key(e, a) for e, a in keys])
                for (e, a), value in zip(keys, found, strict=True):
                    read[(p, e, a)] = None if value is None else _decode(value)
            changed: dict[tuple[int, str, str], _Record] = {}
            for d in decoded:
                ev = d.event
                p = d.msg.partition
                if ev is None or p not in dbs:
                    continue
                e, x, a, c = ev.election_id, ev.vote_id, ev.voter_id, ev.choice
                k = (p, e, a)
                rec = changed.get(k)
                if rec is None:
                    rec = changed[k] = _copy(read[k])
                    state = voters.get((e, a))
                    if state is not None:
                        rec.counted = state.counted
                        rec.vote_id = state.vote_id
                        rec.choice = state.choice
                        rec.received_at_us = state.received_at_us
                if votes.get((e, x)) == (a, c):
                    if (x, c) not in rec.votes:
                        rec.votes.append((x, c))
                elif (e, x, a, c) in rejected and (x, c) not in rec.rejected:
                    rec.rejected.append((x, c))
            self._write_records({k: rec for k, rec in changed.items() if rec != read[k]})
        except Exception as exc:
            raise StateError(f"record: {exc!r}") from exc
        finally:
            self._read.clear()

    # -- dropping -------------------------------------------------------------------------

    def forget(self, partitions: Iterable[int] | None = None) -> None:
        """Stop trusting ``partitions`` (None: all); the next batch loads them again."""
        self._read.clear()
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
        if self._lock >= 0:
            os.close(self._lock)
            self._lock = -1


def _remove_orphans(parent: str) -> None:
    """Remove the state directories under ``parent`` that no live store holds."""
    for name in os.listdir(parent):
        if not name.startswith(_PREFIX):
            continue
        path = os.path.join(parent, name)
        try:
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR)
        except OSError:  # not ours, or a store being made right now
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # alive
        finally:
            os.close(fd)
        log.info("removing a dead member's state directory", extra={"path": path})
        shutil.rmtree(path, ignore_errors=True)
