/* pg_endpoints.c - the PostgreSQL store's webhook endpoints: made, listed,
 * removed (pg_store.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum store_status pg_create_endpoint(struct store *s, const char *tenant,
                                     const struct store_endpoint *e, int max, char *err,
                                     size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char created[24], limit[16];
    snprintf(created, sizeof created, "%" PRId64, e->created_at_us);
    snprintf(limit, sizeof limit, "%d", max);
    const char *vals[] = {tenant, e->endpoint_id, e->url, e->events, e->secret, created, limit};
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "create_endpoint", 7, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            snprintf(err, errlen, "the tenant has %d endpoints already", max);
            st = STORE_REJECTED;
        }
        PQclear(res);
    }
    return st;
}

enum store_status pg_list_endpoints(struct store *s, const char *tenant,
                                    struct store_endpoint_list *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant};
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "list_endpoints", 1, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    int n = PQntuples(res), oom = 0;
    out->items = calloc(n ? (size_t)n : 1, sizeof *out->items);
    oom = !out->items;
    for (int i = 0; !oom && i < n; i++) {
        struct store_endpoint *e = &out->items[i];
        out->count = (size_t)i + 1;
        e->endpoint_id = pg_dup_value(res, i, 0);
        e->url = pg_dup_value(res, i, 1);
        e->events = pg_dup_value(res, i, 2);
        e->secret = pg_dup_value(res, i, 3);
        e->created_at_us = pg_int_value(res, i, 4);
        oom = !e->endpoint_id || !e->url || !e->secret || (!PQgetisnull(res, i, 2) && !e->events);
    }
    PQclear(res);
    if (oom) {
        store_endpoint_list_clear(out);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    return STORE_OK;
}

enum store_status pg_delete_endpoint(struct store *s, const char *tenant, const char *endpoint_id,
                                     char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, endpoint_id};
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "delete_endpoint", 2, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        if (strcmp(PQcmdTuples(res), "1") != 0) {
            snprintf(err, errlen, "no such endpoint");
            st = STORE_NOT_FOUND;
        }
        PQclear(res);
    }
    return st;
}
