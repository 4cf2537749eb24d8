"""bench.report: medians over repeats, ratios, strict JSON, Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.loadgen import StepResult
from bench.report import (
    clean,
    failures,
    markdown,
    median_run,
    ratios,
    runs_of,
    step_line,
    write_json,
)


def _step(target: str, rps: float, p99: float, errors: int = 0) -> StepResult:
    return StepResult(
        target=target,
        mode="max",
        rate=1000,
        duration_s=1,
        requests=1000,
        ok=1000 - errors,
        errors=errors,
        error_rate=errors / 1000,
        rps=rps,
        send_rate=1000,
        p50_ms=1,
        p90_ms=2,
        p99_ms=p99,
        p999_ms=p99 * 2,
        max_ms=p99 * 3,
        service_p99_ms=p99,
        send_lag_p99_ms=0,
        codes={},
        error_samples=[],
        command="vegeta attack ...",
    )


def test_median_run_takes_medians_and_totals() -> None:
    run = median_run(
        "gateway",
        "max",
        1000,
        [_step("gateway", 990, 9), _step("gateway", 900, 50, errors=2), _step("gateway", 995, 10)],
    )
    assert run["rps"] == 990 and run["p99_ms"] == 10
    assert run["errors"] == 2 and run["acked"] == 2998 and run["repeats"] == 3
    assert run["requests"] == 3000


def test_median_run_without_steps() -> None:
    run = median_run("go-peer", "max", 0, [])
    assert run["rps"] is None and run["repeats"] == 0


def _run(target: str, mode: str, rps: float, p99: float) -> dict[str, object]:
    return {"target": target, "mode": mode, "rate": rps, "rps": rps, "p99_ms": p99}


def test_ratios_gateway_over_each_peer() -> None:
    runs = [
        _run("gateway", "max", 2000, 40),
        _run("nginx-204", "max", 20000, 10),
        _run("go-peer", "max", 8000, 20),
        _run("gateway", "half-max", 1000, 4),
        _run("nginx-204", "half-max", 10000, 1),
        _run("go-peer", "half-max", 4000, 8),
    ]
    r = ratios(runs)
    assert r["gateway/nginx-204"] == {"max_rps": 0.1, "half_max_p99": 4.0}
    assert r["gateway/go-peer"] == {"max_rps": 0.25, "half_max_p99": 0.5}
    assert "gateway/gateway" not in r


def test_ratios_tolerate_missing_values() -> None:
    runs = [
        _run("gateway", "max", 2000, 40),
        _run("fastapi-peer", "max", 0, 10),
        {"target": "go-peer", "mode": "max", "rate": 0, "rps": None, "p99_ms": None},
    ]
    r = ratios(runs)
    assert r["gateway/fastapi-peer"] == {"max_rps": None}
    assert r["gateway/go-peer"] == {"max_rps": None}


def test_json_is_strict(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json(path, {"runs": [{"p99_ms": math.nan, "x": (1, 2)}]})
    assert json.loads(path.read_text()) == {"runs": [{"p99_ms": None, "x": [1, 2]}]}
    assert clean({1: math.inf}) == {"1": None}


def test_markdown_lists_runs_checks_ratios_and_command() -> None:
    runs = [
        median_run("gateway", "max", 1000, [_step("gateway", 990, 9)]),
        median_run("nginx-204", "max", 1000, [_step("nginx-204", 999, 1)]),
    ]
    runs[0]["passed"] = [True, False, True]
    doc = {
        "runs": runs,
        "ratios": ratios(runs),
        "command": "python -m bench gateway --quick",
        "verify": {
            "gateway": {
                "acked": 990,
                "stored": 990,
                "missing": 0,
                "duplicates": 0,
                "unacked_stored": 0,
            }
        },
    }
    text = markdown(doc)
    assert "| gateway | max | 1,000 | 990 |" in text
    assert text.splitlines()[2].endswith("| 2 / 3 |")  # repeats that met the criteria
    assert "| gateway | 990 | 990 | 0 | 0 | 0 |" in text
    assert "| gateway/nginx-204 | 0.991 |" in text
    assert "command: `python -m bench gateway --quick`" in text


def _acked(target: str, mode: str, ids: list[str], rps: float = 990) -> StepResult:
    step = _step(target, rps, 9)
    step.mode = mode
    step.acked_ids = ids
    return step


def test_runs_of_orders_runs_and_counts_each_runs_own_votes() -> None:
    run_steps = {
        ("nginx-204", "half-max"): [_acked("nginx-204", "half-max", [])],
        ("gateway", "half-max"): [_acked("gateway", "half-max", ["c"])],
        ("gateway", "max"): [_acked("gateway", "max", ["a"]), _acked("gateway", "max", ["b"])],
    }
    stored = {"gateway": {"a": 1, "b": 2, "c": 1}}  # b twice; c is the half-max run's
    runs = runs_of(
        run_steps,
        ["gateway", "nginx-204"],
        lambda s: s.rps > 0,
        stored,
        {"gateway": 1000, "go-peer": None},
        {"go-peer": "exited: boom"},
    )
    assert [(r["target"], r["mode"]) for r in runs] == [
        ("gateway", "max"),
        ("gateway", "half-max"),
        ("nginx-204", "half-max"),
        ("go-peer", "max"),
    ]
    assert runs[0]["passed"] == [True, True]
    assert (runs[0]["stored"], runs[0]["missing"], runs[0]["duplicates"]) == (2, 0, 1)
    assert (runs[1]["stored"], runs[1]["missing"], runs[1]["duplicates"]) == (1, 0, 0)
    assert "stored" not in runs[2]  # not verified
    assert runs[3]["note"] == "exited: boom" and runs[3]["repeats"] == 0


def test_failures_name_what_is_wrong() -> None:
    good = {"runs": [{"target": "gateway", "mode": "max", "rate": 1000}], "verify": {}}
    assert failures(good, ["gateway"], "max", {}) == []
    no_max = {"runs": [{"target": "gateway", "mode": "max", "rate": 0}], "verify": {}}
    assert failures(no_max, ["gateway"], "max", {}) == ["gateway has no passing max rate"]
    assert failures(no_max, ["gateway"], "rate", {}) == []  # --rate has no max to find
    assert failures(good, ["gateway"], "max", {"gateway": "exited"}) == ["gateway died"]
    for bad in ({"missing": 1}, {"duplicates": 2}, {"error": "boom"}):
        doc = {**good, "verify": {"gateway": {"missing": 0, "duplicates": 0, **bad}}}
        [why] = failures(doc, ["gateway"], "max", {})
        assert why.startswith("FAILED exactly-once check for gateway")


def test_step_line_shows_failures_and_noise() -> None:
    step = _step("gateway", 990, 9, errors=10)
    step.cpu_pressure, step.cpu_steal, step.acked_from_spill = 55.0, 12.0, 3
    line = step_line(step, ["errors 1.00%"], noisy=True, stolen=True)
    assert line.startswith("     990/s  p50    1.00  p99     9.00")
    assert "[errors 1.00%]" in line and "(3 from the spill)" in line
    assert "(cpu pressure 55%)" in line and "(steal 12%)" in line
    assert step_line(_step("gateway", 990, 9), [], noisy=False, stolen=False).endswith("[ok]")
