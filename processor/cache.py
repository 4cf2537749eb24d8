"""Live tallies in Redis, written after each commit.

The keys, the script that writes them and the results document are ``core.results``'s
(see docs/ARCHITECTURE.md, Redis and PostgreSQL contracts). Only absolute values read
from PostgreSQL are written (never HINCRBY), each with the partition offset it is valid
at; the script ignores a value older than the one stored. So a replayed batch, a zombie
processor, two processors racing after a rebalance, or ``rebuild-cache`` running beside
live processors cannot move a tally backwards or count anything twice.

If ``tally_meta:E`` is missing (Redis restarted empty or was flushed) an incremental
write is refused and the whole election is written instead (``TallyPublisher``), so the
cache heals itself at the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable

import redis

from core.results import WRITE_SCRIPT, meta_key, shard_field, shard_key, tally_key
from processor import metrics
from processor.store import BatchResult, ShardTally, group_by_election

log = logging.getLogger("processor.cache")


class TallyCache:
    def __init__(self, url: str) -> None:
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._script = self.client.register_script(WRITE_SCRIPT)

    def close(self) -> None:
        self.client.close()

    def write(self, election_id: str, shards: list[ShardTally], full: bool) -> int:
        """Write shard tallies; returns how many changed, -1 if a full write is needed."""
        keys = [tally_key(election_id), meta_key(election_id)]
        args: list[str | int] = [election_id, "1" if full else "0"]
        for s in shards:
            keys.append(shard_key(election_id, s.candidate_id))
            args += [
                shard_field(s.cluster, s.topic, s.partition),
                s.as_of_offset,
                s.candidate_id,
                s.votes,
            ]
        return int(self._script(keys=keys, args=args))

    def delete(self, election_id: str) -> None:
        """Drop every key of the election (``rebuild-cache --force``)."""
        keys = [tally_key(election_id), meta_key(election_id)]
        keys += list(self.client.scan_iter(match=shard_key(election_id, "*"), count=1000))
        self.client.delete(*keys)


class TallyPublisher:
    """Keeps one member's Redis tallies in step with what its batches committed.

    After each commit ``publish`` writes the shards the batch changed (incrementally);
    an election whose write failed, or whose partitions this member has just taken over
    (``mark_stale``), is rewritten in full from PostgreSQL (``read_shards``) at the next
    ``publish`` or ``heal``, so Redis catches up without waiting for a new vote.
    """

    def __init__(
        self,
        cache: TallyCache,
        read_shards: Callable[[str], list[ShardTally]],
        logger: logging.Logger | logging.LoggerAdapter = log,
    ) -> None:
        self.cache = cache
        self._read_shards = read_shards
        self._log = logger
        self.stale: set[str] = set()  # elections whose Redis tallies need a full write

    def mark_stale(self, election_ids: Iterable[str]) -> None:
        self.stale.update(election_ids)

    def publish(self, result: BatchResult, known: Collection[str]) -> None:
        """Write what ``result`` changed; ``known``: the elections the member knows."""
        by_election = group_by_election(result.tallies)
        # A batch whose votes all lost (a first_wins repeat, say) changes no tally, but it
        # still writes (an empty, cheap increment) for every known election it touched, so
        # a flushed Redis heals at that election's next batch, not at its next counted vote.
        plan = result.plan
        touched = {r.election_id for r in plan.votes} | {r.election_id for r in plan.rejections}
        for eid in touched:
            if eid in known:
                by_election.setdefault(eid, [])
        for eid, shards in by_election.items():
            self.write(eid, shards)
        self.heal()

    def heal(self) -> None:
        """Rewrite every stale election in full (also called when the member is idle)."""
        for eid in list(self.stale):
            self.write(eid, None)

    def write(self, eid: str, shards: list[ShardTally] | None) -> bool:
        """Write ``shards`` of ``eid`` (None: all of them, from PostgreSQL), in full when
        the election is stale or Redis lost its keys; False when Redis refused, and the
        election is then stale."""
        try:
            if shards is None or eid in self.stale or self.cache.write(eid, shards, full=False) < 0:
                self.cache.write(eid, self._read_shards(eid), full=True)
        except (redis.RedisError, OSError) as exc:
            metrics.CACHE_ERRORS.inc()
            if eid not in self.stale:
                self._log.warning(
                    "redis tally write failed", extra={"election": eid, "error": repr(exc)}
                )
            self.stale.add(eid)
            return False
        self.stale.discard(eid)
        return True

    def close(self) -> None:
        self.cache.close()
