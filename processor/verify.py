"""Reconciliation of Kafka with PostgreSQL: ``python -m processor verify --election E``.

Reads the topic from the beginning to its current end and checks, for one election,
the invariants of docs/ARCHITECTURE.md (Flow and invariants):

* A: every distinct vote in Kafka — identity (vote_id, voter_id, choice) — is in
  ``votes`` or in ``vote_rejections``, exactly once (``missing`` and ``in_both`` are 0),
  and nothing is stored that Kafka never carried (``not_in_kafka`` is 0);
* B: no voter has more counted (not superseded) votes than the policy allows, and the
  ``voters`` state agrees with the votes;
* C: every tally equals a recount of the counted votes; the report also gives the lag
  of the stored offsets behind the end of each partition.

Any failure makes the exit status non-zero.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import psycopg
from confluent_kafka import Consumer, TopicPartition

from core import elections as core_elections
from core import keyset
from core.elections import Election
from processor.policy import EventAuth, decode_storable, timestamp_us
from processor.settings import ProcessorSettings


class VerifyError(RuntimeError):
    """The topic could not be read to its end (broker down, timeout)."""


def scan_topic(
    bootstrap: str,
    topic: str,
    election_id: str,
    auth: EventAuth,
    timeout_s: float = 120.0,
    security: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Distinct vote identities of one election in the topic, from offset 0 to the end.

    ``security``: the librdkafka TLS/SASL properties (``KafkaSecurity.kafka_client_config``).
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"vote-verify-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **(security or {}),
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            raise VerifyError(f"topic {topic} not found")
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for p in tmeta.partitions:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts[p], ends[p] = lo, hi
        todo = {p for p in ends if ends[p] > starts[p]}
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        keys: set[tuple[str, str, str]] = set()
        vote_ids: set[str] = set()
        messages = 0
        undecodable = 0
        deadline = time.monotonic() + timeout_s
        while todo:
            if time.monotonic() > deadline:
                raise VerifyError(f"timed out reading {topic}; partitions left {sorted(todo)}")
            for m in consumer.consume(num_messages=10000, timeout=1.0):
                if m.error() is not None:
                    continue
                p, o = m.partition(), m.offset()
                if p not in todo or o >= ends[p]:
                    continue
                if o + 1 >= ends[p]:
                    todo.discard(p)
                # What the processor rejects under its Kafka position is only counted.
                ev, _reason, _why = decode_storable(m.value(), timestamp_us(m.timestamp()), auth)
                if ev is None:
                    undecodable += 1
                    continue
                if ev.election_id != election_id:
                    continue
                messages += 1
                keys.add((ev.vote_id, ev.voter_id, ev.choice))
                vote_ids.add(ev.vote_id)
        return {
            "keys": keys,
            "vote_ids": vote_ids,
            "messages": messages,
            "undecodable": undecodable,
            "ends": ends,
        }
    finally:
        consumer.close()


def verify(settings: ProcessorSettings, election_id: str) -> dict[str, Any]:
    """The reconciliation report; ``report["ok"]`` says whether every check passed."""
    auth = EventAuth(
        keyset.load(settings.event_keys_path), settings.processor_accept_unsigned_events
    )
    kafka = scan_topic(
        settings.kafka_bootstrap,
        settings.vote_topic,
        election_id,
        auth,
        security=settings.kafka_client_config(),
    )
    with psycopg.connect(settings.pg_dsn) as conn:
        # One snapshot for every query, so a running processor can't make the
        # checks disagree with each other.
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        elections = core_elections.load(conn, [election_id])
        election: Election | None = elections.get(election_id)
        votes = conn.execute(
            "SELECT vote_id, voter_id, choice, superseded_by IS NOT NULL FROM votes"
            " WHERE election_id = %s",
            (election_id,),
        ).fetchall()
        rejections = conn.execute(
            "SELECT vote_id, voter_id, choice, reason FROM vote_rejections WHERE election_id = %s",
            (election_id,),
        ).fetchall()
        tallies = dict(
            conn.execute(
                "SELECT candidate_id, votes FROM election_tallies WHERE election_id = %s",
                (election_id,),
            ).fetchall()
        )
        voter_rows = conn.execute(
            "SELECT voter_id, counted, current_vote_id FROM voters WHERE election_id = %s",
            (election_id,),
        ).fetchall()
        stored = dict(
            conn.execute(
                "SELECT partition, next_offset FROM consumer_offsets"
                " WHERE consumer_group = %s AND topic = %s",
                (settings.processor_group, settings.vote_topic),
            ).fetchall()
        )

    vote_keys = {(x, a, c) for x, a, c, _ in votes}
    rej_keys = {(x, a, c) for x, a, c, _ in rejections}
    kafka_keys: set[tuple[str, str, str]] = kafka["keys"]
    missing = kafka_keys - vote_keys - rej_keys
    in_both = vote_keys & rej_keys
    not_in_kafka = (vote_keys | rej_keys) - kafka_keys

    recount: Counter[str] = Counter()
    per_voter: Counter[str] = Counter()
    current_of: dict[str, set[str]] = {}
    for x, a, c, superseded in votes:
        if not superseded:
            recount[c] += 1
            per_voter[a] += 1
            current_of.setdefault(a, set()).add(x)
    tally_diff = {
        c: {"tally": tallies.get(c, 0), "recount": recount.get(c, 0)}
        for c in set(tallies) | set(recount)
        if tallies.get(c, 0) != recount.get(c, 0)
    }
    allowed = election.max_votes if election is not None else 0
    over_limit = sorted(a for a, n in per_voter.items() if n > allowed)
    voters_state_diff = sorted(
        a
        for a, n, cur in voter_rows
        if n != per_voter.get(a, 0) or cur not in current_of.get(a, ())
    )
    voters_state_diff += sorted(set(per_voter) - {a for a, _, _ in voter_rows})
    lag = {p: end - stored.get(p, 0) for p, end in kafka["ends"].items()}

    report: dict[str, Any] = {
        "election_id": election_id,
        "topic": settings.vote_topic,
        "election_known": election is not None,
        "kafka_messages": kafka["messages"],
        "kafka_distinct_vote_ids": len(kafka["vote_ids"]),
        "kafka_distinct_votes": len(kafka_keys),
        "kafka_undecodable_messages_all_elections": kafka["undecodable"],
        "counted": sum(recount.values()),
        "superseded": sum(1 for v in votes if v[3]),
        "rejected": dict(Counter(r for _, _, _, r in rejections)),
        "missing": len(missing),
        "in_both": len(in_both),
        "not_in_kafka": len(not_in_kafka),
        "tally_mismatches": tally_diff,
        "voters_over_limit": len(over_limit),
        "voter_state_mismatches": len(voters_state_diff),
        "tallies": {c: tallies[c] for c in sorted(tallies)},
        "offset_lag": sum(max(0, v) for v in lag.values()),
        "examples": {
            "missing": [list(k) for k in sorted(missing)[:5]],
            "in_both": [list(k) for k in sorted(in_both)[:5]],
            "not_in_kafka": [list(k) for k in sorted(not_in_kafka)[:5]],
            "over_limit": over_limit[:5],
            "voter_state": voters_state_diff[:5],
        },
    }
    report["ok"] = (
        election is not None
        and not missing
        and not in_both
        and not not_in_kafka
        and not tally_diff
        and not over_limit
        and not voters_state_diff
    )
    return report
