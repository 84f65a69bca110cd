/* pg_idem.c - the PostgreSQL store's idempotency operations: claim,
 * complete with the operation's rows, release, and rows without a key
 * (docs/design.md, "How a payment is kept exactly once"; the SQL is in pg_sql.c) */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads the record a losing claim ran into. *retry is set when the record
 * vanished or became claimable in between (the claim should run again). */
static enum store_status read_existing(struct store_pg *pg, int idx, const char *tenant,
                                       const char *key, const char *fingerprint,
                                       struct store_claim_result *out, int *retry, char *err,
                                       size_t errlen)
{
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, key, fingerprint};
    PGresult *res =
        pg_pool_exec(&pg->pool, idx, "read", 3, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    *retry = 0;
    if (PQntuples(res) == 0) {
        *retry = 1;
        goto out;
    }
    int completed = strcmp(PQgetvalue(res, 0, 0), "completed") == 0;
    int same = strcmp(PQgetvalue(res, 0, 1), fingerprint) == 0;
    int64_t created = pg_int_value(res, 0, 5);
    if (!same) {
        *out = (struct store_claim_result){.outcome = CLAIM_MISMATCH, .created_at_us = created};
    } else if (!completed) {
        *out = (struct store_claim_result){.outcome = CLAIM_IN_PROGRESS, .created_at_us = created};
    } else {
        struct store_claim_result r = {.outcome = CLAIM_COMPLETED,
                                       .response_status = (int)pg_int_value(res, 0, 2),
                                       .created_at_us = created};
        r.response_body = pg_dup_value(res, 0, 3);
        r.response_body_len = r.response_body ? strlen(r.response_body) : 0;
        r.response_location = pg_dup_value(res, 0, 4);
        if (!r.response_body || (!PQgetisnull(res, 0, 4) && !r.response_location)) {
            store_claim_result_clear(&r);
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
            goto out;
        }
        *out = r;
    }
out:
    PQclear(res);
    return st;
}

enum store_status pg_claim(struct store *s, const char *tenant, const char *key,
                           const char *fingerprint, const char *request, const char *downstream,
                           int64_t lease_ms, int64_t ttl_ms, struct store_claim_result *out,
                           char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char lease[24], ttl[24];
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);

    /* A record can vanish (released) or become claimable between the claim
     * and the read of what it ran into; a few rounds settle it. */
    for (int attempt = 0; attempt < 5; attempt++) {
        struct pg_batch_op op = {
            .kind = PG_BATCH_CLAIM,
            .vals = {tenant, key, fingerprint, lease, ttl, downstream, request},
            .nvals = 7,
            .err = err,
            .errlen = errlen};
        pg_batch_submit(&pg->batch, &op);
        if (op.st != STORE_OK)
            return op.st;
        if (op.matched) {
            *out = (struct store_claim_result){.outcome = op.inserted ? CLAIM_NEW : CLAIM_TAKEOVER,
                                               .lease_token = op.lease_token,
                                               .created_at_us = op.created_at_us};
            snprintf(out->downstream_key, sizeof out->downstream_key, "%s", op.downstream_key);
            return STORE_OK;
        }
        int retry = 0;
        int idx = pg_pool_acquire(&pg->pool, err, errlen);
        if (idx < 0)
            return STORE_UNAVAILABLE;
        st = read_existing(pg, idx, tenant, key, fingerprint, out, &retry, err, errlen);
        pg_pool_release(&pg->pool, idx);
        if (st != STORE_OK || !retry)
            return st;
    }
    snprintf(err, errlen, "claim did not settle after 5 attempts");
    return STORE_UNAVAILABLE;
}

/* Runs one statement of a transaction: 1 when it changed a row, 0 when it
 * changed none, -1 on failure (*st and err set). */
