"""Live results and vote status for the gateway (docs/ARCHITECTURE.md, HTTP API).

Reads what the processor writes and never writes anything itself:

* tallies from Redis (``tally:E``, written by ``processor.cache`` after every commit),
  falling back to PostgreSQL (view ``election_tallies``) when Redis is down or has no
  key for the election; the keys and the document are ``core.results``'s;
* the SSE stream, following the Redis channel ``results:E``. One pub/sub connection per
  gateway process is shared by all streams (a hub fans out), so a hundred thousand
  viewers don't mean a hundred thousand Redis connections. A message there only says
  that E changed: the hub reads the results once and gives every stream of E that
  absolute snapshot, so a slow client simply skips to the latest one;
* a vote's status from PostgreSQL: pending (not processed yet), counted, superseded
  (``last_wins``: a later vote of the same voter replaced it) or rejected + reason.

``as_of`` is unix seconds: of the last change in Redis, or of the read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from core.results import channel, document, meta_key, tally_key
from gateway import metrics

log = logging.getLogger("gateway.results")

HEARTBEAT = b": ping\n\n"
_CANDIDATES_TTL_S = 60.0


def sse_frame(doc: dict[str, Any] | bytes, event: str = "tally") -> bytes:
    """One complete Server-Sent Events frame (the JSON is a single line)."""
    data = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class _Hub:
    """One Redis subscription per election shared by every stream of this process."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub: Any = None
        self._queues: dict[str, set[asyncio.Queue[tuple[float, bytes]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        # async callable(election_id): reads E's results and hands them to ``deliver``.
        self.on_change: Any = None

    async def add(self, election_id: str) -> asyncio.Queue[tuple[float, bytes]]:
        # maxsize=1 with replace-on-full: a slow client gets the latest snapshot only.
        q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=1)
        async with self._lock:
            listeners = self._queues.setdefault(election_id, set())
            listeners.add(q)
            if self._pubsub is None:
                self._pubsub = self._client.pubsub()
            if len(listeners) == 1:
                try:
                    await self._pubsub.subscribe(channel(election_id))
                except BaseException:
                    # Leave no listener behind, so the next stream subscribes again.
                    del self._queues[election_id]
                    raise
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._pump())
        return q

    async def remove(self, election_id: str, q: asyncio.Queue[tuple[float, bytes]]) -> None:
        async with self._lock:
            listeners = self._queues.get(election_id)
            if listeners is None:
                return
            listeners.discard(q)
            if not listeners:
                del self._queues[election_id]
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.unsubscribe(channel(election_id))

    def deliver(self, election_id: str, item: tuple[float, bytes]) -> None:
        for q in self._queues.get(election_id, ()):
            if q.full():
                q.get_nowait()
            q.put_nowait(item)

    async def _pump(self) -> None:
        broken = False
        while self._queues:
            try:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except (RedisError, OSError) as exc:
                if not broken:
                    log.warning("results pub/sub lost", extra={"error": repr(exc)})
                broken = True
                await asyncio.sleep(1.0)
                continue
            except RuntimeError:
                # Not subscribed (yet / any more): nothing to read.
                await asyncio.sleep(0.1)
                continue
            if broken:
                # redis-py re-subscribed on reconnect; changes made meanwhile were not
                # published to us, so push a fresh snapshot to every stream.
                broken = False
                for eid in list(self._queues):
                    await self.on_change(eid)
            if msg is None or msg.get("type") != "message":
                continue
            election_id = msg["channel"].decode().split(":", 1)[1]
            if election_id in self._queues:
                await self.on_change(election_id)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._pubsub is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.aclose()


class ResultsReader:
    """Results, result stream and vote status for the HTTP handlers.

    ``redis_url`` / ``pg_dsn``: where the processor writes. ``heartbeat_s``: seconds of
    silence after which a stream sends an SSE comment (keeps proxies from closing it).
    """

    def __init__(self, redis_url: str, pg_dsn: str, heartbeat_s: float = 15.0) -> None:
        self._redis = aioredis.Redis.from_url(
            # Short enough to fall back to PostgreSQL quickly, long enough for a
            # loaded host.
            redis_url,
            socket_timeout=3.0,
            socket_connect_timeout=3.0,
        )
        self._pool = AsyncConnectionPool(
            pg_dsn,
            min_size=1,
            max_size=8,
            open=False,
            kwargs={"autocommit": True, "application_name": "vote-gateway-results"},
        )
        self._heartbeat_s = heartbeat_s
        self._hub = _Hub(self._redis)
        self._hub.on_change = self._push_snapshot
        self._candidates: dict[str, tuple[float, frozenset[str]]] = {}

    async def start(self) -> None:
        # wait=False: the gateway must come up (and report not-ready) without PostgreSQL.
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._hub.close()
        await self._redis.aclose()
        await self._pool.close()

    # -- results ---------------------------------------------------------------------------

    async def results(self, election_id: str) -> dict[str, Any] | None:
        """Current tallies; None when the election does not exist."""
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hgetall(tally_key(election_id))
                pipe.hget(meta_key(election_id), "as_of")
                raw, as_of = await pipe.execute()
        except (RedisError, OSError) as exc:
            log.debug("redis unavailable for results", extra={"error": repr(exc)})
        else:
            if raw or as_of is not None:
                tallies = {k.decode(): int(v) for k, v in raw.items()}
                for c in await self._known_candidates(election_id):
                    tallies.setdefault(c, 0)
                when = float(as_of) if as_of is not None else time.time()
                return document(election_id, tallies, "redis", when)
        return await self._results_from_postgres(election_id)

    async def _results_from_postgres(self, election_id: str) -> dict[str, Any] | None:
        metrics.postgres_queries_total.labels("results").inc()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT c.candidate_id, coalesce(t.votes, 0)"
                " FROM elections e"
                " LEFT JOIN candidates c ON c.election_id = e.election_id"
                " LEFT JOIN election_tallies t"
                "  ON t.election_id = e.election_id AND t.candidate_id = c.candidate_id"
                " WHERE e.election_id = %s",
                (election_id,),
            )
            rows = await cur.fetchall()
        if not rows:
            return None
        tallies = {c: int(n) for c, n in rows if c is not None}
        return document(election_id, tallies, "postgres", time.time())

    async def _known_candidates(self, election_id: str) -> frozenset[str]:
        """Candidates (cached), so a candidate without votes still shows 0."""
        now = time.monotonic()
        hit = self._candidates.get(election_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        metrics.postgres_queries_total.labels("candidates").inc()
        try:
            async with self._pool.connection(timeout=1.0) as conn:
                cur = await conn.execute(
                    "SELECT candidate_id FROM candidates WHERE election_id = %s",
                    (election_id,),
                )
                found = frozenset(r[0] for r in await cur.fetchall())
        except Exception as exc:  # psycopg errors, pool timeouts: fall back to the cache
            log.debug("candidates unavailable", extra={"error": repr(exc)})
            return hit[1] if hit is not None else frozenset()
        self._candidates[election_id] = (now + _CANDIDATES_TTL_S, found)
        return found

    # -- vote status -----------------------------------------------------------------------

    async def vote_status(
        self, election_id: str, vote_id: str, voter_id: str
    ) -> dict[str, Any] | None:
        """pending | counted | superseded | rejected (+ reason) for this voter's vote.

        None when the election is unknown. A vote_id stored for another voter is
        ``pending``, exactly as an unknown one: a voter must not learn which vote_ids
        other voters used.
        """
        metrics.postgres_queries_total.labels("vote_status").inc()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 'election', NULL, NULL, NULL"
                "  WHERE EXISTS (SELECT 1 FROM elections WHERE election_id = %(e)s)"
                " UNION ALL"
                " SELECT 'vote', voter_id, superseded_by, NULL FROM votes"
                "  WHERE election_id = %(e)s AND vote_id = %(x)s"
                " UNION ALL"
                " (SELECT 'rejection', voter_id, NULL, reason FROM vote_rejections"
                "  WHERE election_id = %(e)s AND vote_id = %(x)s AND voter_id = %(a)s"
                "  ORDER BY rejected_at LIMIT 1)",
                {"e": election_id, "x": vote_id, "a": voter_id},
            )
            rows = await cur.fetchall()
        kinds = {r[0]: r for r in rows}
        if "election" not in kinds:
            return None
        vote = kinds.get("vote")
        if vote is not None and vote[1] == voter_id:
            if vote[2] is None:
                return {"status": "counted"}
            return {"status": "superseded", "superseded_by": vote[2]}
        rejection = kinds.get("rejection")
        if rejection is not None:
            return {"status": "rejected", "reason": rejection[3]}
        return {"status": "pending"}

    # -- stream ------------------------------------------------------------------------------

    async def stream(self, election_id: str) -> AsyncIterator[bytes]:
        """SSE frames: the current results, then one per change, ``: ping`` when idle.

        Without Redis there is nothing to follow: the stream sends the current results
        (from PostgreSQL) and a ``retry`` hint, and ends; EventSource clients reconnect.
        """
        try:
            q = await self._hub.add(election_id)
        except (RedisError, OSError) as exc:
            log.warning("results stream without pub/sub", extra={"error": repr(exc)})
            current = await self.results(election_id)
            if current is not None:
                yield sse_frame(current)
                yield b"retry: 5000\n\n"
            return
        try:
            current = await self.results(election_id)
            if current is None:
                return
            last_as_of = float(current["as_of"]) if current["source"] == "redis" else 0.0
            yield sse_frame(current)
            while True:
                try:
                    as_of, data = await asyncio.wait_for(q.get(), self._heartbeat_s)
                except TimeoutError:
                    yield HEARTBEAT
                    continue
                if as_of < last_as_of:
                    continue  # older than what this client has already seen
                last_as_of = as_of
                yield sse_frame(data)
        finally:
            await self._hub.remove(election_id, q)

    async def _push_snapshot(self, election_id: str) -> None:
        """E's results, read once, to every stream of E in this process."""
        try:
            current = await self.results(election_id)
        except Exception as exc:  # psycopg errors, pool timeouts: the next change retries
            log.debug("results snapshot failed", extra={"error": repr(exc)})
            return
        if current is not None:
            data = json.dumps(current, separators=(",", ":")).encode()
            self._hub.deliver(election_id, (float(current["as_of"]), data))
