"""A short region loss on the two simulated regions (docs/ARCHITECTURE.md, "Regions").

Runs ``python -m bench failover`` in small: a few thousand votes split over both regions'
gateways, kill -9 of every process of region A, A's return as standby, then the
invariants once A is back: every acknowledged vote stored, none counted twice, and the
tallies of PostgreSQL and of both regions' Redis equal to a recount of both regions'
votes.v1.

It needs ``deploy/local/regions`` (two Kafka JVMs, MirrorMaker 2 and a three-server
pg_auto_failover formation; not the single-region stack of tests/integration, whose
fixtures this directory does not use), so it runs only when VOTE_REGION_TESTS=1
(``make regions-test``); ``make test`` collects it and skips it (README.md, "What the
two commands do").
"""

from __future__ import annotations

import argparse
import os

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.disruptive,
    pytest.mark.skipif(
        os.environ.get("VOTE_REGION_TESTS") != "1",
        reason="needs the two-region topology: VOTE_REGION_TESTS=1 (make regions-test)",
    ),
]


def test_region_loss_counts_every_acknowledged_vote_once() -> None:
    from bench import failover

    args = argparse.Namespace(
        fault="region-loss",
        rate=30.0,
        warm=15.0,
        outage=45.0,
        after=5.0,
        converge_timeout=600.0,
        plots=None,
    )
    report, result = failover.measure(args)
    assert result.acked >= 1500, report
    assert result.lost == 0, (result.examples, report)
    assert result.double_counted == 0, (result.examples, report)
    assert result.tallies_match, report["tallies"]
    assert result.spill_drained and result.lag_zero and result.offsets_at_end, result.notes
    assert not result.failures, result.failures  # MirrorMaker caught up both ways
    # B answered A's voters after the kill, PostgreSQL failed over to B, counting went on
    # during the outage, and there never were two writable PostgreSQL nodes.
    assert report["a_voters_served_by_b"] > 0 and report["rto_ingest_s"] is not None
    assert report["pg_failover_s"] is not None
    assert report["rto_count_s"] is not None and report["rto_count_s"] < args.outage
    assert report["max_writable_pg_nodes"] == 1