static int tx_step(struct store_pg *pg, int idx, const char *stmt, int n, const char *const *vals,
                   enum store_status *st, char *err, size_t errlen)
{
    PGresult *res = pg_pool_exec(&pg->pool, idx, stmt, n, vals, PGRES_COMMAND_OK, st, err, errlen);
    if (!res)
        return -1;
    int changed = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return changed;
}

static int tx_exec(struct store_pg *pg, int idx, const char *sql, enum store_status *st, char *err,
                   size_t errlen)
{
    PGconn *conn = pg->pool.conns[idx];
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        *st = pg_status_of(conn, res);
        pg_first_line(err, errlen, sql, PQerrorMessage(conn));
    }
    PQclear(res);
    return ok ? 0 : -1;
}

/* An event's parameters as text: its creation in microseconds and its
 * body NUL-terminated (malloc'd, *body). No event: *body NULL. Returns 0,
 * or -1 when out of memory. */
static int event_text(const struct store_event *e, char created[24], char **body)
{
    *body = NULL;
    if (!e)
        return 0;
    snprintf(created, 24, "%" PRId64, e->created_at_us);
    *body = strndup(e->body, e->body_len);
    return *body ? 0 : -1;
}

/* What a transaction of rows does, for the rows the group commit does not
 * carry (refunds, the ledger's rows): a condition first (apply: an UPDATE
 * that takes the row lock which orders writers of one payment or charge;
 * no row changed: STORE_REJECTED, why), then - with a key - the fenced
 * completion of the record, then the insert. Locking the parent row before
 * the record means a duplicate's claim on the record never waits while this
 * one waits for another refund of the same payment. */
struct tx_rows {
    const char *apply; /* a statement, or NULL */
    const char *const *apply_vals;
    int napply;
    const char *why;
    const char *insert;
    const char *const *insert_vals;
    int ninsert;
    const struct store_event *event; /* inserted last, or NULL */
};

static enum store_status write_tx(struct store_pg *pg, const char *tenant, const char *key,
                                  int64_t lease_token, const struct store_response *resp,
                                  const struct tx_rows *t, char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    char token[24], status[16];
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    snprintf(status, sizeof status, "%d", resp ? resp->status : 0);
    char *body = key ? strndup(resp->body, resp->body_len) : NULL, *evbody = NULL, evcreated[24];
    if ((key && !body) || event_text(t->event, evcreated, &evbody) != 0) {
        free(body);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    const char *done[] = {tenant, key, token, status, body, key ? resp->location : NULL};

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0) {
        free(body);
        free(evbody);
        return STORE_UNAVAILABLE;
    }
    int rc = tx_exec(pg, idx, "BEGIN", &st, err, errlen);
    if (rc == 0)
        rc = t->apply ? tx_step(pg, idx, t->apply, t->napply, t->apply_vals, &st, err, errlen) : 1;
    if (rc == 0) {
        snprintf(err, errlen, "%s", t->why);
        st = STORE_REJECTED;
    }
    if (rc == 1 && key) {
        rc = tx_step(pg, idx, "complete", 6, done, &st, err, errlen);
        if (rc == 0) {
            snprintf(err, errlen, "lease lost on key");
            st = STORE_LEASE_LOST;
        }
    }
    if (rc == 1)
        rc = tx_step(pg, idx, t->insert, t->ninsert, t->insert_vals, &st, err, errlen) < 0 ? -1 : 1;
    if (rc == 1 && t->event) {
        const char *ev[] = {tenant, t->event->event_id, t->event->type, evcreated, evbody};
        rc = tx_step(pg, idx, "insert_event", 5, ev, &st, err, errlen) < 0 ? -1 : 1;
    }
    if (rc == 1)
        rc = tx_exec(pg, idx, "COMMIT", &st, err, errlen) == 0 ? 1 : -1;
    else if (PQtransactionStatus(pg->pool.conns[idx]) != PQTRANS_IDLE)
        PQclear(PQexec(pg->pool.conns[idx], "ROLLBACK"));
    pg_pool_release(&pg->pool, idx);
    free(body);
    free(evbody);
    return st;
}

