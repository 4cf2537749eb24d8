"""After a scenario has healed: did every acknowledged vote count exactly once?

The checks run once the backlogs are gone: the gateway's spill is empty and the
processor's stored offsets have reached the end of every partition (both waited for,
with a limit). Then, for the scenario's election:

* every vote the client saw acknowledged is in ``votes`` or in ``vote_rejections`` with a
  reason (else it is ``lost``);
* no ``vote_id`` is stored twice and no voter has more counted votes than the election's
  policy allows (else ``double_counted``);
* a vote the client saw definitely refused (all 4xx) is not stored (``failed_stored``);
* the tallies in PostgreSQL and in Redis both equal a recount made by reading
  ``votes.v1`` in Kafka order (``tallies_match``): the first copy of each ``vote_id``, and
  for ``first_wins`` the first valid vote of each voter;
* ``processor.verify`` (Kafka against PostgreSQL, tallies against the counted rows,
  voters' state) passes.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
import redis
from confluent_kafka import Consumer, TopicPartition

from bench import kafka
from bench.chaos.client import FAIL, INFO, OK, UNSENT, Vote
from bench.outage import spilled_events
from core import keyset
from processor.policy import EventAuth, decode_storable


@dataclass
class Result:
    name: str
    acked: int = 0
    failed: int = 0
    indeterminate: int = 0
    unsent: int = 0  # scheduled, never sent: the client could not keep up
    stored: int = 0
    lost: int = 0
    double_counted: int = 0
    unacked_stored: int = 0
    failed_stored: int = 0
    rejected_acked: int = 0  # acknowledged, then rejected with a reason (e.g. a re-vote)
    spill_drained: bool = False
    lag: int | None = None
    lag_zero: bool = False
    offsets_at_end: bool = False
    tallies_match: bool = False
    verify_ok: bool = False
    kafka_copies: int = 0  # events of the election in Kafka, duplicates included
    kafka_duplicate_copies: int = 0  # a vote_id carried more than once (retries, spill)
    pg_tallies: dict[str, int] = field(default_factory=dict)
    redis_tallies: dict[str, int] = field(default_factory=dict)
    kafka_recount: dict[str, int] = field(default_factory=dict)
    rejections: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    verify: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # A scenario's own checks: their figures, and what they found wrong.
    extra: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.double_counted == 0
            and self.failed_stored == 0
            and self.spill_drained
            and self.lag_zero
            and self.offsets_at_end
            and self.tallies_match
            and self.verify_ok
            and not self.failures
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float, notes: list[str]) -> bool:
    """Poll until true; on timeout note it and return False (the check reports it)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if predicate():
                return True
        except Exception as exc:  # a server still recovering: keep polling
            last = repr(exc)
        else:
            last = "not yet"
        if time.monotonic() > deadline:
            notes.append(f"timed out after {timeout_s:g}s waiting for {what} ({last})")
            return False
        time.sleep(0.5)


