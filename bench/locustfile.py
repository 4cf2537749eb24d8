"""Locust: the pre-signed corpus replayed at a constant arrival rate, from many machines.

250 k votes/s do not come from one load generator. Locust's master hands the test to its
workers (one per machine or core); each worker replays its own share of one corpus
(``python -m bench corpus``: vegeta JSON targets, one signed vote of a distinct voter
per line), so no vote is sent twice:

    locust -f bench/locustfile.py --master --expect-workers N --headless \\
        --users U --spawn-rate U --run-time 60s --host http://GATEWAY:8080 \\
        --corpus FILE --vote-rate R --acked-dir DIR
    locust -f bench/locustfile.py --worker --master-host MASTER        # N times

The master passes ``--corpus``, ``--vote-rate`` and ``--acked-dir`` on to its workers;
the corpus file must be at that path on every worker (a volume, or the same image).

* **Open loop.** Each worker sends ``R / N`` votes/s, shared evenly by its users; each
  user sends on its own clock whatever the answers do: a request waits for a free
  connection of the user's pool, never for an earlier answer. ``--vote-rate R`` is the
  total of all workers.
* **Shares.** Line ``i`` of the corpus belongs to the worker whose index (assigned by the
  master, 0..N-1) is ``i mod N``. A worker's users stop when its share is used up.
* **The end.** A worker whose users have used up its share (every answer in) writes the
  ``vote_id`` of every 2xx answer to ``DIR/acked-<host>-<pid>.txt`` and tells the
  master (message ``share_done``); when all have, the master ends the test.
  ``python -m bench locust`` (bench/locust_run.py) runs a master and workers here and
  checks those ids against PostgreSQL afterwards: each exactly once.

Latency in Locust's statistics is measured from the moment a request was sent; a worker
that falls behind its schedule logs how late it was (``late sends``), so an overloaded
generator is seen and not mistaken for a slow gateway.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import gevent
import gevent.pool
from locust import FastHttpUser, events, task
from locust.exception import StopUser
from locust.runners import MasterRunner, WorkerRunner

# Requests one user may have in flight (and connections it may open): beyond this it
# sends late rather than opening connections without bound.
MAX_IN_FLIGHT = 256


@events.init_command_line_parser.add_listener
def _options(parser) -> None:  # type: ignore[no-untyped-def]
    parser.add_argument("--corpus", default="", help="vegeta JSON targets of signed votes")
    parser.add_argument("--vote-rate", type=float, default=100.0, help="votes/s of all workers")
    parser.add_argument("--acked-dir", default="", help="where each worker lists its acks")


class Share:
    """This worker's lines of the corpus, handed out one at a time (gevent: no locks)."""

    def __init__(self, path: str, index: int, shards: int) -> None:
        self.path, self.index, self.shards = path, index, shards
        self._lines = self._read()

    def _read(self) -> Iterator[tuple[str, bytes, str]]:
        with open(self.path) as fh:
            for i, line in enumerate(fh):
                if i % self.shards == self.index and line.strip():
                    yield parse_line(line)

    def next(self) -> tuple[str, bytes, str] | None:
        return next(self._lines, None)


def parse_line(line: str) -> tuple[str, bytes, str]:
    """(path, body, Authorization header) of one vegeta JSON target line."""
    doc = json.loads(line)
    parts = urlsplit(doc["url"])
    return parts.path, base64.b64decode(doc["body"]), doc["header"]["Authorization"][0]


class Acks:
    """The ``vote_id`` of every 2xx answer of this worker, written to its own file."""

    def __init__(self, directory: str) -> None:
        self.path = (
            Path(directory) / f"acked-{socket.gethostname()}-{os.getpid()}.txt"
            if directory
            else None
        )
        self.ids: list[str] = []
        self.late_sends = 0
        self.max_late_s = 0.0

    def flush(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(f"{v}\n" for v in self.ids))


# One share and one ack list per worker process, made by its first user.
_state: dict[str, object] = {}


def _share(environment) -> Share:  # type: ignore[no-untyped-def]
    if "share" not in _state:
        opts = environment.parsed_options
        index, shards = _position(environment)
        _state["share"] = Share(opts.corpus, index, shards)
        _state["acks"] = Acks(opts.acked_dir)
    return _state["share"]  # type: ignore[return-value]


def _position(environment) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(this worker's index, the number of workers); (0, 1) when Locust runs alone."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return 0, 1
    shards = max(environment.parsed_options.expect_workers or 1, 1)
    if not 0 <= runner.worker_index < shards:
        raise RuntimeError(f"worker index {runner.worker_index} outside --expect-workers {shards}")
    return runner.worker_index, shards


def _acks() -> Acks:
    return _state["acks"]  # type: ignore[return-value]


@events.init.add_listener
def _on_init(environment, **_kw) -> None:  # type: ignore[no-untyped-def]
    if isinstance(environment.runner, MasterRunner):
        done: set[int] = set()

        def share_done(environment, msg, **_kw) -> None:  # type: ignore[no-untyped-def]
            done.add(int(msg.data))
            if len(done) >= max(environment.parsed_options.expect_workers or 1, 1):
                gevent.spawn(environment.runner.quit)

        environment.runner.register_message("share_done", share_done)


def _user_done(environment) -> None:  # type: ignore[no-untyped-def]
    """One user has used up its part of the share; the last one ends this worker's part."""
    finished = int(_state.get("finished", 0)) + 1  # type: ignore[call-overload]
    _state["finished"] = finished
    runner = environment.runner
    if finished < runner.target_user_count:
        return
    _acks().flush()
    if isinstance(runner, WorkerRunner):
        runner.send_message("share_done", runner.worker_index)
    else:
        gevent.spawn(runner.quit)


@events.test_stop.add_listener
def _write_acks(environment, **_kw) -> None:  # type: ignore[no-untyped-def]
    if "acks" in _state:
        acks = _acks()
        acks.flush()
        if acks.late_sends:
            print(
                f"late sends: {acks.late_sends} (up to {acks.max_late_s * 1000:.0f} ms behind "
                "schedule): this generator was overloaded",
                flush=True,
            )


class VoteReplay(FastHttpUser):
    """One open-loop source of signed votes."""

    concurrency = MAX_IN_FLIGHT

    @task
    def replay(self) -> None:
        opts = self.environment.parsed_options
        share = _share(self.environment)
        acks = _acks()
        _, workers = _position(self.environment)
        users_here = max(self.environment.runner.target_user_count, 1)
        interval = users_here * workers / opts.vote_rate
        pool = gevent.pool.Pool(MAX_IN_FLIGHT)
        due = time.monotonic()
        while True:
            vote = share.next()
            if vote is None:
                pool.join()
                _user_done(self.environment)
                raise StopUser()
            wait = due - time.monotonic()
            if wait > 0:
                gevent.sleep(wait)
            elif wait < -0.001:
                acks.late_sends += 1
                acks.max_late_s = max(acks.max_late_s, -wait)
            pool.spawn(self._send, *vote)
            due += interval

    def _send(self, path: str, body: bytes, authorization: str) -> None:
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        with self.client.post(
            path, data=body, headers=headers, name="POST votes", catch_response=True
        ) as resp:
            if resp.status_code == 202:
                try:
                    _acks().ids.append(json.loads(resp.content)["vote_id"])
                except (ValueError, KeyError, TypeError):
                    resp.failure("202 without a vote_id")
                    return
                resp.success()
            else:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:120]}")
