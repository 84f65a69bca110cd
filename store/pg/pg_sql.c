/* pg_sql.c - the SQL the PostgreSQL store prepares on every connection
 * (pg_sql.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_sql.h"

/* Claim: insert, or take over an expired record or a processing one whose
 * holder's lease ran out (same fingerprint only). Returns a row only when this
 * request won. Row lock waits last at most one short commit, never a payment.
 * $6 is a new downstream key (sql/006): the record takes it when it is made
 * or is claimed again after its completed answer expired; a takeover keeps
 * the record's own, so every ask for one record carries the same key
 * downstream. A record still processing never expires: its request may
 * have moved money at an acquirer (an unknown outcome), and only a retry of
 * the same request, with the same key downstream, may take it over -
 * however late (its expiry moves on then).
 *
 * $7 is the request, kept by a server whose operations ask outside (an
 * acquirer) so that recovery can finish the record without its client
 * (sql/011); NULL for the in-process simulator's.
 *
 * Without a request the claim commits without waiting for the WAL flush
 * (synchronous_commit off for this statement's transaction only): no
 * client is told anything on the strength of a claim, and nothing moves
 * before the completion. If PostgreSQL crashes and loses it, the request's
 * completion fails too and its client retries. If the completion commits,
 * its synchronous commit flushes the WAL up to its own record - the claim's
 * record comes before it - so every acknowledged payment survives a crash
 * with its claim. One WAL flush per payment instead of two. With a request
 * the claim waits for its flush (the session's synchronous_commit): the
 * acquirer is asked under the record's key downstream next, and a record
 * lost in a crash after that ask would be made again with a new key - a
 * second charge. */
#define CLAIM_INTO                                                                                 \
    " INSERT INTO idempotency_keys AS k (tenant_id, idempotency_key, fingerprint, state,"          \
    " lease_token, locked_until, created_at, expires_at, downstream_key, request)"
/* A completed record whose answer expired: claimed as a new record. */
#define CLAIM_DONE_EXPIRED "(k.state = 'completed' AND k.expires_at <= now())"
#define CLAIM_ON_CONFLICT                                                                          \
    " ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET"                                      \
    " fingerprint = EXCLUDED.fingerprint, state = 'processing',"                                   \
    " downstream_key = CASE WHEN " CLAIM_DONE_EXPIRED " OR k.downstream_key IS NULL"               \
    " THEN EXCLUDED.downstream_key ELSE k.downstream_key END,"                                     \
    " lease_token = EXCLUDED.lease_token, locked_until = EXCLUDED.locked_until,"                   \
    " response_status = NULL, response_body = NULL, response_location = NULL,"                     \
    " completed_at = NULL, request = COALESCE(EXCLUDED.request, k.request),"                       \
    " duplicate_count = CASE WHEN " CLAIM_DONE_EXPIRED " THEN 0 ELSE k.duplicate_count END,"       \
    " last_duplicate_at = CASE WHEN " CLAIM_DONE_EXPIRED " THEN NULL"                              \
    " ELSE k.last_duplicate_at END,"                                                               \
    " created_at = CASE WHEN " CLAIM_DONE_EXPIRED " THEN EXCLUDED.created_at"                      \
    " ELSE k.created_at END,"                                                                      \
    " expires_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.expires_at"                       \
    " ELSE k.expires_at END"                                                                       \
    " WHERE " CLAIM_DONE_EXPIRED " OR (k.state = 'processing' AND k.locked_until <= now()"         \
    " AND k.fingerprint = EXCLUDED.fingerprint)"

/* The claim's flush: waited for only when it keeps a request (above).
 * CLAIM_ASYNC_IF, a condition true when no request is kept, CLAIM_ASYNC_END.
 * (Plain string macros: bench/run.py reads these statements too.) */
#define CLAIM_ASYNC_IF "WITH async AS (SELECT set_config('synchronous_commit', CASE WHEN "
#define CLAIM_ASYNC_END " THEN 'off' ELSE current_setting('synchronous_commit') END, true))"

