-- 001_init.sql - idempotency records and payments
--
-- Both tables lead their primary key with tenant_id, and every statement the
-- server runs filters on it, so they can be distributed by tenant_id (Citus)
-- without changing a query.

CREATE SEQUENCE lease_token_seq;

CREATE TABLE idempotency_keys (
    tenant_id         text        NOT NULL,
    idempotency_key   text        NOT NULL,
    fingerprint       text        NOT NULL,
    state             text        NOT NULL CHECK (state IN ('processing', 'completed')),
    lease_token       bigint      NOT NULL,
    locked_until      timestamptz,
    response_status   integer,
    response_body     text,
    response_location text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    completed_at      timestamptz,
    expires_at        timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, idempotency_key),
    CHECK (state = 'processing' OR (response_status IS NOT NULL AND response_body IS NOT NULL))
);

-- The reaper deletes expired records in small batches, oldest first.
CREATE INDEX idempotency_keys_expires_at ON idempotency_keys (expires_at);

CREATE TABLE payments (
    tenant_id       text        NOT NULL,
    transaction_id  text        NOT NULL,
    idempotency_key text,
    customer_id     text        NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        char(3)     NOT NULL,
    description     text,
    status          text        NOT NULL CHECK (status IN ('completed', 'declined')),
    processed_at    timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, transaction_id)
);

-- GET /api/v1/payments: newest first, optionally for one customer.
CREATE INDEX payments_newest ON payments (tenant_id, processed_at DESC, transaction_id DESC);
CREATE INDEX payments_customer_newest
    ON payments (tenant_id, customer_id, processed_at DESC, transaction_id DESC);
-- Finding the payment behind a key (psql, the demo's double-charge count).
CREATE INDEX payments_idempotency_key ON payments (tenant_id, idempotency_key);
