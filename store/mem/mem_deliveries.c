/* mem_deliveries.c - the memory store's webhook deliveries (sql/014's
 * rules): fanned out with their event, claimed, finished, counted. It
 * keeps pending deliveries only: there is no psql to show the others.
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Does an endpoint's list of types (comma-separated; NULL: all) have type? */
static int subscribed(const char *types, const char *type)
{
    size_t n = strlen(type);
    for (const char *p = types; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, type, n) == 0 && (p[n] == ',' || p[n] == '\0'))
            return 1;
    return !types;
}

/* The deliveries of ev, one for each endpoint of tenant that wants it, in
 * a new array, with room made for them in the table (so that inserting
 * cannot fail): 0, or -1 when out of memory (nothing kept). */
int mem_fan_out(struct store_mem *m, const char *tenant, const struct store_event *ev,
                struct mem_delivery **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    size_t k = 0;
    for (size_t i = 0; i < m->endpoints.n; i++) {
        const struct mem_endpoint *w = mem_rows_at(&m->endpoints, i);
        k += strcmp(w->tenant, tenant) == 0 && subscribed(w->e.events, ev->type);
    }
    if (k == 0)
        return 0;
    struct mem_delivery *d = calloc(k, sizeof *d);
    if (!d || mem_rows_reserve_n(&m->deliveries, k) != 0) {
        free(d);
        return -1;
    }
    for (size_t i = 0; i < m->endpoints.n; i++) {
        const struct mem_endpoint *w = mem_rows_at(&m->endpoints, i);
        if (strcmp(w->tenant, tenant) != 0 || !subscribed(w->e.events, ev->type))
            continue;
        struct mem_delivery *x = &d[(*n)++];
        x->tenant = strdup(tenant);
        x->event_id = strdup(ev->event_id);
        x->endpoint_id = strdup(w->e.endpoint_id);
        x->due_us = clock_wall_us();
        x->created_us = ev->created_at_us;
        if (!x->tenant || !x->event_id || !x->endpoint_id) {
            for (size_t j = 0; j < *n; j++)
                mem_delivery_row_clear(&d[j]);
            free(d);
            *n = 0;
            return -1;
        }
    }
    *out = d;
    return 0;
}

/* Fills one claimed delivery from its event and endpoint: 1 when filled, 0
 * when either is gone (reaped, deleted: the delivery goes with them), -1
 * when out of memory. */
static int claimed_copy(struct store_mem *m, const struct mem_delivery *d,
                        struct store_delivery *out)
{
    size_t e = mem_rows_find(&m->events, d->tenant, mem_event_is, d->event_id);
    size_t w = mem_rows_find(&m->endpoints, d->tenant, mem_endpoint_is, d->endpoint_id);
    if (e == m->events.n || w == m->endpoints.n)
        return 0;
    const struct mem_event *me = mem_rows_at(&m->events, e);
    const struct mem_endpoint *mw = mem_rows_at(&m->endpoints, w);
    out->tenant = strdup(d->tenant);
    out->event_id = strdup(d->event_id);
    out->endpoint_id = strdup(d->endpoint_id);
    out->attempt = d->attempts;
    out->url = strdup(mw->e.url);
    out->secret = strdup(mw->e.secret);
    out->body = malloc(me->e.body_len + 1);
    if (out->body) {
        memcpy(out->body, me->e.body, me->e.body_len);
        out->body[me->e.body_len] = '\0';
        out->body_len = me->e.body_len;
    }
    return out->tenant && out->event_id && out->endpoint_id && out->url && out->secret && out->body
               ? 1
               : -1;
}

enum store_status mem_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                       struct store_delivery_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    int batch = c->batch;
    int64_t lease_ms = c->lease_ms;
    struct store_delivery_list l = {.items = calloc((size_t)batch, sizeof *l.items)};
    int64_t now = clock_wall_us();
    int oom = !l.items;
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; !oom && i < m->deliveries.n && l.count < (size_t)batch;) {
        struct mem_delivery *d = mem_rows_at(&m->deliveries, i);
        if (d->due_us > now || store_endpoint_in(c->busy, c->nbusy, d->tenant, d->endpoint_id) ||
            (c->lookback_ms > 0 && d->due_us < now - c->lookback_ms * 1000)) {
            i++;
            continue;
        }
        d->attempts++;
        int got = claimed_copy(m, d, &l.items[l.count]);
        if (got == 0) {
            store_delivery_clear(&l.items[l.count]);
            mem_rows_remove(&m->deliveries, i, mem_delivery_row_clear);
            continue;
        }
        l.count++;
        oom = got < 0;
        d->due_us = now + lease_ms * 1000;
        i++;
    }
    pthread_mutex_unlock(&m->mu);
    if (oom) {
        store_delivery_list_clear(&l);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    *out = l;
    return STORE_OK;
}

static int delivery_is(const void *row, const void *result)
{
    const struct mem_delivery *d = row;
    const struct store_delivery_result *r = result;
    return strcmp(d->event_id, r->event_id) == 0 && strcmp(d->endpoint_id, r->endpoint_id) == 0;
}

enum store_status mem_finish_deliveries(struct store *s,
                                        const struct store_delivery_result *results, size_t n,
                                        char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    (void)err;
    (void)errlen;
    pthread_mutex_lock(&m->mu);
    for (size_t k = 0; k < n; k++) {
        const struct store_delivery_result *r = &results[k];
        size_t i = mem_rows_find(&m->deliveries, r->tenant, delivery_is, r);
        if (i == m->deliveries.n)
            continue;
        struct mem_delivery *d = mem_rows_at(&m->deliveries, i);
        if (d->attempts != r->attempt)
            continue; /* claimed again since: the later claim's result counts */
        if (r->state == STORE_DELIVERY_RETRY) {
            d->attempts = r->attempts;
            d->due_us = clock_wall_us() + r->retry_in_ms * 1000;
        } else {
            mem_rows_remove(&m->deliveries, i, mem_delivery_row_clear);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return STORE_OK;
}

enum store_status mem_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                       char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    (void)err;
    (void)errlen;
    pthread_mutex_lock(&m->mu);
    out->pending = (int64_t)m->deliveries.n;
    out->oldest_created_us =
        m->deliveries.n ? ((const struct mem_delivery *)mem_rows_at(&m->deliveries, 0))->created_us
                        : 0;
    pthread_mutex_unlock(&m->mu);
    return STORE_OK;
}
