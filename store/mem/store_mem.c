/* store_mem.c - the in-memory store, for quick runs and tests: its
 * store_ops table, its constructor and destructor (the parts: mem_store.h)
 *
 * Same contract as the PostgreSQL store. Nothing survives the process.
 */
#define _POSIX_C_SOURCE 200809L
#include "store_mem.h"

#include "mem_store.h"

#include <stdlib.h>

static void mem_free(struct store *s)
{
    struct store_mem *m = (struct store_mem *)s;
    mem_records_free(m);
    mem_tables_free(m);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const struct store_ops mem_ops = {
    .name = "memory",
    .claim = mem_claim,
    .complete = mem_complete,
    .release = mem_release,
    .abandon = mem_abandon,
    .write_rows = mem_write_rows,
    .get_payment = mem_get_payment,
    .list_payments = mem_list_payments,
    .get_refund = mem_get_refund,
    .list_refunds = mem_list_refunds,
    .get_charge = mem_get_charge,
    .list_charges = mem_list_charges,
    .list_charge_refunds = mem_list_charge_refunds,
    .recover = mem_recover,
    .unfinished = mem_unfinished,
    .reap = mem_reap,
    .get_event = mem_get_event,
    .list_events = mem_list_events,
    .reap_events = mem_reap_events,
    .create_endpoint = mem_create_endpoint,
    .list_endpoints = mem_list_endpoints,
    .delete_endpoint = mem_delete_endpoint,
    .claim_deliveries = mem_claim_deliveries,
    .finish_deliveries = mem_finish_deliveries,
    .delivery_backlog = mem_delivery_backlog,
    .ping = mem_ping,
    .pool_stats = NULL,
    .free = mem_free,
};

struct store *store_mem_new(void)
{
    struct store_mem *m = calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->base.ops = &mem_ops;
    mem_tables_init(m);
    if (hashtab_init(&m->records, 1024, 1) != 0 || pthread_mutex_init(&m->mu, NULL) != 0) {
        hashtab_destroy(&m->records);
        free(m);
        return NULL;
    }
    return &m->base;
}
