/* pg_recover.c - the PostgreSQL store's recovery: a record left processing
 * past its lease taken over for recovery, and the records waiting for it
 * (store.h: store_recover, store_unfinished; the SQL is in pg_sql.c) */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum store_status pg_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                             char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char lease[24];
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    const char *vals[] = {lease};

    PGresult *res =
        pg_pool_exec_one(&pg->pool, "recover", 1, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    if (PQntuples(res) == 0) {
        PQclear(res);
        return STORE_NOT_FOUND;
    }
    struct store_recovery r = {.tenant = pg_dup_value(res, 0, 0),
                               .key = pg_dup_value(res, 0, 1),
                               .fingerprint = pg_dup_value(res, 0, 2),
                               .lease_token = pg_int_value(res, 0, 3),
                               .request = pg_dup_value(res, 0, 5),
                               .created_at_us = pg_int_value(res, 0, 6)};
    snprintf(r.downstream_key, sizeof r.downstream_key, "%s", PQgetvalue(res, 0, 4));
    PQclear(res);
    if (!r.tenant || !r.key || !r.fingerprint || !r.request) {
        /* The record is ours for a lease: it waits for the next pass. */
        store_recovery_clear(&r);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    *out = r;
    return STORE_OK;
}

enum store_status pg_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    PGresult *res =
        pg_pool_exec_one(&pg->pool, "unfinished", 0, NULL, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    out->waiting = pg_int_value(res, 0, 0);
    out->oldest_created_us = PQgetisnull(res, 0, 1) ? 0 : pg_int_value(res, 0, 1);
    PQclear(res);
    return STORE_OK;
}
