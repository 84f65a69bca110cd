-- 015_deliveries_handed_off.sql - a payment's completion writes its
-- event's deliveries itself, leased to the completing server
--
-- A payment's completion (one, or a batch of them) now inserts its
-- event's deliveries in the same statement, rather than leaving them to
-- the fan-out trigger, so that it can lease them at once to its own
-- server's dispatchers and hand the event's bytes over in memory: a
-- delivery sent that way costs no claim statement (pg_sql.c,
-- docs/design.md). Such an event is written with deliveries_written
-- true, and the trigger passes it by. Every other writer of events - a
-- refund, a payment without a key, a server of the previous version
-- during a rolling upgrade, psql - leaves it false, and the trigger
-- writes the deliveries as before, unleased.
--
-- The trigger is now per row, with a WHEN clause: a row it passes by
-- costs neither a call nor a copy into a transition table.
ALTER TABLE events ADD COLUMN deliveries_written boolean NOT NULL DEFAULT false;

DROP TRIGGER events_fan_out ON events;
DROP FUNCTION webhook_deliveries_fan_out();

CREATE FUNCTION webhook_deliveries_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (tenant_id, event_id, endpoint_id, next_attempt_at, created_at)
    SELECT NEW.tenant_id, NEW.event_id, w.endpoint_id, now(), NEW.created_at
    FROM webhook_endpoints w
    WHERE w.tenant_id = NEW.tenant_id AND (w.events IS NULL OR NEW.type = ANY (w.events));
    RETURN NULL;
END
$$;

CREATE TRIGGER events_fan_out AFTER INSERT ON events
    FOR EACH ROW WHEN (NOT NEW.deliveries_written)
    EXECUTE FUNCTION webhook_deliveries_fan_out();
