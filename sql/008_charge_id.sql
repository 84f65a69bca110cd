-- 008_charge_id.sql - the acquirer's charge behind each payment
--
-- With --acquirer-url the money moves at an acquirer (docs/acquirer.md),
-- and each payment records the charge it made there: a declined payment
-- too (the acquirer keeps declines). Without it, the in-process simulator
-- gives each payment a charge id of its own. NULL for payments made before
-- this migration. Reconciliation joins payments to the acquirer's ledger
-- by the transaction id (sent as the charge's reference, indexed there) and
-- checks this column: no index here, a payment's write stays as it was.
ALTER TABLE payments ADD COLUMN charge_id text;
