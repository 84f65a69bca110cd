/* store_mem.c - the in-memory store, for quick runs and tests
 *
 * Same contract as the PostgreSQL store. One mutex guards everything: every
 * operation is short and never waits on a payment, so a duplicate gets its
 * answer at once. Nothing survives the process.
 */
#define _POSIX_C_SOURCE 200809L
#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum rec_state { REC_PROCESSING, REC_COMPLETED };

struct record {
    struct record *next;
    char *tenant;
    char *key;
    char *fingerprint;
    enum rec_state state;
    int64_t lease_token;
    int64_t locked_until_us;
    int64_t created_at_us;
    int64_t expires_at_us;
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

struct store_mem {
    struct store base;
    pthread_mutex_t mu;
    struct record **buckets;
    size_t nbuckets;
    size_t nrecords;
    struct mem_payment *payments;
    size_t npayments, cap;
    struct mem_refund *refunds; /* oldest first, like payments */
    size_t nrefunds, refunds_cap;
    int64_t next_token;
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static struct record **find_slot(struct store_mem *m, const char *tenant, const char *key)
{
    struct record **pp = &m->buckets[store_key_hash(tenant, key) % m->nbuckets];
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->tenant, tenant) == 0 && strcmp((*pp)->key, key) == 0)
            return pp;
    return pp;
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
    free(r);
}

static void grow_buckets(struct store_mem *m)
{
    size_t n = m->nbuckets * 2;
    struct record **nb = calloc(n, sizeof *nb);
    if (!nb)
        return; /* keep the old table: longer chains, still correct */
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct record *r = m->buckets[i];
        while (r) {
            struct record *next = r->next;
            size_t h = store_key_hash(r->tenant, r->key) % n;
            r->next = nb[h];
            nb[h] = r;
            r = next;
        }
    }
    free(m->buckets);
    m->buckets = nb;
    m->nbuckets = n;
}

static char *memdup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static enum store_status fill_completed(const struct record *r, struct store_claim_result *out)
{
    struct store_claim_result res = {.outcome = CLAIM_COMPLETED,
                                     .response_status = r->response_status,
                                     .response_body_len = r->body_len,
                                     .created_at_us = r->created_at_us};
    res.response_body = memdup(r->body, r->body_len);
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
                                   const char *fingerprint, int64_t lease_ms, int64_t ttl_ms,
                                   struct store_claim_result *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    int64_t now = now_us();

    pthread_mutex_lock(&m->mu);
    struct record **slot = find_slot(m, tenant, key);
    struct record *r = *slot;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r || !(r->tenant = strdup(tenant)) || !(r->key = strdup(key)) ||
            !(r->fingerprint = strdup(fingerprint))) {
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
        *slot = r;
        if (++m->nrecords > m->nbuckets * 2)
            grow_buckets(m);
        *out = (struct store_claim_result){
            .outcome = CLAIM_NEW, .lease_token = r->lease_token, .created_at_us = now};
        goto out;
    }
    if (r->expires_at_us <= now) {
        char *fp = strdup(fingerprint);
        if (!fp) {
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
        *out = (struct store_claim_result){
            .outcome = CLAIM_TAKEOVER, .lease_token = r->lease_token, .created_at_us = now};
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
        r->lease_token = ++m->next_token;
        r->locked_until_us = now + lease_ms * 1000;
        *out = (struct store_claim_result){.outcome = CLAIM_TAKEOVER,
                                           .lease_token = r->lease_token,
                                           .created_at_us = r->created_at_us};
        goto out;
    }
    *out = (struct store_claim_result){.outcome = CLAIM_IN_PROGRESS,
                                       .created_at_us = r->created_at_us};
out:
    pthread_mutex_unlock(&m->mu);
    return st;
}

static int newer_first(const struct store_payment *a, const struct store_payment *b);

/* Adds a copy of p where it belongs in m->payments, which is kept oldest
 * first (nearly always at the end: payments arrive in the order they were
 * processed, give or take the ones completing together); caller holds the
 * mutex. */
static enum store_status add_payment(struct store_mem *m, const char *tenant,
                                     const struct store_payment *p)
{
    if (m->npayments == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        struct mem_payment *np = realloc(m->payments, cap * sizeof *np);
        if (!np)
            return STORE_ERROR;
        m->payments = np;
        m->cap = cap;
    }
    struct mem_payment mp;
    mp.tenant = strdup(tenant);
    if (!mp.tenant)
        return STORE_ERROR;
    if (store_payment_copy(&mp.p, p) != 0) {
        free(mp.tenant);
        return STORE_ERROR;
    }
    size_t at = m->npayments;
    while (at > 0 && newer_first(&m->payments[at - 1].p, &mp.p) < 0)
        at--;
    memmove(&m->payments[at + 1], &m->payments[at], (m->npayments - at) * sizeof mp);
    m->payments[at] = mp;
    m->npayments++;
    return STORE_OK;
}

