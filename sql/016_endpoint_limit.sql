-- 016_endpoint_limit.sql - a tenant's endpoints are counted under a lock
--
-- The create statement of 013 counted the tenant's endpoints and inserted
-- one in a single statement, under READ COMMITTED: creates that arrived
-- together each counted from before the others' rows and all inserted, so
-- a tenant could pass --webhook-max-endpoints (16 at once at a limit of 2
-- made 4 or 5). This function takes a transaction-level advisory lock on
-- the tenant first, then counts in a statement of its own - a new
-- snapshot, which sees every create that held the lock before it - and
-- inserts only below the limit. The lock is held to the commit, so creates
-- of one tenant follow each other and other tenants' never wait (two
-- tenants whose names hash alike only take turns). Deleting takes no lock:
-- a delete beside a create can only leave the tenant below its limit.
--
-- Returns whether the endpoint was made (false: the limit).
CREATE FUNCTION webhook_endpoint_create(p_tenant text, p_endpoint text, p_url text,
                                        p_events text[], p_secret text,
                                        p_created timestamptz, p_max integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('mockery webhook_endpoints ' || p_tenant, 0));
    IF (SELECT count(*) FROM webhook_endpoints WHERE tenant_id = p_tenant) >= p_max THEN
        RETURN false;
    END IF;
    INSERT INTO webhook_endpoints (tenant_id, endpoint_id, url, events, secret, created_at)
    VALUES (p_tenant, p_endpoint, p_url, p_events, p_secret, p_created);
    RETURN true;
END
$$;
