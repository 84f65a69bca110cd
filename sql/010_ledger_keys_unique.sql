-- 010_ledger_keys_unique.sql - one charge (one refund) per downstream key,
-- said by the database too
--
-- mockery-acquirer's idempotency layer runs each downstream key's request
-- once while its record lives (--ttl-s). A key asked again after that
-- record expired would be a new request there; a unique index makes it a
-- failure instead (the service reads the acquirer's 500 as an unknown
-- outcome and keeps its record), so no key is ever charged twice.
DROP INDEX acquirer_charges_idempotency_key;
CREATE UNIQUE INDEX acquirer_charges_idempotency_key ON acquirer_charges (idempotency_key);
CREATE UNIQUE INDEX acquirer_refunds_idempotency_key ON acquirer_refunds (idempotency_key);