static struct mem_payment *find_payment(struct store_mem *m, const char *tenant, const char *id);
static int refund_newer_first(const struct store_refund *a, const struct store_refund *b);

/* Writes rows (caller holds the mutex): all of them, or nothing with
 * STORE_REJECTED (a refund that does not fit its payment) or STORE_ERROR. */
static enum store_status write_rows_locked(struct store_mem *m, const char *tenant,
                                           const struct store_rows *rows, char *err, size_t errlen)
{
    const struct store_refund *rf = rows ? rows->refund : NULL;
    const struct store_payment *pay = rows ? rows->payment : NULL;
    struct mem_payment *target = NULL;
    struct mem_refund add = {0};
    if (rf) {
        target = find_payment(m, tenant, rf->transaction_id);
        if (!target || strcmp(target->p.status, "completed") != 0 || rf->amount_minor <= 0 ||
            rf->amount_minor > target->p.amount_minor - target->p.amount_refunded_minor) {
            snprintf(err, errlen, "refund does not fit its payment");
            return STORE_REJECTED;
        }
        if (m->nrefunds == m->refunds_cap) {
            size_t cap = m->refunds_cap ? m->refunds_cap * 2 : 16;
            struct mem_refund *nr = realloc(m->refunds, cap * sizeof *nr);
            if (!nr)
                goto oom;
            m->refunds = nr;
            m->refunds_cap = cap;
        }
        add.tenant = strdup(tenant);
        if (!add.tenant || store_refund_copy(&add.r, rf) != 0)
            goto oom;
    }
    if (pay && add_payment(m, tenant, pay) != STORE_OK)
        goto oom;
    if (rf) {
        /* add_payment may have moved the array: find the payment again */
        target = find_payment(m, tenant, rf->transaction_id);
        target->p.amount_refunded_minor += rf->amount_minor;
        size_t at = m->nrefunds;
        while (at > 0 && refund_newer_first(&m->refunds[at - 1].r, &add.r) < 0)
            at--;
        memmove(&m->refunds[at + 1], &m->refunds[at], (m->nrefunds - at) * sizeof add);
        m->refunds[at] = add;
        m->nrefunds++;
    }
    return STORE_OK;
oom:
    free(add.tenant);
    store_refund_clear(&add.r);
    snprintf(err, errlen, "out of memory");
    return STORE_ERROR;
}

