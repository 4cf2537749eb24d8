"""gateway.__main__: the metrics server forgets live-mode gauges of dead workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.__main__ import _forget_dead_workers


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_only_dead_workers_live_gauges_are_dropped(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    files = {
        "dead_gauge": tmp_path / f"gauge_livesum_{dead}.db",
        "alive_gauge": tmp_path / f"gauge_livesum_{alive}.db",
        # Counters of a dead worker still count: requests it answered were answered.
        "dead_counter": tmp_path / f"counter_{dead}.db",
        "unrelated": tmp_path / "gauge_livesum_notapid.db",
    }
    for path in files.values():
        path.write_bytes(b"")
    _forget_dead_workers(str(tmp_path))
    assert not files["dead_gauge"].exists()
    assert files["alive_gauge"].exists()
    assert files["dead_counter"].exists()
    assert files["unrelated"].exists()
