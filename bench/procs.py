"""Child processes of the bench harness and of the integration tests, and the one way
both wait for a state.

A ``Service`` is one process group (``start_new_session``) with its output in a log file:
stopping it sends the signal to the whole group (granian/uvicorn/nginx workers included),
then SIGKILL after a grace period, so no worker outlives its owner.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.env import REPO


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback port nothing listens on, for a service to bind a moment later.

    Not from the kernel's ephemeral range (what ``bind(0)`` hands out): load generators
    and the services' own clients open thousands of connections from that range, and one
    of them took a port picked that way before a bench target could bind it. Below the
    range only listeners compete.
    """
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(20000, 32000)
        if port in ephemeral:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-31999")


@dataclass
class Service:
    """A child process group with a log file and, optionally, an HTTP readiness probe."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None = None
    cwd: Path = REPO
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        """The pid of the group's leader (its workers are its descendants)."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        last = "no answer yet"

        def ready() -> bool:
            nonlocal last
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited ({self.proc and self.proc.returncode})"
                    f" before it was ready:\n{self.log_tail()}"
                )
            if self.ready_url is None:
                return True
            try:
                resp = httpx.get(self.ready_url, timeout=2.0)
            except httpx.HTTPError as exc:
                last = repr(exc)
                return False
            last = f"HTTP {resp.status_code} {resp.text[:200]}"
            return 200 <= resp.status_code < 300

        try:
            wait_until(f"{self.name} ready", ready, timeout_s)
        except AssertionError:
            raise RuntimeError(
                f"{self.name} not ready after {timeout_s:g}s ({last}):\n{self.log_tail()}"
            ) from None

    def stop(self, grace_s: float = 60.0, sig: int = signal.SIGTERM) -> int | None:
        """``sig`` to the process group, SIGKILL after ``grace_s``; reap the leader and
        leave no worker behind. Returns the leader's exit code."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        # Workers may outlive their leader for a moment.
        deadline = time.monotonic() + grace_s
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown code runs."""
        self.stop(10.0, signal.SIGKILL)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def start_service(
    name: str, argv: list[str], env: dict[str, str], log_path: Path, cwd: Path = REPO
) -> Service:
    """A ``Service`` started at once."""
    service = Service(name, argv, env, log_path, cwd=cwd)
    service.start()
    return service


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(
    what: str,
    predicate: Callable[[], bool],
    timeout: float = 180.0,
    detail: Callable[[], object] = lambda: "",
    interval: float = 0.2,
) -> None:
    """Poll ``predicate`` until true; AssertionError with ``detail()`` after ``timeout``
    seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}: {detail()}")
        time.sleep(interval)
