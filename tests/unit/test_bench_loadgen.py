"""bench.loadgen: vegeta CSV parsing, percentiles, schedule correction, step summaries."""

from __future__ import annotations

import base64
import io
import json
import math

import pytest

from bench.loadgen import (
    Row,
    acked_vote_id,
    corrected_latencies_ns,
    parse_cpu_times,
    parse_csv,
    percentile,
    steal_share,
    summarize,
    targets_needed,
)

MS = 1_000_000


def _csv_line(
    ts: int, code: int, latency: int, body: bytes = b"", error: str = "", seq: int = 0
) -> str:
    b64 = base64.b64encode(body).decode()
    return (
        f"{ts},{code},{latency},52,120,{error},{b64},gateway,{seq},POST,"
        f"http://127.0.0.1:1/v1/elections/e/votes,\n"
    )


def test_parse_csv_reads_the_columns_vegeta_writes() -> None:
    body = json.dumps({"vote_id": "v-1", "status": "accepted"}).encode()
    text = _csv_line(1_700_000_000_000_000_000, 202, 3 * MS, body, seq=0) + _csv_line(
        1_700_000_000_001_000_000,
        0,
        2000 * MS,
        b"",
        '"Post ""http://x"": context deadline exceeded"',
        seq=1,
    )
    rows = parse_csv(io.StringIO(text))
    assert rows[0] == Row(1_700_000_000_000_000_000, 202, 3 * MS, "", body, 0)
    assert rows[1].code == 0 and "deadline" in rows[1].error and rows[1].seq == 1


def test_parse_csv_refuses_short_records() -> None:
    with pytest.raises(ValueError):
        parse_csv(io.StringIO("1,2,3\n"))


@pytest.mark.parametrize(
    ("q", "expected"), [(0, 1), (50, 50), (90, 90), (99, 99), (99.9, 100), (100, 100)]
)
def test_percentile_is_nearest_rank(q: float, expected: int) -> None:
    assert percentile(list(range(1, 101)), q) == expected


def test_percentile_small_samples_and_empty() -> None:
    assert percentile([7], 99.9) == 7
    assert percentile([1, 2], 50) == 1
    assert percentile([1, 2], 51) == 2
    assert math.isnan(percentile([], 50))


def _rows(starts_ms: list[float], latency_ms: float = 1.0) -> list[Row]:
    return [
        Row(int(t * MS), 202, int(latency_ms * MS), "", b"", i) for i, t in enumerate(starts_ms)
    ]


def test_on_time_requests_get_no_correction() -> None:
    rows = _rows([1000 + i for i in range(10)])  # 1000/s, exactly on schedule
    corrected, lags = corrected_latencies_ns(rows, 1000)
    assert lags == [0] * 10
    assert corrected == [MS] * 10