def end_offsets(bootstrap: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The high watermark of every partition of ``topic`` (``bench.kafka.end_offsets``,
    which asks again while a restarted broker's partitions change leaders)."""
    return kafka.end_offsets({"bootstrap.servers": bootstrap}, topic, timeout_s)


def stored_offsets(dsn: str, group: str, topic: str, cluster: str = "") -> dict[int, int]:
    """The processors' positions in PostgreSQL (``cluster`` '' outside regions)."""
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT partition, next_offset FROM consumer_offsets"
            " WHERE consumer_group = %s AND cluster = %s AND topic = %s",
            (group, cluster, topic),
        ).fetchall()
    return {int(p): int(o) for p, o in rows}


def lag(ends: dict[int, int], stored: dict[int, int]) -> int:
    return sum(max(0, end - stored.get(p, 0)) for p, end in ends.items() if end > 0)


def recount_from_kafka(
    bootstrap: str,
    topic: str,
    election: str,
    candidates: set[str],
    starts: dict[int, int],
    auth: EventAuth,
    timeout_s: float = 300.0,
    seen: set[str] | None = None,
    voted: set[str] | None = None,
) -> tuple[Counter[str], int, int]:
    """A ``first_wins`` recount of ``election`` from Kafka order, independent of the
    processor's batches and tables: per partition from ``starts`` to the current end, the
    first copy of each vote_id, and per voter the first vote that is storable (the
    event contract of ``core.event``) and names a candidate. Returns (tally, copies,
    duplicate copies). A recount over several topics (one per region) passes the same
    ``seen`` and ``voted`` sets to each call, so a vote carried by two counts once."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"chaos-recount-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    seen = set() if seen is None else seen
    voted = set() if voted is None else voted
    tally: Counter[str] = Counter()
    copies = duplicates = 0
    try:
        todo = {p for p, end in ends.items() if end > starts.get(p, 0)}
        consumer.assign([TopicPartition(topic, p, starts.get(p, 0)) for p in todo])
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"recount: partitions {sorted(todo)} not read to the end")
            for m in consumer.consume(num_messages=5000, timeout=1.0):
                if m.error() is not None or m.partition() not in todo:
                    continue
                if m.offset() + 1 >= ends[m.partition()]:
                    todo.discard(m.partition())
                if m.offset() >= ends[m.partition()]:
                    continue
                _kind, timestamp_ms = m.timestamp()
                # What the processor must refuse (core.event's contract) never counts.
                e, _reason, _why = decode_storable(m.value(), timestamp_ms * 1000, auth)
                if e is None or e.election_id != election:
                    continue
                copies += 1
                if e.vote_id in seen:
                    duplicates += 1
                    continue
                seen.add(e.vote_id)
                valid = e.choice in candidates
                if valid and e.voter_id not in voted:
                    voted.add(e.voter_id)
                    tally[e.choice] += 1
    finally:
        consumer.close()
    return tally, copies, duplicates


def count_in_postgres(dsn: str, election: str, votes: list[Vote], r: Result) -> None:
    """The client's outcomes against what PostgreSQL stored for ``election``, into ``r``:
    acked/failed/indeterminate/unsent, stored, lost, double_counted, unacked_stored,
    failed_stored, rejections and the tallies."""
    by_outcome = Counter(v.outcome for v in votes)
    r.acked, r.failed, r.indeterminate = by_outcome[OK], by_outcome[FAIL], by_outcome[INFO]
    r.unsent = by_outcome[UNSENT]
    acked = {v.vote_id for v in votes if v.outcome == OK}
    failed = {v.vote_id for v in votes if v.outcome == FAIL}

    with psycopg.connect(dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        rows = dict(
            conn.execute(
                "SELECT vote_id, count(*) FROM votes WHERE election_id = %s GROUP BY vote_id",
                (election,),
            ).fetchall()
        )
        rejected = {
            vid: reason
            for vid, reason in conn.execute(
                "SELECT vote_id, reason FROM vote_rejections WHERE election_id = %s",
                (election,),
            ).fetchall()
        }
        r.rejections = dict(Counter(rejected.values()))
        over_limit = conn.execute(
            "SELECT count(*) FROM (SELECT voter_id FROM votes WHERE election_id = %s"
            " AND superseded_by IS NULL GROUP BY voter_id HAVING count(*) > 1) AS x",
            (election,),
        ).fetchone()
        r.pg_tallies = dict(
            conn.execute(
                "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s",
                (election,),
            ).fetchall()
        )
    stored = set(rows)
    lost = acked - stored - set(rejected)
    r.stored = len(acked & stored)
    r.rejected_acked = len((acked - stored) & set(rejected))
    r.lost = len(lost)
    r.double_counted = sum(n - 1 for n in rows.values() if n > 1) + int(
        over_limit[0] if over_limit else 0
    )
    r.unacked_stored = len(stored - acked)
    r.failed_stored = len(failed & stored)
    r.examples = {
        "lost": sorted(lost)[:5],
        "failed_stored": sorted(failed & stored)[:5],
        "stored_twice": sorted(v for v, n in rows.items() if n > 1)[:5],
    }


class Checker:
    """The checks of one scenario against the chaos stack's PostgreSQL, Redis and Kafka."""

    def __init__(
        self,
        env: dict[str, str],
        metrics_url: str,
        drain_timeout_s: float = 600.0,
    ) -> None:
        from core.settings import load
        from processor.settings import ProcessorSettings

        self.env = env
        self.settings = load(ProcessorSettings, env)
        self.metrics_url = metrics_url
        self.drain_timeout_s = drain_timeout_s

    def snapshot_ends(self) -> dict[int, int]:
        """Partition ends before a scenario: its election's events all lie after them."""
        return end_offsets(self.settings.kafka_bootstrap, self.settings.vote_topic, 30.0)

    def current_lag(self) -> int | None:
        """Consumer lag now (None when Kafka or PostgreSQL does not answer quickly)."""
        try:
            ends = end_offsets(self.settings.kafka_bootstrap, self.settings.vote_topic, 2.0)
            stored = stored_offsets(
                self.settings.pg_dsn,
                self.settings.processor_group,
                self.settings.vote_topic,
                self.settings.processor_cluster,
            )
        except Exception:
            return None
        return lag(ends, stored)

    def check(
        self,
        name: str,
        election: str,
        candidates: list[str],
        votes: list[Vote],
        starts: dict[int, int],
    ) -> Result:
        s = self.settings
        r = Result(name)
        r.spill_drained = wait_for(
            "the gateway's spill to drain",
            lambda: spilled_events(self.metrics_url) == 0,
            self.drain_timeout_s,
            r.notes,
        )

        def caught_up() -> bool:
            ends = end_offsets(s.kafka_bootstrap, s.vote_topic)
            stored = stored_offsets(s.pg_dsn, s.processor_group, s.vote_topic, s.processor_cluster)
            r.lag = lag(ends, stored)
            # Exactly at the end: an offset beyond it would mean the log was replaced.
            r.offsets_at_end = all(stored.get(p, 0) == end for p, end in ends.items() if end)
            return r.lag == 0

        r.lag_zero = wait_for(
            "the processor's stored offsets to reach the log end",
            caught_up,
            self.drain_timeout_s,
            r.notes,
        )
        count_in_postgres(s.pg_dsn, election, votes, r)

        from core.results import tally_key

        client = redis.Redis.from_url(s.redis_url, socket_timeout=10)
        try:
            r.redis_tallies = {
                k.decode(): int(v) for k, v in client.hgetall(tally_key(election)).items()
            }
        finally:
            client.close()
        # The processor's own event keys: what it must refuse as unauthenticated never counts.
        auth = EventAuth(keyset.load(s.event_keys_path), s.processor_accept_unsigned_events)
        recount, r.kafka_copies, r.kafka_duplicate_copies = recount_from_kafka(
            s.kafka_bootstrap, s.vote_topic, election, set(candidates), starts, auth
        )
        r.kafka_recount = dict(recount)

        def nonzero(t: dict[str, int]) -> dict[str, int]:
            return {k: v for k, v in t.items() if v}

        r.tallies_match = (
            nonzero(r.pg_tallies) == nonzero(r.kafka_recount) == nonzero(r.redis_tallies)
        )
        if not r.tallies_match:
            r.notes.append(
                f"tallies differ: postgres {r.pg_tallies} redis {r.redis_tallies}"
                f" kafka recount {r.kafka_recount}"
            )

        from processor.verify import verify

        report = verify(s, election)
        r.verify_ok = bool(report["ok"])
        r.verify = {k: v for k, v in report.items() if k not in ("tallies", "examples")}
        if not r.verify_ok:
            r.notes.append(f"processor verify failed: {report.get('examples')}")
        return r
