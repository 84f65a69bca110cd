/* store_mem.c - the in-memory store, for quick runs and tests
 *
 * Same contract as the PostgreSQL store. One mutex guards everything: every
 * operation is short and never waits on a payment, so a duplicate gets its
 * answer at once. Nothing survives the process.
 */
#define _POSIX_C_SOURCE 200809L
#include "store_mem.h"

#include "bytes.h"
#include "clock.h"
#include "hashtab.h"
#include "mem_rows.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum rec_state { REC_PROCESSING, REC_COMPLETED };

struct record {
    struct hashtab_link link; /* in records, by (tenant, key) */
    char *tenant;
    char *key;
    char *fingerprint;
    enum rec_state state;
    int64_t lease_token;
    int64_t locked_until_us;
    int64_t created_at_us;
    int64_t expires_at_us;
    char downstream_key[65]; /* chosen when the record is made or claimed after expiry */
    char *request;           /* kept for recovery while processing (store_claim); or NULL */
    int response_status;
    char *body;
    size_t body_len;
    char *location;
};

struct mem_payment {
    char *tenant;
    struct store_payment p;
};

struct mem_refund {
    char *tenant;
    struct store_refund r;
};

struct mem_event {
    char *tenant;
    struct store_event e;
};

struct mem_endpoint {
    char *tenant;
    struct store_endpoint e;
};

/* A delivery of an event to an endpoint (sql/014's row, kept only while
 * pending: the memory store has no psql to show the others). */
struct mem_delivery {
    char *tenant;
    char *event_id;
    char *endpoint_id;
    int attempts;
    int64_t due_us; /* when it is due, or its lease ends */
    int64_t created_us;
};

/* The acquirer's ledger belongs to no tenant: tenant is always NULL (a NULL
 * tenant in mem_rows matches every row). */
struct mem_charge {
    char *tenant;
    struct store_charge c;
};

struct mem_charge_refund {
    char *tenant;
    struct store_charge_refund r;
};

struct store_mem {
    struct store base;
    pthread_mutex_t mu;
    struct hashtab records;         /* of struct record */
    struct mem_rows payments;       /* of struct mem_payment */
    struct mem_rows refunds;        /* of struct mem_refund */
    struct mem_rows charges;        /* of struct mem_charge */
    struct mem_rows charge_refunds; /* of struct mem_charge_refund */
    struct mem_rows events;         /* of struct mem_event */
    struct mem_rows endpoints;      /* of struct mem_endpoint */
    struct mem_rows deliveries;     /* of struct mem_delivery, pending */
    int64_t next_token;
};

static int same_record(const struct hashtab_link *l, const char *tenant, const char *key)
{
    const struct record *r = hashtab_entry(l, struct record, link);
    return strcmp(r->tenant, tenant) == 0 && strcmp(r->key, key) == 0;
}

static struct record *record_of(struct hashtab_link *l)
{
    return l ? hashtab_entry(l, struct record, link) : NULL;
}

static void record_drop_response(struct record *r)
{
    free(r->body);
    free(r->location);
    r->body = NULL;
    r->location = NULL;
    r->body_len = 0;
    r->response_status = 0;
}

static void record_free(struct record *r)
{
    record_drop_response(r);
    free(r->tenant);
    free(r->key);
    free(r->fingerprint);
    free(r->request);
    free(r);
}

/* Keeps request (when there is one) with r: 0, or -1 out of memory. */
static int record_keep_request(struct record *r, const char *request)
{
    if (!request)
        return 0;
    char *copy = strdup(request);
    if (!copy)
        return -1;
    free(r->request);
    r->request = copy;
    return 0;
}

static enum store_status fill_completed(const struct record *r, struct store_claim_result *out)
{
    struct store_claim_result res = {.outcome = CLAIM_COMPLETED,
                                     .response_status = r->response_status,
                                     .response_body_len = r->body_len,
                                     .created_at_us = r->created_at_us};
    res.response_body = bytes_dup(r->body, r->body_len);
    if (r->location)
        res.response_location = strdup(r->location);
    if (!res.response_body || (r->location && !res.response_location)) {
        store_claim_result_clear(&res);
        return STORE_ERROR;
    }
    *out = res;
    return STORE_OK;
}

