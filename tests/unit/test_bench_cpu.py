"""bench.cpu: CPU seconds per process group from /proc, and µs per acknowledged vote."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench import cpu
from bench.loadgen import StepResult
from bench.report import markdown, median_run, ratios

TICKS = cpu.CLOCK_TICKS


def _stat(pid: int, ppid: int, utime: int, stime: int = 0, cutime: int = 0) -> str:
    # Fields 1..19 of /proc/<pid>/stat, enough for the parser (it reads up to cstime).
    return f"{pid} (name) S {ppid} 1 1 0 -1 4194560 0 0 0 0 {utime} {stime} {cutime} 0 20 0 1"


def test_parse_stat_counts_own_and_reaped_children_time() -> None:
    stat = cpu.parse_stat(_stat(42, 7, utime=100, stime=20, cutime=3))
    assert (stat.pid, stat.ppid, stat.ticks) == (42, 7, 123)


def test_parse_stat_command_with_spaces_and_parentheses() -> None:
    line = _stat(9, 1, utime=5, stime=6).replace("(name)", "(a) b (c d))")
    stat = cpu.parse_stat(line)
    assert (stat.pid, stat.ppid, stat.ticks) == (9, 1, 11)


def test_parse_stat_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        cpu.parse_stat("no parentheses here")


def test_parse_stat_of_this_process() -> None:
    with open(f"/proc/{os.getpid()}/stat") as fh:
        stat = cpu.parse_stat(fh.read())
    assert stat.pid == os.getpid() and stat.ppid == os.getppid()


def _procs(*stats: str) -> dict[int, cpu.ProcStat]:
    return {s.pid: s for s in map(cpu.parse_stat, stats)}


def test_group_is_its_roots_and_every_descendant() -> None:
    procs = _procs(
        _stat(1, 0, 0),
        _stat(10, 1, 100),  # root
        _stat(11, 10, 50),  # worker
        _stat(12, 11, 25),  # worker's child
        _stat(20, 1, 1000),  # someone else
    )
    assert cpu.descendants([10], procs) == {10, 11, 12}
    assert cpu.descendants([99], procs) == set()  # a root that is gone
    seconds = cpu.group_seconds({"target": [10], "redis": [20], "broker": []}, procs)
    assert seconds == {"target": 175 / TICKS, "redis": 1000 / TICKS, "broker": 0.0}


def test_a_child_that_exits_between_samples_is_not_lost() -> None:
    # Before: a backend (11) has used 40 ticks. After: it used 60 in all, exited and was
    # reaped by the postmaster (10), whose cutime now holds those 60.
    before = cpu.Snapshot(
        cpu.group_seconds({"postgres": [10]}, _procs(_stat(10, 1, 100), _stat(11, 10, 40))), 0.0
    )
    after = cpu.Snapshot(
        cpu.group_seconds({"postgres": [10]}, _procs(_stat(10, 1, 105, cutime=60))), 0.0
    )
    assert cpu.used_seconds(before, after)["postgres"] == round(25 / TICKS, 3)


def test_a_group_whose_total_fell_is_unmeasured() -> None:
    # The broker restarted during the step: its new process has less time than the old.
    before = cpu.Snapshot({"broker": 50.0}, 0.0)
    after = cpu.Snapshot({"broker": 2.0}, 0.0)
    assert cpu.used_seconds(before, after)["broker"] is None


def test_loadgen_is_the_reaped_child_and_missing_groups_are_none() -> None:
    before = cpu.Snapshot({"target": 1.0}, children=3.0)
    after = cpu.Snapshot({"target": 3.5}, children=4.25)
    used = cpu.used_seconds(before, after)
    assert used["target"] == 2.5 and used["loadgen"] == 1.25
    assert used["broker"] is None and set(used) == set(cpu.GROUPS)


def test_per_vote_us() -> None:
    per_vote = cpu.per_vote_us({"target": 2.5, "broker": None, "loadgen": 0.5}, acked=10_000)
    assert per_vote["target"] == 250.0 and per_vote["loadgen"] == 50.0
    assert per_vote["broker"] is None and per_vote["redis"] is None
    assert cpu.per_vote_us({"target": 2.5}, acked=0)["target"] is None


def test_saturation_and_busy_share() -> None:
    # 250 µs a vote on one CPU: the CPU is full at 4,000 votes/s; on two at 8,000.
    assert cpu.saturation_rps(250.0, 1) == 4000
    assert cpu.saturation_rps(250.0, 2) == 8000
    assert cpu.saturation_rps(None, 1) is None
    assert cpu.busy_share(5.0, wall_s=10.0, cores=1) == 0.5
    assert cpu.busy_share(None, wall_s=10.0, cores=1) is None


_BURNER = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", '''
    import time
    while time.process_time() < 0.3:
        pass
    '''])
    child.wait()
    print("done", flush=True)
    time.sleep(60)
    """
)


