"""core.failpoints: off by default, parsed strictly, and a real SIGKILL at the armed pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from core import failpoints
from core.failpoints import FailpointError, parse


def test_parse() -> None:
    assert parse("") == {}
    assert parse("processor.after_copy=kill@3, processor.before_copy=kill") == {
        "processor.after_copy": 3,
        "processor.before_copy": 1,
    }


@pytest.mark.parametrize(
    "spec",
    [
        "processor.nowhere=kill",
        "processor.after_copy=pause",
        "processor.after_copy",
        "processor.after_copy=kill@x",
        "processor.after_copy=kill@0",
    ],
)
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(FailpointError):
        parse(spec)


def test_unarmed_points_do_nothing() -> None:
    for point in failpoints.POINTS:
        failpoints.hit(point)  # this process is not armed: it lives


def test_the_armed_pass_kills_the_process() -> None:
    script = (
        "from core import failpoints\n"
        "for i in range(1, 6):\n"
        "    print(i, flush=True)\n"
        "    failpoints.hit('processor.after_commit')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "VOTE_FAILPOINTS": "processor.after_commit=kill@3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == -signal.SIGKILL
    assert done.stdout.split() == ["1", "2", "3"]
