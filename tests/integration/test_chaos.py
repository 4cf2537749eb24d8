"""The chaos suite's CI subset: three scenarios, short, at a low rate, on the 3-node stack.

``python -m bench chaos --scenarios all`` is the full suite (a command, not a test). Here
three scenarios that cover the durability path end to end run for 30 s each: two brokers
down (below min.insync.replicas: the gateway must spill), every broker frozen past the
spill deadline (a vote both spilled and in Kafka counts once), and processor members
killed inside their batches. Each must lose no acknowledged vote, count none twice, drain
its spill and lag, and match the Kafka recount in PostgreSQL and Redis. 20 votes/s: the
client and the services share the CI machine with three brokers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.chaos import runner
from bench.chaos.cluster import Cluster

pytestmark = [pytest.mark.integration, pytest.mark.disruptive]

SUBSET = "kafka-below-min-isr,lost-delivery-report,processor-kill"


def test_chaos_subset(three_node_cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    code = runner.main(
        [
            "--scenarios",
            SUBSET,
            "--seed",
            "13",
            "--duration",
            "30",
            "--rate",
            "20",
            "--json",
            str(out),
        ]
    )
    doc = json.loads(out.read_text())
    failed = {
        s["name"]: {k: s.get(k) for k in ("lost", "double_counted", "notes", "failures", "error")}
        for s in doc["scenarios"]
        if not s["passed"]
    }
    assert not failed, failed
    assert code == 0
    assert [s["name"] for s in doc["scenarios"]] == SUBSET.split(",")
    for s in doc["scenarios"]:
        assert s["acked"] > 0 and s["lost"] == 0 and s["double_counted"] == 0, s
        assert s["tallies_match"] and s["spill_drained"] and s["lag_zero"], s
