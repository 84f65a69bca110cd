-- 012_events.sql - the events of completed operations: a transactional
-- outbox
--
-- One row per completed payment (payment.succeeded, payment.declined) and
-- refund (refund.succeeded), inserted by the same statement or transaction
-- as the operation's completion and under the same fencing token: an
-- event exists exactly when its payment or refund does - never for a
-- released, failed or fenced-out completion, never twice for a replay, a
-- takeover or recovery. GET /api/v1/events reads them; deliveries to
-- webhook endpoints (a later migration) are made from them.
--
-- body is the event as the API shows it, byte for byte ({"id", "type",
-- "created", "data": {"object": ...}}): json keeps its text as written, and
-- psql can still look inside it (body -> 'data' -> 'object' ->> 'amount').
-- Events live for --event-retention; the reaper deletes older ones, found
-- by the BRIN index on created_at (rows arrive in time order, so it is a
-- few pages, and costs an insert almost nothing).
CREATE TABLE events (
    tenant_id  text        NOT NULL,
    event_id   text        NOT NULL,
    type       text        NOT NULL CHECK (type IN ('payment.succeeded', 'payment.declined',
                                                    'refund.succeeded')),
    created_at timestamptz NOT NULL,
    body       json        NOT NULL,
    PRIMARY KEY (tenant_id, event_id)
);

-- GET /api/v1/events: a tenant's events, newest first (?type= filters it).
CREATE INDEX events_newest ON events (tenant_id, created_at DESC, event_id DESC);
-- The reaper's: events older than the retention.
CREATE INDEX events_created_brin ON events USING brin (created_at);

-- Events by tenant, type and hour, for a look with psql.
CREATE VIEW events_per_hour AS
SELECT tenant_id,
       type,
       date_trunc('hour', created_at) AS hour,
       count(*)                       AS events
FROM events
GROUP BY tenant_id, type, date_trunc('hour', created_at)
ORDER BY hour DESC, tenant_id, type;
