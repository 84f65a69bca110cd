-- 005_refunds.sql - refunds, and how much of each payment they returned
--
-- A refund row and the payment's amount_refunded_minor change in the same
-- transaction as the refund's idempotency completion. The server adds to
-- amount_refunded_minor with a conditional UPDATE of the payment row (the
-- row lock orders refunds of one payment; the condition is evaluated again
-- on the newest version after a wait), so refunds that race on many servers
-- never add up to more than the payment. The CHECK says the same to anyone
-- writing with psql. NOT VALID: existing rows hold 0 and are not scanned
-- under the lock; new and updated rows are checked.

ALTER TABLE payments ADD COLUMN amount_refunded_minor bigint NOT NULL DEFAULT 0;
ALTER TABLE payments ADD CONSTRAINT payments_refunds_within_amount
    CHECK (amount_refunded_minor >= 0 AND amount_refunded_minor <= amount_minor) NOT VALID;

CREATE TABLE refunds (
    tenant_id       text        NOT NULL,
    refund_id       text        NOT NULL,
    transaction_id  text        NOT NULL,
    idempotency_key text,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    currency        char(3)     NOT NULL,
    reason          text        CHECK (reason IN ('requested_by_customer', 'duplicate',
                                                  'fraudulent')),
    status          text        NOT NULL CHECK (status IN ('succeeded')),
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, refund_id),
    FOREIGN KEY (tenant_id, transaction_id) REFERENCES payments (tenant_id, transaction_id)
);

-- GET /api/v1/payments/{id}/refunds: a payment's refunds, newest first.
CREATE INDEX refunds_by_payment
    ON refunds (tenant_id, transaction_id, created_at DESC, refund_id DESC);
-- Finding the refund behind a key (psql, duplicates_prevented_per_hour).
CREATE INDEX refunds_idempotency_key ON refunds (tenant_id, idempotency_key);

-- Recent refunds with their payment and the key's record.
CREATE VIEW recent_refunds AS
SELECT r.tenant_id,
       r.refund_id,
       r.transaction_id,
       r.amount_minor,
       r.currency,
       r.reason,
       p.amount_minor          AS payment_amount_minor,
       p.amount_refunded_minor AS payment_refunded_minor,
       r.idempotency_key,
       k.state                 AS key_state,
       k.duplicate_count,
       r.created_at
FROM refunds r
JOIN payments p ON p.tenant_id = r.tenant_id AND p.transaction_id = r.transaction_id
LEFT JOIN idempotency_keys k
       ON k.tenant_id = r.tenant_id AND k.idempotency_key = r.idempotency_key
ORDER BY r.created_at DESC
LIMIT 100;

-- Duplicates prevented per hour, now by operation: 'payment' or 'refund'
-- for a key whose row exists, 'none' for a key whose cached answer wrote no
-- row (a refused refund, a failure that was answered and cached).
DROP VIEW duplicates_prevented_per_hour;
CREATE VIEW duplicates_prevented_per_hour AS
SELECT k.tenant_id,
       date_trunc('hour', k.created_at)               AS hour,
       CASE WHEN EXISTS (SELECT 1 FROM refunds r WHERE r.tenant_id = k.tenant_id
                         AND r.idempotency_key = k.idempotency_key) THEN 'refund'
            WHEN EXISTS (SELECT 1 FROM payments p WHERE p.tenant_id = k.tenant_id
                         AND p.idempotency_key = k.idempotency_key) THEN 'payment'
            ELSE 'none' END                           AS operation,
       count(*)                                       AS keys,
       count(*) FILTER (WHERE k.duplicate_count > 0)  AS keys_retried,
       coalesce(sum(k.duplicate_count), 0)            AS duplicates_prevented,
       max(k.duplicate_count)                         AS most_for_one_key
FROM idempotency_keys k
GROUP BY 1, 2, 3
ORDER BY hour DESC, operation;
