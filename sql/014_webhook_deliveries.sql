-- 014_webhook_deliveries.sql - each event's deliveries to the endpoints
-- that want it
--
-- One row per (event, subscribed endpoint) not yet delivered, made in the
-- same transaction as the event - so a delivery exists exactly when its
-- event does - by the trigger below: whichever statement writes events (a
-- payment's completion, a batch of them, a refund, a payment without a
-- key), its deliveries come with them. A tenant with no endpoint costs the
-- trigger one look at an empty index range.
--
-- The servers' dispatchers claim due pending rows (FOR UPDATE SKIP LOCKED,
-- so several servers share them and none takes a row another holds),
-- count the attempt and lease the row (leased_until, past the request's
-- timeout); the attempt's result is written only while attempts still
-- holds the claimed number (a fencing token: a server that lost its lease
-- writes nothing). A claim changes no indexed column, and the table leaves
-- room in its pages (fillfactor): the claim's update is a HOT one, with
-- no index entry to write. A server killed mid-delivery leaves the row
-- pending; after the lease another server claims it and sends it again.
-- A delivered row is deleted: what stays is what has not been delivered -
-- pending, or failed after --webhook-max-attempts - so the table and its
-- index stay the size of the backlog, and a delivery costs one insert, one
-- update and one delete.
--
--   state           pending, or failed (given up)
--   attempts        attempts begun (the first delivery counts)
--   next_attempt_at when a pending row is due
--   leased_until    while an attempt is under way: not claimed again until then
--   last_status     the HTTP status of the last attempt; NULL without an answer
--   last_error      why the last attempt failed ("HTTP 500", "timeout ...")
--
-- No foreign keys (a check and a row lock on the event and the endpoint
-- for every delivery): deleting an endpoint deletes its deliveries in the
-- same statement, and so does reaping events (pg_sql.c).
CREATE TABLE webhook_deliveries (
    tenant_id       text        NOT NULL,
    event_id        text        NOT NULL,
    endpoint_id     text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    PRIMARY KEY (tenant_id, event_id, endpoint_id)
) WITH (fillfactor = 70);

-- The dispatchers': pending rows by when they are due (those under an
-- attempt too: a claim steps over them, at most a batch per dispatcher).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';

-- The fan-out: once per statement, over the events it inserted.
CREATE FUNCTION webhook_deliveries_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (tenant_id, event_id, endpoint_id, next_attempt_at, created_at)
    SELECT e.tenant_id, e.event_id, w.endpoint_id, now(), e.created_at
    FROM new_events e
    JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id
    WHERE w.events IS NULL OR e.type = ANY (w.events);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_deliveries_fan_out();

-- What has not been delivered, for a look with psql: pending (waiting for
-- an attempt or in one) and failed, with the event's type and the URL.
-- (The table itself holds only these; the view adds the names. url is
-- NULL for a delivery whose endpoint was deleted as its event was
-- written: failed when claimed.)
CREATE VIEW webhook_deliveries_undelivered AS
SELECT d.tenant_id,
       d.event_id,
       e.type,
       d.endpoint_id,
       w.url,
       d.state,
       d.attempts,
       now() - d.created_at AS age,
       d.next_attempt_at,
       d.leased_until,
       d.last_status,
       d.last_error
FROM webhook_deliveries d
JOIN events e USING (tenant_id, event_id)
LEFT JOIN webhook_endpoints w USING (tenant_id, endpoint_id)
ORDER BY d.created_at;
