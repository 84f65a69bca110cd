/* mem_tables.c - the memory store's tables of rows: how each kind of row is
 * ordered, found by its id, copied out and freed; the tables made and freed
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include <stdlib.h>
#include <string.h>

/* Newest first: the later time, then the greater id. */
static int newer_first(int64_t a_us, const char *a_id, int64_t b_us, const char *b_id)
{
    if (a_us != b_us)
        return a_us > b_us ? -1 : 1;
    return -strcmp(a_id, b_id);
}

static int payment_newer_first(const void *a, const void *b)
{
    const struct store_payment *x = &((const struct mem_payment *)a)->p;
    const struct store_payment *y = &((const struct mem_payment *)b)->p;
    return newer_first(x->processed_at_us, x->transaction_id, y->processed_at_us,
                       y->transaction_id);
}

static int refund_newer_first(const void *a, const void *b)
{
    const struct store_refund *x = &((const struct mem_refund *)a)->r;
    const struct store_refund *y = &((const struct mem_refund *)b)->r;
    return newer_first(x->created_at_us, x->refund_id, y->created_at_us, y->refund_id);
}

static int charge_newer_first(const void *a, const void *b)
{
    const struct store_charge *x = &((const struct mem_charge *)a)->c;
    const struct store_charge *y = &((const struct mem_charge *)b)->c;
    return newer_first(x->created_at_us, x->charge_id, y->created_at_us, y->charge_id);
}

static int charge_refund_newer_first(const void *a, const void *b)
{
    const struct store_charge_refund *x = &((const struct mem_charge_refund *)a)->r;
    const struct store_charge_refund *y = &((const struct mem_charge_refund *)b)->r;
    return newer_first(x->created_at_us, x->refund_id, y->created_at_us, y->refund_id);
}

static int event_newer_first(const void *a, const void *b)
{
    const struct store_event *x = &((const struct mem_event *)a)->e;
    const struct store_event *y = &((const struct mem_event *)b)->e;
    return newer_first(x->created_at_us, x->event_id, y->created_at_us, y->event_id);
}

static int endpoint_newer_first(const void *a, const void *b)
{
    const struct store_endpoint *x = &((const struct mem_endpoint *)a)->e;
    const struct store_endpoint *y = &((const struct mem_endpoint *)b)->e;
    return newer_first(x->created_at_us, x->endpoint_id, y->created_at_us, y->endpoint_id);
}

static int delivery_newer_first(const void *a, const void *b)
{
    const struct mem_delivery *x = a, *y = b;
    return newer_first(x->created_us, x->event_id, y->created_us, y->event_id);
}

int mem_payment_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_payment *)row)->p.transaction_id, id) == 0;
}

int mem_refund_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_refund *)row)->r.refund_id, id) == 0;
}

int mem_charge_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_charge *)row)->c.charge_id, id) == 0;
}

int mem_event_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_event *)row)->e.event_id, id) == 0;
}

int mem_endpoint_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_endpoint *)row)->e.endpoint_id, id) == 0;
}

int mem_payment_copy(void *item, const void *row)
{
    return store_payment_copy(item, &((const struct mem_payment *)row)->p);
}

int mem_refund_copy(void *item, const void *row)
{
    return store_refund_copy(item, &((const struct mem_refund *)row)->r);
}

int mem_charge_copy(void *item, const void *row)
{
    return store_charge_copy(item, &((const struct mem_charge *)row)->c);
}

int mem_charge_refund_copy(void *item, const void *row)
{
    return store_charge_refund_copy(item, &((const struct mem_charge_refund *)row)->r);
}

int mem_event_copy(void *item, const void *row)
{
    return store_event_copy(item, &((const struct mem_event *)row)->e);
}

int mem_endpoint_copy(void *item, const void *row)
{
    return store_endpoint_copy(item, &((const struct mem_endpoint *)row)->e);
}

void mem_event_row_clear(void *row)
{
    struct mem_event *me = row;
    free(me->tenant);
    store_event_clear(&me->e);
}

void mem_payment_row_clear(void *row)
{
    struct mem_payment *mp = row;
    free(mp->tenant);
    store_payment_clear(&mp->p);
}

void mem_refund_row_clear(void *row)
{
    struct mem_refund *mr = row;
    free(mr->tenant);
    store_refund_clear(&mr->r);
}

void mem_charge_row_clear(void *row)
{
    store_charge_clear(&((struct mem_charge *)row)->c);
}

void mem_charge_refund_row_clear(void *row)
{
    store_charge_refund_clear(&((struct mem_charge_refund *)row)->r);
}

void mem_endpoint_row_clear(void *row)
{
    struct mem_endpoint *me = row;
    free(me->tenant);
    store_endpoint_clear(&me->e);
}

void mem_delivery_row_clear(void *row)
{
    struct mem_delivery *d = row;
    free(d->tenant);
    free(d->event_id);
    free(d->endpoint_id);
}

void mem_tables_init(struct store_mem *m)
{
    m->payments =
        (struct mem_rows){.size = sizeof(struct mem_payment), .newer_first = payment_newer_first};
    m->refunds =
        (struct mem_rows){.size = sizeof(struct mem_refund), .newer_first = refund_newer_first};
    m->charges =
        (struct mem_rows){.size = sizeof(struct mem_charge), .newer_first = charge_newer_first};
    m->charge_refunds = (struct mem_rows){.size = sizeof(struct mem_charge_refund),
                                          .newer_first = charge_refund_newer_first};
    m->events =
        (struct mem_rows){.size = sizeof(struct mem_event), .newer_first = event_newer_first};
    m->endpoints =
        (struct mem_rows){.size = sizeof(struct mem_endpoint), .newer_first = endpoint_newer_first};
    m->deliveries =
        (struct mem_rows){.size = sizeof(struct mem_delivery), .newer_first = delivery_newer_first};
}

void mem_tables_free(struct store_mem *m)
{
    mem_rows_free(&m->payments, mem_payment_row_clear);
    mem_rows_free(&m->refunds, mem_refund_row_clear);
    mem_rows_free(&m->charges, mem_charge_row_clear);
    mem_rows_free(&m->charge_refunds, mem_charge_refund_row_clear);
    mem_rows_free(&m->events, mem_event_row_clear);
    mem_rows_free(&m->endpoints, mem_endpoint_row_clear);
    mem_rows_free(&m->deliveries, mem_delivery_row_clear);
}
