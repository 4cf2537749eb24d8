"""The RocksDB spill (real RocksDB in a temp dir; no other service)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading

import pytest

from gateway.spill import SpillFull, SpillStore, SpillUnavailable, try_lock


def run(coro):
    return asyncio.run(coro)


async def _write_many(store: SpillStore, n: int) -> list[bytes]:
    return list(
        await asyncio.gather(
            *(store.write(f"k{i}".encode(), f"event-{i}".encode()) for i in range(n))
        )
    )


def test_writes_are_durable_and_ordered(tmp_path):
    async def scenario():
        loop = asyncio.get_running_loop()
        store = SpillStore.claim(str(tmp_path), loop, max_events=1000)
        seqs = await _write_many(store, 50)
        assert seqs == sorted(seqs) and len(set(seqs)) == 50
        assert len(store) == 50
        entries = store.read(b"", 100, set())
        assert [(k, e) for _, k, e in entries] == [
            (f"k{i}".encode(), f"event-{i}".encode()) for i in range(50)
        ]
        store.close()
        # A successor claims the same (now free) slot and finds every event.
        again = SpillStore.claim(str(tmp_path), loop, max_events=1000)
        assert again.path == store.path
        assert len(again) == 50
        more = await _write_many(again, 1)
        assert more[0] > seqs[-1], "sequence numbers continue after a restart"
        again.close()

    run(scenario())


class _CountingDb:
    """Wraps the real Rdict to count how many synced writes (fsyncs) were issued. The
    first write waits for ``first_write_may_finish``: a slow fsync, made deterministic."""

    def __init__(self, db):
        self._db = db
        self.batch_sizes: list[int] = []
        self.first_write_may_finish = threading.Event()

    def write(self, batch, options):
        self.batch_sizes.append(batch.len())
        if len(self.batch_sizes) == 1:
            assert self.first_write_may_finish.wait(10), "the test never released the fsync"
        return self._db.write(batch, options)

    def __getattr__(self, name):
        return getattr(self._db, name)


def test_group_commit_batches_concurrent_writes(tmp_path):
    async def scenario():
        store = SpillStore.claim(str(tmp_path), asyncio.get_running_loop(), max_events=10_000)
        counting = store._db = _CountingDb(store._db)
        # Every write is queued while the first fsync runs (held until all are queued) ...
        writes = [store.write(f"k{i}".encode(), f"event-{i}".encode()) for i in range(500)]
        counting.first_write_may_finish.set()
        await asyncio.gather(*writes)
        store.close()
        return counting.batch_sizes

    batch_sizes = run(scenario())
    assert sum(batch_sizes) == 500
    # ... so the writes after the first group share the next fsync: two at most, whatever
    # the first group took before the writer thread started its fsync.
    assert len(batch_sizes) <= 2, f"expected group commits, got {len(batch_sizes)} fsyncs"


def test_capacity_bound_refuses_instead_of_growing(tmp_path):
    async def scenario():
        store = SpillStore.claim(str(tmp_path), asyncio.get_running_loop(), max_events=10)
        await _write_many(store, 10)
        with pytest.raises(SpillFull):
            store.write(b"k", b"one too many")
        store.delete(store.read(b"", 1, set())[0][0])
        await store.write(b"k", b"fits again")
        store.close()
        with pytest.raises(SpillUnavailable):
            store.write(b"k", b"closed")

    run(scenario())


def test_delete_and_read_skip(tmp_path):
    async def scenario():
        store = SpillStore.claim(str(tmp_path), asyncio.get_running_loop(), max_events=100)
        seqs = await _write_many(store, 5)
        store.delete(seqs[1])
        store.delete(seqs[1])  # idempotent
        got = [s for s, _, _ in store.read(b"", 10, {seqs[3]})]
        assert got == [seqs[0], seqs[2], seqs[4]]
        assert [s for s, _, _ in store.read(seqs[2], 10, set())] == [seqs[3], seqs[4]]
        assert len(store) == 4
        store.close()

    run(scenario())


_CLAIM = """
import asyncio, os, sys, time
from gateway.spill import SpillStore

async def main():
    store = SpillStore.claim(sys.argv[1], asyncio.get_running_loop(), max_events=10)
    print(os.path.basename(store.path), flush=True)
    await asyncio.sleep(float(sys.argv[2]))
    store.close()