static const char SQL_CLAIM[] = CLAIM_ASYNC_IF
    "$7::text IS NULL" CLAIM_ASYNC_END CLAIM_INTO
    " SELECT $1, $2, $3, 'processing', nextval('lease_token_seq'),"
    " now() + $4::bigint * interval '1 millisecond', now(),"
    " now() + $5::bigint * interval '1 millisecond', $6, $7 FROM async" CLAIM_ON_CONFLICT
    " RETURNING lease_token, (xmax = 0), " US_OF("created_at") ", downstream_key";

/* Several requests' claims in one statement (arrays of tenants, keys and
 * fingerprints), inserted in key order so that two batches lock the records
 * they share in the same order. A row comes back for each claim that won. */
static const char SQL_CLAIM_BATCH[] = CLAIM_ASYNC_IF
    "(SELECT bool_and(r IS NULL) FROM unnest($7::text[]) AS r)" CLAIM_ASYNC_END CLAIM_INTO
    " SELECT i.tenant, i.key, i.fp, 'processing', nextval('lease_token_seq'),"
    " now() + $4::bigint * interval '1 millisecond', now(),"
    " now() + $5::bigint * interval '1 millisecond', i.dk, i.req"
    " FROM unnest($1::text[], $2::text[], $3::text[], $6::text[], $7::text[])"
    " AS i(tenant, key, fp, dk, req), async"
    " ORDER BY i.tenant, i.key" CLAIM_ON_CONFLICT
    " RETURNING tenant_id, idempotency_key, lease_token, (xmax = 0), " US_OF(
        "created_at") ", downstream_key";

/* What a losing claim ran into, counted as a prevented duplicate. No row:
 * the record vanished (released) or became claimable since; claim again.
 * The count is a statistic: committed without waiting for the flush. */
static const char SQL_READ[] =
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))"
    " UPDATE idempotency_keys SET duplicate_count = duplicate_count + 1,"
    " last_duplicate_at = now() FROM async"
    " WHERE tenant_id = $1 AND idempotency_key = $2"
    " AND (expires_at > now() OR state = 'processing')"
    " AND NOT (state = 'processing' AND locked_until <= now() AND fingerprint = $3)"
    " RETURNING state, fingerprint, response_status, response_body, response_location, " US_OF(
        "created_at");

/* An operation's event (sql/012), inserted by the statement or transaction
 * that writes its rows: only where they are written. */
#define EVENT_INTO " INSERT INTO events (tenant_id, event_id, type, created_at, body)"

/* A payment's completion writes its event's deliveries itself (sql/015):
 * the event is marked so that the fan-out trigger passes it by, and FAN_OUT
 * inserts one delivery per endpoint of the tenant that wants the event's
 * type, as the trigger would. With $19 > 0 they are handed off
 * (pg_handoff.h): their first attempt counted and leased to this server
 * for $19 ms - not due before then, so no claim steps over them - and they
 * come back with their endpoints' URL and secret, to be sent from memory.
 * With $19 = 0 they are written as the trigger writes them, due now. */
#define EVENT_INTO_HANDED                                                                          \
    " INSERT INTO events (tenant_id, event_id, type, created_at, body, deliveries_written)"
#define EVENT_RETURNING " RETURNING tenant_id, event_id, type, created_at"
#define FAN_OUT                                                                                    \
    " fan AS (INSERT INTO webhook_deliveries (tenant_id, event_id, endpoint_id, attempts,"         \
    " next_attempt_at, leased_until, last_attempt_at, created_at)"                                 \
    " SELECT e.tenant_id, e.event_id, w.endpoint_id, CASE WHEN $19::bigint > 0 THEN 1 ELSE 0 END," \
    " now() + greatest($19::bigint, 0) * interval '1 millisecond',"                                \
    " CASE WHEN $19::bigint > 0 THEN now() + $19::bigint * interval '1 millisecond' END,"          \
    " CASE WHEN $19::bigint > 0 THEN now() END, e.created_at FROM ev e JOIN webhook_endpoints w"   \
    " ON w.tenant_id = e.tenant_id AND (w.events IS NULL OR e.type = ANY (w.events))"              \
    " RETURNING tenant_id, event_id, endpoint_id)"
