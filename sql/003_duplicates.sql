-- 003_duplicates.sql - count the duplicates each key prevented, for psql
--
-- A request that finds its key completed (replay), still running (409) or
-- used for another payment (422) adds one to duplicate_count in the same
-- statement that reads the record.

ALTER TABLE idempotency_keys
    ADD COLUMN duplicate_count   integer NOT NULL DEFAULT 0,
    ADD COLUMN last_duplicate_at timestamptz;

-- Duplicates prevented, by the hour the key was first used (most retries
-- follow within seconds). Counts what the records still hold: expired keys
-- are reaped after --idempotency-ttl.
CREATE VIEW duplicates_prevented_per_hour AS
SELECT tenant_id,
       date_trunc('hour', created_at)               AS hour,
       count(*)                                     AS keys,
       count(*) FILTER (WHERE duplicate_count > 0)  AS keys_retried,
       coalesce(sum(duplicate_count), 0)            AS duplicates_prevented,
       max(duplicate_count)                         AS most_for_one_key
FROM idempotency_keys
GROUP BY tenant_id, date_trunc('hour', created_at)
ORDER BY hour DESC;

-- Keys by state and age: how long records have been waiting, in buckets.
CREATE VIEW idempotency_keys_by_age AS
SELECT tenant_id,
       state,
       CASE WHEN now() - created_at < interval '1 minute' THEN '1: < 1 minute'
            WHEN now() - created_at < interval '1 hour'   THEN '2: < 1 hour'
            WHEN now() - created_at < interval '1 day'    THEN '3: < 1 day'
            ELSE '4: older' END AS age,
       count(*) AS keys
FROM idempotency_keys
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
