-- 011_recovery.sql - a record keeps its request while it may have moved
-- money outside, so that recovery can finish it without its client
--
-- A server with an acquirer writes the request (route, path id, body) with
-- its claim, and its completion sets it back to NULL: a completed record
-- never carries it. A processing record with a request past its lease is
-- one that recovery takes over, asks the acquirer again with the same key
-- downstream, and completes (docs/design.md, "Recovery without the client").
--
-- The partial index finds those records without an index on state or
-- locked_until: the in-process simulator's records keep request NULL from
-- claim to completion, so their completions change no indexed column and
-- stay HOT updates (sql/004); only the records that asked outside pay for
-- the index.
ALTER TABLE idempotency_keys ADD COLUMN request text;
CREATE INDEX idempotency_keys_unfinished ON idempotency_keys (created_at)
    WHERE request IS NOT NULL;
