"""The processor's configuration: one typed object read from ``VOTE_*`` variables."""

from __future__ import annotations

import os

from core.event import DLQ_TOPIC, TOPIC
from core.kafka_security import KafkaSecurity


class ProcessorSettings(KafkaSecurity, frozen=True, kw_only=True):
    # KafkaSecurity: the VOTE_KAFKA_* TLS/SASL settings of the consumer and the DLQ producer.
    kafka_bootstrap: str = "127.0.0.1:19092"
    pg_dsn: str = "postgresql://vote:vote@127.0.0.1:15432/vote"
    redis_url: str = "redis://127.0.0.1:16379/0"
    # Set by `deploy/local/stack env`; the pid file lets `stack down` stop us.
    stack_dir: str = ""
    # The vote topic, read from VOTE_TOPIC like the gateway's, so one variable moves
    # both; VOTE_PROCESSOR_TOPIC, when set, overrides it for the processor alone. Read
    # it through ``vote_topic``.
    topic: str = TOPIC
    processor_topic: str = ""
    processor_dlq_topic: str = DLQ_TOPIC
    processor_group: str = "vote-processor"
    # Consumer-group members run by this one process, each in its own thread with its
    # own Kafka consumer, PostgreSQL connection and Redis client. One member's database
    # wait (psycopg releases the GIL) overlaps another's Python work. 2 was the fastest
    # of 1-3 (bench/README.md); give the topic at least replicas x members partitions,
    # or the extra members sit idle.
    processor_members: int = 2
    # A batch closes at whichever bound is hit first. The count bound adapts between
    # processor_batch_min_messages and processor_batch_max_messages so that one batch
    # takes about processor_batch_target_ms in the database.
    processor_batch_max_messages: int = 20_000
    processor_batch_min_messages: int = 500
    processor_batch_max_bytes: int = 8 * 1024 * 1024
    # The time bound decides the batch size at moderate rates, and every batch has a
    # fixed cost in PostgreSQL: fewer, larger batches save CPU per vote while results
    # still show a vote well within a second (bench/README.md has the trade-off).
    processor_batch_max_ms: int = 250
    processor_batch_target_ms: int = 400
    # Batches with fewer messages than this look their keys up with array
    # parameters and touch no temporary table (processor.lookup.LOOKUP_THRESHOLD says
    # why); 0 sends every batch through the staged path.
    processor_lookup_threshold: int = 4000
    # Where a batch's lookups are answered: "state", each member's local copy of what
    # PostgreSQL committed for its partitions (processor/state.py), loaded on assignment,
    # so a batch sends no lookup query; "postgres", queries on every batch (the paths
    # above). processor_state_dir holds the state's files ("": the temp directory).
    processor_lookup: str = "state"
    processor_state_dir: str = ""
    # Regions (docs/ARCHITECTURE.md, "Regions"). processor_cluster names the Kafka
    # cluster this processor reads (its region, e.g. "A"); offsets and tally shards are
    # keyed by it. "" is a single-region deployment: no heartbeat, no takeover.
    processor_cluster: str = ""
    # Regions whose mirrored topic ("<region>.<topic>", copied here by MirrorMaker 2)
    # this processor takes over while that region's processors are gone, comma-separated.
    processor_takeover: str = ""
    # A region is taken over once its heartbeat in PostgreSQL is this old and has not
    # moved for processor_takeover_confirm_s of our own successful checks (a PostgreSQL
    # failover stalls every region's heartbeat for a while; that is not a region loss).
    processor_takeover_after_s: float = 10.0
    processor_takeover_confirm_s: float = 3.0
    # Without a MirrorMaker checkpoint, a takeover starts at the lost region's last
    # heartbeat minus this margin (never at the start of the topic).
    processor_takeover_margin_s: float = 60.0
    # How often the other regions' tally shards are copied from PostgreSQL into this
    # region's Redis, so that results served in every region converge.
    processor_region_sync_ms: int = 1000
    # Written at start and removed at exit when set (the launcher may manage it instead).
    processor_pid_file: str = ""
    # 0 disables the metrics endpoint (several processors in one test).
    processor_metrics_port: int = 9101
    processor_log_level: str = "INFO"
    # The event keys the gateways sign with (gateway.admin init-keys); one variable for
    # both services. Default: <stack_dir>/keys/event_keys.json.
    event_keys_file: str = ""
    # Unsigned (schema version 1) events are unauthenticated unless this is set: only
    # while an upgrade drains what older gateways produced (docs/ARCHITECTURE.md).
    processor_accept_unsigned_events: bool = False

    @property
    def event_keys_path(self) -> str:
        if self.event_keys_file:
            return self.event_keys_file
        stack = self.stack_dir or os.path.join(os.path.dirname(os.path.dirname(__file__)), ".stack")
        return os.path.join(stack, "keys", "event_keys.json")

    @property
    def vote_topic(self) -> str:
        """The topic this processor consumes."""
        return self.processor_topic or self.topic

    @property
    def takeover_regions(self) -> list[str]:
        """The regions named by processor_takeover."""
        return [r.strip() for r in self.processor_takeover.split(",") if r.strip()]

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.processor_members < 1:
            raise ValueError("processor_members must be >= 1")
        if self.processor_lookup_threshold < 0:
            raise ValueError("processor_lookup_threshold must be >= 0")
        if self.processor_lookup not in ("state", "postgres"):
            raise ValueError("processor_lookup must be 'state' or 'postgres'")
        if self.processor_takeover and not self.processor_cluster:
            raise ValueError("processor_takeover needs processor_cluster")
        if self.processor_cluster in self.takeover_regions:
            raise ValueError("processor_takeover must not name this processor's own cluster")
        if self.processor_region_sync_ms < 100:
            raise ValueError("processor_region_sync_ms must be >= 100")
        if not 1 <= self.processor_batch_min_messages <= self.processor_batch_max_messages:
            raise ValueError(
                "need 1 <= processor_batch_min_messages <= processor_batch_max_messages"
            )
