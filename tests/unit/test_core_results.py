"""core.results: the Redis layout and the one results document."""

from __future__ import annotations

from core import results


def test_keys_and_channel() -> None:
    assert results.tally_key("e1") == "tally:e1"
    assert results.meta_key("e1") == "tally_meta:e1"
    assert results.shard_key("e1", "alice") == "tally_shard:e1:alice"
    assert results.channel("e1") == "results:e1"


def test_a_shard_is_named_by_its_partition_and_cluster_when_there_is_one() -> None:
    assert results.shard_field("", "votes.v1", 3) == "votes.v1|3"
    assert results.shard_field("eu", "votes.v1", 3) == "eu:votes.v1|3"
    # A region's mirrored topic on another cluster stays apart from that cluster's own.
    assert results.shard_field("us", "eu.votes.v1", 3) != results.shard_field("eu", "votes.v1", 3)


def test_the_document_sorts_candidates_and_sums_them() -> None:
    doc = results.document("e1", {"carol": 2, "alice": 0, "bob": 5}, "redis", 1764660000.5)
    assert doc == {
        "election_id": "e1",
        "tallies": {"alice": 0, "bob": 5, "carol": 2},
        "total": 7,
        "source": "redis",
        "as_of": 1764660000.5,
    }
    assert list(doc["tallies"]) == ["alice", "bob", "carol"]
    assert results.document("e2", {}, "postgres", 0.0)["total"] == 0
