"""The RSGI application: routing, the vote endpoint, and the read-only endpoints.

One ``VoteGateway`` lives in each granian worker process. ``__rsgi_init__`` runs in the
worker before it serves: it loads keys and elections, opens the Kafka producer and claims
a spill slot, so the first request already finds everything warm.

The vote path (docs/ARCHITECTURE.md, HTTP API and Durability path), cheapest refusals first:
path → client rate limit → election → content type (``_admit``, both vote routes) →
requests in flight (``edge.InFlight``) → length, body within its deadline → token
(``_fast``) → window → body (msgspec) → vote_id is the token's jti, candidate, voter rate
limit (``acceptance.VoteRules``, shared with the batch route) → idempotency, encode,
Kafka or spill (``acceptance.VoteAcceptor``) → 202.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import psycopg
from psycopg_pool import PoolTimeout

from core import event as event_schema
from core import jsonlog, keyset
from gateway import _fast, batch, metrics
from gateway import problems as p
from gateway.acceptance import VoteAcceptor, VoteRules
from gateway.batch import BatchAcceptor
from gateway.clients import ClientResolver
from gateway.config import GatewaySettings, load
from gateway.durability import (
    DurabilityPipeline,
    adopt_orphans,
    report_spill_size,
)
from gateway.edge import ClientGone, InFlight, bearer_token, is_json
from gateway.elections import Election, ElectionCache, LookupFailed
from gateway.models import VOTE_ID_PATTERN, DuplicateKey, decode_vote_request, json_encoder
from gateway.openapi import OPENAPI
from gateway.producer import KafkaSink
from gateway.results import ResultsReader
from gateway.spill import SpillStore

log = logging.getLogger("gateway")

_JSON = [("content-type", "application/json")]
_VOTES_PREFIX = "/v1/elections/"
# How often a worker looks at its key files' inode, size and mtime.
KEY_RELOAD_INTERVAL_S = 2.0
_MAX_ID_CHARS = 128
_VOTE_ID = re.compile(VOTE_ID_PATTERN)


def _status_counter(code: int) -> metrics.BufferedCounter:
    return metrics.BufferedCounter(metrics.requests_total.labels(str(code)))


class VoteGateway:
    def __init__(self, settings: GatewaySettings | None = None) -> None:
        self.settings = settings or load()
        self._counters: dict[int, metrics.BufferedCounter] = {}
        s = self.settings
        self.clients = ClientResolver(s.trusted_proxies.split(","))
        self.in_flight = InFlight(
            s.max_in_flight, s.max_in_flight_per_client, s.body_read_timeout_s
        )
        self.streams_total = 0
        self.streams_per_client: dict[str, int] = {}

    # -- lifecycle (granian calls these in each worker) --------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.startup())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(self.shutdown())

    async def startup(self) -> None:
        s = self.settings
        # The spill holds voter ids and choices, the metrics files what was voted when:
        # whatever this worker creates is for its own user only.
        os.umask(0o077)
        jsonlog.setup("gateway", s.log_level)
        loop = asyncio.get_running_loop()
        self.keys = _fast.KeyRing(_read_json(s.jwks_file))
        self._key_watches = {
            "jwks": keyset.FileWatch(s.jwks_file),
            "event": keyset.FileWatch(s.event_keys_file),
            "receipt": keyset.FileWatch(s.receipt_key_file),
        }
        try:
            signer = _event_signer(s.event_keys_file)
            receipt_key = keyset.read_secret(s.receipt_key_file)
        except keyset.KeyFileError as exc:
            raise SystemExit(f"keys: {exc}") from None
        self.elections = ElectionCache(
            s.pg_dsn,
            s.election_refresh_s,
            negative_ttl_s=s.election_negative_ttl_s,
            negative_capacity=s.election_negative_capacity,
            max_lookups=s.election_max_lookups,
        )
        await self.elections.refresh()
        self.elections.start()
        self.sink = KafkaSink(
            s.kafka_bootstrap,
            s.topic,
            loop,
            linger_ms=s.kafka_linger_ms,
            compression=s.kafka_compression,
            queue_max_messages=s.kafka_queue_max_messages,
            extra=s.kafka_client_config(),
        )
        self.sink.start()
        self.spill = SpillStore.claim(s.spill_dir, loop, s.spill_max_events)
        self.gateway_id = f"{s.gateway_id}-{os.path.basename(self.spill.path)}"
        problem = event_schema.field_problem("gateway_id", self.gateway_id)
        if problem is not None:
            raise SystemExit(f"VOTE_GATEWAY_ID: {problem}")
        self.durability = DurabilityPipeline(self.sink, self.spill, s.spill_deadline_ms / 1000)
        self.acceptor = VoteAcceptor(
            self.durability,
            _fast.IdempotencyCache(s.idempotency_capacity),
            receipt_key,
            self.gateway_id,
            signer,
        )
        self.ip_limiter = _fast.RateLimiter(
            s.rate_ip_per_s, s.rate_ip_burst, s.rate_limiter_capacity
        )
        self.voter_limiter = _fast.RateLimiter(
            s.rate_voter_per_s, s.rate_voter_burst, s.rate_limiter_capacity
        )
        self.rules = VoteRules(
            self.voter_limiter,
            on_rate_limited=metrics.rate_limited_total.labels("voter").inc,
            on_token_bound=metrics.token_rejections_total.labels("token_bound").inc,
        )
        self.batches = BatchAcceptor(self.acceptor.accept, self._verify, self.rules)
        self.results = ResultsReader(s.redis_url, s.pg_dsn)
        await self.results.start()
        report_spill_size()
        self._tasks = [
            loop.create_task(keep_running(name, run))
            for name, run in (
                ("spill drainer", self.durability.drainer.run),
                ("kafka watch", self._watch_kafka),
                ("key watch", self._watch_keys),
                ("orphan adoption", self._adopt_orphans_forever),
                ("metrics flush", self._flush_metrics_forever),
                ("body deadline sweep", self.in_flight.sweep_forever),
            )
        ]
        gc.set_threshold(s.gc_young_threshold, *gc.get_threshold()[1:])
        # Everything loaded so far (modules, keys, elections) lives as long as the worker:
        # move it out of the collector's sight so a full collection only walks what
        # requests create.
        gc.freeze()
        metrics.observe_gc_pauses()
        log.info(
            "worker ready",
            extra={
                "gateway_id": self.gateway_id,
                "spill_slot": self.spill.path,
                "spilled": len(self.spill),
                "elections": len(self.elections._elections),
            },
        )

    async def shutdown(self) -> None:
        for task in getattr(self, "_tasks", []):
            task.cancel()
        await asyncio.gather(*getattr(self, "_tasks", []), return_exceptions=True)
        metrics.flush()
        if hasattr(self, "sink"):
            # Votes still queued in librdkafka were acknowledged from the spill (or not
            # acknowledged at all): flushing here is an optimisation, not a guarantee.
            await asyncio.to_thread(self.sink.close, 5.0)
        if hasattr(self, "spill"):
            self.spill.close()
        if hasattr(self, "elections"):
            await self.elections.stop()
        if hasattr(self, "results"):
            await self.results.close()

    async def _watch_keys(self) -> None:
        """Reload a key file when it changes (rotation, retirement, revocation): no
        restart, and a file that does not load leaves the keys in use as they are."""
        s = self.settings
        while True:
            await asyncio.sleep(KEY_RELOAD_INTERVAL_S)
            try:
                if self._key_watches["jwks"].changed():
                    self.keys = _fast.KeyRing(_read_json(s.jwks_file))
                    log.info("token keys reloaded", extra={"kids": self.keys.kids()})
                if self._key_watches["event"].changed():
                    self.acceptor.signer = _event_signer(s.event_keys_file)
                    log.info("event keys reloaded", extra={"kid": self.acceptor.signer.kid})
                if self._key_watches["receipt"].changed():
                    self.acceptor.use_receipt_key(keyset.read_secret(s.receipt_key_file))
                    log.info("receipt key reloaded")
            except (OSError, ValueError, KeyError, SystemExit) as exc:
                log.error("key file not reloaded; the keys in use stay", extra={"error": str(exc)})

    async def _watch_kafka(self) -> None:
        """Keep ``sink.metadata_ok`` current for /readyz."""
        while True:
            await asyncio.to_thread(self.sink.check_metadata)
            await asyncio.sleep(2.0)

    async def _flush_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(metrics.FLUSH_INTERVAL_S)
            metrics.flush()

    async def _adopt_orphans_forever(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        while True:
            try:
                await adopt_orphans(s.spill_dir, self.sink, loop, s.spill_max_events)
            except Exception:
                log.exception("adopting orphan spill slots failed")
            await asyncio.sleep(5.0)

    # -- dispatch ----------------------------------------------------------------------

    async def __call__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":
            return
        path = scope.path
        method = scope.method
        try:
            if path.startswith(_VOTES_PREFIX):
                parts = path[len(_VOTES_PREFIX) :].split("/")
                if len(parts) == 2 and parts[1] == "votes":
                    if method != "POST":
                        raise p.MethodNotAllowed(method, allow="POST")
                    await self.post_vote(scope, protocol, parts[0])
                    return
                if len(parts) == 2 and parts[1] == "votes:batch":
                    if method != "POST":
                        raise p.MethodNotAllowed(method, allow="POST")
                    await self.post_batch(scope, protocol, parts[0])
                    return
                if len(parts) == 3 and parts[1] == "votes":
                    _only_get(method)
                    await self.get_vote(scope, protocol, parts[0], parts[2])
                    return
                if len(parts) == 2 and parts[1] == "results":
                    _only_get(method)
                    await self.get_results(protocol, parts[0])
                    return
                if len(parts) == 3 and parts[1:] == ["results", "stream"]:
                    _only_get(method)
                    await self.stream_results(scope, protocol, parts[0])
                    return
            elif path == "/livez":
                _only_get(method)
                self._send(protocol, 200, b'{"status":"ok"}')
                return
            elif path == "/readyz":
                _only_get(method)
                self._readyz(protocol)
                return
            elif path == "/openapi.json":
                _only_get(method)
                self._send(protocol, 200, OPENAPI)
                return
            raise p.NotFound(f"no route for {path}")
        except p.Problem as problem:
            self._problem(protocol, problem, path, _request_id(scope))
        except ClientGone:
            # Nobody to answer; a client's doing, so a client error, not a 5xx.
            self._count(499)
        except Exception:
            request_id = _request_id(scope)
            log.exception("unhandled error", extra={"path": path, "request_id": request_id})
            self._problem(
                protocol, p.Problem(f"internal error (request {request_id})"), path, request_id
            )

    def _count(self, status: int) -> None:
        """One answer with ``status`` for vote_requests_total. One buffered counter per
        status for the worker's life: each registers itself for ``metrics.flush``."""
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = _status_counter(status)
        counter.inc()

    def _send(
        self, protocol: Any, status: int, body: bytes, headers: list[tuple[str, str]] = _JSON
    ) -> None:
        self._count(status)
        protocol.response_bytes(status, headers, body)

    def _problem(self, protocol: Any, problem: p.Problem, instance: str, request_id: str) -> None:
        # The id goes into the answer (header and document) and the log line, so a voter's
        # support ticket leads to the gateway's log. Successful votes have their receipt.
        if problem.status >= 500:
            log.warning(
                "problem",
                extra={
                    "status": problem.status,
                    "detail": problem.detail,
                    "error": problem.internal,
                    "path": instance,
                    "request_id": request_id,
                },
            )
        self._send(
            protocol,
            problem.status,
            problem.body(instance, request_id),
            [*problem.headers(), ("x-request-id", request_id)],
        )

    def _readyz(self, protocol: Any) -> None:
        checks = {
            "kafka_metadata": self.sink.metadata_ok,
            "kafka_producer_id": self.sink.producer_id_assigned,
            "spill": not self.spill._closed,
            "election_cache": self.elections.healthy(),
        }
        ok = all(checks.values())
        body = json_encoder.encode(
            {"status": "ready" if ok else "not-ready", "checks": checks, "spilled": len(self.spill)}
        )
        self._send(protocol, 200 if ok else 503, body)

    # -- POST /v1/elections/{id}/votes -------------------------------------------------

    async def _admit(self, scope: Any, election_id: str, now: float) -> tuple[str, Election]:
        """The client's key and the election, for either vote route; what refuses the
        request before its body is read comes here, cheapest first. The client's limit
        comes before the election: made-up election ids must cost the sender its budget
        before they can cost a lookup."""
        client = self.clients.key(scope)
        retry = self.ip_limiter.acquire(client, now)
        if retry:
            metrics.rate_limited_total.labels("client").inc()
            raise p.RateLimited("too many requests from this address", retry_after=retry)
        election = self.elections.get(election_id) or await self._election(election_id)
        if not is_json(scope.headers.get("content-type", "")):
            raise p.UnsupportedMediaType()
        return client, election

    async def post_vote(self, scope: Any, protocol: Any, election_id: str) -> None:
        started = time.perf_counter()
        now = time.time()
        client, election = await self._admit(scope, election_id, now)
        headers = scope.headers
        in_flight = self.in_flight
        in_flight.enter(client)
        try:
            body = await self._read_body(protocol, headers, now)
            voter_id, jti = self._authenticate(headers, election_id, now)
            if not election.is_open(now):
                raise p.ElectionNotOpen(f"election {election_id!r} is not open now")
            try:
                request = decode_vote_request(body)
            except msgspec.ValidationError as exc:
                raise p.BadRequest(f"invalid vote: {exc}") from None
            except msgspec.DecodeError as exc:
                raise p.BadRequest(f"body is not valid JSON: {exc}") from None
            except DuplicateKey as exc:
                raise p.BadRequest(str(exc)) from None
            self.rules.check(election, voter_id, jti, request.vote_id, request.choice, now)
            answer, via_kafka = await self.acceptor.accept(
                election_id, voter_id, request.vote_id, request.choice, now
            )
        finally:
            in_flight.leave(client)
        self._send(protocol, 202, answer)
        (metrics.ack_kafka if via_kafka else metrics.ack_spill).observe(
            time.perf_counter() - started
        )

    # -- POST /v1/elections/{id}/votes:batch (gateway/batch.py) --------------------------

    async def post_batch(self, scope: Any, protocol: Any, election_id: str) -> None:
        now = time.time()
        client, election = await self._admit(scope, election_id, now)
        # A batch holds one request slot, like a single vote: its body read is bounded
        # in time and its votes in number, so one slot bounds what it can hold.
        in_flight = self.in_flight
        in_flight.enter(client)
        try:
            body = await self._read_body(
                protocol, scope.headers, now, self.settings.batch_max_body_bytes
            )
            votes = batch.decode(body, self.settings.batch_max_votes)
            if not election.is_open(now):
                raise p.ElectionNotOpen(f"election {election_id!r} is not open now")
            answer, _statuses = await self.batches.accept(election, votes, now, scope.path)
        finally:
            in_flight.leave(client)
        self._send(protocol, 200, answer)

    async def _read_body(self, protocol: Any, headers: Any, now: float, limit: int = 0) -> bytes:
        limit = limit or self.settings.max_body_bytes
        length = headers.get("content-length")
        if length is None:
            return await self.in_flight.read(protocol, now, chunked_limit=limit)
        if not length.isdigit():
            raise p.BadRequest("invalid Content-Length")
        if int(length) > limit:
            raise p.PayloadTooLarge(f"body larger than {limit} bytes")
        return await self.in_flight.read(protocol, now)

    def _authenticate(self, headers: Any, election_id: str, now: float) -> tuple[str, str]:
        """The token's (sub, jti), or the problem that refuses it."""
        token = bearer_token(headers.get("authorization", ""))
        if token is None:
            metrics.token_rejections_total.labels("missing").inc()
            raise p.Unauthorized("missing Bearer token")
        return self._verify(token, election_id, now)

    def _verify(self, token: str, election_id: str, now: float) -> tuple[str, str]:
        """A token's (sub, jti) for this election, or the problem that refuses it."""
        try:
            voter_id, jti, _exp = _fast.verify_token(
                token,
                self.keys,
                election_id,
                now,
                self.settings.token_leeway_s,
                self.settings.token_issuer,
                self.settings.token_max_lifetime_s,
            )
        except _fast.TokenError as exc:
            metrics.token_rejections_total.labels(exc.reason).inc()
            if exc.reason == "wrong_audience":
                raise p.Forbidden("token is not for this election", reason=exc.reason) from None
            raise p.Unauthorized(f"token refused: {exc.reason}", reason=exc.reason) from None
        return voter_id, jti

    async def _election(self, election_id: str) -> Election:
        if not 0 < len(election_id) <= _MAX_ID_CHARS or not election_id.isprintable():
            # Cannot exist (and PostgreSQL refuses NUL in text): no lookup.
            raise p.NotFound("unknown election")
        try:
            election = await self.elections.lookup(election_id)
        except LookupFailed as exc:
            raise p.Unavailable(
                "elections cannot be looked up right now", retry_after=2, internal=str(exc)
            ) from None
        if election is None:
            raise p.NotFound(f"unknown election {election_id!r}")
        return election

    # -- GET endpoints -----------------------------------------------------------------

    async def get_vote(self, scope: Any, protocol: Any, election_id: str, vote_id: str) -> None:
        await self._election(election_id)
        voter_id, _jti = self._authenticate(scope.headers, election_id, time.time())
        if not _VOTE_ID.fullmatch(vote_id):
            raise p.NotFound("no such vote")  # no vote can have this id
        try:
            status = await self.results.vote_status(election_id, vote_id, voter_id)
        except (psycopg.Error, PoolTimeout) as exc:
            raise p.Unavailable(
                "vote status is not available right now", retry_after=2, internal=repr(exc)
            ) from None
        if status is None:
            raise p.NotFound(f"no vote {vote_id!r} of yours in {election_id!r}")
        self._send(protocol, 200, json_encoder.encode({"vote_id": vote_id, **status}))

    async def get_results(self, protocol: Any, election_id: str) -> None:
        # Unknown ids are answered by the election cache (and its negative cache), not by
        # a PostgreSQL read per request.
        await self._election(election_id)
        try:
            results = await self.results.results(election_id)
        except (psycopg.Error, PoolTimeout) as exc:
            raise p.Unavailable(
                "results are not available right now", retry_after=2, internal=repr(exc)
            ) from None
        if results is None:
            raise p.NotFound(f"unknown election {election_id!r}")
        self._send(
            protocol,
            200,
            json_encoder.encode(results),
            [("content-type", "application/json"), ("cache-control", "no-cache")],
        )

    async def stream_results(self, scope: Any, protocol: Any, election_id: str) -> None:
        client = self.clients.key(scope)
        await self._election(election_id)
        # A stream holds a task and a queue for as long as the client stays: bounded per
        # client and per worker, so viewers cannot exhaust the worker.
        held = self.streams_per_client.get(client, 0)
        if held >= self.settings.max_streams_per_client:
            raise p.RateLimited("too many result streams from this address", retry_after=5)
        if self.streams_total >= self.settings.max_streams:
            raise p.Unavailable("too many result streams; retry", retry_after=5)
        self.streams_per_client[client] = held + 1
        self.streams_total += 1
        try:
            await self._stream(protocol, election_id)
        finally:
            self.streams_total -= 1
            left = self.streams_per_client[client] - 1
            if left:
                self.streams_per_client[client] = left
            else:
                del self.streams_per_client[client]

    async def _stream(self, protocol: Any, election_id: str) -> None:
        self._count(200)
        transport = protocol.response_stream(
            200,
            [
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("x-accel-buffering", "no"),
            ],
        )

        async def pump() -> None:
            async for frame in self.results.stream(election_id):
                await transport.send_bytes(frame)

        pump_task = asyncio.ensure_future(pump())
        disconnect = asyncio.ensure_future(protocol.client_disconnect())
        try:
            await asyncio.wait({pump_task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump_task, disconnect):
                task.cancel()
            await asyncio.gather(pump_task, disconnect, return_exceptions=True)


async def keep_running(
    name: str, run: Callable[[], Awaitable[None]], restart_after_s: float = 1.0
) -> None:
    """Run one of the worker's background loops for as long as the worker lives. A loop
    that raises is logged and started again: left alone, its exception would wait
    unseen in its task while, for the drainer, the spill stopped draining."""
    while True:
        try:
            await run()
            return
        except Exception:
            log.exception("background task failed; restarting it", extra={"task": name})
            await asyncio.sleep(restart_after_s)


def _event_signer(path: str) -> _fast.EventSigner:
    key = keyset.load(path).signing()
    return _fast.EventSigner(key.kid, key.secret)


def _only_get(method: str) -> None:
    if method != "GET":
        raise p.MethodNotAllowed(method, allow="GET")


def _request_id(scope: Any) -> str:
    """The load balancer's ``X-Request-Id`` when it sent a sane one, else a fresh id."""
    given = scope.headers.get("x-request-id", "")
    if 0 < len(given) <= 128 and given.isprintable():
        return given
    return uuid.uuid4().hex


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise SystemExit(
            f"{path} not found: run `python -m gateway.admin init-keys` first"
        ) from None
