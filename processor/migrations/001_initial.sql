-- 001: elections, candidates, votes, rejections, tallies and the consumer's offsets.
--
-- Scale: one election may have 300 million voters. `votes` is hash-partitioned on
-- vote_id into 32 partitions, so each holds ~10 million rows of a 300-million-voter
-- election: its primary-key index (the dedup check of every batch) and its
-- (election_id, voter_id) index stay a few hundred MB each and mostly in cache,
-- autovacuum works per partition, and a later migration can split them further
-- (hash partitions can be re-partitioned by attaching sub-partitioned tables).
-- The primary key (election_id, vote_id) includes the partition key, as PostgreSQL
-- requires, and is what makes a replayed Kafka event a no-op.

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
    -- last_wins: set when a later vote of the same voter replaced this one.
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

CREATE INDEX votes_by_voter ON votes (election_id, voter_id);

-- A vote that reached Kafka but does not count, with the reason the voter can see:
-- duplicate_vote_id, voter_already_voted, election_closed, unknown_candidate, malformed.
-- Undecodable messages have no ids of their own: they are keyed kafka:<partition>:<offset>.
CREATE TABLE vote_rejections (
    election_id     text        NOT NULL,
    vote_id         text        NOT NULL,
    voter_id        text,
    choice          text,
    reason          text        NOT NULL,
    detail          text,
    received_at     timestamptz,
    kafka_partition integer     NOT NULL,
    kafka_offset    bigint      NOT NULL,
    rejected_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (election_id, vote_id)
);

CREATE TABLE tallies (
    election_id  text   NOT NULL,
    candidate_id text   NOT NULL,
    votes        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (election_id, candidate_id)
);

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
