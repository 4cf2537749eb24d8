"""``python -m processor rebuild-cache``: Redis tallies from PostgreSQL.

Safe beside running processors: every shard value goes through the same versioned
script as the processor's writes, so a value older than what a processor has
written meanwhile is ignored. ``--force`` first deletes the election's keys (for a
cache that holds garbage rather than merely nothing).
"""

from __future__ import annotations

import psycopg

from processor.cache import TallyCache
from processor.settings import ProcessorSettings
from processor.store import shard_tallies


def rebuild(
    settings: ProcessorSettings, election_id: str | None = None, force: bool = False
) -> dict[str, int]:
    """Rewrite each election's tallies; returns election → candidates written."""
    cache = TallyCache(settings.redis_url)
    out: dict[str, int] = {}
    try:
        with psycopg.connect(settings.pg_dsn, autocommit=True) as conn:
            if election_id is None:
                ids = [r[0] for r in conn.execute("SELECT election_id FROM elections")]
            else:
                ids = [election_id]
            for eid in ids:
                if force:
                    cache.delete(eid)
                out[eid] = cache.write(eid, shard_tallies(conn, eid), full=True)
    finally:
        cache.close()
    return out
