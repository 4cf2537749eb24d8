"""Region watch decisions and MirrorMaker 2 checkpoint parsing (no services)."""

from __future__ import annotations

import struct
import threading

import pytest

from processor import regions
from processor.regions import CheckpointFormatError, RegionWatch, parse_checkpoint
from processor.settings import ProcessorSettings


def _kstring(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!h", len(b)) + b


def _checkpoint(group: str, topic: str, partition: int, up: int, down: int) -> tuple[bytes, bytes]:
    # Kafka's Struct layout of org.apache.kafka.connect.mirror.Checkpoint, version 0.
    key = _kstring(group) + _kstring(topic) + struct.pack("!i", partition)
    value = struct.pack("!hqq", 0, up, down) + _kstring("")
    return key, value


def test_parse_checkpoint_reads_the_java_layout() -> None:
    key, value = _checkpoint("vote-processor", "A.votes.v1", 5, 1234, 1200)
    assert parse_checkpoint(key, value) == ("vote-processor", "A.votes.v1", 5, 1234, 1200)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (_kstring("g") + _kstring("t") + struct.pack("!i", 0), struct.pack("!hqq", 1, 1, 1)),
        (_kstring("g") + _kstring("t"), struct.pack("!hqq", 0, 1, 1)),
        (struct.pack("!h", 40) + b"short", struct.pack("!hqq", 0, 1, 1)),
        (_kstring("g") + _kstring("t") + struct.pack("!i", 0), b"\x00\x00\x01"),
    ],
)
def test_parse_checkpoint_refuses_what_is_not_a_checkpoint(key: bytes, value: bytes) -> None:
    with pytest.raises(CheckpointFormatError):
        parse_checkpoint(key, value)


def test_takeover_needs_a_cluster_and_not_our_own() -> None:
    with pytest.raises(ValueError, match="needs processor_cluster"):
        ProcessorSettings(processor_takeover="A")
    with pytest.raises(ValueError, match="own cluster"):
        ProcessorSettings(processor_cluster="A", processor_takeover="A,B")
    assert ProcessorSettings(
        processor_cluster="B", processor_takeover=" A ,C"
    ).takeover_regions == [
        "A",
        "C",
    ]


class _FakeTakeover:
    def __init__(self, *_args: object) -> None:
        self.stopped = threading.Event()

    def run(self) -> None:
        self.stopped.wait(30)

    def request_stop(self) -> None:
        self.stopped.set()


def test_a_stale_heartbeat_is_taken_over_only_once_it_stops_moving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(regions.time, "monotonic", lambda: clock[0])
    s = ProcessorSettings(
        processor_cluster="B",
        processor_takeover="A",
        processor_takeover_after_s=10,
        processor_takeover_confirm_s=3,
        redis_url="redis://127.0.0.1:1/0",
    )
    watch = RegionWatch(s, takeover_factory=_FakeTakeover)
    # A PostgreSQL failover stalled every heartbeat: A's is 15 s old when we see it first.
    watch._decide("A", seen=100.0, now_db=115.0)
    assert watch.taking_over == []
    # A writes again within the confirmation window: not a region loss.
    clock[0] += 1
    watch._decide("A", seen=116.0, now_db=116.5)
    assert watch.taking_over == []
    # A goes silent: stale, and unmoved for the confirmation window.
    clock[0] += 1
    watch._decide("A", seen=116.0, now_db=127.0)
    assert watch.taking_over == []
    clock[0] += 3
    watch._decide("A", seen=116.0, now_db=130.0)
    assert watch.taking_over == ["A"]
    proc, _thread = watch._takeovers["A"]
    # A's heartbeat moves again: the takeover member is stopped.
    clock[0] += 1
    watch._decide("A", seen=131.0, now_db=131.2)
    assert watch.taking_over == []
    assert proc.stopped.is_set()


def test_a_region_that_never_ran_is_not_taken_over(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ProcessorSettings(processor_cluster="B", processor_takeover="A")
    watch = RegionWatch(s, takeover_factory=_FakeTakeover)
    watch._decide("A", seen=None, now_db=1e9)
    assert watch.taking_over == []
