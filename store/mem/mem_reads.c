/* mem_reads.c - the memory store's payments, refunds, events and the
 * acquirer's ledger read and listed; the events' reaper; ping
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include "clock.h"

#include <stdio.h>
#include <string.h>

/* One row of tenant (NULL: of any) with this id, copied into *out. */
static enum store_status get_row(struct store_mem *m, struct mem_rows *t, const char *tenant,
                                 int (*is)(const void *, const void *), const char *id,
                                 int (*copy)(void *, const void *), void *out, const char *what,
                                 char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    size_t i = mem_rows_find(t, tenant, is, id);
    if (i == t->n) {
        snprintf(err, errlen, "no such %s", what);
        st = STORE_NOT_FOUND;
    } else if (copy(out, mem_rows_at(t, i)) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                  struct store_payment *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->payments, tenant, mem_payment_is, transaction_id, mem_payment_copy, out,
                   "payment", err, errlen);
}

enum store_status mem_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                 struct store_refund *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->refunds, tenant, mem_refund_is, refund_id, mem_refund_copy, out, "refund",
                   err, errlen);
}

static int payment_of_customer(const void *row, const void *customer)
{
    return !customer || strcmp(((const struct mem_payment *)row)->p.customer_id, customer) == 0;
}

static int refund_of_payment(const void *row, const void *transaction_id)
{
    return strcmp(((const struct mem_refund *)row)->r.transaction_id, transaction_id) == 0;
}

static void payment_item_clear(void *p)
{
    store_payment_clear(p);
}

static void refund_item_clear(void *r)
{
    store_refund_clear(r);
}

/* A page of table t for tenant, newest first: the rows keep() accepts
 * (keep may be NULL), starting just past the row is() finds for the cursor
 * after (NULL: from the newest). The work is the page (and the rows passed
 * on the way), not every row held. A cursor that names no row of the
 * tenant - or, with cursor_kept, none keep() accepts - is STORE_NOT_FOUND. */
static enum store_status list_page(struct store_mem *m, const struct mem_rows *t,
                                   const char *tenant, int (*is)(const void *, const void *),
                                   const char *after, int cursor_kept,
                                   int (*keep)(const void *, const void *), const void *arg,
                                   int (*copy)(void *, const void *), void (*clear)(void *),
                                   size_t item_size, int limit, void **items, size_t *count,
                                   int *has_more, const char *what, char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    size_t start = t->n;
    if (after) {
        start = mem_rows_find(t, tenant, is, after);
        if (start == t->n || (cursor_kept && !keep(mem_rows_at(t, start), arg))) {
            snprintf(err, errlen, "no such %s for cursor", what);
            st = STORE_NOT_FOUND;
        }
    }
    if (st == STORE_OK && mem_rows_page(t, start, tenant, keep, arg, copy, clear, item_size, limit,
                                        items, count, has_more) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_list_payments(struct store *s, const char *tenant,
                                    const struct store_list_query *q, struct store_list *out,
                                    char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st = list_page(m, &m->payments, tenant, mem_payment_is, q->starting_after, 0,
                                     payment_of_customer, q->customer_id, mem_payment_copy,
                                     payment_item_clear, sizeof(struct store_payment), q->limit,
                                     &items, &out->count, &out->has_more, "payment", err, errlen);
    out->items = items;
    return st;
}

/* The cursor must be a refund of the same payment. */
enum store_status mem_list_refunds(struct store *s, const char *tenant,
                                   const struct store_refund_query *q,
                                   struct store_refund_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st = list_page(m, &m->refunds, tenant, mem_refund_is, q->starting_after, 1,
                                     refund_of_payment, q->transaction_id, mem_refund_copy,
                                     refund_item_clear, sizeof(struct store_refund), q->limit,
                                     &items, &out->count, &out->has_more, "refund", err, errlen);
    out->items = items;
    return st;
}

static int event_of_type(const void *row, const void *type)
{
    return !type || strcmp(((const struct mem_event *)row)->e.type, type) == 0;
}

static void event_item_clear(void *e)
{
    store_event_clear(e);
}

enum store_status mem_get_event(struct store *s, const char *tenant, const char *event_id,
                                struct store_event *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->events, tenant, mem_event_is, event_id, mem_event_copy, out, "event", err,
                   errlen);
}

enum store_status mem_list_events(struct store *s, const char *tenant,
                                  const struct store_event_query *q, struct store_event_list *out,
                                  char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st =
        list_page(m, &m->events, tenant, mem_event_is, q->starting_after, 0, event_of_type, q->type,
                  mem_event_copy, event_item_clear, sizeof(struct store_event), q->limit, &items,
                  &out->count, &out->has_more, "event", err, errlen);
    out->items = items;
    return st;
}

/* The oldest events first: the table is in time order. */
enum store_status mem_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                  char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    int64_t before = clock_wall_us() - retention_ms * 1000;
    (void)err;
    (void)errlen;
    pthread_mutex_lock(&m->mu);
    size_t k = 0;
    while (k < m->events.n && k < (size_t)batch &&
           ((const struct mem_event *)mem_rows_at(&m->events, k))->e.created_at_us < before)
        k++;
    mem_rows_drop_oldest(&m->events, k, mem_event_row_clear);
    /* their deliveries with them (only deliveries of old events can be) */
    for (size_t i = 0; k && i < m->deliveries.n;) {
        const struct mem_delivery *d = mem_rows_at(&m->deliveries, i);
        if (d->created_us < before &&
            mem_rows_find(&m->events, d->tenant, mem_event_is, d->event_id) == m->events.n)
            mem_rows_remove(&m->deliveries, i, mem_delivery_row_clear);
        else
            i++;
    }
    pthread_mutex_unlock(&m->mu);
    *deleted = (int)k;
    return STORE_OK;
}