static enum store_status mem_claim(struct store *s, const char *tenant, const char *key,
                                   const char *fingerprint, const char *request,
                                   const char *downstream, int64_t lease_ms, int64_t ttl_ms,
                                   struct store_claim_result *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = clock_wall_us();

    pthread_mutex_lock(&m->mu);
    size_t hash;
    struct hashtab_link **at = hashtab_find(&m->records, tenant, key, &hash, same_record);
    struct record *r = record_of(*at);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r || !(r->tenant = strdup(tenant)) || !(r->key = strdup(key)) ||
            !(r->fingerprint = strdup(fingerprint)) || record_keep_request(r, request) != 0) {
            if (r)
                record_free(r);
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
            goto out;
        }
        r->state = REC_PROCESSING;
        r->lease_token = ++m->next_token;
        r->locked_until_us = now + lease_ms * 1000;
        r->created_at_us = now;
        r->expires_at_us = now + ttl_ms * 1000;
        snprintf(r->downstream_key, sizeof r->downstream_key, "%s", downstream);
        hashtab_add(&m->records, &r->link, hash);
        *out = (struct store_claim_result){
            .outcome = CLAIM_NEW, .lease_token = r->lease_token, .created_at_us = now};
        snprintf(out->downstream_key, sizeof out->downstream_key, "%s", r->downstream_key);
        goto out;
    }
    /* A completed record whose answer expired is claimed as a new one; a
     * record still processing never expires (pg_sql.c: the claim). */
    if (r->state == REC_COMPLETED && r->expires_at_us <= now) {
        char *fp = strdup(fingerprint);
        if (!fp || record_keep_request(r, request) != 0) {
            free(fp);
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
            goto out;
        }
        free(r->fingerprint);
        r->fingerprint = fp;
        record_drop_response(r);
        r->state = REC_PROCESSING;
        r->lease_token = ++m->next_token;
        r->locked_until_us = now + lease_ms * 1000;
        r->created_at_us = now;
        r->expires_at_us = now + ttl_ms * 1000;
        snprintf(r->downstream_key, sizeof r->downstream_key, "%s", downstream);
        *out = (struct store_claim_result){
            .outcome = CLAIM_TAKEOVER, .lease_token = r->lease_token, .created_at_us = now};
        snprintf(out->downstream_key, sizeof out->downstream_key, "%s", r->downstream_key);
        goto out;
    }
    if (strcmp(r->fingerprint, fingerprint) != 0) {
        *out = (struct store_claim_result){.outcome = CLAIM_MISMATCH,
                                           .created_at_us = r->created_at_us};
        goto out;
    }
    if (r->state == REC_COMPLETED) {
        st = fill_completed(r, out);
        if (st != STORE_OK)
            snprintf(err, errlen, "out of memory");
        goto out;
    }
    if (r->locked_until_us <= now) {
        if (record_keep_request(r, request) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
            goto out;
        }
        r->lease_token = ++m->next_token;
        r->locked_until_us = now + lease_ms * 1000;
        if (r->expires_at_us <= now)
            r->expires_at_us = now + ttl_ms * 1000;
        *out = (struct store_claim_result){.outcome = CLAIM_TAKEOVER,
                                           .lease_token = r->lease_token,
                                           .created_at_us = r->created_at_us};
        snprintf(out->downstream_key, sizeof out->downstream_key, "%s", r->downstream_key);
        goto out;
    }
    *out = (struct store_claim_result){.outcome = CLAIM_IN_PROGRESS,
                                       .created_at_us = r->created_at_us};
out:
    pthread_mutex_unlock(&m->mu);
    return st;
}

/* ---- payments, refunds and the ledger: mem_rows tables ------------------ */

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

static int payment_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_payment *)row)->p.transaction_id, id) == 0;
}

static int refund_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_refund *)row)->r.refund_id, id) == 0;
}

static int charge_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_charge *)row)->c.charge_id, id) == 0;
}

static struct mem_payment *find_payment(struct store_mem *m, const char *tenant, const char *id)
{
    size_t i = mem_rows_find(&m->payments, tenant, payment_is, id);
    return i < m->payments.n ? mem_rows_at(&m->payments, i) : NULL;
}

static struct mem_charge *find_charge(struct store_mem *m, const char *id)
{
    size_t i = mem_rows_find(&m->charges, NULL, charge_is, id);
    return i < m->charges.n ? mem_rows_at(&m->charges, i) : NULL;
}

