-- 002_views.sql - views for looking at the records with psql

-- Idempotency records by state, with counts and ages.
CREATE VIEW idempotency_keys_by_state AS
SELECT tenant_id,
       state,
       count(*)                                  AS keys,
       min(created_at)                           AS oldest,
       max(created_at)                           AS newest,
       count(*) FILTER (WHERE expires_at <= now()) AS expired,
       count(*) FILTER (WHERE state = 'processing' AND locked_until <= now()) AS stale_leases
FROM idempotency_keys
GROUP BY tenant_id, state;

-- Recent payments with their key and the record's state.
CREATE VIEW recent_payments AS
SELECT p.tenant_id,
       p.transaction_id,
       p.status,
       p.amount_minor,
       p.currency,
       p.customer_id,
       p.idempotency_key,
       k.state           AS key_state,
       k.response_status AS cached_status,
       p.processed_at
FROM payments p
LEFT JOIN idempotency_keys k
       ON k.tenant_id = p.tenant_id AND k.idempotency_key = p.idempotency_key
ORDER BY p.processed_at DESC
LIMIT 100;
