/* store.c - thin wrappers over a store backend's ops, and shared helpers */
#define _POSIX_C_SOURCE 200809L
#include "store.h"

#include "ids.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *store_status_name(enum store_status st)
{
    switch (st) {
    case STORE_OK:
        return "ok";
    case STORE_NOT_FOUND:
        return "not_found";
    case STORE_LEASE_LOST:
        return "lease_lost";
    case STORE_UNAVAILABLE:
        return "unavailable";
    case STORE_ERROR:
        return "error";
    case STORE_REJECTED:
        return "rejected";
    }
    return "unknown";
}

const char *store_name(const struct store *s)
{
    return s->ops->name;
}

enum store_status store_claim(struct store *s, const char *tenant, const char *key,
                              const char *fingerprint, const char *request, int64_t lease_ms,
                              int64_t ttl_ms, struct store_claim_result *out, char *err,
                              size_t errlen)
{
    /* The record's key downstream, should this claim make the record: one
     * choice of its shape for every store. */
    char downstream[IDS_MAX + 1];
    if (ids_new(STORE_DOWNSTREAM_PREFIX, downstream) != 0) {
        snprintf(err, errlen, "no random bytes for a downstream key");
        return STORE_ERROR;
    }
    return s->ops->claim(s, tenant, key, fingerprint, request, downstream, lease_ms, ttl_ms, out,
                         err, errlen);
}

enum store_status store_complete(struct store *s, const char *tenant, const char *key,
                                 int64_t lease_token, const struct store_response *resp,
                                 const struct store_rows *rows, char *err, size_t errlen)
{
    return s->ops->complete(s, tenant, key, lease_token, resp, rows, err, errlen);
}

enum store_status store_release(struct store *s, const char *tenant, const char *key,
                                int64_t lease_token, char *err, size_t errlen)
{
    return s->ops->release(s, tenant, key, lease_token, err, errlen);
}

enum store_status store_abandon(struct store *s, const char *tenant, const char *key,
                                int64_t lease_token, char *err, size_t errlen)
{
    return s->ops->abandon(s, tenant, key, lease_token, err, errlen);
}

enum store_status store_write_rows(struct store *s, const char *tenant,
                                   const struct store_rows *rows, char *err, size_t errlen)
{
    return s->ops->write_rows(s, tenant, rows, err, errlen);
}

enum store_status store_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                    struct store_payment *out, char *err, size_t errlen)
{
    return s->ops->get_payment(s, tenant, transaction_id, out, err, errlen);
}

enum store_status store_list_payments(struct store *s, const char *tenant,
                                      const struct store_list_query *q, struct store_list *out,
                                      char *err, size_t errlen)
{
    return s->ops->list_payments(s, tenant, q, out, err, errlen);
}

enum store_status store_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                   struct store_refund *out, char *err, size_t errlen)
{
    return s->ops->get_refund(s, tenant, refund_id, out, err, errlen);
}

enum store_status store_list_refunds(struct store *s, const char *tenant,
                                     const struct store_refund_query *q,
                                     struct store_refund_list *out, char *err, size_t errlen)
{
    return s->ops->list_refunds(s, tenant, q, out, err, errlen);
}

enum store_status store_get_event(struct store *s, const char *tenant, const char *event_id,
                                  struct store_event *out, char *err, size_t errlen)
{
    return s->ops->get_event(s, tenant, event_id, out, err, errlen);
}

enum store_status store_list_events(struct store *s, const char *tenant,
                                    const struct store_event_query *q, struct store_event_list *out,
                                    char *err, size_t errlen)
{
    return s->ops->list_events(s, tenant, q, out, err, errlen);
}

enum store_status store_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                    char *err, size_t errlen)
{
    *deleted = 0;
    return s->ops->reap_events(s, retention_ms, batch, deleted, err, errlen);
}

enum store_status store_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                         struct store_delivery_list *out, char *err, size_t errlen)
{
    return s->ops->claim_deliveries(s, c, out, err, errlen);
}

enum store_status store_finish_deliveries(struct store *s,
                                          const struct store_delivery_result *results, size_t n,
                                          char *err, size_t errlen)
{
    return n ? s->ops->finish_deliveries(s, results, n, err, errlen) : STORE_OK;
}

enum store_status store_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                         char *err, size_t errlen)
{
    return s->ops->delivery_backlog(s, out, err, errlen);
}

void store_delivery_clear(struct store_delivery *d)
{
    free(d->tenant);
    free(d->event_id);
    free(d->endpoint_id);
    free(d->url);
    free(d->secret);
    free(d->body);
    memset(d, 0, sizeof *d);
}