asyncio.run(main())
"""


def _holder(root, seconds: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CLAIM, str(root), seconds], stdout=subprocess.PIPE, text=True
    )


def test_each_process_claims_its_own_slot_and_orphans_are_found(tmp_path):
    with (
        _holder(tmp_path, "120") as a,
        _holder(tmp_path, "120") as b,
        _holder(tmp_path, "120") as c,
    ):
        slots = {p.stdout.readline().strip() for p in (a, b, c)}  # all three hold one now
        for p in (a, b, c):
            p.terminate()
    assert slots == {"slot-00", "slot-01", "slot-02"}

    # kill -9 of an owner releases its slot: the kernel drops the flock with the process.
    with _holder(tmp_path, "120") as victim:
        held = victim.stdout.readline().strip()
        assert held not in [os.path.basename(p) for p, _ in _orphans_closed(tmp_path)]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
    assert held in [os.path.basename(p) for p, _ in _orphans_closed(tmp_path)]


def _orphans_closed(root) -> list[tuple[str, int]]:
    found = list(SpillStore.orphan_slots(str(root)))
    for _, fd in found:
        os.close(fd)
    return found


class _DeliveringSink:
    """Confirms every produce at once and keeps what it was given, in order."""

    def __init__(self) -> None:
        self.produced: list[tuple[bytes, bytes]] = []

    def produce(self, key: bytes, event: bytes) -> asyncio.Future:
        self.produced.append((key, event))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def test_an_orphan_slot_is_drained_then_removed_and_never_reopened(tmp_path, monkeypatch):
    """A slot whose worker is gone is opened once: drained, then deleted, so an empty
    leftover slot is not reopened every few seconds by every worker (each time blocking
    the event loop and leaving another RocksDB info LOG behind)."""
    from gateway import durability

    async def scenario():
        loop = asyncio.get_running_loop()
        # Two leftovers: slot-00 with three events, slot-07 empty.
        dead = SpillStore.claim(str(tmp_path), loop, max_events=100)
        await _write_many(dead, 3)
        dead.close()  # its worker is gone: the lock is free, the events stay
        os.makedirs(tmp_path / "slot-07")
        idle = SpillStore(
            str(tmp_path / "slot-07"), try_lock(str(tmp_path / "slot-07" / "lock")), loop, 100
        )
        idle.close()

        opened_on: list[str] = []
        real_init = SpillStore.__init__

        def recording_init(self, *args, **kwargs):
            opened_on.append(threading.current_thread().name)
            real_init(self, *args, **kwargs)

        monkeypatch.setattr(SpillStore, "__init__", recording_init)
        sink = _DeliveringSink()
        drained = await durability.adopt_orphans(str(tmp_path), sink, loop, 100)
        assert drained == 3
        assert sink.produced == [(f"k{i}".encode(), f"event-{i}".encode()) for i in range(3)]
        assert os.listdir(tmp_path) == []
        # RocksDB was opened off the event loop's thread, once per slot.
        assert len(opened_on) == 2 and threading.main_thread().name not in opened_on
        assert await durability.adopt_orphans(str(tmp_path), sink, loop, 100) == 0
        assert len(opened_on) == 2
        # A worker that starts later simply claims a fresh slot-00.
        monkeypatch.setattr(SpillStore, "__init__", real_init)
        fresh = SpillStore.claim(str(tmp_path), loop, max_events=100)
        assert os.path.basename(fresh.path) == "slot-00" and len(fresh) == 0
        fresh.close()

    run(scenario())


def test_retire_keeps_a_slot_that_still_holds_events(tmp_path):
    async def scenario():
        loop = asyncio.get_running_loop()
        store = SpillStore.claim(str(tmp_path), loop, max_events=100)
        await _write_many(store, 2)
        assert store.retire() is False
        again = SpillStore.claim(str(tmp_path), loop, max_events=100)
        assert len(again) == 2
        again.delete(again.read(b"", 1, set())[0][0])
        again.delete(again.read(b"", 1, set())[0][0])
        assert again.retire() is True
        assert os.listdir(tmp_path) == []

    run(scenario())


# A table holding one 400-byte event, with its index, filter and properties blocks.
SMALL_TABLE_BYTES = 16 * 1024


def _table_bytes(db_dir: str) -> int:
    return sum(
        os.path.getsize(os.path.join(db_dir, f)) for f in os.listdir(db_dir) if f.endswith(".sst")
    )


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root; the chaos suite's spill-disk-full does the same)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "spill-test", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], capture_output=True)


def test_a_full_disk_refuses_spill_writes_and_the_drained_spill_takes_them_again(small_disk):
    """RocksDB that hits ENOSPC in its WAL keeps that error for every later write, delete
    and flush until reopened: the spill must stop short of the full disk, drain, and then
    accept events again."""

    async def scenario():
        loop = asyncio.get_running_loop()
        store = SpillStore.claim(str(small_disk / "spill"), loop, max_events=1_000_000)
        written = 0
        with pytest.raises(SpillFull):
            for i in range(100_000):  # ~400 bytes each: far more than the disk holds
                await store.write(f"k{i}".encode(), os.urandom(400))
                written += 1
        assert written > 500, "the spill refused long before the disk was full"
        # Drained: every event deleted once Kafka confirmed it.
        for seq, _key, _event in store.read(b"", written, set()):
            store.delete(seq)
        assert len(store) == 0
        # The space the drained events held comes back, and the spill takes events again.
        # (Flush and compaction run on the writer thread: generous for a slow shared box.)
        deadline = loop.time() + 60
        while True:
            try:
                await store.write(b"k", os.urandom(400))
                break
            except SpillFull:
                assert loop.time() < deadline, "the drained spill never took a write again"
                await asyncio.sleep(0.1)
        # RocksDB deletes a compaction's input tables just after the compaction returns.
        # The write above may have joined the memtable before the reclaim's flush, so one
        # small table may keep that one live event; the drained events' hundreds of KB and
        # their tombstones must be gone.
        db_dir = os.path.join(store.path, "db")
        while (tables := _table_bytes(db_dir)) > SMALL_TABLE_BYTES:
            assert loop.time() < deadline, f"the drained events' tombstones stayed: {tables} B"
            await asyncio.sleep(0.1)
        again = await _write_many(store, 100)
        assert len(again) == 100 and len(store) == 101
        store.close()
        reopened = SpillStore.claim(str(small_disk / "spill"), loop, max_events=1_000_000)
        assert len(reopened) == 101
        reopened.close()

    run(scenario())


def test_short_spells_leave_no_files_behind(tmp_path):
    """A spill that goes from one event to none again and again (Kafka flapping) must not
    leave a table or an info log per spell on its disk."""

    async def scenario():
        loop = asyncio.get_running_loop()
        store = SpillStore.claim(str(tmp_path), loop, max_events=1000)
        for _ in range(300):
            (seq,) = await _write_many(store, 1)
            store.delete(seq)
            await asyncio.sleep(0)
        await asyncio.sleep(0.5)  # a reclaim, if one was due, runs in the writer thread
        files = os.listdir(os.path.join(store.path, "db"))
        assert len([f for f in files if f.endswith(".sst")]) <= 1, files
        store.close()

    run(scenario())
