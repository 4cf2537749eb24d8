-- 002: regions. Each region has its own Kafka cluster, and each cluster its own votes.v1
-- (plus the other regions' mirrored copies, A.votes.v1 ...). A position or a tally shard
-- is therefore named by the cluster as well as the topic and partition: region A's
-- votes.v1 partition 0 and region B's are different logs with unrelated offsets.
-- '' is the cluster of a single-region deployment (every row before this migration).

ALTER TABLE consumer_offsets ADD COLUMN cluster text NOT NULL DEFAULT '';
ALTER TABLE consumer_offsets DROP CONSTRAINT consumer_offsets_pkey;
ALTER TABLE consumer_offsets ADD PRIMARY KEY (consumer_group, cluster, topic, partition);

ALTER TABLE tallies ADD COLUMN cluster text NOT NULL DEFAULT '';
ALTER TABLE tallies DROP CONSTRAINT tallies_pkey;
ALTER TABLE tallies ADD PRIMARY KEY (election_id, candidate_id, cluster, topic, kafka_partition);

-- One row per region's processors, touched every second while they run and reach the
-- primary. A region whose row goes stale is lost (or cut off): the surviving regions
-- take over its mirrored topic (processor/regions.py).
CREATE TABLE processor_heartbeats (
    cluster        text        NOT NULL,
    consumer_group text        NOT NULL,
    seen_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cluster, consumer_group)
);
