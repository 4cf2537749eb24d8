"""The chaos client's region routing (bench.chaos.client.RegionRoutes), as ``bench
failover`` and the ``region-loss`` scenario use it: voters spread over the regions, and a
region that refuses connections has its voters, retries included, sent to the next one."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from bench.chaos.client import (
    OK,
    UNSENT,
    Attempt,
    Load,
    RegionRoutes,
    RetryPolicy,
    Vote,
    write_attempts,
)
from tests.unit.local_http import QuietHandler, serving


def test_voters_live_in_the_regions_in_turn() -> None:
    routes = RegionRoutes({"A": "http://a", "B": "http://b"})
    assert [routes.home_of(n) for n in range(4)] == ["A", "B", "A", "B"]
    assert routes.pick("A") == "A" and routes.pick("B") == "B"


def test_a_refusing_region_sends_its_voters_to_the_next_until_restored() -> None:
    routes = RegionRoutes({"A": "http://a", "B": "http://b", "C": "http://c"})
    routes.refused("A", 12.5)
    routes.refused("A", 13.0)  # the first refusal is when it went down
    assert routes.down == {"A": 12.5}
    assert routes.pick("A") == "B" and routes.pick("B") == "B" and routes.pick("C") == "C"
    routes.refused("B", 14.0)
    assert routes.pick("A") == "C"
    routes.restore("A")
    assert routes.pick("A") == "A" and routes.pick("B") == "C"


def test_every_region_refusing_keeps_trying_home() -> None:
    routes = RegionRoutes({"A": "http://a", "B": "http://b"})
    routes.refused("A", 1.0)
    routes.refused("B", 1.0)
    assert routes.pick("A") == "A" and routes.pick("B") == "B"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def accepting_gateway() -> Iterator[str]:
    """A stand-in for a region's gateway that accepts every vote."""

    class Accept(QuietHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.reply(202, json.dumps({"status": "accepted", "durability": "kafka"}).encode())

    with serving(Accept) as url:
        yield f"{url}/votes"


class _Votes:
    def __init__(self) -> None:
        self.n = 0

    def __iter__(self) -> _Votes:
        return self

    def __next__(self) -> tuple[str, str, str, str, bytes]:
        self.n += 1
        vote_id = f"v{self.n}"
        return vote_id, f"voter{self.n}", "alice", "token", b'{"choice": "alice"}'


def test_load_moves_a_dead_regions_voters_and_records_who_served_them(
    accepting_gateway: str, tmp_path: object
) -> None:
    routes = RegionRoutes({"A": f"http://127.0.0.1:{_closed_port()}/votes", "B": accepting_gateway})
    policy = RetryPolicy(max_attempts=5, max_elapsed_s=20, timeout_s=5, backoff_s=0.01)
    load = Load("", _Votes(), 50.0, policy, max_in_flight=8, routes=routes)  # type: ignore[arg-type]
    load.start()
    deadline = time.monotonic() + 60
    while sum(1 for v in list(load.votes) if v.attempts) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    load.finish(timeout_s=60)
    # Votes still queued for a connection when the load stopped are never sent (unsent).
    sent = [v for v in load.votes if v.attempts]
    assert len(sent) >= 10
    assert all(v.outcome == OK for v in sent)
    assert all(v.outcome == UNSENT for v in load.votes if not v.attempts)
    homes = {v.home for v in sent}
    assert homes == {"A", "B"}
    assert all(v.served_by == "B" for v in sent)
    # A's first voter was refused by A, then answered by B on a retry of the same vote.
    first_a = next(v for v in sent if v.home == "A")
    assert first_a.attempts[0].region == "A" and first_a.attempts[0].status is None
    assert first_a.attempts[-1].region == "B" and first_a.attempts[-1].status == 202
    assert "A" in routes.down and "B" not in routes.down

    path = tmp_path / "attempts.jsonl"  # type: ignore[operator]
    write_attempts(path, load.votes)
    line = json.loads(path.read_text().splitlines()[0])
    assert line["home"] == "A" and line["attempts"][0][4] == "A"


def test_a_single_gateways_attempts_keep_their_four_fields(tmp_path: object) -> None:
    vote = Vote("a", "v", "alice", "t", b"", 0.0, [Attempt(0.1, 202, "", 0.01)], OK, 0.2)
    path = tmp_path / "attempts.jsonl"  # type: ignore[operator]
    write_attempts(path, [vote])
    line = json.loads(path.read_text())
    assert "home" not in line and len(line["attempts"][0]) == 4


def test_a_standalone_scenario_runs_without_the_chaos_stack(
    tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.chaos import runner
    from bench.chaos.scenarios import SCENARIOS, standalone_scenario

    seen: list[tuple[float, str]] = []

    def own_topology(args: object, out: object, log: object) -> dict[str, object]:
        seen.append((args.rate, str(out)))  # type: ignore[attr-defined]
        return {"name": "own-topology", "acked": 5, "lost": 0, "passed": True}

    monkeypatch.setattr(runner, "running", None)  # the chaos stack must not be touched
    standalone_scenario("own-topology", "a test scenario")(own_topology)
    try:
        json_path = tmp_path / "run.json"  # type: ignore[operator]
        args = runner.build_parser().parse_args(
            ["--scenarios", "own-topology", "--rate", "7", "--json", str(json_path)]
        )
        args.seed = 1
        assert runner.Session(args, ["chaos"]).run() == 0
        doc = json.loads(json_path.read_text())
        assert doc["passed"] and doc["scenarios"][0]["acked"] == 5
        assert seen == [(7.0, str(tmp_path / "run.chaos" / "own-topology"))]  # type: ignore[operator]
        # `all` is the chaos stack's scenarios; the region ones are run by name.
        everything = runner.build_parser().parse_args(["--json", str(json_path)])
        names = [sc.name for sc in runner.Session(everything, ["chaos"]).selected()]
        assert "own-topology" not in names and "region-loss" not in names
        assert "kafka-leader-kill" in names and "region-loss" in SCENARIOS
    finally:
        del SCENARIOS["own-topology"]


def test_two_primaries_only_when_their_answers_overlap() -> None:
    from bench.failover import writable_at_once

    assert writable_at_once([]) == 0
    assert writable_at_once([(1.0, 1.2)]) == 1
    # Asked at once and both said "writable" while the other's question was open.
    assert writable_at_once([(1.0, 1.3), (1.1, 1.2)]) == 2
    # One answered before the other was asked: a hand-over between the two questions.
    assert writable_at_once([(1.0, 1.1), (1.2, 1.4)]) == 1
