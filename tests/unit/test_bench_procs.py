"""bench.procs: the child processes, ports and waits shared by the bench and the tests."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from bench import procs
from bench.procs import Service, free_port, start_service, wait_until

# A leader that starts a worker in its own group, then waits (as granian does).
PARENT = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "print('up', flush=True); time.sleep(600)"
)


def test_stop_ends_the_whole_group_and_returns_the_exit_code(tmp_path: Path) -> None:
    svc = start_service("leader", [sys.executable, "-c", PARENT], {}, tmp_path / "l.log")
    wait_until("the worker", lambda: "up" in svc.log(), 30, svc.log)
    pgid = svc.pid
    assert svc.alive() and pgid is not None
    assert svc.stop(grace_s=10) == -15  # SIGTERM
    assert not procs._group_alive(pgid), "a worker outlived its leader"
    assert svc.log_tail().endswith("up")


def test_kill_is_a_crash(tmp_path: Path) -> None:
    svc = start_service(
        "x", [sys.executable, "-c", "import time; time.sleep(600)"], {}, tmp_path / "x.log"
    )
    svc.kill()
    assert svc.proc is not None and svc.proc.returncode == -9


def test_an_exited_service_is_stopped_with_its_code(tmp_path: Path) -> None:
    svc = start_service("x", [sys.executable, "-c", "raise SystemExit(3)"], {}, tmp_path / "x.log")
    wait_until("the exit", lambda: not svc.alive(), 30)
    assert svc.stop() == 3
    assert Service("never", ["true"], {}, tmp_path / "n.log").stop() is None


def test_wait_ready_reports_a_service_that_died(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('boom'); raise SystemExit(1)"]
    never = f"http://127.0.0.1:{free_port()}/readyz"  # nothing will listen there
    svc = Service("x", argv, {}, tmp_path / "x.log", ready_url=never)
    svc.start()
    try:
        with pytest.raises(RuntimeError, match=r"exited \(1\) before it was ready:\nboom"):
            svc.wait_ready(30)
    finally:
        svc.stop()


def test_free_port_is_free_and_outside_the_ephemeral_range() -> None:
    port = free_port()
    assert port not in procs._ephemeral_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_until_says_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0.3s waiting for godot: still"):
        wait_until("godot", lambda: False, 0.3, lambda: "still", interval=0.05)