static enum store_status mem_complete(struct store *s, const char *tenant, const char *key,
                                      int64_t lease_token, const struct store_response *resp,
                                      const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    char *body = NULL, *loc = NULL;

    pthread_mutex_lock(&m->mu);
    struct record *r = *find_slot(m, tenant, key);
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
        goto out;
    }
    body = memdup(resp->body, resp->body_len);
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
    struct record **slot = find_slot(m, tenant, key);
    struct record *r = *slot;
    if (!r || r->state != REC_PROCESSING || r->lease_token != lease_token) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    } else {
        *slot = r->next;
        record_free(r);
        m->nrecords--;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_write_rows(struct store *s, const char *tenant,
                                        const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    pthread_mutex_lock(&m->mu);
    enum store_status st = write_rows_locked(m, tenant, rows, err, errlen);
    pthread_mutex_unlock(&m->mu);
    return st;
}

static struct mem_payment *find_payment(struct store_mem *m, const char *tenant, const char *id)
{
    for (size_t i = 0; i < m->npayments; i++)
        if (strcmp(m->payments[i].p.transaction_id, id) == 0 &&
            strcmp(m->payments[i].tenant, tenant) == 0)
            return &m->payments[i];
    return NULL;
}

static enum store_status mem_get_payment(struct store *s, const char *tenant,
                                         const char *transaction_id, struct store_payment *out,
                                         char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;

    pthread_mutex_lock(&m->mu);
    const struct mem_payment *mp = find_payment(m, tenant, transaction_id);
    if (!mp) {
        snprintf(err, errlen, "no such payment");
        st = STORE_NOT_FOUND;
    } else if (store_payment_copy(out, &mp->p) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

/* Newest first: processed_at descending, then transaction id descending. */
static int newer_first(const struct store_payment *a, const struct store_payment *b)
{
    if (a->processed_at_us != b->processed_at_us)
        return a->processed_at_us > b->processed_at_us ? -1 : 1;
    return -strcmp(a->transaction_id, b->transaction_id);
}

static enum store_status mem_list_payments(struct store *s, const char *tenant,
                                           const struct store_list_query *q, struct store_list *out,
                                           char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    struct store_list res = {0};

    pthread_mutex_lock(&m->mu);
    const struct store_payment *cursor = NULL;
    if (q->starting_after) {
        const struct mem_payment *c = find_payment(m, tenant, q->starting_after);
        if (!c) {
            snprintf(err, errlen, "no such payment for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor = &c->p;
    }
    /* Newest first from the end of the ordered array: the work is the page
     * (and the other tenants' and customers' payments passed on the way),
     * not every payment held. */
    res.items = calloc((size_t)q->limit, sizeof *res.items);
    if (!res.items)
        goto oom;
    size_t start = m->npayments;
    if (cursor) { /* the first that is not older than the cursor */
        size_t lo = 0;
        while (lo < start) {
            size_t mid = lo + (start - lo) / 2;
            if (newer_first(&m->payments[mid].p, cursor) > 0)
                lo = mid + 1;
            else
                start = mid;
        }
    }
    for (size_t i = start; i-- > 0;) {
        const struct mem_payment *mp = &m->payments[i];
        if (strcmp(mp->tenant, tenant) != 0)
            continue;
        if (q->customer_id && strcmp(mp->p.customer_id, q->customer_id) != 0)
            continue;
        if (res.count == (size_t)q->limit) {
            res.has_more = 1;
            break;
        }
        if (store_payment_copy(&res.items[res.count], &mp->p) != 0)
            goto oom;
        res.count++;
    }
    *out = res;
    res = (struct store_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    pthread_mutex_unlock(&m->mu);
    store_list_clear(&res);
    return st;
}

/* Newest first: created_at descending, then refund id descending. */
static int refund_newer_first(const struct store_refund *a, const struct store_refund *b)
{
    if (a->created_at_us != b->created_at_us)
        return a->created_at_us > b->created_at_us ? -1 : 1;
    return -strcmp(a->refund_id, b->refund_id);
}

static const struct mem_refund *find_refund(struct store_mem *m, const char *tenant,
                                            const char *id)
{
    for (size_t i = 0; i < m->nrefunds; i++)
        if (strcmp(m->refunds[i].r.refund_id, id) == 0 && strcmp(m->refunds[i].tenant, tenant) == 0)
            return &m->refunds[i];
    return NULL;
}

static enum store_status mem_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                        struct store_refund *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    const struct mem_refund *mr = find_refund(m, tenant, refund_id);
    if (!mr) {
        snprintf(err, errlen, "no such refund");
        st = STORE_NOT_FOUND;
    } else if (store_refund_copy(out, &mr->r) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

static enum store_status mem_list_refunds(struct store *s, const char *tenant,
                                          const struct store_refund_query *q,
                                          struct store_refund_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    struct store_refund_list res = {0};

    pthread_mutex_lock(&m->mu);
    size_t start = m->nrefunds;
    if (q->starting_after) {
        const struct mem_refund *c = find_refund(m, tenant, q->starting_after);
        if (!c || strcmp(c->r.transaction_id, q->transaction_id) != 0) {
            snprintf(err, errlen, "no such refund for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        start = (size_t)(c - m->refunds);
    }
    res.items = calloc(q->limit > 0 ? (size_t)q->limit : 1, sizeof *res.items);
    if (!res.items)
        goto oom;
    for (size_t i = start; i-- > 0;) {
        const struct mem_refund *mr = &m->refunds[i];
        if (strcmp(mr->tenant, tenant) != 0 || strcmp(mr->r.transaction_id, q->transaction_id) != 0)
            continue;
        if (res.count == (size_t)q->limit) {
            res.has_more = 1;
            break;
        }
        if (store_refund_copy(&res.items[res.count], &mr->r) != 0)
            goto oom;
        res.count++;
    }
    *out = res;
    res = (struct store_refund_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    pthread_mutex_unlock(&m->mu);
    store_refund_list_clear(&res);
    return st;
}

static enum store_status mem_reap(struct store *s, int batch, int *deleted, char *err,
                                  size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    int n = 0;
    int64_t now = now_us();
    (void)err;
    (void)errlen;

    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nbuckets && n < batch; i++) {
        struct record **pp = &m->buckets[i];
        while (*pp && n < batch) {
            struct record *r = *pp;
            if (r->expires_at_us <= now) {
                *pp = r->next;
                record_free(r);
                m->nrecords--;
                n++;
            } else {
                pp = &r->next;
            }
        }
    }
    pthread_mutex_unlock(&m->mu);
    *deleted = n;
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
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct record *r = m->buckets[i];
        while (r) {
            struct record *next = r->next;
            record_free(r);
            r = next;
        }
    }
    for (size_t i = 0; i < m->npayments; i++) {
        free(m->payments[i].tenant);
        store_payment_clear(&m->payments[i].p);
    }
    free(m->payments);
    for (size_t i = 0; i < m->nrefunds; i++) {
        free(m->refunds[i].tenant);
        store_refund_clear(&m->refunds[i].r);
    }
    free(m->refunds);
    free(m->buckets);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static const struct store_ops mem_ops = {
    .name = "memory",
    .claim = mem_claim,
    .complete = mem_complete,
    .release = mem_release,
    .write_rows = mem_write_rows,
    .get_payment = mem_get_payment,
    .list_payments = mem_list_payments,
    .get_refund = mem_get_refund,
    .list_refunds = mem_list_refunds,
    .reap = mem_reap,
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
    m->nbuckets = 1024;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (!m->buckets || pthread_mutex_init(&m->mu, NULL) != 0) {
        free(m->buckets);
        free(m);
        return NULL;
    }
    return &m->base;
}
