"""Pre-signed votes in vegeta's JSON target format, so the load generator does no crypto.

    python -m bench corpus --voters N --election E [--out FILE] [--url http://127.0.0.1:8080]

The election is created and the votes are signed through the project's own admin path
(``gateway.admin.create_election`` / ``mint_votes``, the keys of ``init_keys``); this
module only changes the format. One line per vote::

    {"method":"POST","url":"http://.../v1/elections/E/votes","body":"<base64 JSON>",
     "header":{"Authorization":["Bearer <JWT>"],"Content-Type":["application/json"]}}

which ``vegeta attack -format=json`` reads. A ``FILE.meta.json`` beside it records the
election, count, algorithm and date.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

DEFAULT_CANDIDATES = ("alice", "bob", "carol")


def votes_path(election_id: str) -> str:
    return f"/v1/elections/{quote(election_id, safe='')}/votes"


def batch_path(election_id: str) -> str:
    return votes_path(election_id) + ":batch"


def batch_target(url: str, votes: Sequence[dict[str, str]]) -> str:
    """One vegeta JSON target carrying ``votes`` to ``POST .../votes:batch``."""
    batch = {
        "votes": [
            {"token": v["token"], "vote_id": v["vote_id"], "choice": v["choice"]} for v in votes
        ]
    }
    body = base64.b64encode(json.dumps(batch, separators=(",", ":")).encode()).decode()
    header = json.dumps({"Content-Type": ["application/json"]}, separators=(",", ":"))
    return '{"method":"POST","url":"' + url + '","body":"' + body + '","header":' + header + "}"


class BatchPool:
    """Fresh signed votes of one election, ``size`` to a request (``POST .../votes:batch``)."""

    fresh = True

    def __init__(self, votes: Iterator[dict[str, str]], url: str, size: int) -> None:
        self._votes = votes
        self.url = url
        self.size = size
        self.minted = 0

    def take(self, n: int) -> list[str]:
        """``n`` target lines of ``size`` votes each, no vote sent twice."""
        lines = []
        for _ in range(n):
            votes = list(itertools.islice(self._votes, self.size))
            if len(votes) < self.size:
                raise RuntimeError(f"corpus exhausted after {self.minted} votes")
            self.minted += len(votes)
            lines.append(batch_target(self.url, votes))
        return lines


def target_tail(vote: dict[str, str]) -> str:
    """Everything of a vegeta JSON target after the URL's value (see ``render``).

    Kept apart from the URL so that one minted vote can be aimed at any host:port
    without decoding and re-encoding JSON per request.
    """
    body = base64.b64encode(vote["body"].encode()).decode()
    header = {"Authorization": [f"Bearer {vote['token']}"], "Content-Type": ["application/json"]}
    return '","body":"' + body + '","header":' + json.dumps(header, separators=(",", ":")) + "}"


def render(url: str, tail: str) -> str:
    """One vegeta JSON target line (without the newline)."""
    return '{"method":"POST","url":"' + url + tail


def vegeta_target(url: str, vote: dict[str, str]) -> str:
    return render(url, target_tail(vote))


def parse_target(line: str) -> dict[str, object]:
    """Decode one target line back to ``{url, vote_id, choice, token}`` (tests, checks)."""
    doc = json.loads(line)
    body = json.loads(base64.b64decode(doc["body"]))
    auth = doc["header"]["Authorization"][0]
    if not auth.startswith("Bearer "):
        raise ValueError("target without a bearer token")
    return {
        "method": doc["method"],
        "url": doc["url"],
        "vote_id": body["vote_id"],
        "choice": body["choice"],
        "token": auth[len("Bearer ") :],
        "content_type": doc["header"]["Content-Type"][0],
    }


class VotePool:
    """Signed votes of one election, minted lazily as steps ask for them.

    ``fresh=True`` (the gateway) hands out every vote once: a re-sent vote would be an
    idempotent retry or a second vote of the same voter, neither of which is load of new
    votes, and the exactly-once check needs each vote_id sent in one step only.
    ``fresh=False`` (peers, nginx) mints up to ``cap`` votes and then cycles through them;
    every request of a step is still distinct while the step needs fewer than ``cap``.
    """

    def __init__(
        self, votes: Iterator[dict[str, str]], url: str, *, fresh: bool, cap: int = 50_000
    ) -> None:
        self._votes = votes
        self.url = url
        self.fresh = fresh
        self.cap = cap
        self._tails: list[str] = []
        self._next = 0
        self.minted = 0
        self.mint_seconds = 0.0

    def _mint(self, n: int) -> list[str]:
        started = time.perf_counter()
        tails = [target_tail(v) for v in itertools.islice(self._votes, n)]
        self.mint_seconds += time.perf_counter() - started
        self.minted += len(tails)
        if len(tails) < n:
            raise RuntimeError(f"corpus exhausted after {self.minted} votes")
        return tails

    def take(self, n: int) -> list[str]:
        """The next ``n`` target lines (without newlines)."""
        if self.fresh:
            return [render(self.url, t) for t in self._mint(n)]
        if len(self._tails) < self.cap:
            need = min(self.cap, self._next + n) - len(self._tails)
            if need > 0:
                self._tails += self._mint(need)
        size = len(self._tails)
        out = [render(self.url, self._tails[(self._next + i) % size]) for i in range(n)]
        self._next += n
        if size >= self.cap:  # full: from now on we cycle
            self._next %= size
        return out


def write_targets(path: Path, lines: Iterable[str]) -> int:
    count = 0
    with open(path, "w") as fh:
        for line in lines:
            fh.write(line)
            fh.write("\n")
            count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench corpus",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--voters", type=int, required=True, help="votes of distinct voters")
    parser.add_argument("--election", required=True)
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/out/corpus-<election>.targets.jsonl"
    )
    parser.add_argument(
        "--url",
        default=None,
        help="gateway base URL (default http://VOTE_HTTP_HOST:VOTE_HTTP_PORT)",
    )
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES))
    parser.add_argument("--policy", default="first_wins")
    parser.add_argument("--alg", default="HS256", choices=("HS256", "EdDSA"))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    if args.voters < 1:
        parser.error("--voters must be >= 1")

    # Imported here so that `python -m bench --help` works without the gateway's deps.
    from bench.env import stack_env
    from core import settings as settings_mod
    from gateway import admin
    from gateway.config import GatewaySettings

    env = stack_env()
    settings = settings_mod.load(GatewaySettings, env)
    url = (args.url or f"http://{settings.http_host}:{settings.http_port}").rstrip("/")
    candidates = [c for c in args.candidates.split(",") if c]
    out: Path = args.out or Path(__file__).parent / "out" / (
        f"corpus-{args.election}.targets.jsonl"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    keys = admin.init_keys(settings)
    admin.create_election(
        settings.pg_dsn, args.election, candidates, args.policy, title="bench corpus"
    )
    started = time.perf_counter()
    full_url = url + votes_path(args.election)
    votes = admin.mint_votes(
        keys["issuer"], args.election, args.voters, args.alg, args.seed, candidates
    )
    count = write_targets(out, (vegeta_target(full_url, v) for v in votes))
    seconds = time.perf_counter() - started
    meta = {
        "election": args.election,
        "voters": count,
        "alg": args.alg,
        "url": full_url,
        "candidates": candidates,
        "policy": args.policy,
        "format": "vegeta-json",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jwks": keys["jwks"],
    }
    Path(str(out) + ".meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(
        f"{count} signed votes of distinct voters for election {args.election!r} "
        f"in {seconds:.1f}s -> {os.path.relpath(out)}"
    )
    print(
        f"replay: .stack/bin/vegeta attack -format=json -targets={os.path.relpath(out)} "
        "-rate=1000/1s -duration=10s | .stack/bin/vegeta report"
    )
    return 0