static void event_row_clear(void *row)
{
    struct mem_event *me = row;
    free(me->tenant);
    store_event_clear(&me->e);
}

static void payment_row_clear(void *row)
{
    struct mem_payment *mp = row;
    free(mp->tenant);
    store_payment_clear(&mp->p);
}

static void refund_row_clear(void *row)
{
    struct mem_refund *mr = row;
    free(mr->tenant);
    store_refund_clear(&mr->r);
}

static void charge_row_clear(void *row)
{
    store_charge_clear(&((struct mem_charge *)row)->c);
}

static void charge_refund_row_clear(void *row)
{
    store_charge_refund_clear(&((struct mem_charge_refund *)row)->r);
}

/* ---- webhook deliveries (sql/014's rules) -------------------------------- */

static int delivery_newer_first(const void *a, const void *b)
{
    const struct mem_delivery *x = a, *y = b;
    return newer_first(x->created_us, x->event_id, y->created_us, y->event_id);
}

static void delivery_row_clear(void *row)
{
    struct mem_delivery *d = row;
    free(d->tenant);
    free(d->event_id);
    free(d->endpoint_id);
}

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
static int fan_out(struct store_mem *m, const char *tenant, const struct store_event *ev,
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
                delivery_row_clear(&d[j]);
            free(d);
            *n = 0;
            return -1;
        }
    }
    *out = d;
    return 0;
}

/* STORE_ERROR when rows carry more than one row (struct store_rows: at most
 * one is set), before anything is looked at or written. */
static enum store_status at_most_one_row(const struct store_rows *rows, char *err, size_t errlen)
{
    if (!rows || (!!rows->payment + !!rows->refund + !!rows->charge + !!rows->charge_refund <= 1 &&
                  (!rows->event || rows->payment || rows->refund)))
        return STORE_OK;
    snprintf(err, errlen,
             "rows carry at most one of a payment, a refund, a charge and a charge "
             "refund, and an event only with a payment or a refund");
    return STORE_ERROR;
}

/* Writes rows (caller holds the mutex): all of them, or nothing with
 * STORE_REJECTED (a refund that does not fit its payment or its charge) or
 * STORE_ERROR. */
