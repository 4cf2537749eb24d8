"""Prometheus metrics of the processor (docs/ARCHITECTURE.md, Metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

BATCHES = Counter("vote_batches_total", "Batches committed to PostgreSQL")
BATCH_SECONDS = Histogram(
    "vote_batch_seconds",
    "Wall time of one batch transaction (fence, lookups, writes, commit)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram(
    "vote_batch_messages",
    "Messages per batch",
    buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 20000, 50000),
)
ROWS = Counter(
    "vote_rows_total",
    "Messages by outcome: counted, superseded, duplicate or the rejection reason",
    ["outcome"],
)
LAG = Gauge("vote_consumer_lag", "High watermark minus next offset to process", ["partition"])
COMMITS = Counter(
    "vote_db_commits_total",
    "Batch transactions by result: ok, fenced, race (vote_id taken concurrently), error",
    ["result"],
)
ACK_TO_COUNT = Histogram(
    "vote_ack_to_count_seconds",
    "From the gateway's received_at to the tally being visible in Redis (sampled)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
CACHE_ERRORS = Counter("vote_cache_errors_total", "Failed Redis tally writes")
DEAD_LETTERS = Counter("vote_dead_letters_total", "Messages sent to the dead-letter topic")
OFFSET_REWINDS = Counter(
    "vote_offset_rewinds_total",
    "Partitions re-read from their start because the stored offset was past the log end",
)

REGION_HEARTBEAT_AGE = Gauge(
    "vote_region_heartbeat_age_seconds",
    "Age of a region's processor heartbeat in PostgreSQL, as this region sees it",
    ["region"],
)
REGION_TAKEOVER = Gauge(
    "vote_region_takeover",
    "1 while this processor counts a lost region's mirrored topic",
    ["region"],
)
REGION_TAKEOVERS = Counter(
    "vote_region_takeovers_total", "Takeovers of a lost region's mirrored topic", ["region"]
)

MIRROR_HEARTBEAT_AGE = Gauge(
    "vote_mirror_heartbeat_age_seconds",
    "Age of the newest MirrorMaker 2 heartbeat copied here from a region: the mirror's lag"
    " (plus its 1 s heartbeat interval); it grows while MirrorMaker or the link is down",
    ["source"],
)
PG_TIMELINE = Gauge(
    "vote_pg_timeline", "Timeline of the PostgreSQL primary; a failover increments it"
)
PG_SYNC_STANDBYS = Gauge(
    "vote_pg_sync_standbys", "Standbys the primary currently waits for at commit (sync or quorum)"
)
PG_REPLICATION_LAG_BYTES = Gauge(
    "vote_pg_replication_lag_bytes",
    "WAL the primary has written that a standby has not yet replayed",
    ["standby"],
)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
