/* replay_cache.c - a bounded LRU of completed answers, keyed by tenant and key */
#define _POSIX_C_SOURCE 200809L
#include "replay_cache.h"

#include "hash.h"
#include "store.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct node {
    struct node *hnext;       /* hash chain */
    struct node *prev, *next; /* LRU list, most recent first */
    char *tenant, *key;
    char fingerprint[65];
    struct replay_entry e;
    int64_t expires_at_us;
};

struct replay_cache {
    pthread_mutex_t mu;
    struct node **buckets;
    size_t nbuckets, size, capacity;
    struct node *head, *tail;
};

struct replay_cache *replay_cache_new(size_t capacity)
{
    if (capacity == 0)
        return NULL;
    struct replay_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->capacity = capacity;
    c->nbuckets = capacity * 2;
    c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void replay_entry_clear(struct replay_entry *e)
{
    free(e->body);
    free(e->location);
    memset(e, 0, sizeof *e);
}

static void node_free(struct node *n)
{
    replay_entry_clear(&n->e);
    free(n->tenant);
    free(n->key);
    free(n);
}

void replay_cache_free(struct replay_cache *c)
{
    if (!c)
        return;
    for (struct node *n = c->head, *next; n; n = next) {
        next = n->next;
        node_free(n);
    }
    free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static struct node **slot_of(struct replay_cache *c, const char *tenant, const char *key)
{
    struct node **pp = &c->buckets[hash_pair(tenant, key) % c->nbuckets];
    while (*pp && (strcmp((*pp)->tenant, tenant) != 0 || strcmp((*pp)->key, key) != 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(struct replay_cache *c, struct node *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        c->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        c->tail = n->prev;
    n->prev = n->next = NULL;
}

static void lru_push_front(struct replay_cache *c, struct node *n)
{
    n->next = c->head;
    n->prev = NULL;
    if (c->head)
        c->head->prev = n;
    c->head = n;
    if (!c->tail)
        c->tail = n;
}

/* Removes n (caller holds the mutex). */
static void drop(struct replay_cache *c, struct node *n)
{
    struct node **pp = slot_of(c, n->tenant, n->key);
    if (*pp == n)
        *pp = n->hnext;
    lru_unlink(c, n);
    c->size--;
    node_free(n);
}

static char *dup_bytes(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

enum replay_lookup replay_cache_get(struct replay_cache *c, const char *tenant, const char *key,
                                    const char *fingerprint, int64_t now_us,
                                    struct replay_entry *out)
{
    if (!c)
        return REPLAY_MISS;
    enum replay_lookup res = REPLAY_MISS;
    pthread_mutex_lock(&c->mu);
    struct node *n = *slot_of(c, tenant, key);
    if (n && n->expires_at_us <= now_us) {
        drop(c, n);
        n = NULL;
    }
    if (n) {
        lru_unlink(c, n);
        lru_push_front(c, n);
        if (strcmp(n->fingerprint, fingerprint) != 0) {
            memset(out, 0, sizeof *out);
            out->created_at_us = n->e.created_at_us;
            res = REPLAY_MISMATCH;
        } else {
            struct replay_entry e = {.status = n->e.status,
                                     .body_len = n->e.body_len,
                                     .created_at_us = n->e.created_at_us};
            e.body = dup_bytes(n->e.body, n->e.body_len);
            e.location = n->e.location ? strdup(n->e.location) : NULL;
            if (e.body && (!n->e.location || e.location)) {
                *out = e;
                res = REPLAY_HIT;
            } else {
                replay_entry_clear(&e); /* out of memory: ask the database */
            }
        }
    }
    pthread_mutex_unlock(&c->mu);
    return res;
}

void replay_cache_put(struct replay_cache *c, const char *tenant, const char *key,
                      const char *fingerprint, const struct replay_entry *e, int64_t expires_at_us)
{
    if (!c)
        return;
    struct node *n = calloc(1, sizeof *n);
    if (!n)
        return;
    n->tenant = strdup(tenant);
    n->key = strdup(key);
    n->e = (struct replay_entry){
        .status = e->status, .body_len = e->body_len, .created_at_us = e->created_at_us};
    n->e.body = dup_bytes(e->body, e->body_len);
    n->e.location = e->location ? strdup(e->location) : NULL;
    n->expires_at_us = expires_at_us;
    snprintf(n->fingerprint, sizeof n->fingerprint, "%s", fingerprint);
    if (!n->tenant || !n->key || !n->e.body || (e->location && !n->e.location)) {
        node_free(n);
        return;
    }
    pthread_mutex_lock(&c->mu);
    struct node **pp = slot_of(c, tenant, key);
    if (*pp) /* already there (another worker's replay): keep one */
        drop(c, *pp);
    pp = slot_of(c, tenant, key);
    n->hnext = *pp;
    *pp = n;
    lru_push_front(c, n);
    if (++c->size > c->capacity)
        drop(c, c->tail);
    pthread_mutex_unlock(&c->mu);
}

size_t replay_cache_size(struct replay_cache *c)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&c->mu);
    size_t n = c->size;
    pthread_mutex_unlock(&c->mu);
    return n;
}
