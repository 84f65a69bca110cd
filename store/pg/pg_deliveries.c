/* pg_deliveries.c - the PostgreSQL store's webhook deliveries: claimed,
 * finished, counted (pg_store.h; the statements in pg_sql.c) */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pg_array.h"

/* A claim without a lookback looks back a century: one statement with a
 * bound the index scan always uses, where "$5 = 0 OR ..." would be a
 * filter on every row. */
#define CLAIM_LOOKBACK_ALL_MS ((int64_t)100 * 366 * 24 * 3600 * 1000)

/* One claimed row; url, secret and body NULL when its endpoint or event
 * is gone. */
static int delivery_from_row(const PGresult *res, int row, struct store_delivery *d)
{
    d->tenant = pg_dup_value(res, row, 0);
    d->event_id = pg_dup_value(res, row, 1);
    d->endpoint_id = pg_dup_value(res, row, 2);
    d->attempt = (int)pg_int_value(res, row, 3);
    d->url = pg_dup_value(res, row, 4);
    d->secret = pg_dup_value(res, row, 5);
    d->body = pg_dup_value(res, row, 6);
    d->body_len = d->body ? strlen(d->body) : 0;
    int gone = PQgetisnull(res, row, 4) || PQgetisnull(res, row, 6);
    if (gone) {
        free(d->url);
        free(d->secret);
        free(d->body);
        d->url = d->secret = d->body = NULL;
        d->body_len = 0;
    }
    return d->tenant && d->event_id && d->endpoint_id && (gone || (d->url && d->secret && d->body))
               ? 0
               : -1;
}

/* Up to limit due rows claimed from the table into l (room allocated). */
static enum store_status claim_rows(struct store_pg *pg, const struct store_delivery_claim *c,
                                    int limit_rows, struct store_delivery_list *l, char *err,
                                    size_t errlen)
{
    enum store_status st = STORE_OK;
    char limit[16], lease[24], lookback[24];
    snprintf(limit, sizeof limit, "%d", limit_rows);
    snprintf(lease, sizeof lease, "%" PRId64, c->lease_ms);
    snprintf(lookback, sizeof lookback, "%" PRId64,
             c->lookback_ms > 0 ? c->lookback_ms : CLAIM_LOOKBACK_ALL_MS);
    struct pg_array busy[2] = {{0}};
    for (size_t i = 0; i < c->nbusy; i++) {
        pg_array_add(&busy[0], c->busy[i].tenant);
        pg_array_add(&busy[1], c->busy[i].endpoint_id);
    }
    const char *vals[] = {limit, lease, pg_array_end(&busy[0]), pg_array_end(&busy[1]), lookback};
    PGresult *res = NULL;
    int64_t took_ms = 0;
    if (!vals[2] || !vals[3]) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        int idx = pg_pool_acquire(&pg->pool, err, errlen);
        if (idx < 0) {
            st = STORE_UNAVAILABLE;
        } else {
            /* from the send to the result, the commit's wait included (the
             * lease began at the statement's start, after the send; a wait
             * for the pool's connection costs it nothing - a wait in
             * pgbouncer's queue, after the send, is counted, and can make
             * a claim late that was not) */
            int64_t sent_us = clock_mono_us();
            res = pg_pool_exec(&pg->pool, idx, "claim_deliveries", 5, vals, PGRES_TUPLES_OK, &st,
                               err, errlen);
            took_ms = (clock_mono_us() - sent_us) / 1000;
            pg_pool_release(&pg->pool, idx);
        }
    }
    for (int i = 0; i < 2; i++)
        pg_array_free(&busy[i]);
    if (!res)
        return st;
    int n = PQntuples(res), oom = 0;
    if (c->late_after_ms > 0 && took_ms > c->late_after_ms) {
        /* their lease is that much shorter: none is returned */
        l->late = (size_t)n;
        PQclear(res);
        return STORE_OK;
    }
    for (int i = 0; !oom && i < n && l->count < (size_t)limit_rows; i++) {
        struct store_delivery *d = &l->items[l->count];
        oom = delivery_from_row(res, i, d) != 0;
        if (oom)
            store_delivery_clear(d);
        else
            l->count++;
    }
    PQclear(res);
    if (oom) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    return STORE_OK;
}

/* Handed-off deliveries put back by one statement at most; more wait
 * for the next claim. */
#define RETURN_MAX 64

/* Handed-off deliveries not begun: their rows due now again, their attempt
 * uncounted, each only while it still holds attempt 1 (the finish
 * statement). Failing, they wait out their lease. Frees them. */
