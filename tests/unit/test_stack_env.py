"""deploy/local/stack env: a shifted stack shifts every port it hands out, `make run`'s
gateway and metrics ports included, so two checkouts can each `make run` at once."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

STACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "stack"


def _env(tmp_path: Path, offset: int) -> dict[str, str]:
    env = {**os.environ, "STACK_DIR": str(tmp_path), "STACK_PORT_OFFSET": str(offset)}
    out = subprocess.run(
        [str(STACK), "env"], env=env, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    pairs = (line.removeprefix("export ").split("=", 1) for line in out.splitlines())
    return dict(pairs)


def test_a_shifted_stack_shifts_make_runs_ports_too(tmp_path: Path) -> None:
    shifted = _env(tmp_path, 300)
    assert shifted["VOTE_PG_DSN"].endswith(":15732/vote")
    assert shifted["VOTE_HTTP_PORT"] == "8380"
    assert shifted["VOTE_METRICS_PORT"] == "9400"
    assert shifted["VOTE_PROCESSOR_METRICS_PORT"] == "9401"


def test_the_unshifted_stack_leaves_the_services_defaults(tmp_path: Path) -> None:
    plain = _env(tmp_path, 0)
    assert plain["VOTE_PG_DSN"].endswith(":15432/vote")
    assert not {"VOTE_HTTP_PORT", "VOTE_METRICS_PORT", "VOTE_PROCESSOR_METRICS_PORT"} & set(plain)
