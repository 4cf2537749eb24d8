"""Issue 15 items 2 and 9: made-up election ids.

Against the running gateway: the per-client rate limit comes before any election lookup,
and results for an unknown election are answered from the negative cache, not from
PostgreSQL each time. Against the stack's PostgreSQL, with ``ElectionCache`` itself: the
negative cache is bounded without being wiped whole, concurrent lookups are bounded, and
the refresh that readiness depends on does not wait behind lookups.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import httpx
import psycopg
import pytest

from bench import scrape
from bench.procs import wait_until
from gateway.elections import ElectionCache, LookupFailed
from tests.integration.gateway_fixtures import GatewayStack
from tests.security.edge import (
    MAX_STREAMS,
    MAX_STREAMS_PER_CLIENT,
    NEGATIVE_TTL_S,
    RATE_IP_BURST,
    client_headers,
    status_counts,
)

pytestmark = pytest.mark.integration


def _made_up() -> str:
    return f"nope-{uuid.uuid4().hex[:12]}"


def _pg_queries(stack: GatewayStack) -> dict[str, float]:
    url = f"http://127.0.0.1:{stack.env['VOTE_METRICS_PORT']}/metrics"
    return scrape.by_label(url, "vote_postgres_queries_total", "query")


def test_a_flood_of_made_up_ids_meets_the_rate_limit_first(edge_stack: GatewayStack) -> None:
    headers = {
        "authorization": f"Bearer {edge_stack.token('flooder')}",
        "content-type": "application/json",
        **client_headers(),
    }
    codes = []
    with httpx.Client(timeout=30) as client:
        for _ in range(RATE_IP_BURST + 10):
            resp = client.post(
                f"{edge_stack.base_url}/v1/elections/{_made_up()}/votes",
                content=b'{"vote_id":"0123456789abcdef","choice":"a"}',
                headers=headers,
            )
            codes.append(resp.status_code)
    assert set(codes) <= {404, 429}, codes
    assert codes.count(429) >= 5, f"no rate limit before the lookups: {codes}"


def test_results_of_an_unknown_election_do_not_query_postgres_each_time(
    edge_stack: GatewayStack,
) -> None:
    election = _made_up()
    url = f"{edge_stack.base_url}/v1/elections/{election}/results"
    first = httpx.get(url, headers=client_headers(), timeout=30)
    assert first.status_code == 404
    before = _pg_queries(edge_stack)
    assert before, "the gateway does not count its PostgreSQL queries"
    started = time.monotonic()
    for _ in range(30):
        assert httpx.get(url, headers=client_headers(), timeout=30).status_code == 404
    elapsed = time.monotonic() - started
    after = _pg_queries(edge_stack)
    # The election lookups and results reads these requests could have caused (the
    # background refresh of all elections is not theirs).
    grown = sum(after.get(q, 0) - before.get(q, 0) for q in ("election", "results"))
    # The negative cache answers for NEGATIVE_TTL_S at a time.
    allowed = 1 + elapsed / NEGATIVE_TTL_S
    assert grown <= allowed, f"{grown} queries for 30 requests in {elapsed:.1f}s: {after}"


def test_streams_are_capped_per_client_and_per_worker(edge_stack: GatewayStack) -> None:
    url = f"{edge_stack.base_url}/v1/elections/{edge_stack.election}/results/stream"
    before = status_counts(edge_stack)
    with contextlib.ExitStack() as held, httpx.Client(timeout=30) as client:
        hog = client_headers()
        for _ in range(MAX_STREAMS_PER_CLIENT):
            resp = held.enter_context(client.stream("GET", url, headers=hog))
            assert resp.status_code == 200
        refused = client.get(url, headers=hog)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"]
        for _ in range(MAX_STREAMS - MAX_STREAMS_PER_CLIENT):
            resp = held.enter_context(client.stream("GET", url, headers=client_headers()))
            assert resp.status_code == 200
        full = client.get(url, headers=client_headers())
        assert full.status_code == 503, full.text
    # Closing them frees the slots.
    with httpx.Client(timeout=30) as client:

        def reopened() -> bool:
            with client.stream("GET", url, headers=client_headers()) as resp:
                return resp.status_code == 200

        wait_until("a stream slot free again", reopened, 60)
    assert status_counts(edge_stack).get("500", 0) == before.get("500", 0)


# -- ElectionCache on the stack's PostgreSQL ---------------------------------------------


def test_the_negative_cache_drops_its_oldest_id_not_all_of_them(pg_dsn: str) -> None:
    async def scenario() -> None:
        cache = CountingCache(pg_dsn, negative_ttl_s=60, negative_capacity=4)
        try:
            ids = [_made_up() for _ in range(5)]
            for eid in ids:
                assert await cache.lookup(eid) is None
            assert cache.queries == 5
            for eid in ids[1:]:  # the four most recent are still known unknown
                assert await cache.lookup(eid) is None
            assert cache.queries == 5
            assert await cache.lookup(ids[0]) is None  # the oldest was dropped: asked again
            assert cache.queries == 6
        finally:
            await cache.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_concurrent_lookups_are_bounded(pg_dsn: str) -> None:
    async def scenario() -> None:
        cache = CountingCache(pg_dsn, max_lookups=2)
        try:
            results = await asyncio.gather(
                *(cache.lookup(_made_up()) for _ in range(20)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, LookupFailed)]
            assert refused, "every lookup went to PostgreSQL at once"
            assert all(r is None for r in results if not isinstance(r, LookupFailed))
            # Those not refused were asked; never more than two at a time.
            assert cache.queries == len(results) - len(refused)
            assert cache.most_at_once <= 2
        finally:
            await cache.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


def test_the_refresh_does_not_wait_behind_a_stuck_lookup(pg_dsn: str) -> None:
    """Readiness follows the refresh: a lookup stuck in PostgreSQL must not hold it up."""

    async def scenario() -> None:
        cache = ElectionCache(pg_dsn)
        try:
            await cache.refresh()
            lookup_conn = await cache._lookup_conn.get()
            stuck = asyncio.ensure_future(lookup_conn.execute("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.5)  # let the sleep start on the lookup connection
            await asyncio.wait_for(cache.refresh(), 15)
            assert cache.healthy()
            stuck.cancel()
            with contextlib.suppress(asyncio.CancelledError, psycopg.Error):
                await stuck
        finally:
            await cache.stop()

    asyncio.run(asyncio.wait_for(scenario(), 120))


class CountingCache(ElectionCache):
    """The real cache on the real database, counting the lookups it sends."""

    queries = 0
    running = 0
    most_at_once = 0

    async def _fetch(self, election_id: str | None) -> list:  # type: ignore[override]
        if election_id is None:
            return await super()._fetch(election_id)
        self.queries += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            return await super()._fetch(election_id)
        finally:
            self.running -= 1
