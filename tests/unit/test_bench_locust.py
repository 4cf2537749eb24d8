"""bench/locustfile.py and bench/locust_run.py: shares of the corpus, request parts, acks.

Importing locust monkey-patches the whole process with gevent, so the locustfile is
exercised in a child interpreter; the check end to end (a master, two workers, the
gateway and the exactly-once check) is ``python -m bench locust``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.corpus import vegeta_target
from bench.locust_run import read_acked


def _corpus(path: Path, n: int) -> None:
    lines = [
        vegeta_target(
            "http://127.0.0.1:9/v1/elections/e1/votes",
            {"body": json.dumps({"vote_id": f"v{i}", "choice": "a"}), "token": f"t{i}"},
        )
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")


_CHECK = textwrap.dedent(
    """
    import json, sys
    from bench.locustfile import Acks, Share
    corpus, acked = sys.argv[1], sys.argv[2]
    out = {}
    for index in range(3):
        share, got = Share(corpus, index, 3), []
        while (vote := share.next()) is not None:
            got.append(vote)
        out[index] = [[p, json.loads(b)["vote_id"], a] for p, b, a in got]
    acks = Acks(acked)
    acks.ids += ["v1", "v2"]
    acks.flush()
    Acks("").flush()  # no directory: nothing written, no error
    print(json.dumps(out))
    """
)


def test_workers_share_the_corpus_without_overlap(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    _corpus(corpus, 10)
    res = subprocess.run(
        [sys.executable, "-c", _CHECK, str(corpus), str(tmp_path / "acked")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    shares = json.loads(res.stdout.strip().splitlines()[-1])
    ids = [vote_id for share in shares.values() for _, vote_id, _ in share]
    assert sorted(ids) == sorted(f"v{i}" for i in range(10))  # each vote once, none lost
    assert [v for _, v, _ in shares["0"]] == ["v0", "v3", "v6", "v9"]
    path, vote_id, auth = shares["1"][0]
    assert (path, vote_id, auth) == ("/v1/elections/e1/votes", "v1", "Bearer t1")
    assert read_acked(tmp_path / "acked") == ["v1", "v2"]


def test_read_acked_joins_every_worker_file(tmp_path: Path) -> None:
    (tmp_path / "acked-a-1.txt").write_text("x\ny\n")
    (tmp_path / "acked-b-2.txt").write_text("z\n\n")
    (tmp_path / "other.txt").write_text("not an ack\n")
    assert read_acked(tmp_path) == ["x", "y", "z"]
    assert read_acked(tmp_path / "missing") == []