static enum store_status write_rows_locked(struct store_mem *m, const char *tenant,
                                           const struct store_rows *rows, char *err, size_t errlen)
{
    const struct store_refund *rf = rows ? rows->refund : NULL;
    const struct store_payment *pay = rows ? rows->payment : NULL;
    const struct store_charge *ch = rows ? rows->charge : NULL;
    const struct store_charge_refund *cr = rows ? rows->charge_refund : NULL;
    const struct store_event *ev = rows ? rows->event : NULL;
    struct mem_event me = {0};
    struct mem_payment mp = {0};
    struct mem_refund mr = {0};
    struct mem_charge mc = {0};
    struct mem_charge_refund mcr = {0};
    struct mem_delivery *fan = NULL;
    size_t nfan = 0;
    if (rf) {
        struct mem_payment *target = find_payment(m, tenant, rf->transaction_id);
        if (!target || strcmp(target->p.status, "completed") != 0 || rf->amount_minor <= 0 ||
            rf->amount_minor > target->p.amount_minor - target->p.amount_refunded_minor) {
            snprintf(err, errlen, "refund does not fit its payment");
            return STORE_REJECTED;
        }
    }
    if (cr) {
        struct mem_charge *target = find_charge(m, cr->charge_id);
        if (!target || strcmp(target->c.status, "succeeded") != 0 || cr->amount_minor <= 0 ||
            cr->amount_minor > target->c.amount_minor - target->c.amount_refunded_minor) {
            snprintf(err, errlen, "refund does not fit its charge");
            return STORE_REJECTED;
        }
    }
    /* every copy and every allocation first: then nothing can fail */
    if ((pay && (mem_rows_reserve(&m->payments) != 0 || !(mp.tenant = strdup(tenant)) ||
                 store_payment_copy(&mp.p, pay) != 0)) ||
        (rf && (mem_rows_reserve(&m->refunds) != 0 || !(mr.tenant = strdup(tenant)) ||
                store_refund_copy(&mr.r, rf) != 0)) ||
        (ch && (mem_rows_reserve(&m->charges) != 0 || store_charge_copy(&mc.c, ch) != 0)) ||
        (cr && (mem_rows_reserve(&m->charge_refunds) != 0 ||
                store_charge_refund_copy(&mcr.r, cr) != 0)) ||
        (ev && (mem_rows_reserve(&m->events) != 0 || !(me.tenant = strdup(tenant)) ||
                store_event_copy(&me.e, ev) != 0 || fan_out(m, tenant, ev, &fan, &nfan) != 0))) {
        event_row_clear(&me);
        payment_row_clear(&mp);
        refund_row_clear(&mr);
        charge_row_clear(&mc);
        charge_refund_row_clear(&mcr);
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    if (pay)
        mem_rows_insert(&m->payments, &mp);
    if (rf) {
        find_payment(m, tenant, rf->transaction_id)->p.amount_refunded_minor += rf->amount_minor;
        mem_rows_insert(&m->refunds, &mr);
    }
    if (ch) {
        mc.c.amount_refunded_minor = 0; /* read only: the sum of refunds yet to come */
        mem_rows_insert(&m->charges, &mc);
    }
    if (cr) {
        find_charge(m, cr->charge_id)->c.amount_refunded_minor += cr->amount_minor;
        mem_rows_insert(&m->charge_refunds, &mcr);
    }
    if (ev)
        mem_rows_insert(&m->events, &me);
    for (size_t i = 0; i < nfan; i++)
        mem_rows_insert(&m->deliveries, &fan[i]);
    free(fan);
    return STORE_OK;
}

static enum store_status mem_complete(struct store *s, const char *tenant, const char *key,
                                      int64_t lease_token, const struct store_response *resp,
                                      const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = at_most_one_row(rows, err, errlen);
    char *body = NULL, *loc = NULL;
    if (st != STORE_OK)
        return st;

    pthread_mutex_lock(&m->mu);
    struct record *r = record_of(*hashtab_find(&m->records, tenant, key, NULL, same_record));
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
        goto out;
    }
    body = bytes_dup(resp->body, resp->body_len);
    loc = resp->location ? strdup(resp->location) : NULL;
    if (!body || (resp->location && !loc)) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
        goto out;
    }
    st = write_rows_locked(m, tenant, rows, err, errlen);
    if (st != STORE_OK)
        goto out;
    record_drop_response(r);
    free(r->request);
    r->request = NULL;
    r->state = REC_COMPLETED;
    r->response_status = resp->status;
    r->body = body;
    r->body_len = resp->body_len;
    r->location = loc;
    body = loc = NULL;
out:
    pthread_mutex_unlock(&m->mu);
    free(body);
    free(loc);
    return st;
}

static enum store_status mem_release(struct store *s, const char *tenant, const char *key,
                                     int64_t lease_token, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;

    pthread_mutex_lock(&m->mu);
    struct hashtab_link **at = hashtab_find(&m->records, tenant, key, NULL, same_record);
    struct record *r = record_of(*at);
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    } else {
        hashtab_remove(&m->records, at);
        record_free(r);
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_abandon(struct store *s, const char *tenant, const char *key,
                                     int64_t lease_token, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = clock_wall_us();
    pthread_mutex_lock(&m->mu);
    struct record *r = record_of(*hashtab_find(&m->records, tenant, key, NULL, same_record));
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    } else if (r->locked_until_us > now) {
        r->locked_until_us = now;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_write_rows(struct store *s, const char *tenant,
                                        const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = at_most_one_row(rows, err, errlen);
    if (st != STORE_OK)
        return st;
    pthread_mutex_lock(&m->mu);
    st = write_rows_locked(m, tenant, rows, err, errlen);
    pthread_mutex_unlock(&m->mu);
    return st;
}

static int payment_copy(void *item, const void *row)
{
    return store_payment_copy(item, &((const struct mem_payment *)row)->p);
}

static int refund_copy(void *item, const void *row)
{
    return store_refund_copy(item, &((const struct mem_refund *)row)->r);
}

static int charge_copy(void *item, const void *row)
{
    return store_charge_copy(item, &((const struct mem_charge *)row)->c);
}

static int charge_refund_copy(void *item, const void *row)
{
    return store_charge_refund_copy(item, &((const struct mem_charge_refund *)row)->r);
}

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

static enum store_status mem_get_payment(struct store *s, const char *tenant,
                                         const char *transaction_id, struct store_payment *out,
                                         char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->payments, tenant, payment_is, transaction_id, payment_copy, out,
                   "payment", err, errlen);
}

static enum store_status mem_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                        struct store_refund *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->refunds, tenant, refund_is, refund_id, refund_copy, out, "refund", err,
                   errlen);
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

