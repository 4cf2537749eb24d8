"""bench.probe: the machine-speed probes every report records."""

from __future__ import annotations

import os

from bench import probe


def test_wakeup_roundtrip_is_measured_and_leaves_the_affinity_as_it_was() -> None:
    before = os.sched_getaffinity(0)
    wake = probe.wakeup_roundtrip_us(round_trips=200, warmup=20)
    assert os.sched_getaffinity(0) == before
    # A pipe round trip to another process costs at least a microsecond and, even on a
    # starved machine, less than a second at the median.
    assert 1.0 <= wake["p50"] <= wake["p99"]
    assert wake["p50"] < 1_000_000


def test_python_loop_takes_longer_for_more_iterations() -> None:
    assert probe.python_loop_ms(2_000_000) > probe.python_loop_ms(1_000) >= 0


def test_describe_names_every_probe() -> None:
    line = probe.describe(
        {
            "python_loop_ms": 210.5,
            "wakeup_roundtrip_us": {"p50": 16.1, "p99": 31.0},
            "cpu_pressure_avg10": 2.5,
        }
    )
    assert line == (
        "machine speed: python loop 210.5 ms (10M iterations), wake-up round trip "
        "p50 16.1 us p99 31.0 us, cpu pressure 2.5%"
    )
    no_psi = probe.describe(
        {
            "python_loop_ms": 1.0,
            "wakeup_roundtrip_us": {"p50": 1.0, "p99": 2.0},
            "cpu_pressure_avg10": None,
        }
    )
    assert "pressure" not in no_psi


def test_announced_speed_writes_the_line_and_returns_the_probe(monkeypatch) -> None:
    import io

    fixed = {
        "python_loop_ms": 3.0,
        "wakeup_roundtrip_us": {"p50": 1.0, "p99": 2.0},
        "cpu_pressure_avg10": None,
    }
    monkeypatch.setattr(probe, "speed", lambda: fixed)
    out = io.StringIO()
    assert probe.announced_speed(out) is fixed
    assert out.getvalue() == probe.describe(fixed) + "\n"
