-- Portable SQL (SQLite and PostgreSQL): times are BIGINT milliseconds since the Unix epoch,
-- flags are BIGINT 0/1 (one integer type decodes alike on both), ids are TEXT.

CREATE TABLE accounts (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Sessions are stored as the SHA-256 of the cookie token.
CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Token balances: 'acct:<id>', 'anon:<id>' (signed cookie or API key) and 'addr:<ip>'.
-- used_today counts spent and reserved tokens of UTC day `day`; purchased never resets.
CREATE TABLE wallets (
    wallet_key TEXT PRIMARY KEY,
    day BIGINT NOT NULL,
    used_today BIGINT NOT NULL,
    purchased BIGINT NOT NULL
);

-- The job queue. A worker claims a queued job by setting a lease; it heartbeats the lease while
-- running; jobs whose lease expired are re-queued (or failed after max attempts).
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    cost BIGINT NOT NULL,
    wallet_primary TEXT NOT NULL,
    wallet_secondary TEXT,
    reserve_day BIGINT NOT NULL,
    daily_part BIGINT NOT NULL,
    purchased_part BIGINT NOT NULL,
    settled BIGINT NOT NULL DEFAULT 0,
    step BIGINT NOT NULL DEFAULT 0,
    steps BIGINT NOT NULL,
    lease_owner TEXT,
    lease_expires_at BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    image_id TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE UNIQUE INDEX jobs_idempotency ON jobs (owner, idempotency_key);
CREATE INDEX jobs_queue ON jobs (status, created_at);

CREATE TABLE images (
    id TEXT PRIMARY KEY,
    job_id TEXT,
    owner TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    width BIGINT NOT NULL,
    height BIGINT NOT NULL,
    params TEXT NOT NULL,
    saved BIGINT NOT NULL DEFAULT 0,
    share_token TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX images_owner ON images (owner, created_at);
CREATE INDEX images_expiry ON images (expires_at);

-- Billing events already credited (each event id once).
CREATE TABLE billing_events (
    event_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);