static enum store_status put_back(struct store *s, struct store_delivery *d, size_t n)
{
    struct store_delivery_result r[RETURN_MAX] = {{0}};
    for (size_t i = 0; i < n; i++)
        r[i] = (struct store_delivery_result){.tenant = d[i].tenant,
                                              .event_id = d[i].event_id,
                                              .endpoint_id = d[i].endpoint_id,
                                              .attempt = 1,
                                              .attempts = 0,
                                              .state = STORE_DELIVERY_RETRY};
    char err[256];
    enum store_status st = pg_finish_deliveries(s, r, n, err, sizeof err);
    for (size_t i = 0; i < n; i++)
        store_delivery_clear(&d[i]);
    return st;
}

void pg_put_back_handoffs(struct store *s)
{
    struct store_pg *pg = (struct store_pg *)s;
    struct store_delivery d[RETURN_MAX];
    size_t n;
    enum store_status st = STORE_OK;
    while ((n = pg_handoff_drain(&pg->handoff, d, RETURN_MAX)) > 0) {
        if (st == STORE_OK)
            st = put_back(s, d, n);
        else
            for (size_t i = 0; i < n; i++)
                store_delivery_clear(&d[i]); /* the database is away: left to their lease */
    }
}

/* One statement at most (a step runs its results' and its claim's: the
 * lease counts two): the rows of expired hand-offs put back, or due rows
 * claimed from the table when a read is due - the read first when the
 * last claim put some back (pg_handoff.h). Then, last, the deliveries
 * waiting in memory. */
enum store_status pg_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                      struct store_delivery_list *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    int batch = c->batch > 0 ? c->batch : 0;
    struct store_delivery_list l = {.items = calloc(batch ? (size_t)batch : 1, sizeof *l.items),
                                    .table_unread = 1};
    if (!l.items) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    int64_t now_us = clock_mono_us();
    struct store_delivery late[RETURN_MAX];
    size_t nlate, waiting;
    int read =
        pg_handoff_begin_claim(&pg->handoff, now_us, batch > 0, late, RETURN_MAX, &nlate, &waiting);
    if (nlate) {
        put_back(s, late, nlate);
    } else if (read) {
        /* with deliveries waiting in memory, the table gets half */
        int limit = waiting ? (batch + 1) / 2 : batch;
        enum store_status st = claim_rows(pg, c, limit, &l, err, errlen);
        if (st != STORE_OK) {
            /* what it claimed stays leased until the lease ends: then due
             * again */
            store_delivery_list_clear(&l);
            return st;
        }
        pg_handoff_read_done(&pg->handoff, now_us, l.count + l.late == (size_t)limit);
        /* a read of the whole claim says what is due (webhook_lookback.c) */
        l.table_unread = limit < batch;
    }
    l.count += pg_handoff_take(&pg->handoff, c, (size_t)batch - l.count, l.items + l.count);
    *out = l;
    return STORE_OK;
}

static const char *const STATE_NAMES[] = {
    [STORE_DELIVERY_DELIVERED] = "delivered",
    [STORE_DELIVERY_RETRY] = "pending",
    [STORE_DELIVERY_FAILED] = "failed",
};

enum store_status pg_finish_deliveries(struct store *s, const struct store_delivery_result *results,
                                       size_t n, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum { COLS = 9 };
    struct pg_array a[COLS] = {{0}};
    for (size_t i = 0; i < n; i++) {
        const struct store_delivery_result *r = &results[i];
        char attempt[16], attempts[16], retry[24], status[16];
        snprintf(attempt, sizeof attempt, "%d", r->attempt);
        snprintf(attempts, sizeof attempts, "%d", r->attempts);
        snprintf(retry, sizeof retry, "%" PRId64, r->retry_in_ms);
        snprintf(status, sizeof status, "%d", r->http_status);
        pg_array_add(&a[0], r->tenant);
        pg_array_add(&a[1], r->event_id);
        pg_array_add(&a[2], r->endpoint_id);
        pg_array_add(&a[3], attempt);
        pg_array_add(&a[4], attempts);
        pg_array_add(&a[5], STATE_NAMES[r->state]);
        pg_array_add(&a[6], retry);
        pg_array_add(&a[7], r->http_status ? status : NULL);
        pg_array_add(&a[8], r->error);
    }
    const char *vals[COLS];
    int oom = 0;
    for (int c = 0; c < COLS; c++)
        oom |= !(vals[c] = pg_array_end(&a[c]));
    enum store_status st = STORE_OK;
    if (oom) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        PGresult *res = pg_pool_exec_one(&pg->pool, "finish_deliveries", COLS, vals,
                                         PGRES_COMMAND_OK, &st, err, errlen);
        PQclear(res);
    }
    for (int c = 0; c < COLS; c++)
        pg_array_free(&a[c]);
    return st;
}

enum store_status pg_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                      char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "delivery_backlog", 0, NULL, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    out->pending = pg_int_value(res, 0, 0);
    out->oldest_created_us = pg_int_value(res, 0, 1);
    PQclear(res);
    return STORE_OK;
}
