-- 009_acquirer_refund_id.sql - the acquirer's refund behind each refund
--
-- With --acquirer-url a refund is made at the acquirer too, against the
-- payment's charge_id, under the refund record's own downstream key; the
-- refund keeps the acquirer's id for it (without it: the simulator's own
-- id). NULL for refunds made before this migration. The refund_id here is
-- the one the acquirer was given as its reference.
ALTER TABLE refunds ADD COLUMN acquirer_refund_id text;
