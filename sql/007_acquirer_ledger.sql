-- 007_acquirer_ledger.sql - mockery-acquirer's ledger: charges and refunds
--
-- mockery-acquirer is the acquirer the service asks to move money
-- (docs/acquirer.md). It runs on the same idempotency layer and the same
-- migrations, in a database of its own: there these two tables hold its
-- ledger and payments/refunds stay empty; in the service's database these
-- stay empty. A charge (or a recorded decline) and its idempotency record
-- are written in one transaction, so the ledger holds one charge per
-- downstream key. A refund adds to its charge's amount_refunded_minor under
-- the charge row's lock, in the refund's transaction: refunds of one
-- charge never add up to more than it.

CREATE TABLE acquirer_charges (
    charge_id             text        PRIMARY KEY,
    merchant              text        NOT NULL,
    customer_id           text        NOT NULL,
    amount_minor          bigint      NOT NULL CHECK (amount_minor > 0),
    currency              char(3)     NOT NULL,
    status                text        NOT NULL CHECK (status IN ('succeeded', 'declined')),
    decline_code          text,
    reference             text        NOT NULL,
    idempotency_key       text        NOT NULL,
    amount_refunded_minor bigint      NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL,
    CHECK (amount_refunded_minor >= 0 AND amount_refunded_minor <= amount_minor),
    CHECK ((status = 'declined') = (decline_code IS NOT NULL))
);

-- GET /v1/charges?reference=: the charge behind a client's transaction id.
CREATE INDEX acquirer_charges_reference ON acquirer_charges (reference);
-- Reconciliation over a time range.
CREATE INDEX acquirer_charges_created_at ON acquirer_charges (created_at);
-- The charge behind a downstream key (psql).
CREATE INDEX acquirer_charges_idempotency_key ON acquirer_charges (idempotency_key);

CREATE TABLE acquirer_refunds (
    refund_id       text        PRIMARY KEY,
    charge_id       text        NOT NULL REFERENCES acquirer_charges (charge_id),
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    reference       text        NOT NULL,
    idempotency_key text        NOT NULL,
    created_at      timestamptz NOT NULL
);

-- GET /v1/refunds?charge_id=: a charge's refunds, oldest first.
CREATE INDEX acquirer_refunds_by_charge ON acquirer_refunds (charge_id, created_at, refund_id);
CREATE INDEX acquirer_refunds_reference ON acquirer_refunds (reference);
