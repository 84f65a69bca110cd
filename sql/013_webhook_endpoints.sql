-- 013_webhook_endpoints.sql - where a tenant wants its events sent
--
-- POST /api/v1/webhook_endpoints makes one (the secret is shown in that
-- answer only), GET lists them, DELETE removes one. events: the types the
-- endpoint wants, NULL for every type. secret: the HMAC key deliveries are
-- signed with (whsec_ and random characters). A tenant has a few: the
-- server refuses more than --webhook-max-endpoints.
CREATE TABLE webhook_endpoints (
    tenant_id   text        NOT NULL,
    endpoint_id text        NOT NULL,
    url         text        NOT NULL CHECK (octet_length(url) BETWEEN 1 AND 2048),
    events      text[]      CHECK (events <@ ARRAY['payment.succeeded', 'payment.declined',
                                                   'refund.succeeded']),
    secret      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, endpoint_id)
);