void store_delivery_list_clear(struct store_delivery_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_delivery_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_endpoint_in(const struct store_endpoint_busy *busy, size_t n, const char *tenant,
                      const char *endpoint_id)
{
    for (size_t k = 0; k < n; k++)
        if (strcmp(busy[k].tenant, tenant) == 0 && strcmp(busy[k].endpoint_id, endpoint_id) == 0)
            return 1;
    return 0;
}

enum store_status store_create_endpoint(struct store *s, const char *tenant,
                                        const struct store_endpoint *e, int max, char *err,
                                        size_t errlen)
{
    return s->ops->create_endpoint(s, tenant, e, max, err, errlen);
}

enum store_status store_list_endpoints(struct store *s, const char *tenant,
                                       struct store_endpoint_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    return s->ops->list_endpoints(s, tenant, out, err, errlen);
}

enum store_status store_delete_endpoint(struct store *s, const char *tenant,
                                        const char *endpoint_id, char *err, size_t errlen)
{
    return s->ops->delete_endpoint(s, tenant, endpoint_id, err, errlen);
}

enum store_status store_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                   char *err, size_t errlen)
{
    return s->ops->get_charge(s, charge_id, out, err, errlen);
}

enum store_status store_list_charges(struct store *s, const char *reference,
                                     struct store_charge_list *out, char *err, size_t errlen)
{
    return s->ops->list_charges(s, reference, out, err, errlen);
}

enum store_status store_list_charge_refunds(struct store *s, const char *charge_id,
                                            struct store_charge_refund_list *out, char *err,
                                            size_t errlen)
{
    return s->ops->list_charge_refunds(s, charge_id, out, err, errlen);
}

enum store_status store_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                                char *err, size_t errlen)
{
    return s->ops->recover(s, lease_ms, out, err, errlen);
}

void store_recovery_clear(struct store_recovery *r)
{
    free(r->tenant);
    free(r->key);
    free(r->fingerprint);
    free(r->request);
    memset(r, 0, sizeof *r);
}

enum store_status store_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                   size_t errlen)
{
    memset(out, 0, sizeof *out);
    return s->ops->unfinished(s, out, err, errlen);
}

enum store_status store_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
{
    return s->ops->reap(s, batch, deleted, err, errlen);
}

enum store_status store_ping(struct store *s, char *err, size_t errlen)
{
    return s->ops->ping(s, err, errlen);
}

void store_pool_stats(struct store *s, struct store_pool_stats *out)
{
    memset(out, 0, sizeof *out);
    if (s->ops->pool_stats)
        s->ops->pool_stats(s, out);
}

void store_free(struct store *s)
{
    if (s)
        s->ops->free(s);
}

void store_claim_result_clear(struct store_claim_result *r)
{
    free(r->response_body);
    free(r->response_location);
    memset(r, 0, sizeof *r);
}

void store_payment_clear(struct store_payment *p)
{
    free(p->transaction_id);
    free(p->idempotency_key);
    free(p->customer_id);
    free(p->description);
    free(p->status);
    free(p->charge_id);
    memset(p, 0, sizeof *p);
}

