"""processor.members: N members in one process start, stop and fail together.

The members here are stand-ins without Kafka or PostgreSQL; the real ones are run by
tests/integration/test_processor_e2e.py (two members in one process).
"""

from __future__ import annotations

import logging
import threading

import pytest

from core.settings import ConfigError, load
from processor.members import Members
from processor.settings import ProcessorSettings


class FakeMember:
    """Runs until asked to stop, or raises at once when ``fails``."""

    def __init__(self, member: int, fails: bool = False) -> None:
        self.member = member
        self.log = logging.LoggerAdapter(logging.getLogger("test"), {"member": member})
        self.fails = fails
        self.running = threading.Event()
        self.stop = threading.Event()
        self.closed = False

    def run(self) -> None:
        self.running.set()
        if self.fails:
            raise RuntimeError("boom")
        assert self.stop.wait(30), "never asked to stop"

    def request_stop(self) -> None:
        self.stop.set()

    def close(self) -> None:
        self.closed = True


def _members(n: int, failing: int | None = None) -> tuple[Members, list[FakeMember]]:
    fakes = [FakeMember(i, fails=i == failing) for i in range(n)]
    settings = ProcessorSettings(processor_members=n)
    return Members(settings, factory=lambda _s, i: fakes[i]), fakes  # type: ignore[arg-type,return-value]


def test_stop_request_reaches_every_member_and_exits_0() -> None:
    members, fakes = _members(3)
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(members.run()))
    runner.start()
    for f in fakes:
        assert f.running.wait(10)
    members.request_stop()  # what SIGTERM / SIGINT call
    runner.join(10)
    assert result == [0]
    assert all(f.stop.is_set() for f in fakes)


def test_one_failing_member_stops_the_others_and_exits_1() -> None:
    members, fakes = _members(3, failing=1)
    assert members.run() == 1
    assert all(f.stop.is_set() for f in fakes if f.member != 1)


def test_a_member_that_cannot_be_created_closes_the_ones_before() -> None:
    made: list[FakeMember] = []

    def factory(_s: ProcessorSettings, i: int) -> FakeMember:
        if i == 2:
            raise OSError("no database")
        made.append(FakeMember(i))
        return made[-1]

    with pytest.raises(OSError):
        Members(ProcessorSettings(processor_members=3), factory=factory)  # type: ignore[arg-type]
    assert [f.closed for f in made] == [True, True]


def test_members_setting() -> None:
    assert load(ProcessorSettings, {}).processor_members >= 1
    assert load(ProcessorSettings, {"VOTE_PROCESSOR_MEMBERS": "3"}).processor_members == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(ConfigError):
            load(ProcessorSettings, {"VOTE_PROCESSOR_MEMBERS": bad})
