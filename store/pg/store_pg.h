/* store_pg.h - the store in PostgreSQL (store.h's interface): a pool of
 * connections, the group commit, the migrations of sql/
 */
#ifndef MOCKERY_STORE_PG_H
#define MOCKERY_STORE_PG_H

#include "store.h"

struct store_pg_options {
    const char *database_url; /* libpq connection string or URI; never logged */
    int pool_size;
    int connect_timeout_s;
    int acquire_timeout_ms;       /* waiting for a free connection, then 503 */
    const char *application_name; /* shown in pg_stat_activity; NULL: mockery-server */
    /* Run every statement unnamed (PQexecParams: Parse, Bind, Execute, Sync
     * in one message) instead of preparing named statements on each
     * connection: what pgbouncer's transaction pooling needs before 1.21,
     * as its server connections change under a client between
     * transactions. */
    int unnamed_statements;
    void (*notice)(void *arg, const char *message); /* libpq notices, may be NULL */
    void *notice_arg;
    /* Called when a payment's completion handed deliveries off to the
     * dispatchers (pg_handoff.h), to wake one; may be NULL. */
    void (*handoff_wake)(void *arg);
    void *handoff_wake_arg;
};

/* Connects the pool and applies the migrations in sql/ under an advisory
 * lock. NULL on failure with a message in err. */
struct store *store_pg_new(const struct store_pg_options *opts, char *err, size_t errlen);

#endif