/* The rows a payment's completion returns: (tenant, key) for each record
 * completed, then (tenant, NULL, event, endpoint, URL, secret) for each
 * delivery handed off. */
#define HANDED_OFF                                                                                 \
    " UNION ALL SELECT f.tenant_id, NULL, f.event_id, f.endpoint_id, w.url, w.secret FROM fan f"   \
    " JOIN webhook_endpoints w USING (tenant_id, endpoint_id) WHERE $19::bigint > 0"

/* Completion, payment row, event and its deliveries in one statement, so
 * in one transaction with one round trip: the payment and its event
 * ($15-$18; no event when $15 is NULL) are inserted only if the fenced
 * update matched; $19 as FAN_OUT says. Rows as HANDED_OFF says. */
static const char SQL_COMPLETE_PAYMENT[] =
    "WITH done AS (UPDATE idempotency_keys SET state = 'completed', response_status = $4,"
    " response_body = $5, response_location = $6, locked_until = NULL, completed_at = now(), "
    "request = NULL"
    " WHERE tenant_id = $1 AND idempotency_key = $2 AND lease_token = $3"
    " AND state = 'processing' RETURNING tenant_id),"
    " ev AS (" EVENT_INTO_HANDED " SELECT tenant_id, $15, $16, " TS_OF(
        "$17") ", $18::json, true FROM done WHERE $15::text IS NOT NULL" EVENT_RETURNING
               ")," FAN_OUT ","
               " paid AS (INSERT INTO payments (tenant_id, transaction_id, idempotency_key, "
               "customer_id,"
               " amount_minor, currency, description, status, processed_at, charge_id)"
               " SELECT tenant_id, $7, $2, $8, $9, $10, $11, $12, " TS_OF(
                   "$13") ", $14 FROM done)"
                          " SELECT tenant_id, $2::text, NULL, NULL, NULL, NULL FROM "
                          "done" HANDED_OFF;

/* Several requests' completions in one statement, so in one transaction and
 * one WAL flush: each record is updated only under its own fencing token, a
 * payment row, its event and the event's deliveries are inserted only for
 * the records that matched (and only where the completion carries them;
 * $19 as FAN_OUT says), and rows come back as HANDED_OFF says. Records are
 * locked in key order, as the claims lock them, so a batch of claims and one
 * of completions never wait for each other in a circle. */
static const char SQL_COMPLETE_BATCH[] =
    "WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[],"
    " $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[],"
    " $12::text[], $13::bigint[], $14::text[], $15::text[], $16::text[], $17::bigint[],"
    " $18::text[]) AS i(tenant, key, token, status, body, location, txn, customer, amount,"
    " currency, description, pstatus, processed, charge, evid, evtype, evcreated, evbody)"
    " ORDER BY tenant, key),"
    " done AS (UPDATE idempotency_keys k SET state = 'completed', response_status = i.status,"
    " response_body = i.body, response_location = i.location, locked_until = NULL,"
    " completed_at = now(), request = NULL FROM i WHERE k.tenant_id = i.tenant AND "
    "k.idempotency_key = i.key"
    " AND k.lease_token = i.token AND k.state = 'processing' RETURNING i.*),"
    " paid AS (INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id,"
    " amount_minor, currency, description, status, processed_at, charge_id)"
    " SELECT tenant, txn, key, customer, amount, currency, description, pstatus,"
    " " TS_OF("processed") ", charge FROM done WHERE txn IS NOT NULL),"
                           " ev AS (" EVENT_INTO_HANDED " SELECT tenant, evid, evtype, " TS_OF(
                               "evcreated") ", evbody::json, true"
                                            " FROM done WHERE evid IS NOT NULL" EVENT_RETURNING
                                            ")," FAN_OUT " SELECT tenant, key, NULL, NULL, NULL, "
                                            "NULL FROM done" HANDED_OFF;