def test_meter_counts_a_grandchild_that_exited_during_the_step() -> None:
    # A root that forks a child burning 0.3 s of CPU and reaps it: the whole 0.3 s must be
    # counted to the root's group though the child is gone when the step ends.
    meter = cpu.CpuMeter({"redis": lambda: []})
    with subprocess.Popen(
        [sys.executable, "-c", _BURNER], stdout=subprocess.PIPE, text=True, start_new_session=True
    ) as root:
        try:
            before = meter.sample([root.pid])
            assert root.stdout is not None and root.stdout.readline().strip() == "done"
            after = meter.sample([root.pid])
        finally:
            root.kill()
    used = cpu.used_seconds(before, after)
    assert used["target"] is not None and used["target"] >= 0.3
    assert used["redis"] == 0.0


def test_meter_counts_the_load_generator_it_waited_for() -> None:
    meter = cpu.CpuMeter({})
    before = meter.sample()
    subprocess.run(
        [sys.executable, "-c", "import time\nwhile time.process_time() < 0.2: pass"], check=True
    )
    after = meter.sample()
    assert cpu.used_seconds(before, after)["loadgen"] >= 0.2


def _step(target: str, mode: str, target_us: float, ok: int = 1000) -> StepResult:
    return StepResult(
        target=target,
        mode=mode,
        rate=4000,
        duration_s=1,
        requests=ok,
        ok=ok,
        errors=0,
        error_rate=0.0,
        rps=ok,
        send_rate=ok,
        p50_ms=1,
        p90_ms=2,
        p99_ms=3,
        p999_ms=4,
        max_ms=5,
        service_p99_ms=3,
        send_lag_p99_ms=0,
        codes={},
        error_samples=[],
        cpu_us_per_vote={**dict.fromkeys(cpu.GROUPS), "target": target_us, "broker": 50.0},
        target_cpus=1,
        target_busy=0.5,
        target_saturation_rps=1e6 / target_us,
    )


def test_runs_carry_the_median_cpu_per_vote_and_the_ratio() -> None:
    runs = [
        median_run(
            "gateway", "rate", 4000, [_step("gateway", "rate", t) for t in (150.0, 190.0, 170.0)]
        ),
        median_run(
            "go-peer", "rate", 4000, [_step("go-peer", "rate", t) for t in (140.0, 120.0, 100.0)]
        ),
    ]
    assert runs[0]["cpu_us_per_vote"]["target"] == 170.0
    assert runs[0]["cpu_us_per_vote"]["broker"] == 50.0
    assert runs[0]["cpu_us_per_vote"]["redis"] is None
    assert runs[0]["target_saturation_rps"] == round(1e6 / 170.0, 3)
    assert ratios(runs)["gateway/go-peer"]["rate_cpu_target"] == round(170 / 120, 3)
    text = markdown({"runs": runs, "command": "python -m bench gateway"})
    assert "µs of CPU per acknowledged vote" in text
    assert "| gateway | rate | 4,000 | 170 | 50 | — |" in text


def test_runs_without_a_meter_have_no_cpu_figures() -> None:
    step = _step("gateway", "rate", 100.0)
    step.cpu_us_per_vote = None
    run = median_run("gateway", "rate", 4000, [step])
    assert run["cpu_us_per_vote"] is None
    assert "µs of CPU" not in markdown({"runs": [run]})


def test_stack_groups_read_the_stack_pid_files(tmp_path: Path) -> None:
    (tmp_path / "pids").mkdir()
    (tmp_path / "pg").mkdir()
    (tmp_path / "pids" / "kafka-1.pid").write_text("101\n")
    (tmp_path / "pids" / "kafka-2.pid").write_text("102\n")
    (tmp_path / "pids" / "redis.pid").write_text("201")
    (tmp_path / "pg" / "postmaster.pid").write_text("301\n/data\n1700000000\n")
    groups = cpu.stack_groups(tmp_path, lambda: 401)
    assert {name: list(fn()) for name, fn in groups.items()} == {
        "broker": [101, 102],
        "processor": [401],
        "postgres": [301],
        "redis": [201],
    }
    assert list(cpu.stack_groups(tmp_path / "missing", lambda: None)["broker"]()) == []


def test_cpus_of_this_process() -> None:
    assert cpu.cpus_of(os.getpid()) == len(os.sched_getaffinity(0))
