/* pg_reads.c - the PostgreSQL store's reads: payments and refunds, one or a
 * page; and the reaper and the ping */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int payment_from_row(const PGresult *res, int row, struct store_payment *p)
{
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
    if (!p->transaction_id || !p->customer_id || !p->status ||
        (!PQgetisnull(res, row, 1) && !p->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !p->description)) {
        store_payment_clear(p);
        return -1;
    }
    return 0;
}

enum store_status pg_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                 struct store_payment *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, transaction_id};

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res =
        pg_pool_exec(&pg->pool, idx, "get_payment", 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such payment");
            st = STORE_NOT_FOUND;
        } else if (payment_from_row(res, 0, out) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    pg_pool_release(&pg->pool, idx);
    return st;
}

enum store_status pg_list_payments(struct store *s, const char *tenant,
                                   const struct store_list_query *q, struct store_list *out,
                                   char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    struct store_list list = {0};
    PGresult *res = NULL;
    char *cursor_ts = NULL;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", q->limit + 1);

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    if (q->starting_after) {
        const char *cv[] = {tenant, q->starting_after};
        res = pg_pool_exec(&pg->pool, idx, "cursor", 2, cv, PGRES_TUPLES_OK, &st, err, errlen);
        if (!res)
            goto out;
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such payment for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor_ts = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (!cursor_ts)
            goto oom;
    }
    const char *vals[] = {tenant, cursor_ts ? cursor_ts : "infinity",
                          cursor_ts ? q->starting_after : "", limit, q->customer_id};
    const char *stmt = q->customer_id ? "list_customer" : "list";
    res = pg_pool_exec(&pg->pool, idx, stmt, q->customer_id ? 5 : 4, vals, PGRES_TUPLES_OK, &st,
                       err, errlen);
    if (!res)
        goto out;
    int rows = PQntuples(res);
    int take = rows > q->limit ? q->limit : rows;
    list.has_more = rows > q->limit;
    list.items = calloc(take ? (size_t)take : 1, sizeof *list.items);
    if (!list.items)
        goto oom;
    for (; list.count < (size_t)take; list.count++)
        if (payment_from_row(res, (int)list.count, &list.items[list.count]) != 0)
            goto oom;
    *out = list;
    list = (struct store_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    PQclear(res);
    pg_pool_release(&pg->pool, idx);
    store_list_clear(&list);
    free(cursor_ts);
    return st;
}

/* Fills r from row of a REFUND_COLS result; returns -1 on allocation failure. */
static int refund_from_row(const PGresult *res, int row, struct store_refund *r)
{
    memset(r, 0, sizeof *r);
    r->refund_id = pg_dup_value(res, row, 0);
    r->transaction_id = pg_dup_value(res, row, 1);
    r->idempotency_key = pg_dup_value(res, row, 2);
    r->amount_minor = pg_int_value(res, row, 3);
    snprintf(r->currency, sizeof r->currency, "%s", PQgetvalue(res, row, 4));
    r->reason = pg_dup_value(res, row, 5);
    r->status = pg_dup_value(res, row, 6);
    r->created_at_us = pg_int_value(res, row, 7);
    if (!r->refund_id || !r->transaction_id || !r->status ||
        (!PQgetisnull(res, row, 2) && !r->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !r->reason)) {
        store_refund_clear(r);
        return -1;
    }
    return 0;
}

enum store_status pg_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                struct store_refund *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, refund_id};

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res =
        pg_pool_exec(&pg->pool, idx, "get_refund", 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such refund");
            st = STORE_NOT_FOUND;
        } else if (refund_from_row(res, 0, out) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    pg_pool_release(&pg->pool, idx);
    return st;
}

enum store_status pg_list_refunds(struct store *s, const char *tenant,
                                  const struct store_refund_query *q, struct store_refund_list *out,
                                  char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    struct store_refund_list list = {0};
    PGresult *res = NULL;
    char *cursor_ts = NULL;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", q->limit + 1);

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    if (q->starting_after) {
        const char *cv[] = {tenant, q->starting_after, q->transaction_id};
        res =
            pg_pool_exec(&pg->pool, idx, "refund_cursor", 3, cv, PGRES_TUPLES_OK, &st, err, errlen);
        if (!res)
            goto out;
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such refund for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor_ts = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (!cursor_ts)
            goto oom;
    }
    const char *vals[] = {tenant, q->transaction_id, cursor_ts ? cursor_ts : "infinity",
                          cursor_ts ? q->starting_after : "", limit};
    res = pg_pool_exec(&pg->pool, idx, "list_refunds", 5, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        goto out;
    int rows = PQntuples(res);
    int take = rows > q->limit ? q->limit : rows;
    list.has_more = rows > q->limit;
    list.items = calloc(take ? (size_t)take : 1, sizeof *list.items);
    if (!list.items)
        goto oom;
    for (; list.count < (size_t)take; list.count++)
        if (refund_from_row(res, (int)list.count, &list.items[list.count]) != 0)
            goto oom;
    *out = list;
    list = (struct store_refund_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    PQclear(res);
    pg_pool_release(&pg->pool, idx);
    store_refund_list_clear(&list);
    free(cursor_ts);
    return st;
}

enum store_status pg_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char n[16];
    snprintf(n, sizeof n, "%d", batch);
    const char *vals[] = {n};

    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res =
        pg_pool_exec(&pg->pool, idx, "reap", 1, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        *deleted = atoi(PQcmdTuples(res));
        PQclear(res);
    }
    pg_pool_release(&pg->pool, idx);
    return st;
}

enum store_status pg_ping(struct store *s, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res =
        pg_pool_exec(&pg->pool, idx, "ping", 0, NULL, PGRES_TUPLES_OK, &st, err, errlen);
    PQclear(res);
    pg_pool_release(&pg->pool, idx);
    return st;
}