static const char SQL_COMPLETE[] =
    "UPDATE idempotency_keys SET state = 'completed', response_status = $4,"
    " response_body = $5, response_location = $6, locked_until = NULL, completed_at = now(), "
    "request = NULL"
    " WHERE tenant_id = $1 AND idempotency_key = $2 AND lease_token = $3"
    " AND state = 'processing'";

static const char SQL_RELEASE[] =
    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = $2"
    " AND lease_token = $3 AND state = 'processing'";

/* The lease ends now; the record stays processing (store_abandon). */
static const char SQL_ABANDON[] =
    "UPDATE idempotency_keys SET locked_until = now() WHERE tenant_id = $1"
    " AND idempotency_key = $2 AND lease_token = $3 AND state = 'processing'";

/* A payment without a key, and its event ($11-$14) in the same statement. */
static const char SQL_INSERT_PAYMENT[] = "WITH ev AS (" EVENT_INTO " SELECT $1, $11, $12, " TS_OF(
    "$13") ", $14::json"
           " WHERE $11::text IS NOT NULL)"
           " INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id,"
           " amount_minor, currency, description, status, processed_at, charge_id)"
           " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, " TS_OF("$9") ", $10)";

#define PAYMENT_COLS                                                                               \
    "transaction_id, idempotency_key, customer_id, amount_minor, currency, description,"           \
    " status, " US_OF("processed_at") ", amount_refunded_minor, charge_id"

static const char SQL_GET_PAYMENT[] =
    "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1 AND transaction_id = $2";

static const char SQL_CURSOR[] =
    "SELECT processed_at::text FROM payments WHERE tenant_id = $1 AND transaction_id = $2";

/* $3/$4: the cursor's (processed_at, transaction_id), or ('infinity', '') */
static const char SQL_LIST[] = "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1"
                               " AND (processed_at, transaction_id) < ($2::timestamptz, $3)"
                               " ORDER BY processed_at DESC, transaction_id DESC LIMIT $4";

static const char SQL_LIST_CUSTOMER[] =
    "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1 AND customer_id = $5"
    " AND (processed_at, transaction_id) < ($2::timestamptz, $3)"
    " ORDER BY processed_at DESC, transaction_id DESC LIMIT $4";

/* A refund's share of its payment, taken under the payment row's lock:
 * refunds of one payment queue on it, and each sees the sum the previous
 * one committed (READ COMMITTED re-evaluates the condition on the newest
 * version after the wait). No row: the refund does not fit. */
static const char SQL_REFUND_APPLY[] =
    "UPDATE payments SET amount_refunded_minor = amount_refunded_minor + $3"
    " WHERE tenant_id = $1 AND transaction_id = $2 AND status = 'completed'"
    " AND amount_refunded_minor + $3::bigint <= amount_minor";

static const char SQL_INSERT_REFUND[] =
    "INSERT INTO refunds (tenant_id, refund_id, transaction_id, idempotency_key, amount_minor,"
    " currency, reason, status, created_at, acquirer_refund_id)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, " TS_OF("$9") ", $10)";

#define REFUND_COLS                                                                                \
    "refund_id, transaction_id, idempotency_key, amount_minor, currency, reason, status, " US_OF(  \
        "created_at") ", acquirer_refund_id"

static const char SQL_GET_REFUND[] =
    "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND refund_id = $2";

static const char SQL_REFUND_CURSOR[] = "SELECT created_at::text FROM refunds"
                                        " WHERE tenant_id = $1 AND refund_id = $2"
                                        " AND transaction_id = $3";

/* $3/$4: the cursor's (created_at, refund_id), or ('infinity', '') */
static const char SQL_LIST_REFUNDS[] =
    "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND transaction_id = $2"
    " AND (created_at, refund_id) < ($3::timestamptz, $4)"
    " ORDER BY created_at DESC, refund_id DESC LIMIT $5";

/* A refund's event, in the refund's transaction. */
static const char SQL_INSERT_EVENT[] = EVENT_INTO " VALUES ($1, $2, $3, " TS_OF("$4") ", $5::json)";

#define EVENT_COLS "event_id, type, " US_OF("created_at") ", body"