def test_a_generator_stall_is_charged_to_the_requests_that_waited() -> None:
    # 1000/s: requests 3..5 were due at 3, 4, 5 ms but all started at 8 ms.
    starts = [0, 1, 2, 8, 8, 8, 6, 7]
    rows = _rows([1000 + t for t in starts])
    corrected, lags = corrected_latencies_ns(rows, 1000)
    assert [lag // MS for lag in lags] == [0, 0, 0, 5, 4, 3, 0, 0]
    assert corrected[3] == 6 * MS


def test_correction_anchors_on_the_earliest_consistent_start() -> None:
    # The first request itself was late by 2 ms; the rest were on time.
    rows = _rows([1002, 1001 + 1, 1001 + 2, 1001 + 3])
    _, lags = corrected_latencies_ns(rows, 1000)
    assert [lag // MS for lag in lags] == [1, 0, 0, 0]


def test_acked_vote_id_only_from_2xx_json_bodies() -> None:
    ok = Row(0, 202, MS, "", b'{"vote_id":"abc","status":"accepted"}', 0)
    assert acked_vote_id(ok) == "abc"
    assert acked_vote_id(ok._replace(code=409)) is None
    assert acked_vote_id(ok._replace(body=b"")) is None
    assert acked_vote_id(ok._replace(body=b"not json")) is None
    assert acked_vote_id(ok._replace(error="EOF")) is None


def test_summarize_counts_errors_and_acks() -> None:
    rows = []
    for i in range(1000):
        code = 503 if i % 100 == 0 else 202
        durability = "spill" if i % 10 == 1 else "kafka"
        body = (
            json.dumps({"vote_id": f"v{i}", "durability": durability}).encode()
            if code == 202
            else b'{"title":"x"}'
        )
        rows.append(Row(1_000_000_000 + i * MS, code, (1 + i % 10) * MS, "", body, i))
    res = summarize("gateway", "search", 1000, 1.0, rows)
    assert res.requests == 1000
    assert res.errors == 10 and res.error_rate == 0.01
    assert res.ok == 990 and len(res.acked_ids) == 990 and "v1" in res.acked_ids
    assert res.acked_from_spill == 100 and res.summary()["acked_from_spill"] == 100
    assert res.codes == {"202": 990, "503": 10}
    assert res.p50_ms == 5.0 and res.p99_ms == 10.0
    assert res.send_lag_p99_ms == 0.0
    assert 980 < res.rps < 1000
    assert res.error_samples and res.error_samples[0].startswith("10x 503")
    assert "acked_ids" not in res.summary() and res.summary()["acked"] == 990


def test_summarize_without_results() -> None:
    res = summarize("nginx-204", "search", 100, 1.0, [])
    assert res.requests == 0 and res.error_rate == 1.0 and math.isnan(res.p99_ms)


def test_targets_needed_covers_the_step_with_slack() -> None:
    assert targets_needed(1000, 2.0) >= 2000
    assert targets_needed(1000, 2.0) < 2100


def test_steal_is_the_stolen_share_of_all_cpu_time_between_two_readings() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    before = parse_cpu_times("cpu  1000 0 200 5000 10 0 5 100 300 0\n")
    after = parse_cpu_times("cpu  1600 0 300 5200 10 0 5 500 700 0\n")
    assert before == (100, 6315)  # guest (300) is inside user: not counted twice
    assert after == (500, 7615)
    assert steal_share(before, after) == round(100 * 400 / 1300, 1)  # 30.8 %
    assert steal_share(before, before) is None  # no time passed
    assert steal_share(None, after) is None


def test_cpu_times_refuses_a_line_that_is_not_the_total() -> None:
    with pytest.raises(ValueError):
        parse_cpu_times("cpu0 1 2 3 4 5 6 7 8 9 10")
    assert parse_cpu_times("cpu 5 0 5 90") == (0, 100)  # an old kernel: no steal field


def test_a_batch_answer_acknowledges_its_votes_with_code_202() -> None:
    batch = {
        "accepted": 2,
        "refused": 1,
        "results": [
            {"index": 0, "code": 202, "vote_id": "a", "durability": "kafka"},
            {"index": 1, "code": 401, "vote_id": "b", "problem": {"status": 401}},
            {"index": 2, "code": 202, "vote_id": "c", "durability": "spill"},
        ],
    }
    rows = [
        Row(1_000_000_000, 200, MS, "", json.dumps(batch).encode(), 0),
        Row(1_000_000_000 + MS, 204, MS, "", b"", 1),  # nginx-204: one vote, no body
        Row(1_000_000_000 + 2 * MS, 202, MS, "", b'{"vote_id":"d"}', 2),
    ]
    res = summarize("gateway", "rate", 1000, 1.0, rows)
    assert res.ok == 3
    assert res.acked_votes == 2 + 1 + 1
    assert sorted(res.acked_ids) == ["a", "c", "d"]
    assert res.acked_from_spill == 1


def test_vegeta_keeps_as_much_of_each_answer_as_it_is_told(tmp_path) -> None:
    # A batch of 100 votes answers with one result per vote: with vegeta's 4 KiB it was
    # cut short, could not be read, and its votes went uncounted.
    from pathlib import Path

    from bench.loadgen import Vegeta

    argv = Vegeta(Path("vegeta"), tmp_path, max_body=106_496).attack_argv(
        tmp_path / "t", tmp_path / "o", 20, 1.0, "gateway"
    )
    assert "-max-body=106496" in argv
    assert "-max-body=4096" in Vegeta(Path("vegeta"), tmp_path).attack_argv(
        tmp_path / "t", tmp_path / "o", 20, 1.0, "gateway"
    )