/* The rows that are written in a transaction of their own (write_tx):
 * a refund, the ledger's refund, or its charge without a key. 1 when rows
 * hold none of them (a payment, a charge with its key, or nothing: the
 * group commit's), else 0 with *st. */
static int write_tx_rows(struct store_pg *pg, const char *tenant, const char *key,
                         int64_t lease_token, const struct store_response *resp,
                         const struct store_rows *rows, enum store_status *st, char *err,
                         size_t errlen)
{
    if (!rows)
        return 1;
    int kinds = !!rows->payment + !!rows->refund + !!rows->charge + !!rows->charge_refund;
    if (kinds > 1) {
        snprintf(err, errlen, "rows carry one payment, refund, charge or charge refund, not two");
        *st = STORE_ERROR;
        return 0;
    }
    if (rows->event && !rows->payment && !rows->refund) {
        snprintf(err, errlen, "an event comes with its payment or refund");
        *st = STORE_ERROR;
        return 0;
    }
    char amount[24], created[24];
    if (rows->refund) {
        const struct store_refund *rf = rows->refund;
        snprintf(amount, sizeof amount, "%" PRId64, rf->amount_minor);
        snprintf(created, sizeof created, "%" PRId64, rf->created_at_us);
        const char *apply[] = {tenant, rf->transaction_id, amount};
        const char *row[] = {
            tenant,  rf->refund_id,         rf->transaction_id, rf->idempotency_key,
            amount,  rf->currency,          rf->reason,         rf->status,
            created, rf->acquirer_refund_id};
        struct tx_rows t = {"refund_apply",  apply, 3,  "refund does not fit its payment",
                            "insert_refund", row,   10, rows->event};
        *st = write_tx(pg, tenant, key, lease_token, resp, &t, err, errlen);
        return 0;
    }
    if (rows->charge && !key) {
        const struct store_charge *c = rows->charge;
        snprintf(amount, sizeof amount, "%" PRId64, c->amount_minor);
        snprintf(created, sizeof created, "%" PRId64, c->created_at_us);
        const char *row[] = {c->charge_id,       c->merchant, c->customer_id,  amount,
                             c->currency,        c->status,   c->decline_code, c->reference,
                             c->idempotency_key, created};
        struct tx_rows t = {NULL, NULL, 0, NULL, "insert_charge", row, 10, NULL};
        *st = write_tx(pg, tenant, key, lease_token, resp, &t, err, errlen);
        return 0;
    }
    if (rows->charge_refund) {
        const struct store_charge_refund *rf = rows->charge_refund;
        snprintf(amount, sizeof amount, "%" PRId64, rf->amount_minor);
        snprintf(created, sizeof created, "%" PRId64, rf->created_at_us);
        const char *apply[] = {rf->charge_id, amount};
        const char *row[] = {rf->refund_id, rf->charge_id,       amount,
                             rf->reference, rf->idempotency_key, created};
        struct tx_rows t = {"charge_refund_apply",  apply, 2, "refund does not fit its charge",
                            "insert_charge_refund", row,   6, NULL};
        *st = write_tx(pg, tenant, key, lease_token, resp, &t, err, errlen);
        return 0;
    }
    return 1;
}

