-- The control plane's store on PostgreSQL: the same records as the sled store. Config
-- entities are JSON documents (the records' serde form; they are small and read whole);
-- usage rollups are one table keyed by granularity, bucket and what a row counts.

-- Single values: the config version (the one counter every config write bumps, in its
-- transaction, under this row's lock), the active encryption key id, the V1 migration mark.
CREATE TABLE meta (
    key text PRIMARY KEY,
    value jsonb NOT NULL
);
INSERT INTO meta (key, value) VALUES ('config_version', '0');

CREATE TABLE backends (id text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE pools (name text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE settings (key text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE tokens (id text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE token_used (id text PRIMARY KEY, at_ms bigint NOT NULL);
CREATE TABLE client_keys (id text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE nodes (id text PRIMARY KEY, doc jsonb NOT NULL);

CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    at_ms bigint NOT NULL,
    doc jsonb NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms, id);

CREATE TABLE cooldowns (
    id bigserial PRIMARY KEY,
    start_ms bigint NOT NULL,
    doc jsonb NOT NULL
);
CREATE INDEX cooldowns_start ON cooldowns (start_ms, id);

-- Exactly-once reports: the highest batch applied per node process, written in the
-- batch's transaction.
CREATE TABLE report_marks (
    node_id text NOT NULL,
    boot_id text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (node_id, boot_id)
);

-- Usage history imported from another system: each row once per source and row id.
CREATE TABLE import_marks (
    node_id text NOT NULL,
    mark text NOT NULL,
    PRIMARY KEY (node_id, mark)
);

-- Rollups: granularity 0 = minute, 1 = hour, 2 = day.
CREATE TABLE usage (
    granularity smallint NOT NULL,
    bucket_ms bigint NOT NULL,
    backend_id text NOT NULL,
    model text NOT NULL,
    node_id text NOT NULL,
    key_id text NOT NULL,
    pool text NOT NULL,
    counters jsonb NOT NULL,
    PRIMARY KEY (granularity, bucket_ms, backend_id, model, node_id, key_id)
);
