/* replay_cache.c - a bounded LRU of completed answers, keyed by tenant and key */
#define _POSIX_C_SOURCE 200809L
#include "replay_cache.h"

#include "bytes.h"
#include "hashtab.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

struct node {
    struct hashtab_link link; /* in nodes, by (tenant, key) */
    TAILQ_ENTRY(node) lru;    /* most recent first */
    char *tenant, *key;
    char fingerprint[65];
    struct replay_entry e;
    int64_t expires_at_us;
};

TAILQ_HEAD(lru_list, node);

struct replay_cache {
    pthread_mutex_t mu;
    struct hashtab nodes;
    struct lru_list lru;
    size_t capacity;
};

struct replay_cache *replay_cache_new(size_t capacity)
{
    if (capacity == 0)
        return NULL;
    struct replay_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->capacity = capacity;
    if (hashtab_init(&c->nodes, capacity * 2, 0) != 0) {
        free(c);
        return NULL;
    }
    TAILQ_INIT(&c->lru);
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
    struct node *n;
    while ((n = TAILQ_FIRST(&c->lru))) {
        TAILQ_REMOVE(&c->lru, n, lru);
        node_free(n);
    }
    hashtab_destroy(&c->nodes);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int same_node(const struct hashtab_link *l, const char *tenant, const char *key)
{
    const struct node *n = hashtab_entry(l, struct node, link);
    return strcmp(n->tenant, tenant) == 0 && strcmp(n->key, key) == 0;
}

static struct node *node_of(struct hashtab_link *l)
{
    return l ? hashtab_entry(l, struct node, link) : NULL;
}

/* Removes n (caller holds the mutex). */
static void drop(struct replay_cache *c, struct node *n)
{
    hashtab_unlink(&c->nodes, &n->link);
    TAILQ_REMOVE(&c->lru, n, lru);
    node_free(n);
}

enum replay_lookup replay_cache_get(struct replay_cache *c, const char *tenant, const char *key,
                                    const char *fingerprint, int64_t now_us,
                                    struct replay_entry *out)
{
    if (!c)
        return REPLAY_MISS;
    enum replay_lookup res = REPLAY_MISS;
    pthread_mutex_lock(&c->mu);
    struct node *n = node_of(*hashtab_find(&c->nodes, tenant, key, NULL, same_node));
    if (n && n->expires_at_us <= now_us) {
        drop(c, n);
        n = NULL;
    }
    if (n) {
        TAILQ_REMOVE(&c->lru, n, lru);
        TAILQ_INSERT_HEAD(&c->lru, n, lru);
        if (strcmp(n->fingerprint, fingerprint) != 0) {
            memset(out, 0, sizeof *out);
            out->created_at_us = n->e.created_at_us;
            res = REPLAY_MISMATCH;
        } else {
            struct replay_entry e = {.status = n->e.status,
                                     .body_len = n->e.body_len,
                                     .created_at_us = n->e.created_at_us};
            e.body = bytes_dup(n->e.body, n->e.body_len);
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
    n->e.body = bytes_dup(e->body, e->body_len);
    n->e.location = e->location ? strdup(e->location) : NULL;
    n->expires_at_us = expires_at_us;
    snprintf(n->fingerprint, sizeof n->fingerprint, "%s", fingerprint);
    if (!n->tenant || !n->key || !n->e.body || (e->location && !n->e.location)) {
        node_free(n);
        return;
    }
    pthread_mutex_lock(&c->mu);
    size_t hash;
    struct node *old = node_of(*hashtab_find(&c->nodes, tenant, key, &hash, same_node));
    if (old) /* already there (another worker's replay): keep one */
        drop(c, old);
    hashtab_add(&c->nodes, &n->link, hash);
    TAILQ_INSERT_HEAD(&c->lru, n, lru);
    if (c->nodes.count > c->capacity)
        drop(c, TAILQ_LAST(&c->lru, lru_list));
    pthread_mutex_unlock(&c->mu);
}

size_t replay_cache_size(struct replay_cache *c)
{
    if (!c)
        return 0;
    pthread_mutex_lock(&c->mu);
    size_t n = c->nodes.count;
    pthread_mutex_unlock(&c->mu);
    return n;
}