static const char SQL_GET_EVENT[] =
    "SELECT " EVENT_COLS " FROM events WHERE tenant_id = $1 AND event_id = $2";

static const char SQL_EVENT_CURSOR[] =
    "SELECT created_at::text FROM events WHERE tenant_id = $1 AND event_id = $2";

/* $2/$3: the cursor's (created_at, event_id), or ('infinity', ''); $5: a
 * type, or NULL for all (few types: a filter on the newest-first scan). */
static const char SQL_LIST_EVENTS[] =
    "SELECT " EVENT_COLS " FROM events WHERE tenant_id = $1"
    " AND (created_at, event_id) < ($2::timestamptz, $3) AND ($5::text IS NULL OR type = $5)"
    " ORDER BY created_at DESC, event_id DESC LIMIT $4";

/* Events older than the retention ($1 ms), at most $2 a pass, and their
 * deliveries (delivered ones are gone already; failed ones and any still
 * pending go with their event); found by the BRIN index on created_at.
 * SKIP LOCKED lets several servers reap at once. Answers how many events. */
static const char SQL_REAP_EVENTS[] =
    "WITH gone AS (DELETE FROM events WHERE (tenant_id, event_id) IN"
    " (SELECT tenant_id, event_id FROM events"
    " WHERE created_at < now() - $1::bigint * interval '1 millisecond' LIMIT $2"
    " FOR UPDATE SKIP LOCKED) RETURNING tenant_id, event_id),"
    " deliveries AS (DELETE FROM webhook_deliveries d USING gone"
    " WHERE d.tenant_id = gone.tenant_id AND d.event_id = gone.event_id)"
    " SELECT count(*) FROM gone";

/* Webhook endpoints (sql/013): one more for the tenant unless it has $7
 * already - counted under the tenant's lock (sql/016): false, the limit. */
static const char SQL_CREATE_ENDPOINT[] =
    "SELECT webhook_endpoint_create($1, $2, $3, string_to_array($4, ','), $5, " TS_OF(
        "$6") ", $7::int)";

static const char SQL_LIST_ENDPOINTS[] =
    "SELECT endpoint_id, url, array_to_string(events, ','), secret, " US_OF(
        "created_at") " FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY created_at, "
                      "endpoint_id";

/* An endpoint and, in the same statement, its deliveries not yet made. */
static const char SQL_DELETE_ENDPOINT[] =
    "WITH deliveries AS (DELETE FROM webhook_deliveries WHERE tenant_id = $1"
    " AND endpoint_id = $2)"
    " DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND endpoint_id = $2";

/* Webhook deliveries (sql/014). The results of attempts commit without
 * waiting for their WAL flush: set_config(..., true) lasts until the
 * transaction's end, and its commit reads it. A result lost in a crash
 * only means the delivery is sent again once its lease ends, which at
 * least once allows. A claim waits for its flush (and a synchronous
 * standby's): lost in a crash or a failover while its server is still
 * sending, it would let another server claim the row and send it at the
 * same time. A claim that takes no row writes nothing and waits for
 * nothing. */
#define DELIVERY_ASYNC "async AS (SELECT set_config('synchronous_commit', 'off', true) AS off)"

/* A claim takes at most $1 due pending rows no other transaction holds
 * (SKIP LOCKED: servers claiming at once take different rows) and no
 * attempt holds, oldest due first, none to an endpoint the sender has
 * attempts under way to ($3, $4: tenants and endpoints) - its rows are
 * stepped over to the others' behind them - and none that came due more
 * than $5 ms ago (a bound of the index scan: a busy endpoint's older
 * backlog is not even stepped over), and locks only those it takes;
 * it counts the attempt and leases each for $2 ms (leased_until: no
 * indexed column changes, so the update is HOT). It commits before
 * anything is sent, so a server that dies mid-delivery leaves a row that
 * is due again when the lease ends. The endpoint and the event come with
 * it; a row whose endpoint was deleted as its event was written (no
 * foreign key stops that) comes without, to be failed. */
