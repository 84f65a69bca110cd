/* store_pg.c - the PostgreSQL store: its store_ops and its constructor
 *
 * The parts (pg_store.h lists them): a libpq connection pool, group commit
 * of claims and completions, migrations at start-up, and the operations of
 * docs/design.md. A connection that breaks is closed and opened again
 * by the next thread that takes it; meanwhile calls return
 * STORE_UNAVAILABLE.
 */
#define _POSIX_C_SOURCE 200809L
#include "pg_store.h"

#include <stdio.h>
#include <stdlib.h>

#include "pg_migrate.h"

static void pg_pool_stats(struct store *s, struct store_pool_stats *out)
{
    struct store_pg *pg = (struct store_pg *)s;
    pthread_mutex_lock(&pg->pool.mu);
    out->size = pg->pool.size;
    out->in_use = pg->pool.size - pg->pool.nfree;
    out->waiting = pg->pool.waiting + pg->batch.queued;
    out->claim_batches = pg->batch.batches[PG_BATCH_CLAIM];
    out->claims_batched = pg->batch.batched[PG_BATCH_CLAIM];
    out->complete_batches =
        pg->batch.batches[PG_BATCH_COMPLETE] + pg->batch.batches[PG_BATCH_COMPLETE_CHARGE];
    out->completes_batched =
        pg->batch.batched[PG_BATCH_COMPLETE] + pg->batch.batched[PG_BATCH_COMPLETE_CHARGE];
    out->batches_split = pg->batch.split;
    pthread_mutex_unlock(&pg->pool.mu);
    pthread_mutex_lock(&pg->handoff.mu);
    out->handoffs_taken = pg->handoff.taken;
    out->handoffs_expired = pg->handoff.expired;
    pthread_mutex_unlock(&pg->handoff.mu);
}

static void pg_free(struct store *s)
{
    struct store_pg *pg = (struct store_pg *)s;
    /* a stopping server's hand-offs not begun: due again now, not after
     * their lease */
    if (pg->pool.conns)
        pg_put_back_handoffs(s);
    pg_pool_destroy(&pg->pool);
    pg_handoff_free(&pg->handoff);
    free(pg);
}

static const struct store_ops pg_ops = {
    .name = "postgres",
    .claim = pg_claim,
    .complete = pg_complete,
    .release = pg_release,
    .abandon = pg_abandon,
    .write_rows = pg_write_rows,
    .get_payment = pg_get_payment,
    .list_payments = pg_list_payments,
    .get_refund = pg_get_refund,
    .list_refunds = pg_list_refunds,
    .get_charge = pg_get_charge,
    .list_charges = pg_list_charges,
    .list_charge_refunds = pg_list_charge_refunds,
    .recover = pg_recover,
    .unfinished = pg_unfinished,
    .reap = pg_reap,
    .get_event = pg_get_event,
    .list_events = pg_list_events,
    .reap_events = pg_reap_events,
    .claim_deliveries = pg_claim_deliveries,
    .finish_deliveries = pg_finish_deliveries,
    .delivery_backlog = pg_delivery_backlog,
    .create_endpoint = pg_create_endpoint,
    .list_endpoints = pg_list_endpoints,
    .delete_endpoint = pg_delete_endpoint,
    .ping = pg_ping,
    .pool_stats = pg_pool_stats,
    .free = pg_free,
};

struct store *store_pg_new(const struct store_pg_options *opts, char *err, size_t errlen)
{
    struct store_pg *pg = calloc(1, sizeof *pg);
    if (!pg) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pg->base.ops = &pg_ops;
    pg_handoff_init(&pg->handoff, opts->handoff_wake, opts->handoff_wake_arg);
    if (pg_pool_init(&pg->pool, opts, err, errlen) != 0)
        goto fail;
    pg_batcher_init(&pg->batch, &pg->pool, &pg->handoff);

    /* Migrate on a connection of its own, before the statements are
     * prepared against the tables. */
    PGconn *conn = pg_pool_connect_alone(&pg->pool, "mockery-migrate", err, errlen);
    if (!conn)
        goto fail;
    int migrated = pg_migrate(conn, err, errlen);
    PQfinish(conn);
    if (migrated != 0)
        goto fail;

    /* Open one pooled connection now so that a bad URL fails at start-up. */
    int idx = pg_pool_acquire(&pg->pool, err, errlen);
    if (idx < 0)
        goto fail;
    pg_pool_release(&pg->pool, idx);
    return &pg->base;
fail:
    pg_free(&pg->base);
    return NULL;
}
