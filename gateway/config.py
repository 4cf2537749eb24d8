"""The gateway's settings: one typed object read from ``VOTE_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
import socket

from core import settings as _settings
from core.event import TOPIC
from core.kafka_security import KafkaSecurity

# The issuer that `python -m gateway.admin init-keys` names in issuer.json and mints with.
DEFAULT_TOKEN_ISSUER = "vote-identity"
# librdkafka's compression.type values.
KAFKA_COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")


def _default_stack_dir() -> str:
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(here, ".stack")


class GatewaySettings(KafkaSecurity, kw_only=True):
    # KafkaSecurity: the VOTE_KAFKA_* TLS/SASL settings of the producer.
    # Where the local stack keeps its data; other paths default beneath it.
    stack_dir: str = _default_stack_dir()
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic: str = TOPIC
    pg_dsn: str = "postgresql://vote:vote@127.0.0.1:15432/vote"
    redis_url: str = "redis://127.0.0.1:16379/0"

    http_host: str = "127.0.0.1"
    http_port: int = 8080
    metrics_port: int = 9100
    workers: int = 1
    # granian's own knobs (see `granian --help`): HTTP version (auto | 1 | 2), task
    # implementation (asyncio only: the body read deadline cancels the request's asyncio
    # task), runtime mode (auto | st | mt), for trying them in the bench; the defaults
    # are kept because no other setting was clearly cheaper.
    granian_http: str = "auto"
    granian_task_impl: str = "asyncio"
    granian_runtime_mode: str = "auto"
    granian_runtime_threads: int = 1
    # Identifies this gateway in events and logs; the worker's slot is appended.
    gateway_id: str = socket.gethostname()

    # Keys: the JWKS-style verification keys and the receipt-signing secret.
    jwks_file: str = ""
    receipt_key_file: str = ""
    # The event keys (core.keyset): the newest active one signs every event.
    event_keys_file: str = ""
    token_leeway_s: float = 30.0
    # The identity service's name: a token's ``iss`` must equal it.
    token_issuer: str = DEFAULT_TOKEN_ISSUER
    # Longest a token may live, both exp - iat and exp - now (plus the leeway).
    token_max_lifetime_s: float = 24 * 3600.0

    # Durability (docs/ARCHITECTURE.md, Durability path).
    spill_deadline_ms: float = 50.0
    spill_dir: str = ""
    spill_max_events: int = 2_000_000
    kafka_linger_ms: float = 2.0
    # librdkafka's compression.type for the vote events: none, gzip, snappy, lz4 or zstd.
    kafka_compression: str = "lz4"
    kafka_queue_max_messages: int = 200_000

    # Requests.
    max_body_bytes: int = 4096
    # POST .../votes:batch: votes per request; its body may be this many single bodies.
    batch_max_votes: int = 100
    rate_ip_per_s: float = 2000.0
    rate_ip_burst: float = 4000.0
    rate_voter_per_s: float = 2.0
    rate_voter_burst: float = 10.0
    rate_limiter_capacity: int = 1_000_000
    idempotency_capacity: int = 1_000_000
    election_refresh_s: float = 2.0
    # Made-up election ids: how many are remembered as unknown, how many looked up at once.
    election_negative_ttl_s: float = 1.0
    election_negative_capacity: int = 100_000
    election_max_lookups: int = 4
    log_level: str = "INFO"
    # The worker's cyclic collector runs a young-generation pass after this many more
    # container objects allocated than freed. Every request makes a few dozen, and under
    # load each pass also walks the requests still in flight: 10,000 instead of Python's
    # 700 cost 4-16 % less CPU per vote in all six interleaved rounds (bench/README.md).
    gc_young_threshold: int = 10_000

    # Slow and greedy clients (SECURITY.md). The header deadline, header size and
    # connections per worker are granian's (HTTP/1 header_read_timeout and buffer size,
    # HTTP/2 max header list size, backpressure); the rest are the app's.
    header_read_timeout_ms: int = 5_000
    max_header_bytes: int = 16_384
    max_connections_per_worker: int = 4_096
    body_read_timeout_s: float = 5.0
    max_in_flight: int = 4_096
    max_in_flight_per_client: int = 256
    max_streams: int = 10_000
    max_streams_per_client: int = 8
    # Reverse proxies whose Forwarded / X-Forwarded-For are believed: comma-separated
    # CIDRs. Empty: the peer address is the client.
    trusted_proxies: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.jwks_file:
            self.jwks_file = os.path.join(self.stack_dir, "keys", "jwks.json")
        if not self.event_keys_file:
            self.event_keys_file = os.path.join(self.stack_dir, "keys", "event_keys.json")
        if not self.receipt_key_file:
            self.receipt_key_file = os.path.join(self.stack_dir, "keys", "receipt.key")
        if not self.spill_dir:
            self.spill_dir = os.path.join(self.stack_dir, "spill")
        if self.workers < 1:
            raise ValueError("VOTE_WORKERS must be >= 1")
        if self.spill_deadline_ms <= 0:
            raise ValueError("VOTE_SPILL_DEADLINE_MS must be > 0")
        if not self.token_issuer:
            raise ValueError("VOTE_TOKEN_ISSUER must name the identity service")
        if self.token_max_lifetime_s <= 0:
            raise ValueError("VOTE_TOKEN_MAX_LIFETIME_S must be > 0")
        if self.max_header_bytes < 8192:
            raise ValueError("VOTE_MAX_HEADER_BYTES must be >= 8192 (hyper's smallest buffer)")
        if not 1 <= self.header_read_timeout_ms <= 60_000:
            raise ValueError("VOTE_HEADER_READ_TIMEOUT_MS must be within 1..60000")
        if self.body_read_timeout_s <= 0:
            raise ValueError("VOTE_BODY_READ_TIMEOUT_S must be > 0")
        if self.granian_task_impl != "asyncio":
            raise ValueError("VOTE_GRANIAN_TASK_IMPL must be asyncio (the body deadline)")
        for cidr in filter(None, (c.strip() for c in self.trusted_proxies.split(","))):
            ipaddress.ip_network(cidr, strict=False)  # ValueError names the bad one
        if self.kafka_compression not in KAFKA_COMPRESSIONS:
            raise ValueError(
                f"VOTE_KAFKA_COMPRESSION must be one of {', '.join(KAFKA_COMPRESSIONS)}"
            )
        if self.gc_young_threshold < 1:
            raise ValueError("VOTE_GC_YOUNG_THRESHOLD must be >= 1")
        if self.batch_max_votes < 1:
            raise ValueError("VOTE_BATCH_MAX_VOTES must be >= 1")

    @property
    def batch_max_body_bytes(self) -> int:
        return self.batch_max_votes * self.max_body_bytes

    @property
    def metrics_dir(self) -> str:
        """prometheus_client multiprocess directory shared by the granian workers."""
        return os.path.join(self.stack_dir, "prom", f"gateway-{self.http_port}")


def load() -> GatewaySettings:
    return _settings.load(GatewaySettings)