enum store_status mem_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                 char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->charges, NULL, mem_charge_is, charge_id, mem_charge_copy, out, "charge",
                   err, errlen);
}

static int charge_of_reference(const void *row, const void *reference)
{
    return strcmp(((const struct mem_charge *)row)->c.reference, reference) == 0;
}

static int refund_of_charge(const void *row, const void *charge_id)
{
    return strcmp(((const struct mem_charge_refund *)row)->r.charge_id, charge_id) == 0;
}

static void charge_item_clear(void *c)
{
    store_charge_clear(c);
}

static void charge_refund_item_clear(void *r)
{
    store_charge_refund_clear(r);
}

/* The rows of table t that keep() accepts, oldest first (the table's own
 * order), at most STORE_LEDGER_LIST_MAX: an empty list when none. */
static enum store_status list_ledger(struct store_mem *m, const struct mem_rows *t,
                                     int (*keep)(const void *, const void *), const char *arg,
                                     int (*copy)(void *, const void *), void (*clear)(void *),
                                     size_t item_size, void **items, size_t *count, char *err,
                                     size_t errlen)
{
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    if (mem_rows_oldest(t, NULL, keep, arg, copy, clear, item_size, STORE_LEDGER_LIST_MAX, items,
                        count) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_list_charges(struct store *s, const char *reference,
                                   struct store_charge_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    size_t count = 0;
    enum store_status st =
        list_ledger(m, &m->charges, charge_of_reference, reference, mem_charge_copy,
                    charge_item_clear, sizeof(struct store_charge), &items, &count, err, errlen);
    if (st == STORE_OK) {
        out->items = items;
        out->count = count;
    }
    return st;
}

enum store_status mem_list_charge_refunds(struct store *s, const char *charge_id,
                                          struct store_charge_refund_list *out, char *err,
                                          size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    size_t count = 0;
    enum store_status st = list_ledger(
        m, &m->charge_refunds, refund_of_charge, charge_id, mem_charge_refund_copy,
        charge_refund_item_clear, sizeof(struct store_charge_refund), &items, &count, err, errlen);
    if (st == STORE_OK) {
        out->items = items;
        out->count = count;
    }
    return st;
}

enum store_status mem_ping(struct store *s, char *err, size_t errlen)
{
    (void)s;
    (void)err;
    (void)errlen;
    return STORE_OK;
}
