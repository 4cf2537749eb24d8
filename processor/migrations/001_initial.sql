-- 001: elections, candidates, votes, voters, rejections, tallies and the consumer's offsets.
--
-- Scale: one election may have 300 million voters. The two big tables are
-- hash-partitioned into 32 partitions each, so a 300-million-voter election puts
-- ~10 million rows in each partition:
--   * `votes` on hash(vote_id): its primary key (election_id, vote_id) is the
--     "is this vote_id already stored?" probe of every batch and the status lookup of
--     the results API; each partition's index stays a few hundred MB and mostly cached.
--   * `voters` on hash(voter_id): one row per voter with the policy state, so the
--     "how many votes does this voter already have?" check is one index probe in one
--     partition (an index on votes(voter_id) would be probed in all 32 partitions,
--     because votes are partitioned by vote_id).
-- Autovacuum and VACUUM/ANALYZE work per partition; a later migration can re-split a
-- hot partition (detach it, attach a sub-partitioned table) without touching the rest.
-- Primary keys include the partition key, as PostgreSQL requires.

CREATE TABLE elections (
    election_id  text PRIMARY KEY CHECK (election_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    title        text NOT NULL DEFAULT '',
    -- first_wins | last_wins | max_votes:N
    policy       text NOT NULL DEFAULT 'first_wins'
                 CHECK (policy IN ('first_wins', 'last_wins') OR policy ~ '^max_votes:[1-9][0-9]{0,5}$'),
    opens_at     timestamptz NOT NULL DEFAULT '-infinity',
    closes_at    timestamptz NOT NULL DEFAULT 'infinity',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE candidates (
    election_id  text NOT NULL REFERENCES elections ON DELETE CASCADE,
    candidate_id text NOT NULL CHECK (candidate_id ~ '^[A-Za-z0-9._-]{1,64}$'),
    name         text NOT NULL DEFAULT '',
    PRIMARY KEY (election_id, candidate_id)
);

-- Every vote that counts or once counted. A vote_id belongs to the first content
-- (voter, choice) stored under it; a replayed Kafka event with the same content is a
-- no-op, other content under a taken vote_id becomes a duplicate_vote_id rejection.
CREATE TABLE votes (
    election_id     text        NOT NULL,
    vote_id         text        NOT NULL,
    voter_id        text        NOT NULL,
    choice          text        NOT NULL,
    received_at     timestamptz NOT NULL,
    gateway_id      text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    counted_at      timestamptz NOT NULL DEFAULT now(),
    -- last_wins: the vote_id of the later vote (by received_at, then vote_id) that
    -- replaced this one. A superseded vote is kept (audit) but not in the tallies.
    superseded_by   text,
    PRIMARY KEY (election_id, vote_id)
) PARTITION BY HASH (vote_id);

DO $$
BEGIN
    FOR i IN 0..31 LOOP
        EXECUTE format(
            'CREATE TABLE votes_p%s PARTITION OF votes FOR VALUES WITH (MODULUS 32, REMAINDER %s)',
            lpad(i::text, 2, '0'), i);
    END LOOP;
END $$;

-- Policy state per voter, written by the processor in the batch's transaction.
-- counted: votes of this voter in the tallies now (first_wins/last_wins: 1,
-- max_votes:N: up to N). current_*: the vote that counts (last_wins: the latest).
CREATE TABLE voters (
    election_id         text        NOT NULL,
    voter_id            text        NOT NULL,
    counted             integer     NOT NULL,
    current_vote_id     text        NOT NULL,
    current_choice      text        NOT NULL,
    current_received_at timestamptz NOT NULL,
    PRIMARY KEY (election_id, voter_id)
) PARTITION BY HASH (voter_id);

DO $$
BEGIN
    FOR i IN 0..31 LOOP
        EXECUTE format(
            'CREATE TABLE voters_p%s PARTITION OF voters FOR VALUES WITH (MODULUS 32, REMAINDER %s)',
            lpad(i::text, 2, '0'), i);
    END LOOP;
END $$;

-- A vote that reached Kafka but does not count, with the reason the voter can see:
-- duplicate_vote_id, voter_already_voted, election_closed, unknown_candidate,
-- unknown_election, malformed.
-- Keyed by the vote's full identity (vote_id, voter_id, choice), so that
--   * a Kafka duplicate of a rejected vote is recognised and adds nothing, and
--   * several different contents sent under one vote_id each get their own row:
--     every acknowledged vote is in `votes` or here exactly once (invariant A).
-- Undecodable messages have no ids of their own: election_id '', vote_id
-- 'kafka:<topic>:<partition>:<offset>', voter_id and choice ''.
CREATE TABLE vote_rejections (
    election_id     text        NOT NULL,
    vote_id         text        NOT NULL,
    voter_id        text        NOT NULL DEFAULT '',
    choice          text        NOT NULL DEFAULT '',
    reason          text        NOT NULL,
    detail          text,
    received_at     timestamptz,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (election_id, vote_id, voter_id, choice)
);

-- Tallies are sharded by the Kafka partition whose events moved them: each shard row
-- is written only by the processor that owns that partition, so processors sharing a
-- topic never wait on each other's tally row locks. The election's tally is the sum
-- (view election_tallies). as_of_offset is the partition's next offset when the row
-- was last written: the version that keeps Redis from going back in time.
CREATE TABLE tallies (
    election_id     text    NOT NULL,
    candidate_id    text    NOT NULL,
    topic           text    NOT NULL,
    kafka_partition integer NOT NULL,
    votes           bigint  NOT NULL DEFAULT 0,
    as_of_offset    bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (election_id, candidate_id, topic, kafka_partition)
);

CREATE VIEW election_tallies AS
    SELECT election_id, candidate_id, sum(votes)::bigint AS votes
    FROM tallies
    GROUP BY election_id, candidate_id;

-- The consumer's position, written in the same transaction as the rows it produced:
-- this, not Kafka's committed offsets, is the truth the processor resumes from.
CREATE TABLE consumer_offsets (
    consumer_group text    NOT NULL,
    topic          text    NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint  NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
