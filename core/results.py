"""The results contract between the processor (writes Redis) and the gateway (reads it).

See docs/ARCHITECTURE.md, Redis and PostgreSQL contracts. Keys (``E`` = election id):

* ``tally:E``         hash candidate → absolute votes (what the results API reads)
* ``tally_meta:E``    hash ``as_of`` → unix seconds of the last change
* ``tally_shard:E:C`` hash ``[<cluster>:]<topic>|<partition>`` → ``"<as_of_offset>:<votes>"``,
  the absolute tally of candidate C contributed by one Kafka partition, with its version
* channel ``results:E`` gets ``{"election_id", "as_of"}`` after every change: a notice,
  not the results. Whoever follows it reads the results and builds them with
  ``document``, the one place the results document is made.

``WRITE_SCRIPT`` is the only writer of these keys (``processor.cache.TallyCache``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Source = Literal["redis", "postgres"]


def tally_key(election_id: str) -> str:
    return f"tally:{election_id}"


def meta_key(election_id: str) -> str:
    return f"tally_meta:{election_id}"


def shard_key(election_id: str, candidate_id: str) -> str:
    return f"tally_shard:{election_id}:{candidate_id}"


def shard_field(cluster: str, topic: str, partition: int) -> str:
    """The field of one Kafka partition in ``tally_shard:E:C``: ``<cluster>:<topic>|<p>``,
    or ``<topic>|<p>`` without a cluster (a single region)."""
    where = f"{cluster}:{topic}" if cluster else topic
    return f"{where}|{partition}"


def channel(election_id: str) -> str:
    return f"results:{election_id}"


def document(
    election_id: str, tallies: Mapping[str, int], source: Source, as_of: float
) -> dict[str, Any]:
    """The results of ``GET …/results`` and of every SSE frame: candidates sorted,
    ``total`` their sum, ``as_of`` unix seconds (of the last change in Redis, or of the
    read from PostgreSQL)."""
    ordered = dict(sorted(tallies.items()))
    return {
        "election_id": election_id,
        "tallies": ordered,
        "total": sum(ordered.values()),
        "source": source,
        "as_of": as_of,
    }


# Absolute, versioned shard values; an older version than the stored one is ignored, and
# tally:E is recomputed from the shards in the same script, atomically.
# KEYS[1]=tally:E KEYS[2]=tally_meta:E KEYS[2+i]=tally_shard:E:C_i
# ARGV[1]=E ARGV[2]=full(0|1) then per item i: shard field, version, candidate, votes.
# Returns how many candidates changed, or -1 when tally_meta:E is missing (Redis lost
# its keys) and the write is not full: the caller then writes every shard of E.
WRITE_SCRIPT = """
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
local as_of = string.format('%.6f', now)
redis.call('HSET', KEYS[2], 'as_of', as_of)
-- as_of written as stored (cjson would round it to 14 digits)
local notice = '{"election_id":' .. cjson.encode(e) .. ',"as_of":' .. as_of .. '}'
redis.call('PUBLISH', 'results:' .. e, notice)
return n
"""
