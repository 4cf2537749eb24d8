"""The local RocksDB spill: where a vote goes when Kafka cannot confirm it in time.

A vote acknowledged with ``durability: "spill"`` is in this store's write-ahead log,
synced to disk, before the 202 leaves. Writes are group-committed: a writer thread takes
every write queued while the previous fsync ran and syncs them with one ``write`` of one
batch, so N concurrent spills cost one fsync, not N.

Each worker process owns one slot directory (``slot-NN``), claimed with an exclusive
``flock`` on ``slot-NN/lock``; the kernel drops the lock when the process dies, however
it dies, so a restarted worker claims the same free slot and drains what its predecessor
left. Slots whose owner is gone are adopted by any live worker, drained (see
``Drainer``) and then removed, so a slot left by a worker that is not coming back (fewer
workers after a restart) is opened once, not every few seconds forever.

Keys are 8-byte big-endian sequence numbers, so iteration order is spill order; values
are ``len(kafka key) as 2 bytes + kafka key + event``.

The spill never fills its disk: RocksDB that runs out of space while appending to its
write-ahead log keeps that error for every later write, delete and flush until it is
reopened, so a spill that filled its disk once would refuse every vote and never drain.
It refuses new events (``SpillFull``) while less than ``RESERVE_BYTES`` plus the room to
delete every event it holds is free, and once drained it flushes and compacts, so the
log's space comes back and the spill takes events again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Container, Iterator

import rocksdict

log = logging.getLogger("gateway.spill")

# Free space the spill leaves on its filesystem: room to drain (a tombstone per event in
# the log and in a table) and to write the table that lets RocksDB drop the log.
RESERVE_BYTES = 128 * 1024
# Disk a drained event costs again: its tombstone in the log, then in a table.
TOMBSTONE_BYTES = 64
# A queued event's cost in the log beyond its value (record and batch headers, key).
RECORD_OVERHEAD = 32
# A drained store gives its log's space back once the log holds this much (or once a
# write was refused for space): each reclaim leaves a few KB of info log behind, so one
# per event of a short spell would fill a small disk by itself.
RECLAIM_AFTER_BYTES = 64 * 1024


class SpillFull(Exception):
    """The spill holds its capacity of events, or its disk keeps no more room than
    draining needs; the vote cannot be made durable here."""


class SpillUnavailable(Exception):
    """The spill could not write (disk error, closed store)."""


def _encode(key: bytes, event: bytes) -> bytes:
    return len(key).to_bytes(2, "big") + key + event


def _decode(value: bytes) -> tuple[bytes, bytes]:
    n = int.from_bytes(value[:2], "big")
    return value[2 : 2 + n], value[2 + n :]


def try_lock(lock_path: str) -> int | None:
    """Exclusive, non-blocking flock; the fd (kept open to hold the lock) or None, also
    when the slot directory is gone (a live worker removed it as a drained orphan)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _private_dir(path: str) -> None:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)