static enum store_status mem_list_payments(struct store *s, const char *tenant,
                                           const struct store_list_query *q, struct store_list *out,
                                           char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st =
        list_page(m, &m->payments, tenant, payment_is, q->starting_after, 0, payment_of_customer,
                  q->customer_id, payment_copy, payment_item_clear, sizeof(struct store_payment),
                  q->limit, &items, &out->count, &out->has_more, "payment", err, errlen);
    out->items = items;
    return st;
}

/* The cursor must be a refund of the same payment. */
static enum store_status mem_list_refunds(struct store *s, const char *tenant,
                                          const struct store_refund_query *q,
                                          struct store_refund_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st =
        list_page(m, &m->refunds, tenant, refund_is, q->starting_after, 1, refund_of_payment,
                  q->transaction_id, refund_copy, refund_item_clear, sizeof(struct store_refund),
                  q->limit, &items, &out->count, &out->has_more, "refund", err, errlen);
    out->items = items;
    return st;
}

/* ---- events --------------------------------------------------------------- */

static int event_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_event *)row)->e.event_id, id) == 0;
}

static int event_copy(void *item, const void *row)
{
    return store_event_copy(item, &((const struct mem_event *)row)->e);
}

static int event_of_type(const void *row, const void *type)
{
    return !type || strcmp(((const struct mem_event *)row)->e.type, type) == 0;
}

static void event_item_clear(void *e)
{
    store_event_clear(e);
}

static enum store_status mem_get_event(struct store *s, const char *tenant, const char *event_id,
                                       struct store_event *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->events, tenant, event_is, event_id, event_copy, out, "event", err,
                   errlen);
}

static enum store_status mem_list_events(struct store *s, const char *tenant,
                                         const struct store_event_query *q,
                                         struct store_event_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    enum store_status st =
        list_page(m, &m->events, tenant, event_is, q->starting_after, 0, event_of_type, q->type,
                  event_copy, event_item_clear, sizeof(struct store_event), q->limit, &items,
                  &out->count, &out->has_more, "event", err, errlen);
    out->items = items;
    return st;
}

/* The oldest events first: the table is in time order. */
static enum store_status mem_reap_events(struct store *s, int64_t retention_ms, int batch,
                                         int *deleted, char *err, size_t errlen)
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
    mem_rows_drop_oldest(&m->events, k, event_row_clear);
    /* their deliveries with them (only deliveries of old events can be) */
    for (size_t i = 0; k && i < m->deliveries.n;) {
        const struct mem_delivery *d = mem_rows_at(&m->deliveries, i);
        if (d->created_us < before &&
            mem_rows_find(&m->events, d->tenant, event_is, d->event_id) == m->events.n)
            mem_rows_remove(&m->deliveries, i, delivery_row_clear);
        else
            i++;
    }
    pthread_mutex_unlock(&m->mu);
    *deleted = (int)k;
    return STORE_OK;
}

/* ---- webhook endpoints: a tenant's few, oldest first ------------------- */

static int endpoint_newer_first(const void *a, const void *b)
{
    const struct store_endpoint *x = &((const struct mem_endpoint *)a)->e;
    const struct store_endpoint *y = &((const struct mem_endpoint *)b)->e;
    return newer_first(x->created_at_us, x->endpoint_id, y->created_at_us, y->endpoint_id);
}

static int endpoint_is(const void *row, const void *id)
{
    return strcmp(((const struct mem_endpoint *)row)->e.endpoint_id, id) == 0;
}

static int endpoint_copy(void *item, const void *row)
{
    return store_endpoint_copy(item, &((const struct mem_endpoint *)row)->e);
}

static void endpoint_item_clear(void *e)
{
    store_endpoint_clear(e);
}

static void endpoint_row_clear(void *row)
{
    struct mem_endpoint *me = row;
    free(me->tenant);
    store_endpoint_clear(&me->e);
}

