"""The processor against real Kafka, PostgreSQL and Redis (issue 5, "what tests must show").

Each test runs ``python -m processor`` as a subprocess on its own topic and consumer
group, then checks the invariants of docs/ARCHITECTURE.md (Flow and invariants) directly
in PostgreSQL and Redis and with ``python -m processor verify``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from bench.procs import Service, free_port, wait_until
from core.event import VoteEvent
from tests.integration.processor_harness import Harness

pytestmark = pytest.mark.integration


def make_event(
    election_id: str,
    voter_id: str,
    choice: str,
    vote_id: str | None = None,
    received_at_us: int | None = None,
) -> VoteEvent:
    return VoteEvent(
        1,
        vote_id or uuid.uuid4().hex,
        election_id,
        voter_id,
        choice,
        received_at_us if received_at_us is not None else int(time.time() * 1e6),
        "test-gw",
    )


# -- helpers ---------------------------------------------------------------------------


def wait_for_log(service: Service, text: str, count: int, timeout: float = 180.0) -> None:
    """Until ``text`` appears ``count`` times in the service's log."""

    def seen() -> bool:
        assert service.proc.poll() is None, f"{service.log_path.name}: exited:\n{service.log()}"
        return service.log().count(text) >= count

    wait_until(f"{text!r} x{count}", seen, timeout, service.log)


# -- tests -------------------------------------------------------------------------------


