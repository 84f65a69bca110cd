/* mem_idem.c - the memory store's idempotency records: claim, complete with
 * their rows, release, abandon, rows written without a key, and the reaper
 * of expired records
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include "bytes.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int same_record(const struct hashtab_link *l, const char *tenant, const char *key)
{
    const struct record *r = hashtab_entry(l, struct record, link);
    return strcmp(r->tenant, tenant) == 0 && strcmp(r->key, key) == 0;
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

/* Starts r's life as a new claim at now, processing under a new lease, and
 * answers it with outcome (CLAIM_NEW, or CLAIM_TAKEOVER of an expired
 * answer). */
static void record_begin(struct store_mem *m, struct record *r, int64_t now, int64_t lease_ms,
                         int64_t ttl_ms, const char *downstream, enum claim_outcome outcome,
                         struct store_claim_result *out)
{
    r->state = REC_PROCESSING;
    r->lease_token = ++m->next_token;
    r->locked_until_us = now + lease_ms * 1000;
    r->created_at_us = now;
    r->expires_at_us = now + ttl_ms * 1000;
    snprintf(r->downstream_key, sizeof r->downstream_key, "%s", downstream);
    *out = (struct store_claim_result){
        .outcome = outcome, .lease_token = r->lease_token, .created_at_us = now};
    snprintf(out->downstream_key, sizeof out->downstream_key, "%s", r->downstream_key);
}

enum store_status mem_claim(struct store *s, const char *tenant, const char *key,
                            const char *fingerprint, const char *request, const char *downstream,
                            int64_t lease_ms, int64_t ttl_ms, struct store_claim_result *out,
                            char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = clock_wall_us();

    pthread_mutex_lock(&m->mu);
    size_t hash;
    struct hashtab_link **at = hashtab_find(&m->records, tenant, key, &hash, same_record);
    struct record *r = mem_record_of(*at);
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
        record_begin(m, r, now, lease_ms, ttl_ms, downstream, CLAIM_NEW, out);
        hashtab_add(&m->records, &r->link, hash);
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
        record_begin(m, r, now, lease_ms, ttl_ms, downstream, CLAIM_TAKEOVER, out);
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

static struct mem_payment *find_payment(struct store_mem *m, const char *tenant, const char *id)
{
    size_t i = mem_rows_find(&m->payments, tenant, mem_payment_is, id);
    return i < m->payments.n ? mem_rows_at(&m->payments, i) : NULL;
}

static struct mem_charge *find_charge(struct store_mem *m, const char *id)
{
    size_t i = mem_rows_find(&m->charges, NULL, mem_charge_is, id);
    return i < m->charges.n ? mem_rows_at(&m->charges, i) : NULL;
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
        (ev &&
         (mem_rows_reserve(&m->events) != 0 || !(me.tenant = strdup(tenant)) ||
          store_event_copy(&me.e, ev) != 0 || mem_fan_out(m, tenant, ev, &fan, &nfan) != 0))) {
        mem_event_row_clear(&me);
        mem_payment_row_clear(&mp);
        mem_refund_row_clear(&mr);
        mem_charge_row_clear(&mc);
        mem_charge_refund_row_clear(&mcr);
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

enum store_status mem_complete(struct store *s, const char *tenant, const char *key,
                               int64_t lease_token, const struct store_response *resp,
                               const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = at_most_one_row(rows, err, errlen);
    char *body = NULL, *loc = NULL;
    if (st != STORE_OK)
        return st;

    pthread_mutex_lock(&m->mu);
    struct record *r = mem_record_of(*hashtab_find(&m->records, tenant, key, NULL, same_record));
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

enum store_status mem_release(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;

    pthread_mutex_lock(&m->mu);
    struct hashtab_link **at = hashtab_find(&m->records, tenant, key, NULL, same_record);
    struct record *r = mem_record_of(*at);
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

enum store_status mem_abandon(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = clock_wall_us();
    pthread_mutex_lock(&m->mu);
    struct record *r = mem_record_of(*hashtab_find(&m->records, tenant, key, NULL, same_record));
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    } else if (r->locked_until_us > now) {
        r->locked_until_us = now;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_write_rows(struct store *s, const char *tenant, const struct store_rows *rows,
                                 char *err, size_t errlen)
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

enum store_status mem_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
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
            struct record *r = mem_record_of(*at);
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

void mem_records_free(struct store_mem *m)
{
    for (size_t i = 0; i < m->records.nbuckets; i++)
        for (struct hashtab_link *l = m->records.buckets[i], *next; l; l = next) {
            next = l->next;
            record_free(mem_record_of(l));
        }
    hashtab_destroy(&m->records);
}
