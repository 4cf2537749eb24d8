"""bench.capacity: cores, storage and Kafka sizing multiplied out from measured costs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import capacity


def _run(name: str, mode: str, rate: int, **per_vote: float) -> dict[str, object]:
    full = dict.fromkeys(("target", "broker", "loadgen", "processor", "postgres", "redis"))
    full.update(per_vote)
    return {"target": name, "mode": mode, "rate": rate, "cpu_us_per_vote": full}


RUNS = [
    _run("gateway", "half-max", 2000, target=300.0),
    _run("gateway", "max", 4000, target=200.0, broker=80.0, processor=40.0, postgres=60.0),
    _run("go-peer", "max", 6000, target=100.0),
]


def test_pick_run_prefers_the_max_run_then_the_highest_rate() -> None:
    assert capacity.pick_run(RUNS, "gateway", None)["mode"] == "max"
    assert capacity.pick_run(RUNS, "gateway", "half-max")["rate"] == 2000
    rate_runs = [_run("gateway", "rate", 1000, target=1.0), _run("gateway", "rate", 3000)]
    assert capacity.pick_run(rate_runs, "gateway", None)["rate"] == 3000
    with pytest.raises(ValueError, match="no run of 'nginx-204'"):
        capacity.pick_run(RUNS, "nginx-204", None)
    with pytest.raises(ValueError, match="no 'rate' run"):
        capacity.pick_run(RUNS, "gateway", "rate")


def test_cores_are_rate_times_cpu_per_vote() -> None:
    needs = {n.component: n for n in capacity.cores(RUNS[1]["cpu_us_per_vote"], 250_000)}
    # 200 µs a vote at 250,000 votes/s = 50 CPU-seconds per second.
    assert needs["gateways"].cores == 50.0
    assert needs["Kafka brokers"].cores == 20.0
    assert needs["processors"].cores == 10.0 and needs["PostgreSQL"].cores == 15.0
    assert needs["Redis"].cores is None and needs["Redis"].us_per_vote is None


def test_storage_per_vote_and_for_all_voters() -> None:
    sizes = [
        capacity.RelationSize("votes", 1000, table_bytes=200_000, index_bytes=100_000),
        capacity.RelationSize("voters", 1000, table_bytes=150_000, index_bytes=50_000),
    ]
    st = capacity.storage(sizes, voters=300_000_000)
    assert st["bytes_per_vote"] == 500.0
    assert st["total_bytes"] == 150_000_000_000
    assert st["relations"]["votes"]["table_bytes_per_vote"] == 200.0
    assert st["relations"]["voters"]["rows_per_vote"] == 1.0
    with pytest.raises(ValueError):
        capacity.storage([capacity.RelationSize("votes", 0, 0, 0)], voters=1)


def test_topic_bytes_per_event_counts_one_replica(tmp_path: Path) -> None:
    # Three nodes, RF 3, two partitions: every partition's log is on all three nodes.
    dirs = []
    for node in (1, 2, 3):
        data = tmp_path / f"node-{node}" / "data"
        for part in (0, 1):
            d = data / f"votes.v1-{part}"
            d.mkdir(parents=True)
            (d / "00000000000000000000.log").write_bytes(b"x" * 600)
            (d / "00000000000000000000.index").write_bytes(b"i" * 999)
        (data / "votes.v1.dead-0").mkdir()
        dirs.append(data)
    assert capacity.topic_bytes_per_event(dirs, "votes.v1", events=12) == 100.0
    assert capacity.topic_bytes_per_event(dirs, "votes.v1", events=0) is None
    assert capacity.topic_bytes_per_event(dirs, "other", events=5) is None


def test_kafka_partitions_and_retention() -> None:
    k = capacity.kafka(
        bytes_per_event=100.0,
        votes_per_s=250_000,
        retention_h=24,
        replication=3,
        partition_mb_s=5.0,
        processor_cores=10.2,
    )
    assert k["write_mb_s"] == 25.0
    assert k["partitions_for_throughput"] == 5 and k["partitions_for_processor_cores"] == 11
    assert k["partitions"] == 11
    assert k["retained_bytes"] == 25_000_000 * 3600 * 24 * 3


def test_main_prints_the_cores_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "r.json"
    report.write_text(
        json.dumps(
            {
                "date": "2026-12-02T05:00:00+0000",
                "command": "python -m bench gateway",
                "machine": {"cpu": "Some CPU", "cpus": 2},
                "settings": {"kafka_nodes": 1},
                "runs": RUNS,
            }
        )
    )
    out_json = tmp_path / "model.json"
    code = capacity.main(["--from", str(report), "--no-storage", "--json", str(out_json)])
    assert code == 0
    text = capsys.readouterr().out
    assert "| gateways | 200 | 50.0 |" in text
    assert "| **all** | | **95.0** |" in text
    assert "1 Kafka node(s)" in text
    assert json.loads(out_json.read_text())["cores"][0]["cores"] == 50.0


def test_main_refuses_a_report_without_cpu_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"runs": [{"target": "gateway", "mode": "max", "rate": 1}]}))
    assert capacity.main(["--from", str(report), "--no-storage"]) == 2
    assert "cpu_us_per_vote" in capsys.readouterr().err