def test_migrate_is_idempotent(harness: Harness) -> None:
    rc, out = harness.cli({"VOTE_PG_DSN": harness.pg_dsn}, "migrate")
    assert rc == 0, out
    assert '"applied": []' in out
    with psycopg.connect(harness.pg_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        parts = conn.execute(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = 'votes'::regclass"
        ).fetchone()
    assert versions == sorted(versions) and versions[0] == 1
    assert parts == (32,)


def test_policies_with_duplicates_and_out_of_order_revotes(harness: Harness) -> None:
    topic = harness.topic(3)
    first = harness.election(("a", "b", "c"), "first_wins")
    last = harness.election(("a", "b", "c"), "last_wins")
    maxv = harness.election(("a", "b", "c"), "max_votes:2")
    t0 = int(time.time() * 1e6)

    def e(el: str, voter: str, choice: str, vote_id: str, dt: int) -> VoteEvent:
        return make_event(el, voter, choice, vote_id=vote_id, received_at_us=t0 + dt)

    f1 = e(first, "v1", "a", "f1", 0)
    f2 = e(first, "v1", "b", "f2", 1)  # second vote: rejected
    f3 = e(first, "v2", "b", "f3", 2)
    f4 = e(first, "v3", "c", "f1", 3)  # vote_id taken by other content
    lw_new = e(last, "v1", "c", "l2", 20)
    lw_old = e(last, "v1", "a", "l1", 10)  # older re-vote delivered after the newer
    lw_tie = e(last, "v1", "b", "l3", 20)  # same received_at, greater vote_id: wins
    lw_v2 = e(last, "v2", "a", "l4", 5)
    m1, m2, m3 = (e(maxv, "v1", c, f"m{i}", i) for i, c in enumerate("abc"))
    # f1 (voter v1) and f4 (voter v3) reuse one vote_id from two Kafka partitions, and
    # the content stored first owns it. Kafka orders nothing across partitions (a batch
    # may hold one partition's messages and not yet the other's), so f4 is sent only
    # once the first part is stored. Within a partition the outcome must not depend on
    # how the sequence is cut into batches: the rest is sent while the processor runs.
    before = [f1, f1, f2, f3, f2, lw_new]
    after = [f4, lw_old, lw_tie, lw_new, lw_v2, m1, m2, m3, m1]
    harness.producer.send(topic, before)
    env = harness.env(topic)
    svc = harness.start(env)
    harness.drain(topic, [svc])
    harness.producer.send(topic, after)
    harness.drain(topic, [svc])

    st = harness.invariants(first, [f1, f2, f3, f4])
    assert st["rejections"] == {
        ("f2", "v1", "b"): "voter_already_voted",
        ("f1", "v3", "c"): "duplicate_vote_id",
    }
    assert {c: n for c, n in st["tallies"].items() if n} == {"a": 1, "b": 1}

    st = harness.invariants(last, [lw_new, lw_old, lw_tie, lw_v2])
    assert st["votes"]["l3"] == ("v1", "b", None)
    assert st["votes"]["l2"][2] == "l3"
    assert st["votes"]["l1"][2] is not None
    assert {c: n for c, n in st["tallies"].items() if n} == {"a": 1, "b": 1}
    assert st["rejections"] == {}

    st = harness.invariants(maxv, [m1, m2, m3])
    assert st["rejections"] == {("m2", "v1", "c"): "voter_already_voted"}
    assert {c: n for c, n in st["tallies"].items() if n} == {"a": 1, "b": 1}

    assert svc.stop() == 0
    for el in (first, last, maxv):
        report = harness.verify(env, el)
        assert report["ok"] and report["missing"] == 0 and report["tally_mismatches"] == {}
        assert report["offset_lag"] == 0


def test_poison_message_between_good_ones(harness: Harness) -> None:
    topic = harness.topic(1)
    dlq = harness.topic(1, prefix="dlq")
    el = harness.election(("a", "b"))
    good1 = make_event(el, "p1", "a")
    bad_version = VoteEvent(9, "bv", el, "p2", "a", int(time.time() * 1e6), "gw")
    unknown = make_event("no-such-election", "p3", "a", vote_id="ue")
    good2 = make_event(el, "p4", "b")
    # PostgreSQL text cannot hold a NUL: looking this one up by its ids must not fail the
    # batch over and over and stop the partition.
    nul = make_event(el, "p5\x00", "a", vote_id="nul")
    harness.producer.send(
        topic, [good1, b"\xc1garbage", bad_version, unknown, nul, good2], partition=0
    )
    port = free_port()
    env = harness.env(topic, dlq_topic=dlq, metrics_port=str(port))
    svc = harness.start(env)
    harness.drain(topic, [svc])

    st = harness.invariants(el, [good1, good2])
    # An unknown schema version is malformed: rejected under its Kafka position.
    assert st["rejections"] == {}
    with psycopg.connect(harness.pg_dsn) as conn:
        other = conn.execute(
            "SELECT election_id, vote_id, reason, kafka_offset FROM vote_rejections"
            " WHERE election_id IN ('', 'no-such-election') AND vote_id IN (%s, %s, %s, 'ue')"
            " ORDER BY kafka_offset",
            (f"kafka:{topic}:0:1", f"kafka:{topic}:0:2", f"kafka:{topic}:0:4"),
        ).fetchall()
    assert other == [
        ("", f"kafka:{topic}:0:1", "malformed", 1),
        ("", f"kafka:{topic}:0:2", "malformed", 2),
        ("no-such-election", "ue", "unknown_election", 3),
        ("", f"kafka:{topic}:0:4", "malformed", 4),
    ]
    # The four poison messages are on the dead-letter topic, with where they came from.
    c = Consumer(
        {"bootstrap.servers": harness.kafka_bootstrap, "group.id": f"dlq-{uuid.uuid4().hex}"}
    )
    try:
        c.assign([TopicPartition(dlq, 0, 0)])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 4 and time.monotonic() < deadline:
            got += [m for m in c.consume(10, timeout=1.0) if m.error() is None]
    finally:
        c.close()
    sources = sorted(dict(m.headers())["source"].decode() for m in got)
    assert sources == [f"{topic}:0:1", f"{topic}:0:2", f"{topic}:0:3", f"{topic}:0:4"]

    def scrape() -> str:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()

    # The process's members join one after another, and each rebalance drops the gauge of
    # a partition that changes hands until its new owner has the partition's watermarks
    # (within ~1 s): wait for it rather than catch that moment.
    lag = 'vote_consumer_lag{partition="0"} 0.0'
    wait_until("the lag gauge of partition 0", lambda: lag in scrape(), 30, scrape)
    body = scrape()
    assert 'vote_rows_total{outcome="counted"} 2.0' in body
    assert 'vote_rows_total{outcome="malformed"} 3.0' in body
    assert "vote_ack_to_count_seconds_count" in body
    assert svc.stop() == 0
    assert harness.verify(env, el)["ok"]


def _crafted_load(el: str, voters: int, revote_every: int = 10) -> list[VoteEvent]:
    """Votes of `voters` voters, ~5 % Kafka duplicates and some second votes."""
    out: list[VoteEvent] = []
    for i in range(voters):
        ev = make_event(el, f"voter-{i}", "abc"[i % 3])
        out.append(ev)
        if i % 20 == 0:
            out.append(ev)  # duplicate from a producer retry
        if i % revote_every == 0:
            out.append(make_event(el, f"voter-{i}", "abc"[(i + 1) % 3]))
    return out


@pytest.mark.parametrize("crash_at", ["before_copy", "after_copy", "after_commit"])
@pytest.mark.parametrize("policy_text", ["first_wins", "last_wins"])
def test_kill_9_and_restart(crash_at: str, policy_text: str, harness: Harness) -> None:
    topic = harness.topic(4)
    el = harness.election(("a", "b", "c"), policy_text)
    events = _crafted_load(el, 3000)
    harness.producer.send(topic, events)
    # Small batches so the crash hits the middle of the backlog. One member: the failpoint
    # counts the passes of the whole process, and the bounds below are per member.
    env = harness.env(
        topic,
        batch_max_messages="300",
        batch_min_messages="100",
        members="1",
        lookup="state",
    )
    crashing = harness.start({**env, "VOTE_FAILPOINTS": f"processor.{crash_at}=kill@3"})
    assert crashing.proc.wait(300) == -9, crashing.log()
    before = harness.stored_offsets(topic)
    with psycopg.connect(harness.pg_dsn) as conn:
        stored_votes = conn.execute(
            "SELECT count(*) FROM votes WHERE election_id = %s", (el,)
        ).fetchone()[0]
    # before_copy / after_copy: batch 3 never got in or was rolled back, two batches are
    # in; after_commit: three are.
    batches_in = 3 if crash_at == "after_commit" else 2
    assert 0 < sum(before.values()) <= batches_in * 300
    assert stored_votes <= sum(before.values())

    svc = harness.start(env)
    harness.drain(topic, [svc])
    harness.invariants(el, events)
    assert svc.stop() == 0
    # Both lives answered their lookups from a state loaded from PostgreSQL.
    assert "partition state loaded" in crashing.log()
    assert "partition state loaded" in svc.log()
    report = harness.verify(env, el)
    assert report["ok"], report
    assert report["kafka_distinct_vote_ids"] == len({e.vote_id for e in events})


@pytest.mark.parametrize("lookup", ["state", "postgres"])
def test_rebalance_two_processors_mid_load(harness: Harness, lookup: str) -> None:
    topic = harness.topic(6)
    el = harness.election(("a", "b", "c"), "last_wins")
    events = _crafted_load(el, 12000, revote_every=7)
    chunks = [events[i : i + 1000] for i in range(0, len(events), 1000)]
    env = harness.env(topic, batch_max_messages="500", batch_min_messages="100", lookup=lookup)

    def feed() -> None:
        own = type(harness.producer)(harness.kafka_bootstrap, harness.producer.signer)
        for chunk in chunks:
            own.send(topic, chunk)
            time.sleep(0.15)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        # Each step waits for the group to settle rather than for a fixed time: on a
        # starved machine a processor can take many seconds just to start.
        p1 = harness.start(env)
        wait_for_log(p1, "partitions assigned", 1)
        p2 = harness.start(env)  # joins: partitions are split
        wait_for_log(p2, "partitions assigned", 1)
        assert p1.stop() == 0  # leaves mid-load: p2 takes everything
        p3 = harness.start(env)
        wait_for_log(p3, "partitions assigned", 1)
        p2.kill()  # and one dies without leaving the group
    finally:
        feeder.join()
    harness.drain(topic, [p3], timeout=180)
    harness.invariants(el, events)
    logs = p1.log() + p2.log() + p3.log()
    assert logs.count("partitions assigned") >= 3
    # The state path reloads what the others committed each time partitions move.
    loads = logs.count("partition state loaded")
    assert loads >= 3 if lookup == "state" else loads == 0
    assert p3.stop() == 0
    report = harness.verify(env, el)
    assert report["ok"], report


def test_redis_flushed_mid_run_heals_and_rebuilds(harness: Harness) -> None:
    from processor.cache import TallyCache

    topic = harness.topic(2)
    el = harness.election(("a", "b", "c"), "first_wins")
    env = harness.env(topic)
    svc = harness.start(env)
    first = _crafted_load(el, 1000)
    harness.producer.send(topic, first)
    harness.drain(topic, [svc])
    harness.invariants(el, first)

    # "Flush": every key of this election disappears (FLUSHDB would hit other users
    # of the shared Redis; the processor sees exactly the same state for this election).
    cache = TallyCache(harness.redis_url)
    cache.delete(el)
    assert not cache.client.exists(f"tally:{el}")
    # The next batch notices the missing keys and writes the whole election.
    second = _crafted_load(el, 200)
    harness.producer.send(topic, second)
    harness.drain(topic, [svc])
    harness.invariants(el, first + second)

    # With the processor stopped nothing heals by itself: rebuild-cache does.
    assert svc.stop() == 0
    cache.delete(el)
    rc, out = harness.cli(env, "rebuild-cache", "--election", el)
    assert rc == 0, out
    harness.invariants(el, first + second)
    # Garbage in Redis: --force replaces it.
    cache.client.hset(f"tally:{el}", "a", 999999)
    rc, out = harness.cli(env, "rebuild-cache", "--election", el, "--force")
    assert rc == 0, out
    harness.invariants(el, first + second)
    cache.close()
    assert harness.verify(env, el)["ok"]


def test_verify_fails_when_something_is_missing(harness: Harness) -> None:
    topic = harness.topic(1)
    el = harness.election(("a", "b"))
    harness.producer.send(topic, [make_event(el, "x", "a")])
    env = harness.env(topic)
    report = harness.verify(env, el)
    assert not report["ok"]
    assert report["missing"] == 1 and report["offset_lag"] == 1


def test_print_config_masks_secrets(harness: Harness) -> None:
    rc, out = harness.cli({}, "--print-config")
    assert rc == 0
    cfg = json.loads(out)
    assert cfg["VOTE_PROCESSOR_GROUP"] == "vote-processor"
    assert "vote:vote@" not in cfg["VOTE_PG_DSN"]


def test_offsets_of_a_recreated_topic_do_not_skip_its_first_messages(harness: Harness) -> None:
    """PostgreSQL remembers offsets of an older incarnation of the topic (the broker's data
    was wiped, or the topic deleted and created again): those offsets lie beyond the new
    log's end. The processor must read the new log from its start, not skip to them."""
    topic = harness.topic(2)
    el = harness.election(("a", "b", "c"), "first_wins")
    with psycopg.connect(harness.pg_dsn, autocommit=True) as conn:
        for partition in (0, 1):
            conn.execute(
                "INSERT INTO consumer_offsets (consumer_group, topic, partition, next_offset)"
                " VALUES (%s, %s, %s, 5000)",
                (harness.group, topic, partition),
            )
    events = _crafted_load(el, 300)
    harness.producer.send(topic, events)
    svc = harness.start(harness.env(topic))
    harness.drain(topic, [svc])
    harness.invariants(el, events)
    assert "stored offsets are beyond the log end" in svc.log()
    assert svc.stop() == 0


def _log_records(log: str) -> Iterator[dict]:
    """The JSON records of a processor's log (tracebacks and other lines skipped)."""
    for line in log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            yield rec


def member_partitions(log: str) -> dict[int, set[int]]:
    """Every partition each member of a process was ever assigned, from its JSON log."""
    out: dict[int, set[int]] = {}
    for rec in _log_records(log):
        if rec.get("msg") == "partitions assigned":
            out.setdefault(rec["member"], set()).update(rec["partitions"])
    return out


def test_two_members_in_one_process(harness: Harness) -> None:
    """One process, two consumer-group members: the partitions are split between them
    and the result is the same as with one."""
    topic = harness.topic(6)
    el = harness.election(("a", "b", "c"), "first_wins")
    events = _crafted_load(el, 6000, revote_every=5)
    # Small batches, and half the load only once both members are in: member 0 joins
    # first and takes everything until member 1's join rebalances the group.
    env = harness.env(topic, members="2", batch_max_messages="500", batch_min_messages="100")
    harness.producer.send(topic, events[: len(events) // 2])
    svc = harness.start(env)

    def both_assigned() -> bool:
        assert svc.proc.poll() is None, svc.log()
        return len(member_partitions(svc.log())) == 2

    wait_until("both members assigned", both_assigned, 120, svc.log)
    harness.producer.send(topic, events[len(events) // 2 :])
    harness.drain(topic, [svc])
    harness.invariants(el, events)
    # The last assignment of each member: disjoint, and all six partitions between them.
    held = {m: set(ps) for m, ps in _current_assignment(svc.log()).items()}
    assert held.keys() == {0, 1} and all(held.values()), held
    assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(6))
    assert svc.stop() == 0
    assert svc.log().count('"processor stopped"') == 2
    report = harness.verify(env, el)
    assert report["ok"], report
    assert report["kafka_distinct_vote_ids"] == len({e.vote_id for e in events})


def _current_assignment(log: str) -> dict[int, dict[int, int]]:
    """Each member's current partitions with the stored offset it started them at."""
    held: dict[int, dict[int, int]] = {}
    for rec in _log_records(log):
        if rec.get("msg") == "partitions assigned":
            offsets = {int(p): o for p, o in rec["offsets"].items()}
            held[rec["member"]] = {p: offsets.get(p, 0) for p in rec["partitions"]}
        elif rec.get("msg") in ("partitions revoked", "partitions lost"):
            held.pop(rec["member"], None)
    return held


def test_sigterm_stops_both_members_mid_load_then_restart(harness: Harness) -> None:
    """SIGTERM while both members are mid-backlog: each finishes its batch and leaves
    the group, the process exits 0, and a restarted process finishes the work."""
    topic = harness.topic(6)
    el = harness.election(("a", "b", "c"), "first_wins")
    events = _crafted_load(el, 50000, revote_every=5)
    env = harness.env(topic, members="2", batch_max_messages="200", batch_min_messages="100")
    # The backlog only once both members are in: member 0 joins first and would drain
    # a backlog alone until member 1's join rebalances the group.
    harness.producer.send(topic, events[:1000])
    first = harness.start(env)
    wait_until("both members", lambda: len(_current_assignment(first.log())) == 2, 120, first.log)
    harness.producer.send(topic, events[1000:])

    def both_committing() -> bool:
        assert first.proc.poll() is None, first.log()
        held = _current_assignment(first.log())
        stored = harness.stored_offsets(topic)
        # Each member has committed a batch since it was assigned its partitions.
        return len(held) == 2 and all(
            any(stored.get(p, 0) > o for p, o in ps.items()) for ps in held.values()
        )

    wait_until("both members assigned and committing", both_committing, 120, first.log)
    assert first.stop() == 0, first.log()
    log = first.log()
    assert log.count('"processor stopped"') == 2, log
    ends = harness.end_offsets(topic)
    assert sum(harness.stored_offsets(topic).values()) < sum(ends.values()), (
        "drained before SIGTERM: not a mid-load stop"
    )
    # Nothing stored beyond the offsets the stopped process committed.
    with psycopg.connect(harness.pg_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM votes WHERE election_id = %s", (el,)).fetchone()
    assert row[0] <= sum(harness.stored_offsets(topic).values())

    second = harness.start(env)
    harness.drain(topic, [second])
    harness.invariants(el, events)
    assert second.stop() == 0
    report = harness.verify(env, el)
    assert report["ok"], report
    assert report["kafka_distinct_vote_ids"] == len({e.vote_id for e in events})
