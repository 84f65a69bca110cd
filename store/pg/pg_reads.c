/* pg_reads.c - the PostgreSQL store's reads: payments, refunds and events,
 * one or a page; the acquirer's ledger; and the reapers and the ping */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How to turn a result row into one kind of struct. */
struct row_kind {
    const char *what; /* "payment", "refund": for messages */
    size_t size;      /* of the struct */
    int (*from_row)(const PGresult *res, int row, void *out); /* -1: out of memory */
    void (*clear)(void *item);
};

/* The row of stmt (vals) into *out; STORE_NOT_FOUND when there is none. */
static enum store_status read_one(struct store_pg *pg, const struct row_kind *k, const char *stmt,
                                  const char *const *vals, int n, void *out, char *err,
                                  size_t errlen)
{
    enum store_status st = STORE_OK;
    PGresult *res = pg_pool_exec_one(&pg->pool, stmt, n, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such %s", k->what);
            st = STORE_NOT_FOUND;
        } else if (k->from_row(res, 0, out) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    return st;
}

/* A page, newest first. With a cursor (after), cursor_stmt (cvals) reads
 * its timestamp first (STORE_NOT_FOUND when it names nothing); then stmt
 * runs with vals[at], vals[at + 1], vals[at + 2] set to the cursor's
 * (timestamp, id), or ('infinity', ''), and limit + 1 (the extra row tells
 * has_more). *items is a malloc'd array of count structs of k's kind. */
struct page {
    void *items;
    size_t count;
    int has_more;
};

static enum store_status read_page(struct store_pg *pg, const struct row_kind *k,
                                   const char *cursor_stmt, const char *const *cvals, int nc,
                                   const char *after, const char *stmt, const char **vals, int n,
                                   int at, int limit, struct page *out, char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    struct page page = {0};
    PGresult *res = NULL;
    char *cursor_ts = NULL;
    char limit_text[16];
    snprintf(limit_text, sizeof limit_text, "%d", limit + 1);

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    if (after) {
        res =
            pg_pool_exec(&pg->pool, idx, cursor_stmt, nc, cvals, PGRES_TUPLES_OK, &st, err, errlen);
        if (!res)
            goto out;
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such %s for cursor", k->what);
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor_ts = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (!cursor_ts)
            goto oom;
    }
    vals[at] = cursor_ts ? cursor_ts : "infinity";
    vals[at + 1] = cursor_ts ? after : "";
    vals[at + 2] = limit_text;
    res = pg_pool_exec(&pg->pool, idx, stmt, n, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        goto out;
    int rows = PQntuples(res);
    int take = rows > limit ? limit : rows;
    page.has_more = rows > limit;
    page.items = calloc(take ? (size_t)take : 1, k->size);
    if (!page.items)
        goto oom;
    for (; page.count < (size_t)take; page.count++)
        if (k->from_row(res, (int)page.count, (char *)page.items + page.count * k->size) != 0)
            goto oom;
    *out = page;
    page = (struct page){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    PQclear(res);
    pg_pool_release(&pg->pool, idx);
    for (size_t i = 0; i < page.count; i++)
        k->clear((char *)page.items + i * k->size);
    free(page.items);
    free(cursor_ts);
    return st;
}

/* ---- payments ----------------------------------------------------------- */

/* A row of PAYMENT_COLS (pg_sql.c). */
static int payment_from_row(const PGresult *res, int row, void *out)
{
    struct store_payment *p = out;
    memset(p, 0, sizeof *p);
    p->transaction_id = pg_dup_value(res, row, 0);
    p->idempotency_key = pg_dup_value(res, row, 1);
    p->customer_id = pg_dup_value(res, row, 2);
    p->amount_minor = pg_int_value(res, row, 3);
    snprintf(p->currency, sizeof p->currency, "%s", PQgetvalue(res, row, 4));
    p->description = pg_dup_value(res, row, 5);
    p->status = pg_dup_value(res, row, 6);
    p->processed_at_us = pg_int_value(res, row, 7);
    p->amount_refunded_minor = pg_int_value(res, row, 8);
    p->charge_id = pg_dup_value(res, row, 9);
    if (!p->transaction_id || !p->customer_id || !p->status ||
        (!PQgetisnull(res, row, 9) && !p->charge_id) ||
        (!PQgetisnull(res, row, 1) && !p->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !p->description)) {
        store_payment_clear(p);
        return -1;
    }
    return 0;
}

static void payment_clear(void *p)
{
    store_payment_clear(p);
}

static const struct row_kind PAYMENT = {"payment", sizeof(struct store_payment), payment_from_row,
                                        payment_clear};

enum store_status pg_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                 struct store_payment *out, char *err, size_t errlen)
{
    const char *vals[] = {tenant, transaction_id};
    return read_one((struct store_pg *)s, &PAYMENT, "get_payment", vals, 2, out, err, errlen);
}

enum store_status pg_list_payments(struct store *s, const char *tenant,
                                   const struct store_list_query *q, struct store_list *out,
                                   char *err, size_t errlen)
{
    const char *cvals[] = {tenant, q->starting_after};
    /* $2-$4: cursor and limit (read_page), $5 the customer */
    const char *vals[] = {tenant, NULL, NULL, NULL, q->customer_id};
    struct page page;
    enum store_status st = read_page((struct store_pg *)s, &PAYMENT, "cursor", cvals, 2,
                                     q->starting_after, q->customer_id ? "list_customer" : "list",
                                     vals, q->customer_id ? 5 : 4, 1, q->limit, &page, err, errlen);
    if (st == STORE_OK)
        *out = (struct store_list){page.items, page.count, page.has_more};
    return st;
}

/* ---- refunds ------------------------------------------------------------ */

/* A row of REFUND_COLS (pg_sql.c). */
static int refund_from_row(const PGresult *res, int row, void *out)
{
    struct store_refund *r = out;
    memset(r, 0, sizeof *r);
    r->refund_id = pg_dup_value(res, row, 0);
    r->transaction_id = pg_dup_value(res, row, 1);
    r->idempotency_key = pg_dup_value(res, row, 2);
    r->amount_minor = pg_int_value(res, row, 3);
    snprintf(r->currency, sizeof r->currency, "%s", PQgetvalue(res, row, 4));
    r->reason = pg_dup_value(res, row, 5);
    r->status = pg_dup_value(res, row, 6);
    r->created_at_us = pg_int_value(res, row, 7);
    r->acquirer_refund_id = pg_dup_value(res, row, 8);
    if (!r->refund_id || !r->transaction_id || !r->status ||
        (!PQgetisnull(res, row, 8) && !r->acquirer_refund_id) ||
        (!PQgetisnull(res, row, 2) && !r->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !r->reason)) {
        store_refund_clear(r);
        return -1;
    }
    return 0;
}

static void refund_clear(void *r)
{
    store_refund_clear(r);
}

static const struct row_kind REFUND = {"refund", sizeof(struct store_refund), refund_from_row,
                                       refund_clear};

enum store_status pg_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                struct store_refund *out, char *err, size_t errlen)
{
    const char *vals[] = {tenant, refund_id};
    return read_one((struct store_pg *)s, &REFUND, "get_refund", vals, 2, out, err, errlen);
}

enum store_status pg_list_refunds(struct store *s, const char *tenant,
                                  const struct store_refund_query *q, struct store_refund_list *out,
                                  char *err, size_t errlen)
{
    const char *cvals[] = {tenant, q->starting_after, q->transaction_id};
    /* $3-$5: cursor and limit (read_page) */
    const char *vals[] = {tenant, q->transaction_id, NULL, NULL, NULL};
    struct page page;
    enum store_status st =
        read_page((struct store_pg *)s, &REFUND, "refund_cursor", cvals, 3, q->starting_after,
                  "list_refunds", vals, 5, 2, q->limit, &page, err, errlen);
    if (st == STORE_OK)
        *out = (struct store_refund_list){page.items, page.count, page.has_more};
    return st;
}

/* ---- events ------------------------------------------------------------- */

/* A row of EVENT_COLS (pg_sql.c). */
static int event_from_row(const PGresult *res, int row, void *out)
{
    struct store_event *e = out;
    memset(e, 0, sizeof *e);
    e->event_id = pg_dup_value(res, row, 0);
    e->type = pg_dup_value(res, row, 1);
    e->created_at_us = pg_int_value(res, row, 2);
    e->body = pg_dup_value(res, row, 3);
    e->body_len = e->body ? strlen(e->body) : 0;
    if (!e->event_id || !e->type || !e->body) {
        store_event_clear(e);
        return -1;
    }
    return 0;
}

static void event_clear(void *e)
{
    store_event_clear(e);
}

static const struct row_kind EVENT = {"event", sizeof(struct store_event), event_from_row,
                                      event_clear};

enum store_status pg_get_event(struct store *s, const char *tenant, const char *event_id,
                               struct store_event *out, char *err, size_t errlen)
{
    const char *vals[] = {tenant, event_id};
    return read_one((struct store_pg *)s, &EVENT, "get_event", vals, 2, out, err, errlen);
}

enum store_status pg_list_events(struct store *s, const char *tenant,
                                 const struct store_event_query *q, struct store_event_list *out,
                                 char *err, size_t errlen)
{
    const char *cvals[] = {tenant, q->starting_after};
    /* $2-$4: cursor and limit (read_page), $5 the type or NULL */
    const char *vals[] = {tenant, NULL, NULL, NULL, q->type};
    struct page page;
    enum store_status st =
        read_page((struct store_pg *)s, &EVENT, "event_cursor", cvals, 2, q->starting_after,
                  "list_events", vals, 5, 1, q->limit, &page, err, errlen);
    if (st == STORE_OK)
        *out = (struct store_event_list){page.items, page.count, page.has_more};
    return st;
}

/* ---- the acquirer's ledger ---------------------------------------------- */

/* Every row of stmt (key, STORE_LEDGER_LIST_MAX), oldest first, into a
 * malloc'd array of k's kind. */
static enum store_status read_all(struct store_pg *pg, const struct row_kind *k, const char *stmt,
                                  const char *key, struct page *out, char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", STORE_LEDGER_LIST_MAX);
    const char *vals[] = {key, limit};
    struct page page = {0};
    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = pg_pool_exec(&pg->pool, idx, stmt, 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        int rows = PQntuples(res);
        page.items = calloc(rows ? (size_t)rows : 1, k->size);
        for (; page.items && page.count < (size_t)rows; page.count++)
            if (k->from_row(res, (int)page.count, (char *)page.items + page.count * k->size) != 0)
                break;
        if (page.count == (size_t)rows) {
            *out = page;
            page = (struct page){0};
        } else {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    pg_pool_release(&pg->pool, idx);
    for (size_t i = 0; i < page.count; i++)
        k->clear((char *)page.items + i * k->size);
    free(page.items);
    return st;
}

/* A row of CHARGE_COLS (pg_sql.c). */
static int charge_from_row(const PGresult *res, int row, void *out)
{
    struct store_charge *c = out;
    memset(c, 0, sizeof *c);
    c->charge_id = pg_dup_value(res, row, 0);
    c->merchant = pg_dup_value(res, row, 1);
    c->customer_id = pg_dup_value(res, row, 2);
    c->amount_minor = pg_int_value(res, row, 3);
    snprintf(c->currency, sizeof c->currency, "%s", PQgetvalue(res, row, 4));
    c->status = pg_dup_value(res, row, 5);
    c->decline_code = pg_dup_value(res, row, 6);
    c->reference = pg_dup_value(res, row, 7);
    c->idempotency_key = pg_dup_value(res, row, 8);
    c->created_at_us = pg_int_value(res, row, 9);
    c->amount_refunded_minor = pg_int_value(res, row, 10);
    if (!c->charge_id || !c->merchant || !c->customer_id || !c->status || !c->reference ||
        !c->idempotency_key || (!PQgetisnull(res, row, 6) && !c->decline_code)) {
        store_charge_clear(c);
        return -1;
    }
    return 0;
}

static void charge_clear(void *c)
{
    store_charge_clear(c);
}

static const struct row_kind CHARGE = {"charge", sizeof(struct store_charge), charge_from_row,
                                       charge_clear};

static int charge_refund_from_row(const PGresult *res, int row, void *out)
{
    struct store_charge_refund *r = out;
    memset(r, 0, sizeof *r);
    r->refund_id = pg_dup_value(res, row, 0);
    r->charge_id = pg_dup_value(res, row, 1);
    r->amount_minor = pg_int_value(res, row, 2);
    r->reference = pg_dup_value(res, row, 3);
    r->idempotency_key = pg_dup_value(res, row, 4);
    r->created_at_us = pg_int_value(res, row, 5);
    if (!r->refund_id || !r->charge_id || !r->reference || !r->idempotency_key) {
        store_charge_refund_clear(r);
        return -1;
    }
    return 0;
}

static void charge_refund_clear(void *r)
{
    store_charge_refund_clear(r);
}

static const struct row_kind CHARGE_REFUND = {"charge refund", sizeof(struct store_charge_refund),
                                              charge_refund_from_row, charge_refund_clear};

enum store_status pg_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                char *err, size_t errlen)
{
    const char *vals[] = {charge_id};
    return read_one((struct store_pg *)s, &CHARGE, "get_charge", vals, 1, out, err, errlen);
}

enum store_status pg_list_charges(struct store *s, const char *reference,
                                  struct store_charge_list *out, char *err, size_t errlen)
{
    struct page page;
    enum store_status st =
        read_all((struct store_pg *)s, &CHARGE, "list_charges", reference, &page, err, errlen);
    if (st == STORE_OK)
        *out = (struct store_charge_list){page.items, page.count};
    return st;
}

enum store_status pg_list_charge_refunds(struct store *s, const char *charge_id,
                                         struct store_charge_refund_list *out, char *err,
                                         size_t errlen)
{
    struct page page;
    enum store_status st = read_all((struct store_pg *)s, &CHARGE_REFUND, "list_charge_refunds",
                                    charge_id, &page, err, errlen);
    if (st == STORE_OK)
        *out = (struct store_charge_refund_list){page.items, page.count};
    return st;
}

/* ---- the reaper, the ping ------------------------------------------------ */

/* A deleting statement (vals); *deleted its rows. */
static enum store_status delete_rows(struct store_pg *pg, const char *stmt, int n,
                                     const char *const *vals, int *deleted, char *err,
                                     size_t errlen)
{
    enum store_status st = STORE_OK;
    PGresult *res = pg_pool_exec_one(&pg->pool, stmt, n, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        *deleted = atoi(PQcmdTuples(res));
        PQclear(res);
    }
    return st;
}

enum store_status pg_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
{
    char n[16];
    snprintf(n, sizeof n, "%d", batch);
    const char *vals[] = {n};
    return delete_rows((struct store_pg *)s, "reap", 1, vals, deleted, err, errlen);
}

enum store_status pg_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                 char *err, size_t errlen)
{
    char ms[24], n[16];
    snprintf(ms, sizeof ms, "%lld", (long long)retention_ms);
    snprintf(n, sizeof n, "%d", batch);
    const char *vals[] = {ms, n};
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "reap_events", 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        *deleted = (int)pg_int_value(res, 0, 0);
        PQclear(res);
    }
    return st;
}

enum store_status pg_ping(struct store *s, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    PQclear(pg_pool_exec_one(&pg->pool, "ping", 0, NULL, PGRES_TUPLES_OK, &st, err, errlen));
    return st;
}
