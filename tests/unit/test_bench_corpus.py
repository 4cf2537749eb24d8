"""bench.corpus: the vegeta target format and the pools that hand votes to steps."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.corpus import VotePool, parse_target, render, target_tail, vegeta_target, votes_path
from bench.corpus import write_targets as write


def _votes(election: str = "e1") -> Iterator[dict[str, str]]:
    for i in itertools.count():
        vote_id = f"00000000-0000-4000-8000-{i:012d}"
        yield {
            "voter_id": f"voter-{i}",
            "vote_id": vote_id,
            "choice": "alice",
            "token": f"hdr.claims{i}.sig",
            "body": json.dumps({"vote_id": vote_id, "choice": "alice"}, separators=(",", ":")),
        }


def test_a_target_line_is_vegeta_json_with_the_exact_body_and_headers() -> None:
    vote = next(_votes())
    line = vegeta_target("http://127.0.0.1:8080/v1/elections/e1/votes", vote)
    doc = json.loads(line)
    assert doc["method"] == "POST"
    assert doc["url"] == "http://127.0.0.1:8080/v1/elections/e1/votes"
    assert base64.b64decode(doc["body"]).decode() == vote["body"]
    assert doc["header"] == {
        "Authorization": [f"Bearer {vote['token']}"],
        "Content-Type": ["application/json"],
    }
    assert "\n" not in line
    parsed = parse_target(line)
    assert parsed["vote_id"] == vote["vote_id"] and parsed["token"] == vote["token"]


def test_render_aims_one_vote_at_any_url() -> None:
    tail = target_tail(next(_votes()))
    a, b = render("http://a:1/x", tail), render("http://b:2/x", tail)
    assert json.loads(a)["url"] == "http://a:1/x" and json.loads(b)["url"] == "http://b:2/x"
    assert json.loads(a)["body"] == json.loads(b)["body"]


def test_votes_path_quotes_the_election() -> None:
    assert votes_path("bench-1") == "/v1/elections/bench-1/votes"
    assert votes_path("a/b c") == "/v1/elections/a%2Fb%20c/votes"


def _ids(lines: list[str]) -> list[str]:
    return [str(parse_target(line)["vote_id"]) for line in lines]


def test_a_fresh_pool_never_hands_out_a_vote_twice() -> None:
    pool = VotePool(_votes(), "http://h/v", fresh=True, cap=10)
    ids = _ids(pool.take(8)) + _ids(pool.take(8))
    assert len(set(ids)) == 16 and pool.minted == 16


def test_a_capped_pool_cycles_but_each_step_is_distinct_below_the_cap() -> None:
    pool = VotePool(_votes(), "http://h/v", fresh=False, cap=10)
    first, second = _ids(pool.take(6)), _ids(pool.take(6))
    assert len(set(first)) == 6 and len(set(second)) == 6
    assert pool.minted == 10  # never more than the cap
    assert second[4:] == first[:2]  # wrapped around


def test_a_pool_reports_an_exhausted_source() -> None:
    pool = VotePool(iter(list(itertools.islice(_votes(), 3))), "http://h/v", fresh=True)
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.take(4)


def test_write_targets(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    n = write(path, (vegeta_target("http://h/v", v) for v in itertools.islice(_votes(), 5)))
    lines = path.read_text().splitlines()
    assert n == 5 and len(lines) == 5 and len(set(_ids(lines))) == 5


def test_batch_pool_sends_every_vote_once_n_to_a_request() -> None:
    from bench.corpus import BatchPool

    votes = iter([{"token": f"t{i}", "vote_id": f"v{i:020d}", "choice": "alice"} for i in range(7)])
    pool = BatchPool(votes, "http://h/v1/elections/e/votes:batch", 3)
    lines = pool.take(2)
    bodies = [json.loads(base64.b64decode(json.loads(line)["body"])) for line in lines]
    assert [[v["token"] for v in b["votes"]] for b in bodies] == [
        ["t0", "t1", "t2"],
        ["t3", "t4", "t5"],
    ]
    assert json.loads(lines[0])["url"].endswith("/votes:batch")
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.take(1)


def test_the_warm_up_rate_is_in_votes_per_second_with_batches() -> None:
    from bench.run import build_parser, make_plan

    assert make_plan(build_parser().parse_args(["--rate", "2", "--batch", "100"])).warmup_rate == 3
    assert make_plan(build_parser().parse_args(["--rate", "200"])).warmup_rate == 300