void store_list_clear(struct store_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_payment_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static int dup_opt(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

int store_payment_copy(struct store_payment *dst, const struct store_payment *src)
{
    memset(dst, 0, sizeof *dst);
    dst->amount_minor = src->amount_minor;
    memcpy(dst->currency, src->currency, sizeof dst->currency);
    dst->currency[3] = '\0';
    dst->processed_at_us = src->processed_at_us;
    dst->amount_refunded_minor = src->amount_refunded_minor;
    if (dup_opt(&dst->transaction_id, src->transaction_id) ||
        dup_opt(&dst->idempotency_key, src->idempotency_key) ||
        dup_opt(&dst->customer_id, src->customer_id) ||
        dup_opt(&dst->description, src->description) || dup_opt(&dst->status, src->status) ||
        dup_opt(&dst->charge_id, src->charge_id)) {
        store_payment_clear(dst);
        return -1;
    }
    return 0;
}

void store_refund_clear(struct store_refund *r)
{
    free(r->refund_id);
    free(r->transaction_id);
    free(r->idempotency_key);
    free(r->reason);
    free(r->status);
    free(r->acquirer_refund_id);
    memset(r, 0, sizeof *r);
}

void store_refund_list_clear(struct store_refund_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_refund_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_refund_copy(struct store_refund *dst, const struct store_refund *src)
{
    memset(dst, 0, sizeof *dst);
    dst->amount_minor = src->amount_minor;
    memcpy(dst->currency, src->currency, sizeof dst->currency);
    dst->currency[3] = '\0';
    dst->created_at_us = src->created_at_us;
    if (dup_opt(&dst->refund_id, src->refund_id) ||
        dup_opt(&dst->transaction_id, src->transaction_id) ||
        dup_opt(&dst->idempotency_key, src->idempotency_key) ||
        dup_opt(&dst->reason, src->reason) || dup_opt(&dst->status, src->status) ||
        dup_opt(&dst->acquirer_refund_id, src->acquirer_refund_id)) {
        store_refund_clear(dst);
        return -1;
    }
    return 0;
}

void store_event_clear(struct store_event *e)
{
    free(e->event_id);
    free(e->type);
    free(e->body);
    memset(e, 0, sizeof *e);
}

void store_event_list_clear(struct store_event_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_event_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_event_copy(struct store_event *dst, const struct store_event *src)
{
    memset(dst, 0, sizeof *dst);
    dst->created_at_us = src->created_at_us;
    dst->body_len = src->body_len;
    if (dup_opt(&dst->event_id, src->event_id) || dup_opt(&dst->type, src->type) ||
        !(dst->body = malloc(src->body_len + 1))) {
        store_event_clear(dst);
        return -1;
    }
    memcpy(dst->body, src->body, src->body_len);
    dst->body[src->body_len] = '\0';
    return 0;
}

void store_endpoint_clear(struct store_endpoint *e)
{
    free(e->endpoint_id);
    free(e->url);
    free(e->events);
    free(e->secret);
    memset(e, 0, sizeof *e);
}

void store_endpoint_list_clear(struct store_endpoint_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_endpoint_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_endpoint_copy(struct store_endpoint *dst, const struct store_endpoint *src)
{
    memset(dst, 0, sizeof *dst);
    dst->created_at_us = src->created_at_us;
    if (dup_opt(&dst->endpoint_id, src->endpoint_id) || dup_opt(&dst->url, src->url) ||
        dup_opt(&dst->events, src->events) || dup_opt(&dst->secret, src->secret)) {
        store_endpoint_clear(dst);
        return -1;
    }
    return 0;
}

void store_charge_clear(struct store_charge *c)
{
    free(c->charge_id);
    free(c->merchant);
    free(c->customer_id);
    free(c->status);
    free(c->decline_code);
    free(c->reference);
    free(c->idempotency_key);
    memset(c, 0, sizeof *c);
}

void store_charge_list_clear(struct store_charge_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_charge_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_charge_copy(struct store_charge *dst, const struct store_charge *src)
{
    memset(dst, 0, sizeof *dst);
    dst->amount_minor = src->amount_minor;
    memcpy(dst->currency, src->currency, sizeof dst->currency);
    dst->currency[3] = '\0';
    dst->created_at_us = src->created_at_us;
    dst->amount_refunded_minor = src->amount_refunded_minor;
    if (dup_opt(&dst->charge_id, src->charge_id) || dup_opt(&dst->merchant, src->merchant) ||
        dup_opt(&dst->customer_id, src->customer_id) || dup_opt(&dst->status, src->status) ||
        dup_opt(&dst->decline_code, src->decline_code) ||
        dup_opt(&dst->reference, src->reference) ||
        dup_opt(&dst->idempotency_key, src->idempotency_key)) {
        store_charge_clear(dst);
        return -1;
    }
    return 0;
}

void store_charge_refund_clear(struct store_charge_refund *r)
{
    free(r->refund_id);
    free(r->charge_id);
    free(r->reference);
    free(r->idempotency_key);
    memset(r, 0, sizeof *r);
}

void store_charge_refund_list_clear(struct store_charge_refund_list *l)
{
    for (size_t i = 0; i < l->count; i++)
        store_charge_refund_clear(&l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

int store_charge_refund_copy(struct store_charge_refund *dst, const struct store_charge_refund *src)
{
    memset(dst, 0, sizeof *dst);
    dst->amount_minor = src->amount_minor;
    dst->created_at_us = src->created_at_us;
    if (dup_opt(&dst->refund_id, src->refund_id) || dup_opt(&dst->charge_id, src->charge_id) ||
        dup_opt(&dst->reference, src->reference) ||
        dup_opt(&dst->idempotency_key, src->idempotency_key)) {
        store_charge_refund_clear(dst);
        return -1;
    }
    return 0;
}