enum store_status pg_complete(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, const struct store_response *resp,
                              const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const struct store_payment *p = rows ? rows->payment : NULL;
    const struct store_charge *c = rows ? rows->charge : NULL;
    if (!write_tx_rows(pg, tenant, key, lease_token, resp, rows, &st, err, errlen))
        return st;
    char token[24], status[16], amount[24], processed[24], evcreated[24];
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    snprintf(status, sizeof status, "%d", resp->status);
    char *body = strndup(resp->body, resp->body_len), *evbody = NULL;
    if (!body || event_text(rows ? rows->event : NULL, evcreated, &evbody) != 0) {
        free(body);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    struct pg_batch_op op = {.kind = PG_BATCH_COMPLETE,
                             .vals = {tenant, key, token, status, body, resp->location},
                             .nvals = 6,
                             .err = err,
                             .errlen = errlen};
    if (p) {
        snprintf(amount, sizeof amount, "%" PRId64, p->amount_minor);
        snprintf(processed, sizeof processed, "%" PRId64, p->processed_at_us);
        op.vals[6] = p->transaction_id;
        op.vals[7] = p->customer_id;
        op.vals[8] = amount;
        op.vals[9] = p->currency;
        op.vals[10] = p->description;
        op.vals[11] = p->status;
        op.vals[12] = processed;
        op.vals[13] = p->charge_id;
        if (evbody) {
            op.vals[14] = rows->event->event_id;
            op.vals[15] = rows->event->type;
            op.vals[16] = evcreated;
            op.vals[17] = evbody;
        }
        op.nvals = PG_BATCH_PAYMENT_VALS;
    } else if (c) {
        snprintf(amount, sizeof amount, "%" PRId64, c->amount_minor);
        snprintf(processed, sizeof processed, "%" PRId64, c->created_at_us);
        const char *row[] = {c->charge_id,       c->merchant, c->customer_id,  amount,
                             c->currency,        c->status,   c->decline_code, c->reference,
                             c->idempotency_key, processed};
        memcpy(op.vals + 6, row, sizeof row);
        op.kind = PG_BATCH_COMPLETE_CHARGE;
        op.nvals = PG_BATCH_CHARGE_VALS;
    }
    pg_batch_submit(&pg->batch, &op);
    st = op.st;
    if (st == STORE_OK && !op.matched) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    }
    free(body);
    free(evbody);
    return st;
}

/* The fenced one-statement changes of a record: release, abandon. */
static enum store_status fenced(struct store *s, const char *stmt, const char *tenant,
                                const char *key, int64_t lease_token, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char token[24];
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    const char *vals[] = {tenant, key, token};
    PGresult *res = pg_pool_exec_one(&pg->pool, stmt, 3, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        if (strcmp(PQcmdTuples(res), "1") != 0) {
            snprintf(err, errlen, "lease lost on key");
            st = STORE_LEASE_LOST;
        }
        PQclear(res);
    }
    return st;
}

enum store_status pg_release(struct store *s, const char *tenant, const char *key,
                             int64_t lease_token, char *err, size_t errlen)
{
    return fenced(s, "release", tenant, key, lease_token, err, errlen);
}

enum store_status pg_abandon(struct store *s, const char *tenant, const char *key,
                             int64_t lease_token, char *err, size_t errlen)
{
    return fenced(s, "abandon", tenant, key, lease_token, err, errlen);
}

enum store_status pg_write_rows(struct store *s, const char *tenant, const struct store_rows *rows,
                                char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const struct store_payment *p = rows->payment;
    if (!write_tx_rows(pg, tenant, NULL, 0, NULL, rows, &st, err, errlen))
        return st;
    if (!p)
        return STORE_OK;
    char amount[24], processed[24], evcreated[24];
    char *evbody = NULL;
    if (event_text(rows->event, evcreated, &evbody) != 0) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    const struct store_event *e = rows->event;
    snprintf(amount, sizeof amount, "%" PRId64, p->amount_minor);
    snprintf(processed, sizeof processed, "%" PRId64, p->processed_at_us);
    const char *vals[] = {tenant,
                          p->transaction_id,
                          p->idempotency_key,
                          p->customer_id,
                          amount,
                          p->currency,
                          p->description,
                          p->status,
                          processed,
                          p->charge_id,
                          e ? e->event_id : NULL,
                          e ? e->type : NULL,
                          e ? evcreated : NULL,
                          evbody};
    PQclear(pg_pool_exec_one(&pg->pool, "insert_payment", 14, vals, PGRES_COMMAND_OK, &st, err,
                             errlen));
    free(evbody);
    return st;
}

/* Fills p from row of a PAYMENT_COLS result; returns -1 on allocation failure. */