static const char SQL_CLAIM_DELIVERIES[] =
    "WITH busy AS (SELECT * FROM unnest($3::text[], $4::text[]) AS b(tenant_id, endpoint_id)),"
    " due AS (SELECT tenant_id, event_id, endpoint_id FROM webhook_deliveries d"
    " WHERE state = 'pending' AND next_attempt_at <= now()"
    " AND next_attempt_at >= now() - $5::bigint * interval '1 millisecond'"
    " AND (leased_until IS NULL OR leased_until <= now()) AND NOT EXISTS (SELECT 1 FROM busy b"
    " WHERE b.tenant_id = d.tenant_id AND b.endpoint_id = d.endpoint_id)"
    " ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED),"
    " claimed AS (UPDATE webhook_deliveries d SET attempts = d.attempts + 1,"
    " last_attempt_at = now(), leased_until = now() + $2::bigint * interval '1 millisecond'"
    " FROM due WHERE d.tenant_id = due.tenant_id AND d.event_id = due.event_id"
    " AND d.endpoint_id = due.endpoint_id"
    " RETURNING d.tenant_id, d.event_id, d.endpoint_id, d.attempts)"
    " SELECT c.tenant_id, c.event_id, c.endpoint_id, c.attempts, w.url, w.secret, e.body"
    " FROM claimed c LEFT JOIN webhook_endpoints w USING (tenant_id, endpoint_id)"
    " LEFT JOIN events e USING (tenant_id, event_id)";

/* Attempts' results, one array element each; a row is written only while
 * it is pending and attempts is still the number claimed ($4): a server
 * whose lease ran out and was claimed again writes nothing. Delivered:
 * the row is deleted; else it is pending again, due in $7 ms, or failed. */
static const char SQL_FINISH_DELIVERIES[] =
    "WITH " DELIVERY_ASYNC ","
    " r AS (SELECT r.* FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::int[],"
    " $6::text[], $7::bigint[], $8::int[], $9::text[])"
    " AS r(tenant_id, event_id, endpoint_id, attempt, attempts, state, retry_ms, status, error),"
    " async WHERE async.off = 'off'),"
    " done AS (DELETE FROM webhook_deliveries d USING r WHERE r.state = 'delivered'"
    " AND d.tenant_id = r.tenant_id AND d.event_id = r.event_id"
    " AND d.endpoint_id = r.endpoint_id AND d.state = 'pending' AND d.attempts = r.attempt)"
    " UPDATE webhook_deliveries d SET state = r.state, attempts = r.attempts,"
    " next_attempt_at = CASE WHEN r.state = 'pending'"
    " THEN now() + r.retry_ms * interval '1 millisecond' ELSE d.next_attempt_at END,"
    " leased_until = NULL, last_status = r.status, last_error = r.error"
    " FROM r WHERE r.state <> 'delivered' AND d.tenant_id = r.tenant_id"
    " AND d.event_id = r.event_id AND d.endpoint_id = r.endpoint_id AND d.state = 'pending'"
    " AND d.attempts = r.attempt";

/* Pending deliveries and the oldest one's event time (the due index). */
static const char SQL_DELIVERY_BACKLOG[] =
    "SELECT count(*), coalesce(" US_OF("min(created_at)") ", 0) FROM webhook_deliveries"
    " WHERE state = 'pending'";

/* The acquirer's ledger (sql/007). A charge is written by its record's
 * completion as a payment is (complete_payment, complete_batch): inserted
 * only where the fenced update matched, in the same statement - one round
 * trip, and under load one statement and one WAL flush for a batch of
 * them. insert_charge: a charge without a key. */
#define CHARGE_INTO                                                                                \
    " INSERT INTO acquirer_charges (charge_id, merchant, customer_id, amount_minor, currency,"     \
    " status, decline_code, reference, idempotency_key, created_at)"

static const char SQL_COMPLETE_CHARGE[] =
    "WITH done AS (UPDATE idempotency_keys SET state = 'completed', response_status = $4,"
    " response_body = $5, response_location = $6, locked_until = NULL, completed_at = now(),"
    " request = NULL WHERE tenant_id = $1 AND idempotency_key = $2 AND lease_token = $3"
    " AND state = 'processing' RETURNING tenant_id)" CHARGE_INTO
    " SELECT $7, $8, $9, $10, $11, $12, $13, $14, $15, " TS_OF("$16") " FROM done";

