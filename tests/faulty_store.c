/* faulty_store.c - a delegating store with injectable failures */
#define _POSIX_C_SOURCE 200809L
#include "faulty_store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

struct faulty {
    struct store base;
    struct store_ops ops; /* faulty_ops, named after the inner store */
    struct store *inner;
    pthread_mutex_t mu;
    int fail[FAULTY_OPS];
    enum store_status status[FAULTY_OPS];
    int calls[FAULTY_OPS];
};

/* Whether this call of op fails; counts it either way. */
static int should_fail(struct faulty *f, enum faulty_op op, enum store_status *st, char *err,
                       size_t errlen)
{
    int fail = 0;
    pthread_mutex_lock(&f->mu);
    f->calls[op]++;
    if (f->fail[op] > 0) {
        f->fail[op]--;
        *st = f->status[op];
        fail = 1;
    }
    pthread_mutex_unlock(&f->mu);
    if (fail)
        snprintf(err, errlen, "injected failure");
    return fail;
}

static enum store_status f_claim(struct store *s, const char *tenant, const char *key,
                                 const char *fp, const char *request, const char *downstream,
                                 int64_t lease_ms, int64_t ttl_ms, struct store_claim_result *out,
                                 char *err, size_t errlen)
{
    struct faulty *f = (struct faulty *)s;
    enum store_status st;
    if (should_fail(f, FAULTY_CLAIM, &st, err, errlen))
        return st;
    return f->inner->ops->claim(f->inner, tenant, key, fp, request, downstream, lease_ms, ttl_ms,
                                out, err, errlen);
}

static enum store_status f_complete(struct store *s, const char *tenant, const char *key,
                                    int64_t token, const struct store_response *resp,
                                    const struct store_rows *rows, char *err, size_t errlen)
{
    struct faulty *f = (struct faulty *)s;
    enum store_status st;
    if (should_fail(f, FAULTY_COMPLETE, &st, err, errlen))
        return st;
    return store_complete(f->inner, tenant, key, token, resp, rows, err, errlen);
}

static enum store_status f_release(struct store *s, const char *tenant, const char *key,
                                   int64_t token, char *err, size_t errlen)
{
    struct faulty *f = (struct faulty *)s;
    enum store_status st;
    if (should_fail(f, FAULTY_RELEASE, &st, err, errlen))
        return st;
    return store_release(f->inner, tenant, key, token, err, errlen);
}

static enum store_status f_abandon(struct store *s, const char *tenant, const char *key,
                                   int64_t token, char *err, size_t errlen)
{
    struct faulty *f = (struct faulty *)s;
    enum store_status st;
    if (should_fail(f, FAULTY_ABANDON, &st, err, errlen))
        return st;
    return store_abandon(f->inner, tenant, key, token, err, errlen);
}

static enum store_status f_write_rows(struct store *s, const char *tenant,
                                      const struct store_rows *rows, char *err, size_t errlen)
{
    struct faulty *f = (struct faulty *)s;
    enum store_status st;
    if (should_fail(f, FAULTY_WRITE_ROWS, &st, err, errlen))
        return st;
    return store_write_rows(f->inner, tenant, rows, err, errlen);
}

static enum store_status f_get(struct store *s, const char *tenant, const char *id,
                               struct store_payment *out, char *err, size_t errlen)
{
    return store_get_payment(((struct faulty *)s)->inner, tenant, id, out, err, errlen);
}

static enum store_status f_list(struct store *s, const char *tenant,
                                const struct store_list_query *q, struct store_list *out, char *err,
                                size_t errlen)
{
    return store_list_payments(((struct faulty *)s)->inner, tenant, q, out, err, errlen);
}

static enum store_status f_get_refund(struct store *s, const char *tenant, const char *id,
                                      struct store_refund *out, char *err, size_t errlen)
{
    return store_get_refund(((struct faulty *)s)->inner, tenant, id, out, err, errlen);
}

static enum store_status f_list_refunds(struct store *s, const char *tenant,
                                        const struct store_refund_query *q,
                                        struct store_refund_list *out, char *err, size_t errlen)
{
    return store_list_refunds(((struct faulty *)s)->inner, tenant, q, out, err, errlen);
}

static enum store_status f_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                                   char *err, size_t errlen)
{
    return store_recover(((struct faulty *)s)->inner, lease_ms, out, err, errlen);
}

static enum store_status f_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                      size_t errlen)
{
    return store_unfinished(((struct faulty *)s)->inner, out, err, errlen);
}

static enum store_status f_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
{
    return store_reap(((struct faulty *)s)->inner, batch, deleted, err, errlen);
}

static enum store_status f_get_event(struct store *s, const char *tenant, const char *id,
                                     struct store_event *out, char *err, size_t errlen)
{
    return store_get_event(((struct faulty *)s)->inner, tenant, id, out, err, errlen);
}

static enum store_status f_list_events(struct store *s, const char *tenant,
                                       const struct store_event_query *q,
                                       struct store_event_list *out, char *err, size_t errlen)
{
    return store_list_events(((struct faulty *)s)->inner, tenant, q, out, err, errlen);
}

