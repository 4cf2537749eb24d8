"""The chaos scenarios on the two simulated regions of ``deploy/local/regions`` instead of
the 3-node chaos stack: a whole region lost, and the faults inside the two regions.

Each runs ``bench.failover`` (the chaos client with ``RegionRoutes``, the chaos checks
across both regions) with the session's rate, its duration split as the other scenarios
split theirs (the fault after ``LEAD_SHARE``, at least ``TAIL_SHARE`` after it), and
writes its PNG timelines into the scenario's directory. ``python -m bench failover``
runs the same with its own figures and options.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.chaos.scenarios import StandaloneFn, standalone_scenario


def _on_regions(name: str, fault: str) -> StandaloneFn:
    def run(args: argparse.Namespace, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
        from bench import failover
        from bench.chaos.runner import LEAD_SHARE, TAIL_SHARE

        measured = argparse.Namespace(
            fault=fault,
            rate=args.rate,
            warm=args.duration * LEAD_SHARE,
            outage=args.duration * (1 - LEAD_SHARE - TAIL_SHARE),
            after=args.duration * TAIL_SHARE,
            converge_timeout=args.drain_timeout,
            plots=str(out),
        )
        report, result = failover.measure(measured)
        for note in result.notes:
            log(f"{fault}: {note}")
        return {**result.as_dict(), **report, "name": name, "passed": report["passed"]}

    return run


standalone_scenario(
    "region-loss",
    "kill -9 every process of region A under load split over both regions; A's voters "
    "move to B, PostgreSQL fails over, B takes over A's mirrored votes; then A returns",
)(_on_regions("region-loss", "region-loss"))
standalone_scenario(
    "region-mirror-down",
    "MirrorMaker 2 stopped for a while: mirror lag grows, nothing is lost, it catches up",
)(_on_regions("region-mirror-down", "mirror-down"))
standalone_scenario(
    "region-standby-down",
    "the synchronous PostgreSQL standby (region B) killed: the primary goes on alone",
)(_on_regions("region-standby-down", "standby-down"))
standalone_scenario(
    "region-monitor-down",
    "the pg_auto_failover monitor stopped, then the primary killed: no failover and no "
    "second writable node until the monitor is back",
)(_on_regions("region-monitor-down", "monitor-down"))