static enum store_status mem_create_endpoint(struct store *s, const char *tenant,
                                             const struct store_endpoint *e, int max, char *err,
                                             size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    struct mem_endpoint me = {0};
    pthread_mutex_lock(&m->mu);
    int have = 0;
    for (size_t i = 0; i < m->endpoints.n; i++)
        have += strcmp(((const struct mem_endpoint *)mem_rows_at(&m->endpoints, i))->tenant,
                       tenant) == 0;
    if (have >= max) {
        snprintf(err, errlen, "the tenant has %d endpoints already", max);
        st = STORE_REJECTED;
    } else if (mem_rows_reserve(&m->endpoints) != 0 || !(me.tenant = strdup(tenant)) ||
               store_endpoint_copy(&me.e, e) != 0) {
        endpoint_row_clear(&me);
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        mem_rows_insert(&m->endpoints, &me);
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_list_endpoints(struct store *s, const char *tenant,
                                            struct store_endpoint_list *out, char *err,
                                            size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    void *items = NULL;
    pthread_mutex_lock(&m->mu);
    if (mem_rows_oldest(&m->endpoints, tenant, NULL, NULL, endpoint_copy, endpoint_item_clear,
                        sizeof(struct store_endpoint), m->endpoints.n + 1, &items,
                        &out->count) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        out->items = items;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_delete_endpoint(struct store *s, const char *tenant,
                                             const char *endpoint_id, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    size_t i = mem_rows_find(&m->endpoints, tenant, endpoint_is, endpoint_id);
    if (i == m->endpoints.n) {
        snprintf(err, errlen, "no such endpoint");
        st = STORE_NOT_FOUND;
    } else {
        mem_rows_remove(&m->endpoints, i, endpoint_row_clear);
        /* its deliveries with it */
        for (size_t k = 0; k < m->deliveries.n;) {
            const struct mem_delivery *d = mem_rows_at(&m->deliveries, k);
            if (strcmp(d->tenant, tenant) == 0 && strcmp(d->endpoint_id, endpoint_id) == 0)
                mem_rows_remove(&m->deliveries, k, delivery_row_clear);
            else
                k++;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

/* ---- webhook deliveries: claimed, finished, counted --------------------- */

/* Fills one claimed delivery from its event and endpoint: 1 when filled, 0
 * when either is gone (reaped, deleted: the delivery goes with them), -1
 * when out of memory. */
static int claimed_copy(struct store_mem *m, const struct mem_delivery *d,
                        struct store_delivery *out)
{
    size_t e = mem_rows_find(&m->events, d->tenant, event_is, d->event_id);
    size_t w = mem_rows_find(&m->endpoints, d->tenant, endpoint_is, d->endpoint_id);
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

static enum store_status mem_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                              struct store_delivery_list *out, char *err,
                                              size_t errlen)
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
            mem_rows_remove(&m->deliveries, i, delivery_row_clear);
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

static enum store_status mem_finish_deliveries(struct store *s,
                                               const struct store_delivery_result *results,
                                               size_t n, char *err, size_t errlen)
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
            mem_rows_remove(&m->deliveries, i, delivery_row_clear);
        }
    }
    pthread_mutex_unlock(&m->mu);
    return STORE_OK;
}

static enum store_status mem_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
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

/* ---- the acquirer's ledger: no tenant's, oldest first ------------------- */

static enum store_status mem_get_charge(struct store *s, const char *charge_id,
                                        struct store_charge *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    return get_row(m, &m->charges, NULL, charge_is, charge_id, charge_copy, out, "charge", err,
                   errlen);
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

static enum store_status mem_list_charges(struct store *s, const char *reference,
                                          struct store_charge_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    size_t count = 0;
    enum store_status st =
        list_ledger(m, &m->charges, charge_of_reference, reference, charge_copy, charge_item_clear,
                    sizeof(struct store_charge), &items, &count, err, errlen);
    if (st == STORE_OK) {
        out->items = items;
        out->count = count;
    }
    return st;
}

static enum store_status mem_list_charge_refunds(struct store *s, const char *charge_id,
                                                 struct store_charge_refund_list *out, char *err,
                                                 size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    void *items = NULL;
    size_t count = 0;
    enum store_status st = list_ledger(
        m, &m->charge_refunds, refund_of_charge, charge_id, charge_refund_copy,
        charge_refund_item_clear, sizeof(struct store_charge_refund), &items, &count, err, errlen);
    if (st == STORE_OK) {
        out->items = items;
        out->count = count;
    }
    return st;
}

static enum store_status mem_reap(struct store *s, int batch, int *deleted, char *err,
                                  size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    int n = 0;
    int64_t now = clock_wall_us();
    (void)err;
    (void)errlen;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->records.nbuckets && n < batch; i++) {
        struct hashtab_link **at = &m->records.buckets[i];
        while (*at && n < batch) {
            struct record *r = record_of(*at);
            if (r->expires_at_us <= now &&
                (r->state == REC_COMPLETED || (!r->request && r->locked_until_us <= now))) {
                hashtab_remove(&m->records, at);
                record_free(r);
                n++;
            } else {
                at = &(*at)->next;
            }
        }
    }
    pthread_mutex_unlock(&m->mu);
    *deleted = n;
    return STORE_OK;
}

/* The waiting records: how many, and the one whose lease ran out longest
 * ago (pg_sql.c's order) - or, with by_created, the first created. */
static struct record *oldest_waiting(struct store_mem *m, int64_t now, int by_created,
                                     int64_t *count)
{
    struct record *oldest = NULL;
    *count = 0;
    for (size_t i = 0; i < m->records.nbuckets; i++)
        for (struct hashtab_link *l = m->records.buckets[i]; l; l = l->next) {
            struct record *r = record_of(l);
            if (!r->request || r->state != REC_PROCESSING || r->locked_until_us > now)
                continue;
            ++*count;
            if (!oldest || (by_created ? r->created_at_us < oldest->created_at_us
                                       : r->locked_until_us < oldest->locked_until_us ||
                                             (r->locked_until_us == oldest->locked_until_us &&
                                              r->created_at_us < oldest->created_at_us)))
                oldest = r;
        }
    return oldest;
}

static enum store_status mem_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                                     char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = clock_wall_us(), count;
    pthread_mutex_lock(&m->mu);
    struct record *r = oldest_waiting(m, now, 0, &count);
    if (!r) {
        st = STORE_NOT_FOUND;
        goto out;
    }
    struct store_recovery got = {.tenant = strdup(r->tenant),
                                 .key = strdup(r->key),
                                 .fingerprint = strdup(r->fingerprint),
                                 .request = strdup(r->request),
                                 .lease_token = m->next_token + 1,
                                 .created_at_us = r->created_at_us};
    snprintf(got.downstream_key, sizeof got.downstream_key, "%s", r->downstream_key);
    if (!got.tenant || !got.key || !got.fingerprint || !got.request) {
        store_recovery_clear(&got);
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
        goto out;
    }
    r->lease_token = ++m->next_token;
    r->locked_until_us = now + lease_ms * 1000;
    *out = got;
out:
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                        size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    (void)err;
    (void)errlen;
    pthread_mutex_lock(&m->mu);
    struct record *r = oldest_waiting(m, clock_wall_us(), 1, &out->waiting);
    out->oldest_created_us = r ? r->created_at_us : 0;
    pthread_mutex_unlock(&m->mu);
    return STORE_OK;
}

static enum store_status mem_ping(struct store *s, char *err, size_t errlen)
{
    (void)s;
    (void)err;
    (void)errlen;
    return STORE_OK;
}

static void mem_free(struct store *s)
{
    struct store_mem *m = (struct store_mem *)s;
    for (size_t i = 0; i < m->records.nbuckets; i++)
        for (struct hashtab_link *l = m->records.buckets[i], *next; l; l = next) {
            next = l->next;
            record_free(record_of(l));
        }
    mem_rows_free(&m->payments, payment_row_clear);
    mem_rows_free(&m->refunds, refund_row_clear);
    mem_rows_free(&m->charges, charge_row_clear);
    mem_rows_free(&m->charge_refunds, charge_refund_row_clear);
    mem_rows_free(&m->events, event_row_clear);
    mem_rows_free(&m->endpoints, endpoint_row_clear);
    mem_rows_free(&m->deliveries, delivery_row_clear);
    hashtab_destroy(&m->records);
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
    if (hashtab_init(&m->records, 1024, 1) != 0 || pthread_mutex_init(&m->mu, NULL) != 0) {
        hashtab_destroy(&m->records);
        free(m);
        return NULL;
    }
    return &m->base;
}
