-- naive.sql - the textbook protocol, for reference: an autocommit claim
-- (INSERT ... ON CONFLICT DO NOTHING RETURNING), then BEGIN; INSERT payment;
-- UPDATE record; COMMIT - two synchronous commits and five round trips.
\set n random(1, 1000000000000)
INSERT INTO idempotency_keys (tenant_id, idempotency_key, fingerprint, state, lease_token, locked_until, created_at, expires_at) VALUES ('bench', 'nv-' || :run || '-' || :client_id::text || '-' || :n::text, 'fp', 'processing', 1, now() + interval '30 seconds', now(), now() + interval '1 day') ON CONFLICT DO NOTHING RETURNING lease_token AS token \gset
BEGIN;
INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id, amount_minor, currency, description, status, processed_at) VALUES ('bench', 'txn_nv_' || :run || '_' || :client_id::text || '_' || :n::text, 'nv-' || :run || '-' || :client_id::text || '-' || :n::text, 'cust-bench', 1050, 'USD', NULL, 'completed', now());
UPDATE idempotency_keys SET state = 'completed', response_status = 201, response_body = :body, locked_until = NULL WHERE tenant_id = 'bench' AND idempotency_key = 'nv-' || :run || '-' || :client_id::text || '-' || :n::text AND lease_token = :token;
COMMIT;