static enum store_status f_reap_events(struct store *s, int64_t retention_ms, int batch,
                                       int *deleted, char *err, size_t errlen)
{
    return store_reap_events(((struct faulty *)s)->inner, retention_ms, batch, deleted, err,
                             errlen);
}

static enum store_status f_create_endpoint(struct store *s, const char *tenant,
                                           const struct store_endpoint *e, int max, char *err,
                                           size_t errlen)
{
    return store_create_endpoint(((struct faulty *)s)->inner, tenant, e, max, err, errlen);
}

static enum store_status f_list_endpoints(struct store *s, const char *tenant,
                                          struct store_endpoint_list *out, char *err, size_t errlen)
{
    return store_list_endpoints(((struct faulty *)s)->inner, tenant, out, err, errlen);
}

static enum store_status f_delete_endpoint(struct store *s, const char *tenant, const char *id,
                                           char *err, size_t errlen)
{
    return store_delete_endpoint(((struct faulty *)s)->inner, tenant, id, err, errlen);
}

static enum store_status f_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                            struct store_delivery_list *out, char *err,
                                            size_t errlen)
{
    return store_claim_deliveries(((struct faulty *)s)->inner, c, out, err, errlen);
}

static enum store_status f_finish_deliveries(struct store *s,
                                             const struct store_delivery_result *results, size_t n,
                                             char *err, size_t errlen)
{
    return store_finish_deliveries(((struct faulty *)s)->inner, results, n, err, errlen);
}

static enum store_status f_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                            char *err, size_t errlen)
{
    return store_delivery_backlog(((struct faulty *)s)->inner, out, err, errlen);
}

static enum store_status f_ping(struct store *s, char *err, size_t errlen)
{
    return store_ping(((struct faulty *)s)->inner, err, errlen);
}

static void f_stats(struct store *s, struct store_pool_stats *out)
{
    store_pool_stats(((struct faulty *)s)->inner, out);
}

static void f_free(struct store *s)
{
    struct faulty *f = (struct faulty *)s;
    store_free(f->inner);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static enum store_status f_get_charge(struct store *s, const char *charge_id,
                                      struct store_charge *out, char *err, size_t errlen)
{
    return store_get_charge(((struct faulty *)s)->inner, charge_id, out, err, errlen);
}

static enum store_status f_list_charges(struct store *s, const char *reference,
                                        struct store_charge_list *out, char *err, size_t errlen)
{
    return store_list_charges(((struct faulty *)s)->inner, reference, out, err, errlen);
}

static enum store_status f_list_charge_refunds(struct store *s, const char *charge_id,
                                               struct store_charge_refund_list *out, char *err,
                                               size_t errlen)
{
    return store_list_charge_refunds(((struct faulty *)s)->inner, charge_id, out, err, errlen);
}

static const struct store_ops faulty_ops = {
    .claim = f_claim,
    .complete = f_complete,
    .release = f_release,
    .abandon = f_abandon,
    .write_rows = f_write_rows,
    .get_payment = f_get,
    .list_payments = f_list,
    .get_refund = f_get_refund,
    .list_refunds = f_list_refunds,
    .get_charge = f_get_charge,
    .list_charges = f_list_charges,
    .list_charge_refunds = f_list_charge_refunds,
    .recover = f_recover,
    .unfinished = f_unfinished,
    .reap = f_reap,
    .get_event = f_get_event,
    .list_events = f_list_events,
    .reap_events = f_reap_events,
    .create_endpoint = f_create_endpoint,
    .list_endpoints = f_list_endpoints,
    .delete_endpoint = f_delete_endpoint,
    .claim_deliveries = f_claim_deliveries,
    .finish_deliveries = f_finish_deliveries,
    .delivery_backlog = f_delivery_backlog,
    .ping = f_ping,
    .pool_stats = f_stats,
    .free = f_free,
};

struct store *faulty_store_new(struct store *inner)
{
    struct faulty *f = calloc(1, sizeof *f);
    if (!f) {
        store_free(inner);
        return NULL;
    }
    /* Same name as the store it wraps: /health reports that one. */
    f->ops = faulty_ops;
    f->ops.name = store_name(inner);
    f->base.ops = &f->ops;
    f->inner = inner;
    pthread_mutex_init(&f->mu, NULL);
    return &f->base;
}

void faulty_store_fail(struct store *s, enum faulty_op op, int times, enum store_status status)
{
    struct faulty *f = (struct faulty *)s;
    pthread_mutex_lock(&f->mu);
    f->fail[op] = times;
    f->status[op] = status;
    pthread_mutex_unlock(&f->mu);
}

int faulty_store_calls(struct store *s, enum faulty_op op)
{
    struct faulty *f = (struct faulty *)s;
    pthread_mutex_lock(&f->mu);
    int n = f->calls[op];
    pthread_mutex_unlock(&f->mu);
    return n;
}
