/* mem_recover.c - the memory store's records waiting for recovery: taken
 * over one at a time, and counted
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include "clock.h"

#include <stdio.h>
#include <string.h>

/* The waiting records: how many, and the one whose lease ran out longest
 * ago (pg_sql.c's order) - or, with by_created, the first created. */
static struct record *oldest_waiting(struct store_mem *m, int64_t now, int by_created,
                                     int64_t *count)
{
    struct record *oldest = NULL;
    *count = 0;
    for (size_t i = 0; i < m->records.nbuckets; i++)
        for (struct hashtab_link *l = m->records.buckets[i]; l; l = l->next) {
            struct record *r = mem_record_of(l);
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

enum store_status mem_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
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

enum store_status mem_unfinished(struct store *s, struct store_unfinished *out, char *err,
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