static const char SQL_COMPLETE_CHARGE_BATCH[] =
    "WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[],"
    " $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[],"
    " $12::text[], $13::text[], $14::text[], $15::text[], $16::bigint[]) AS i(tenant, key, token,"
    " status, body, location, charge, merchant, customer, amount, currency, cstatus, decline,"
    " reference, ikey, created) ORDER BY tenant, key),"
    " done AS (UPDATE idempotency_keys k SET state = 'completed', response_status = i.status,"
    " response_body = i.body, response_location = i.location, locked_until = NULL,"
    " completed_at = now(), request = NULL FROM i WHERE k.tenant_id = i.tenant AND"
    " k.idempotency_key = i.key AND k.lease_token = i.token AND k.state = 'processing'"
    " RETURNING i.*),"
    " charged AS (" CHARGE_INTO " SELECT charge, merchant, customer, amount, currency, cstatus,"
    " decline, reference, ikey, " TS_OF("created") " FROM done)"
                                                   " SELECT tenant, key FROM done";

static const char SQL_INSERT_CHARGE[] =
    CHARGE_INTO " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, " TS_OF("$10") ")";

/* A refund's share of its charge, under the charge row's lock, as a
 * refund's of its payment. */
static const char SQL_CHARGE_REFUND_APPLY[] =
    "UPDATE acquirer_charges SET amount_refunded_minor = amount_refunded_minor + $2"
    " WHERE charge_id = $1 AND status = 'succeeded'"
    " AND amount_refunded_minor + $2::bigint <= amount_minor";

static const char SQL_INSERT_CHARGE_REFUND[] =
    "INSERT INTO acquirer_refunds (refund_id, charge_id, amount_minor, reference,"
    " idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5, " TS_OF("$6") ")";

#define CHARGE_COLS                                                                                \
    "charge_id, merchant, customer_id, amount_minor, currency, status, decline_code, reference,"   \
    " idempotency_key, " US_OF("created_at") ", amount_refunded_minor"

static const char SQL_GET_CHARGE[] =
    "SELECT " CHARGE_COLS " FROM acquirer_charges WHERE charge_id = $1";

static const char SQL_LIST_CHARGES[] =
    "SELECT " CHARGE_COLS " FROM acquirer_charges WHERE reference = $1"
    " ORDER BY created_at, charge_id LIMIT $2";

static const char SQL_LIST_CHARGE_REFUNDS[] =
    "SELECT refund_id, charge_id, amount_minor, reference, idempotency_key, " US_OF(
        "created_at") " FROM acquirer_refunds WHERE charge_id = $1 ORDER BY created_at, refund_id "
                      "LIMIT $2";

/* Bounded work per pass; SKIP LOCKED lets several servers reap together.
 * Completed records, and records still processing that kept no request
 * once their lease ended too: nothing outside waits on those (their rows
 * are written with their completion or not at all) - a server killed
 * mid-request that no client retried. One that kept its request is
 * unfinished business (its money may have moved at an acquirer) and is
 * kept until it is finished. */
static const char SQL_REAP[] =
    "DELETE FROM idempotency_keys WHERE (tenant_id, idempotency_key) IN"
    " (SELECT tenant_id, idempotency_key FROM idempotency_keys WHERE expires_at <= now()"
    " AND (state = 'completed' OR (request IS NULL AND locked_until <= now()))"
    " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)";

/* Recovery (store_recover): the record that kept its request and whose
 * lease ran out longest ago, taken over under a new lease as a retry's
 * claim would (its fingerprint and key downstream kept). A record asked
 * again and still unknown ends its lease now, so it goes to the back of
 * the line. SKIP LOCKED: servers recovering at once each take another
 * record; one whose lease is live (another server's, or its client's
 * retry) is not taken. The partial index (sql/011) holds only records
 * that asked outside and are not completed: a few, sorted here. */
