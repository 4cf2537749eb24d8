"""Live tallies in Redis, written after each commit.

See docs/ARCHITECTURE.md, Redis and PostgreSQL contracts.

Keys (``E`` = election id):

* ``tally:E``        hash candidate → absolute votes (what the results API reads)
* ``tally_meta:E``   hash ``as_of`` → unix seconds of the last change
* ``tally_shard:E:C`` hash ``[<cluster>:]<topic>|<partition>`` → ``"<as_of_offset>:<votes>"``,
  the absolute tally of candidate C contributed by one Kafka partition, with its version
* channel ``results:E`` gets ``{"election_id", "tallies", "total", "source", "as_of"}``
  after every change.

Only absolute values read from PostgreSQL are written (never HINCRBY), each with the
partition offset it is valid at; the script ignores a value older than the one
stored. So a replayed batch, a zombie processor, two processors racing after a
rebalance, or ``rebuild-cache`` running beside live processors cannot move a tally
backwards or count anything twice. ``tally:E`` is recomputed from the shards inside
the same script, atomically.

If ``tally_meta:E`` is missing (Redis restarted empty or was flushed) an incremental
write is refused (returns -1) and the processor writes every shard of the election
instead, so the cache heals itself at the next batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable

import redis

from processor import metrics
from processor.store import BatchResult, ShardTally, group_by_election

log = logging.getLogger("processor.cache")

# KEYS[1]=tally:E KEYS[2]=tally_meta:E KEYS[2+i]=tally_shard:E:C_i
# ARGV[1]=E ARGV[2]=full(0|1) then per item i: shard, version, candidate, votes.
_LUA = """
local e = ARGV[1]
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[2]) == 0 then
  return -1
end
local changed = {}
local n = 0
local i = 3
local k = 3
while i <= #ARGV do
  local shard, ver, cand, val = ARGV[i], tonumber(ARGV[i+1]), ARGV[i+2], ARGV[i+3]
  local key = KEYS[k]
  local cur = redis.call('HGET', key, shard)
  local curver = -1
  if cur then curver = tonumber(string.match(cur, '^(%-?%d+):')) end
  if ver > curver or (ARGV[2] == '1' and ver == curver) then
    redis.call('HSET', key, shard, ver .. ':' .. val)
    if not changed[cand] then changed[cand] = key; n = n + 1 end
  elseif ARGV[2] == '1' and not changed[cand] then
    -- full write: recompute every candidate it names, even if no shard was newer
    changed[cand] = key; n = n + 1
  end
  i = i + 4
  k = k + 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if n == 0 and ARGV[2] ~= '1' then return 0 end
for cand, key in pairs(changed) do
  local total = 0
  for _, v in ipairs(redis.call('HVALS', key)) do
    total = total + tonumber(string.match(v, ':(%-?%d+)$'))
  end
  redis.call('HSET', KEYS[1], cand, total)
end
redis.call('HSET', KEYS[2], 'as_of', string.format('%.6f', now))
local flat = redis.call('HGETALL', KEYS[1])
local tallies = {}
local sum = 0
for j = 1, #flat, 2 do
  local v = tonumber(flat[j+1])
  tallies[flat[j]] = v
  sum = sum + v
end
local msg = cjson.encode({election_id = e, tallies = tallies, total = sum,
                          source = 'redis', as_of = now})
-- cjson encodes an empty table as {} already; tallies is never a list here.
redis.call('PUBLISH', 'results:' .. e, msg)
return n
"""


def tally_key(election_id: str) -> str:
    return f"tally:{election_id}"


def meta_key(election_id: str) -> str:
    return f"tally_meta:{election_id}"


def shard_key(election_id: str, candidate_id: str) -> str:
    return f"tally_shard:{election_id}:{candidate_id}"


def shard_field(s: ShardTally) -> str:
    """The field of one shard in ``tally_shard:E:C``: its partition, named by cluster and
    topic (``<cluster>:<topic>|<partition>``; without a cluster, ``<topic>|<partition>``)."""
    where = f"{s.cluster}:{s.topic}" if s.cluster else s.topic
    return f"{where}|{s.partition}"


def channel(election_id: str) -> str:
    return f"results:{election_id}"


class TallyCache:
    def __init__(self, url: str) -> None:
        self.client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._script = self.client.register_script(_LUA)

    def close(self) -> None:
        self.client.close()

    def write(self, election_id: str, shards: list[ShardTally], full: bool) -> int:
        """Write shard tallies; returns how many changed, -1 if a full write is needed."""
        keys = [tally_key(election_id), meta_key(election_id)]
        args: list[str | int] = [election_id, "1" if full else "0"]
        for s in shards:
            keys.append(shard_key(election_id, s.candidate_id))
            args += [shard_field(s), s.as_of_offset, s.candidate_id, s.votes]
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
            self._write(eid, shards)
        self.heal()

    def heal(self) -> None:
        """Rewrite every stale election in full (also called when the member is idle)."""
        for eid in list(self.stale):
            self._write(eid, None)

    def _write(self, eid: str, shards: list[ShardTally] | None) -> None:
        try:
            if shards is None or eid in self.stale or self.cache.write(eid, shards, full=False) < 0:
                self.cache.write(eid, self._read_shards(eid), full=True)
            self.stale.discard(eid)
        except (redis.RedisError, OSError) as exc:
            metrics.CACHE_ERRORS.inc()
            if eid not in self.stale:
                self._log.warning(
                    "redis tally write failed", extra={"election": eid, "error": repr(exc)}
                )
            self.stale.add(eid)

    def close(self) -> None:
        self.cache.close()
