-- Several control-plane instances on one database.

-- Messages between instances (node reports relayed to the leader; grants, cooldowns and
-- budgets from it). Kept a minute: they are repeated or superseded every grant interval.
CREATE TABLE cluster_bus (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    sender text NOT NULL,
    target text NOT NULL,
    body jsonb NOT NULL
);
CREATE INDEX cluster_bus_at ON cluster_bus (at);

-- The leader's term: bumped by each instance that takes the leadership (under the
-- advisory lock); the leader's messages are written only while the term is still its own.
CREATE TABLE cluster_leader (
    id int PRIMARY KEY CHECK (id = 1),
    term bigint NOT NULL,
    instance text NOT NULL,
    since_ms bigint NOT NULL
);
