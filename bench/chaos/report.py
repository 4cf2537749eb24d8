"""The chaos run's outputs: one JSON document and a Markdown table of its scenarios."""

from __future__ import annotations

from typing import Any

COLUMNS = (
    ("scenario", "name"),
    ("sent/s", "sent_per_s"),
    ("acked", "acked"),
    ("failed", "failed"),
    ("indet.", "indeterminate"),
    ("unsent", "unsent"),
    ("stored", "stored"),
    ("rejected", "rejected_acked"),
    ("lost", "lost"),
    ("double", "double_counted"),
    ("unacked stored", "unacked_stored"),
    ("dup. copies", "kafka_duplicate_copies"),
    ("spill drained", "spill_drained"),
    ("lag 0", "lag_zero"),
    ("tallies match", "tallies_match"),
    ("verify", "verify_ok"),
    ("passed", "passed"),
)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def markdown(scenarios: list[dict[str, Any]]) -> str:
    """One row per scenario; a failed invariant shows as **NO** or a non-zero count."""
    head = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if k == "name" else "--:" for _, k in COLUMNS) + "|"
    rows = ["| " + " | ".join(_cell(s.get(k, "")) for _, k in COLUMNS) + " |" for s in scenarios]
    return "\n".join([head, rule, *rows])


def document(
    *,
    date: str,
    command: str,
    seed: int,
    rate: float,
    duration_s: float,
    machine: dict[str, object],
    scenarios: list[dict[str, Any]],
    seconds: float,
    sessions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "date": date,
        "command": command,
        "seed": seed,
        "rate": rate,
        "duration_s": duration_s,
        "machine": machine,
        "passed": bool(scenarios) and all(s.get("passed") for s in scenarios),
        "scenarios": scenarios,
        "seconds": round(seconds, 1),
        # More than one when the run was split (--stop-after, then --resume).
        "sessions": sessions or [],
    }