class SpillStore:
    """One slot's RocksDB, opened by the process holding the slot's lock."""

    # Every store open in this process: its own slot and any orphan being drained.
    _open: weakref.WeakSet[SpillStore] = weakref.WeakSet()

    @classmethod
    def events_in_process(cls) -> int:
        """Events waiting in every spill store this process holds open."""
        return sum(len(store) for store in list(cls._open) if not store._closed)

    def __init__(
        self, path: str, lock_fd: int, loop: asyncio.AbstractEventLoop, max_events: int
    ) -> None:
        self.path = path
        self._lock_fd = lock_fd
        self._loop = loop
        self.max_events = max_events
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        # Every open starts a new info LOG and keeps the old one (1,000 by default); it
        # shares the spill's disk, so it is bounded too.
        options.set_keep_log_file_num(2)
        options.set_max_log_file_size(64 * 1024)
        self._db = rocksdict.Rdict(os.path.join(path, "db"), options)
        self._sync = rocksdict.WriteOptions()
        self._sync.sync = True
        # Exact set of live keys: the capacity bound and the "spill is empty" gauge
        # must not be estimates. Seeded from what a predecessor left.
        self._live: set[bytes] = set(self._db.keys())
        self._next_seq = self._last_seq() + 1
        self._pending: list[tuple[bytes, bytes, asyncio.Future]] = []
        # Bytes queued or being written, not yet seen by statvfs (event loop only).
        self._unsynced_bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        # Set when the store has been drained empty: the writer thread then gives the
        # log's space back (``_reclaim_space``). What the log took since the last time,
        # and whether a write was refused for space since (event loop only).
        self._reclaim = False
        self._log_bytes = RECLAIM_AFTER_BYTES if self._live else 0
        self._short_of_space = False
        self._writer = threading.Thread(
            target=self._write_forever, name="spill-writer", daemon=True
        )
        self._writer.start()
        SpillStore._open.add(self)

    # -- claiming ------------------------------------------------------------------

    @classmethod
    def claim(
        cls, root: str, loop: asyncio.AbstractEventLoop, max_events: int, max_slots: int = 256
    ) -> SpillStore:
        """Open the lowest-numbered slot no live process holds.

        The spill holds voter ids and choices: its directories are 0700 (also when an
        older version left them 0755) and its files 0600 (the gateway's umask is 077).
        """
        _private_dir(root)
        for i in range(max_slots):
            slot = os.path.join(root, f"slot-{i:02d}")
            _private_dir(slot)
            fd = try_lock(os.path.join(slot, "lock"))
            if fd is not None:
                return cls(slot, fd, loop, max_events)
        raise SpillUnavailable(f"all {max_slots} spill slots under {root} are held")

    @staticmethod
    def orphan_slots(root: str) -> Iterator[tuple[str, int]]:
        """Slots with a db that no live process holds, locked for the caller."""
        if not os.path.isdir(root):
            return
        for name in sorted(os.listdir(root)):
            slot = os.path.join(root, name)
            if not name.startswith("slot-") or not os.path.isdir(os.path.join(slot, "db")):
                continue
            fd = try_lock(os.path.join(slot, "lock"))
            if fd is not None:
                yield slot, fd

    # -- writing -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._live)

    def write(self, key: bytes, event: bytes) -> asyncio.Future:
        """Queue an event; the future resolves to its spill key once synced to disk."""
        if self._closed:
            raise SpillUnavailable("spill store is closed")
        if len(self._live) + len(self._pending) >= self.max_events:
            raise SpillFull(f"spill holds {len(self._live)} events (max {self.max_events})")
        value = _encode(key, event)
        cost = len(value) + RECORD_OVERHEAD
        free = self.free_bytes() - self._unsynced_bytes
        keep = RESERVE_BYTES + TOMBSTONE_BYTES * (len(self._live) + len(self._pending) + 1)
        if free - cost < keep:
            self._short_of_space = True
            self._maybe_reclaim()
            raise SpillFull(
                f"spill disk has {free} bytes free; {keep} are kept to drain the"
                f" {len(self._live)} events it holds"
            )
        future = self._loop.create_future()
        seq = self._next_seq.to_bytes(8, "big")
        self._next_seq += 1
        self._unsynced_bytes += cost
        self._log_bytes += cost
        with self._cond:
            self._pending.append((seq, value, future))
            self._cond.notify()
        return future

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the spill's filesystem."""
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def _write_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed and not self._reclaim:
                    self._cond.wait()
                if not self._pending:
                    if self._closed:
                        return
                    self._reclaim = False
                    reclaim = True
                else:
                    reclaim = False
                    batch, self._pending = self._pending, []
            if reclaim:
                self._reclaim_space()
                continue
            wb = rocksdict.WriteBatch(raw_mode=True)
            for seq, value, _ in batch:
                wb.put(seq, value)
            error: Exception | None = None
            try:
                self._db.write(wb, self._sync)  # one fsync for the whole group
            except Exception as exc:
                error = exc
                log.error("spill write failed", extra={"error": repr(exc)})
            try:
                self._loop.call_soon_threadsafe(self._resolve, batch, error)
            except RuntimeError:
                return

    def _resolve(
        self, batch: list[tuple[bytes, bytes, asyncio.Future]], error: Exception | None
    ) -> None:
        for seq, value, future in batch:
            self._unsynced_bytes -= len(value) + RECORD_OVERHEAD
            if error is None:
                self._live.add(seq)
            if not future.done():
                if error is None:
                    future.set_result(seq)
                else:
                    future.set_exception(SpillUnavailable(str(error)))

    # -- draining ------------------------------------------------------------------

    def read(
        self, after: bytes, limit: int, skip: Container[bytes]
    ) -> list[tuple[bytes, bytes, bytes]]:
        """Up to ``limit`` live entries with a key > ``after`` in order: (seq, key, event)."""
        out: list[tuple[bytes, bytes, bytes]] = []
        it = self._db.iter()
        if after:
            it.seek(after)
            if it.valid() and it.key() == after:
                it.next()
        else:
            it.seek_to_first()
        while it.valid() and len(out) < limit:
            seq = it.key()
            if seq not in skip and seq in self._live:
                key, event = _decode(it.value())
                out.append((seq, key, event))
            it.next()
        return out

    def delete(self, seq: bytes) -> None:
        """Forget an event Kafka confirmed. Not synced: a lost delete only replays a
        duplicate, which the processor drops."""
        if seq in self._live and not self._closed:
            self._live.discard(seq)
            self._db.delete(seq)
            self._log_bytes += TOMBSTONE_BYTES
            self._maybe_reclaim()

    def _maybe_reclaim(self) -> None:
        """Have the writer thread reclaim the log's space if the store is empty and that
        is worth it."""
        if self._live or self._pending or not self._log_bytes:
            return
        if self._log_bytes >= RECLAIM_AFTER_BYTES or self._short_of_space:
            self._log_bytes = 0
            self._short_of_space = False
            with self._cond:
                self._reclaim = True
                self._cond.notify()

    def _reclaim_space(self) -> None:
        """Give back the disk a drained store still holds (writer thread). RocksDB frees a
        log file only once the memtable it backs is flushed into a table, which by itself
        happens every 64 MB of writes; the compaction then drops the tombstones together
        with the events they delete."""
        # Without "force" a manual compaction moves a table to the last level as it is,
        # tombstones and all.
        last_level = rocksdict.CompactOptions()
        last_level.set_bottommost_level_compaction(rocksdict.BottommostLevelCompaction.force())
        try:
            self._db.flush(True)
            self._db.compact_range(None, None, last_level)
        except Exception as exc:
            log.warning("spill space not reclaimed", extra={"error": repr(exc)})

    def _last_seq(self) -> int:
        it = self._db.iter()
        it.seek_to_last()
        return int.from_bytes(it.key(), "big") if it.valid() else 0

    def close(self) -> None:
        self._close_db()
        os.close(self._lock_fd)  # releases the slot

    def retire(self) -> bool:
        """Close the store and, if it holds no event, delete its slot; True if deleted.

        Done under the slot's lock, in this order, so no claimant can end up in a slot
        being deleted: while the old lock file exists a claimant fails to lock it and
        moves on; one that comes after the unlink creates a new lock file (and then a
        new db), and the final rmdir fails harmlessly.
        """
        empty = not self._live and not self._pending
        self._close_db()
        try:
            if empty:
                shutil.rmtree(os.path.join(self.path, "db"))
                os.unlink(os.path.join(self.path, "lock"))
                with contextlib.suppress(OSError):  # a new claimant is already inside
                    os.rmdir(self.path)
        finally:
            os.close(self._lock_fd)
        return empty

    def _close_db(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._writer.join(timeout=5)
        self._db.flush_wal(True)
        self._db.close()
