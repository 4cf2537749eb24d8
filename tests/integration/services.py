"""Child processes of the integration tests and the one way the tests wait for things.

Every service (processor, gateway) runs in its own session, so stopping it reaches
granian's worker processes too, and writes its output to a file the assertions quote.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """``sig`` to the whole group, SIGKILL after ``timeout``; the exit code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs."""
        self.stop(signal.SIGKILL, 10)


def start_process(
    name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> Service:
    with open(log_path, "ab") as log_file:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Service(name, proc, log_path)


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float = 180.0,
    detail: Callable[[], object] = lambda: "",
    interval: float = 0.2,
) -> None:
    """Poll ``predicate`` until true; fail with ``detail()`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {detail()}")
        time.sleep(interval)