static const char SQL_RECOVER[] =
    "UPDATE idempotency_keys k SET lease_token = nextval('lease_token_seq'),"
    " locked_until = now() + $1::bigint * interval '1 millisecond'"
    " FROM (SELECT tenant_id, idempotency_key FROM idempotency_keys"
    " WHERE request IS NOT NULL AND state = 'processing' AND locked_until <= now()"
    " ORDER BY locked_until, created_at LIMIT 1 FOR UPDATE SKIP LOCKED) c"
    " WHERE k.tenant_id = c.tenant_id AND k.idempotency_key = c.idempotency_key"
    " RETURNING k.tenant_id, k.idempotency_key, k.fingerprint, k.lease_token, k.downstream_key,"
    " k.request, " US_OF("k.created_at");

/* The records recovery is for, waiting now: how many, and the oldest's
 * creation (NULL when none). */
static const char SQL_UNFINISHED[] =
    "SELECT count(*), " US_OF("min(created_at)") " FROM idempotency_keys"
                                                 " WHERE request IS NOT NULL AND state = "
                                                 "'processing' AND locked_until <= now()";

static const char SQL_PING[] = "SELECT 1";

const struct pg_prepared PG_PREPARED[] = {
    {"claim", SQL_CLAIM, 7},
    {"claim_batch", SQL_CLAIM_BATCH, 7},
    {"complete_batch", SQL_COMPLETE_BATCH, 19},
    {"read", SQL_READ, 3},
    {"complete_payment", SQL_COMPLETE_PAYMENT, 19},
    {"complete", SQL_COMPLETE, 6},
    {"release", SQL_RELEASE, 3},
    {"abandon", SQL_ABANDON, 3},
    {"insert_payment", SQL_INSERT_PAYMENT, 14},
    {"get_payment", SQL_GET_PAYMENT, 2},
    {"cursor", SQL_CURSOR, 2},
    {"list", SQL_LIST, 4},
    {"list_customer", SQL_LIST_CUSTOMER, 5},
    {"refund_apply", SQL_REFUND_APPLY, 3},
    {"insert_refund", SQL_INSERT_REFUND, 10},
    {"get_refund", SQL_GET_REFUND, 2},
    {"refund_cursor", SQL_REFUND_CURSOR, 3},
    {"list_refunds", SQL_LIST_REFUNDS, 5},
    {"insert_event", SQL_INSERT_EVENT, 5},
    {"get_event", SQL_GET_EVENT, 2},
    {"event_cursor", SQL_EVENT_CURSOR, 2},
    {"list_events", SQL_LIST_EVENTS, 5},
    {"reap_events", SQL_REAP_EVENTS, 2},
    {"create_endpoint", SQL_CREATE_ENDPOINT, 7},
    {"list_endpoints", SQL_LIST_ENDPOINTS, 1},
    {"delete_endpoint", SQL_DELETE_ENDPOINT, 2},
    {"claim_deliveries", SQL_CLAIM_DELIVERIES, 5},
    {"finish_deliveries", SQL_FINISH_DELIVERIES, 9},
    {"delivery_backlog", SQL_DELIVERY_BACKLOG, 0},
    {"insert_charge", SQL_INSERT_CHARGE, 10},
    {"complete_charge", SQL_COMPLETE_CHARGE, 16},
    {"complete_charge_batch", SQL_COMPLETE_CHARGE_BATCH, 16},
    {"charge_refund_apply", SQL_CHARGE_REFUND_APPLY, 2},
    {"insert_charge_refund", SQL_INSERT_CHARGE_REFUND, 6},
    {"get_charge", SQL_GET_CHARGE, 1},
    {"list_charges", SQL_LIST_CHARGES, 2},
    {"list_charge_refunds", SQL_LIST_CHARGE_REFUNDS, 2},
    {"reap", SQL_REAP, 1},
    {"recover", SQL_RECOVER, 1},
    {"unfinished", SQL_UNFINISHED, 0},
    {"ping", SQL_PING, 0},
};

const size_t PG_PREPARED_COUNT = sizeof PG_PREPARED / sizeof PG_PREPARED[0];
