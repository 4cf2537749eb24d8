"""What a processor does for its region beside counting (docs/ARCHITECTURE.md, "Regions").

Every region runs its own Kafka cluster and processors; MirrorMaker 2 copies each
region's ``votes.v1`` into the others (``A.votes.v1`` in B), and all regions write to one
PostgreSQL primary. ``RegionWatch`` runs in one thread of every regional processor and,
once a second:

* writes this region's heartbeat (``processor_heartbeats``) on the primary;
* reads the heartbeats of the regions it may take over (``processor_takeover``). When one
  has been stale for ``processor_takeover_after_s`` and has not moved for
  ``processor_takeover_confirm_s`` of our own checks, that region is lost: a
  ``Takeover`` member starts counting its mirrored topic here, and stops when the
  region's heartbeat moves again. Counting a vote in two places is harmless (votes are
  deduplicated by vote_id under the batch fence), so the only cost of a wrong guess, a
  partition between regions say, is work done twice;
* copies the other clusters' tally shards from PostgreSQL into this region's Redis, so
  the results served in every region converge to the global tally.

Where a takeover starts, per partition of ``<region>.votes.v1``: the translated offset
of the lost region's last MirrorMaker 2 checkpoint for the ``vote-processor`` group (its
processors commit to Kafka after each batch for this), or, without a checkpoint, the
offset of the lost region's last heartbeat minus ``processor_takeover_margin_s``; never
the start of the topic. Whichever it is, a position a previous takeover already stored
further on wins. What the lost region acknowledged but MirrorMaker had not copied is not
here at all: it waits in that region's own log and is counted when the region returns.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
from collections.abc import Callable

import msgspec
import psycopg
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from core.jsonlog import FieldsAdapter
from processor import metrics
from processor.cache import TallyCache, TallyPublisher
from processor.consumer import Processor
from processor.settings import ProcessorSettings
from processor.store import ShardTally, group_by_election, shard_tallies

log = logging.getLogger("processor.regions")

_TICK_S = 1.0
_OFFSET_TAIL_1 = -2001  # RD_KAFKA_OFFSET_TAIL(1): the last record of a partition
_int16 = struct.Struct("!h")
_int32 = struct.Struct("!i")
_int64 = struct.Struct("!q")


class CheckpointFormatError(ValueError):
    """A record of a checkpoints topic is not a MirrorMaker 2 checkpoint (version 0)."""


def _string(buf: bytes, at: int) -> tuple[str, int]:
    (n,) = _int16.unpack_from(buf, at)
    at += 2
    if n < 0 or at + n > len(buf):
        raise CheckpointFormatError("bad string length")
    return buf[at : at + n].decode(), at + n


def parse_checkpoint(key: bytes, value: bytes) -> tuple[str, str, int, int, int]:
    """``(group, topic, partition, upstream_offset, downstream_offset)`` of one record of
    MirrorMaker 2's ``<source>.checkpoints.internal`` topic.

    The layout is Kafka's protocol ``Struct`` encoding of
    ``org.apache.kafka.connect.mirror.Checkpoint``: key ``group, topic`` (int16-length
    strings), ``partition`` (int32); value: a version (int16, 0), ``upstreamOffset`` and
    ``offset`` (int64), ``metadata`` (string). ``topic`` is the downstream (renamed) one.
    """
    try:
        group, at = _string(key, 0)
        topic, at = _string(key, at)
        (partition,) = _int32.unpack_from(key, at)
        (version,) = _int16.unpack_from(value, 0)
        if version != 0:
            raise CheckpointFormatError(f"checkpoint version {version}")
        (upstream,) = _int64.unpack_from(value, 2)
        (downstream,) = _int64.unpack_from(value, 10)
    except (struct.error, UnicodeDecodeError) as exc:
        raise CheckpointFormatError(str(exc)) from exc
    return group, topic, partition, upstream, downstream


def read_checkpoints(
    bootstrap: str,
    source: str,
    group: str,
    topic: str,
    timeout_s: float = 15.0,
    security: dict[str, str] | None = None,
) -> dict[int, int]:
    """Latest downstream offset per partition of ``topic`` (the mirrored one, e.g.
    ``A.votes.v1``) that the checkpoints of ``group`` from ``source`` translate to; what
    ``RemoteClusterUtils.translateOffsets`` returns, read without a JVM. Empty when the
    checkpoints topic does not exist or holds nothing for them."""
    name = f"{source}.checkpoints.internal"
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{group}.checkpoint-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            **(security or {}),
        }
    )
    found: dict[int, int] = {}
    try:
        md = consumer.list_topics(name, timeout=timeout_s)
        meta = md.topics.get(name)
        if meta is None or meta.error is not None or not meta.partitions:
            return found
        ends: dict[int, int] = {}
        for p in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)
            if high > low:
                ends[p] = high
        if not ends:
            return found
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            p = msg.partition()
            if msg.error() is None and msg.key() is not None and msg.value() is not None:
                with contextlib.suppress(CheckpointFormatError):
                    g, t, part, _up, down = parse_checkpoint(msg.key(), msg.value())
                    if g == group and t == topic:
                        found[part] = down  # later records supersede earlier ones
            if msg.error() is not None or msg.offset() + 1 >= ends.get(p, 0):
                ends.pop(p, None)
    finally:
        consumer.close()
    return found


class Takeover(Processor):
    """A member that counts a lost region's mirrored topic in this region's cluster.

    Its offsets are stored like any member's, under its own group
    (``<group>.takeover``) and this region's cluster, so it never touches the lost
    region's own positions, which that region resumes from when it returns.
    """

    def __init__(
        self,
        settings: ProcessorSettings,
        source: str,
        last_seen_unix: Callable[[], float | None],
        member: int,
    ) -> None:
        self.source = source
        self.mirrored = f"{source}.{settings.vote_topic}"
        self._source_group = settings.processor_group
        self._last_seen_unix = last_seen_unix
        super().__init__(
            msgspec.structs.replace(
                settings,
                processor_topic=self.mirrored,
                processor_group=f"{settings.processor_group}.takeover",
            ),
            member,
        )

    def _before_assign(self, consumer: Consumer, partitions: list[int]) -> None:
        try:
            checkpoints = read_checkpoints(
                self.s.kafka_bootstrap,
                self.source,
                self._source_group,
                self.mirrored,
                security=self.s.kafka_client_config(),
            )
        except KafkaException as exc:
            self.log.warning("no checkpoints", extra={"error": str(exc)})
            checkpoints = {}
        stored = self._retry_db(lambda: self.store.stored_offsets(partitions))
        missing = [p for p in partitions if p not in checkpoints]
        by_time = self._offsets_at_last_seen(consumer, missing) if missing else {}
        start = {}
        for p in partitions:
            at = checkpoints.get(p, by_time.get(p))
            if at is None:
                continue  # no bound known: stays where a previous takeover stored it
            start[p] = max(at, stored.get(p, -1))
        if start:
            self._retry_db(lambda: self.store.start_offsets(start))
        self.log.warning(
            "taking over a lost region's mirrored topic",
            extra={
                "region": self.source,
                "topic": self.mirrored,
                "start": start,
                "from_checkpoint": sorted(set(checkpoints) & set(partitions)),
            },
        )

    def _offsets_at_last_seen(self, consumer: Consumer, partitions: list[int]) -> dict[int, int]:
        """Offsets of the first record at or after (last heartbeat - margin)."""
        seen = self._last_seen_unix() or time.time()
        at_ms = int((seen - self.s.processor_takeover_margin_s) * 1000)
        try:
            found = consumer.offsets_for_times(
                [TopicPartition(self.mirrored, p, at_ms) for p in partitions], timeout=30
            )
        except KafkaException as exc:
            self.log.warning("offsets_for_times failed", extra={"error": str(exc)})
            return {}
        out: dict[int, int] = {}
        for tp in found:
            if tp.error is not None:
                continue
            if tp.offset >= 0:
                out[tp.partition] = tp.offset
            else:  # nothing that recent: start at the log end
                with contextlib.suppress(KafkaException):
                    _low, high = consumer.get_watermark_offsets(
                        TopicPartition(self.mirrored, tp.partition), timeout=30
                    )
                    out[tp.partition] = high
        return out


class RegionWatch:
    """Heartbeat, takeover decisions and the other regions' tallies, in one thread."""

    def __init__(
        self,
        settings: ProcessorSettings,
        takeover_factory: Callable[..., Processor] = Takeover,
    ) -> None:
        self.s = settings
        self.region = settings.processor_cluster
        self.log = FieldsAdapter(log, {"region": self.region})
        self._factory = takeover_factory
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        # The other clusters' shards go through the members' writer (stale elections are
        # written in full from PostgreSQL at the next sync).
        self._tallies = TallyPublisher(
            TallyCache(settings.redis_url),
            lambda eid: shard_tallies(self._connection(), eid),
            self.log,
        )
        # per source region: (heartbeat value last seen, monotonic time it was first seen)
        self._seen: dict[str, tuple[float, float]] = {}
        self._last_seen_unix: dict[str, float] = {}
        self._takeovers: dict[str, tuple[Processor, threading.Thread]] = {}
        self._synced_at = 0.0
        self._heartbeats: Consumer | None = None
        self._mirror_seen_ms: dict[str, int] = {}
        self._thread = threading.Thread(target=self.run, name="region-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def taking_over(self) -> list[str]:
        return sorted(self._takeovers)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except (psycopg.Error, OSError) as exc:
                self.log.warning("region watch: database unavailable", extra={"error": repr(exc)})
                self._close_conn()
            except KafkaException as exc:
                self.log.warning("region watch: kafka unavailable", extra={"error": repr(exc)})
            except Exception:  # never let the watch die while the members count
                self.log.exception("region watch failed a tick")
            self._stop.wait(_TICK_S)
        for source in list(self._takeovers):
            self._end_takeover(source)
        self._close_conn()
        self._tallies.close()
        if self._heartbeats is not None:
            self._heartbeats.close()

    def tick(self) -> None:
        conn = self._connection()
        rows = conn.execute(
            "INSERT INTO processor_heartbeats (cluster, consumer_group, seen_at)"
            " VALUES (%s, %s, now())"
            " ON CONFLICT (cluster, consumer_group) DO UPDATE SET seen_at = now()"
            " RETURNING extract(epoch FROM now())::float8",
            (self.region, self.s.processor_group),
        ).fetchall()
        now_db = rows[0][0]
        beats = dict(
            conn.execute(
                "SELECT cluster, extract(epoch FROM seen_at)::float8 FROM processor_heartbeats"
                " WHERE consumer_group = %s AND cluster = ANY(%s)",
                (self.s.processor_group, self.s.takeover_regions),
            ).fetchall()
        )
        for source in self.s.takeover_regions:
            self._decide(source, beats.get(source), now_db)
        self._reap()
        if time.monotonic() - self._synced_at >= self.s.processor_region_sync_ms / 1000:
            self._sync_tallies(conn)
            self._synced_at = time.monotonic()
        # Observations only: without the pg_monitor role, or with the mirror's heartbeats
        # topic missing, the duties above must go on.
        try:
            self._observe_postgres(conn)
        except psycopg.errors.InsufficientPrivilege as exc:
            self.log.debug("no replication view", extra={"error": str(exc)})
        self._observe_mirror()

    def _decide(self, source: str, seen: float | None, now_db: float) -> None:
        if seen is None:
            return  # that region never ran here: nothing of it to take over
        self._last_seen_unix[source] = seen
        age = now_db - seen
        metrics.REGION_HEARTBEAT_AGE.labels(source).set(max(0.0, age))
        mono = time.monotonic()
        prev = self._seen.get(source)
        if prev is None or prev[0] != seen:
            self._seen[source] = (seen, mono)
            unmoved_for = 0.0
        else:
            unmoved_for = mono - prev[1]
        lost = (
            age >= self.s.processor_takeover_after_s
            and unmoved_for >= self.s.processor_takeover_confirm_s
        )
        if lost and source not in self._takeovers:
            self._begin_takeover(source, age)
        elif not lost and age < self.s.processor_takeover_after_s and source in self._takeovers:
            self.log.warning(
                "region is back: handing its mirrored topic back", extra={"source": source}
            )
            self._end_takeover(source)

    def _begin_takeover(self, source: str, age: float) -> None:
        self.log.warning(
            "region lost: taking over its mirrored topic",
            extra={"source": source, "heartbeat_age_s": round(age, 1)},
        )
        member = 100 + len(self._takeovers)
        proc = self._factory(self.s, source, lambda: self._last_seen_unix.get(source), member)
        thread = threading.Thread(target=self._run_takeover, args=(source, proc), daemon=True)
        self._takeovers[source] = (proc, thread)
        metrics.REGION_TAKEOVER.labels(source).set(1)
        metrics.REGION_TAKEOVERS.labels(source).inc()
        thread.start()

    def _run_takeover(self, source: str, proc: Processor) -> None:
        try:
            proc.run()
        except Exception:
            # The next tick sees the thread gone and starts another if still needed.
            self.log.exception("takeover member failed", extra={"source": source})

    def _reap(self) -> None:
        for source, (_proc, thread) in list(self._takeovers.items()):
            if not thread.is_alive():
                del self._takeovers[source]
                metrics.REGION_TAKEOVER.labels(source).set(0)

    def _end_takeover(self, source: str) -> None:
        proc, thread = self._takeovers.pop(source)
        proc.request_stop()
        thread.join(timeout=60)
        metrics.REGION_TAKEOVER.labels(source).set(0)

    def _observe_postgres(self, conn: psycopg.Connection) -> None:
        """Timeline (a failover moves it), synchronous standbys and their lag, for alerts.
        pg_stat_replication needs the pg_monitor role (deploy/README.md)."""
        (timeline,) = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()
        metrics.PG_TIMELINE.set(timeline)
        rows = conn.execute(
            "SELECT application_name, sync_state,"
            "  pg_wal_lsn_diff(pg_current_wal_lsn(), coalesce(replay_lsn, '0/0'))::float8"
            " FROM pg_stat_replication"
        ).fetchall()
        metrics.PG_SYNC_STANDBYS.set(sum(1 for _, st, _ in rows if st in ("sync", "quorum")))
        for name, _state, lag in rows:
            metrics.PG_REPLICATION_LAG_BYTES.labels(name).set(lag or 0.0)

    def _observe_mirror(self) -> None:
        """The newest MirrorMaker heartbeat from each source region, in our cluster.

        MirrorMaker 2 writes a heartbeat into each source cluster every second and copies
        it like any record (``<source>.heartbeats`` here), keeping its timestamp: its age
        is how far behind the mirror is, and it keeps growing while the mirror is down."""
        if self._heartbeats is None:
            self._heartbeats = Consumer(
                {
                    "bootstrap.servers": self.s.kafka_bootstrap,
                    "group.id": f"{self.s.processor_group}.mirror-heartbeats",
                    "enable.auto.commit": False,
                }
            )
            wanted = []
            for source in self.s.takeover_regions:
                topic = f"{source}.heartbeats"
                md = self._heartbeats.list_topics(topic, timeout=5)
                meta = md.topics.get(topic)
                if meta is None or meta.error is not None:
                    continue
                # The last record of each partition (librdkafka's OFFSET_TAIL(1)).
                wanted += [TopicPartition(topic, p, _OFFSET_TAIL_1) for p in meta.partitions]
            if not wanted:
                self._heartbeats.close()
                self._heartbeats = None
                return
            self._heartbeats.assign(wanted)
        for msg in self._heartbeats.consume(num_messages=1000, timeout=0.05):
            if msg.error() is not None:
                continue
            source = msg.topic().rsplit(".heartbeats", 1)[0]
            _kind, ts = msg.timestamp()
            self._mirror_seen_ms[source] = max(self._mirror_seen_ms.get(source, 0), ts)
        now_ms = time.time() * 1000
        for source, ts in self._mirror_seen_ms.items():
            metrics.MIRROR_HEARTBEAT_AGE.labels(source).set(max(0.0, (now_ms - ts) / 1000))

    def _sync_tallies(self, conn: psycopg.Connection) -> None:
        """The other clusters' shards into our Redis (absolute, versioned: see cache.py)."""
        rows = conn.execute(
            "SELECT election_id, candidate_id, topic, kafka_partition, votes, as_of_offset,"
            "  cluster FROM tallies WHERE cluster <> %s",
            (self.region,),
        ).fetchall()
        for eid, shards in group_by_election([ShardTally(*r) for r in rows]).items():
            if not self._tallies.write(eid, shards):
                return  # Redis is down: don't wait out its timeout for every election

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.s.pg_dsn, autocommit=True, application_name="vote-processor-regions"
            )
        return self._conn

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
