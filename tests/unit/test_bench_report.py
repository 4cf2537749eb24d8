"""bench.report: medians over repeats, ratios, strict JSON, Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.loadgen import StepResult
from bench.report import clean, markdown, median_run, ratios, write_json


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
