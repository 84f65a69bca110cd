/* ratelimit.c - token buckets, one per tenant (or per client address) */
#define _POSIX_C_SOURCE 200809L
#include "ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"

struct bucket {
    char tenant[65];
    double tokens;
    int64_t at_us; /* when tokens was last brought up to date */
    struct bucket *next;
};

struct ratelimit {
    double rate; /* tokens a second, also the most a bucket holds */
    pthread_mutex_t mu;
    struct bucket *buckets; /* tenants are few: the configured API keys */
    struct bucket *slots;   /* per address: RATELIMIT_ADDRESS_SLOTS, or NULL */
};

struct ratelimit *ratelimit_new(int rate)
{
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    rl->rate = rate;
    pthread_mutex_init(&rl->mu, NULL);
    return rl;
}

struct ratelimit *ratelimit_new_per_address(int rate)
{
    struct ratelimit *rl = ratelimit_new(rate);
    if (rl && rate > 0 && !(rl->slots = calloc(RATELIMIT_ADDRESS_SLOTS, sizeof *rl->slots))) {
        ratelimit_free(rl);
        return NULL;
    }
    return rl;
}

/* Brings b's tokens up to now_us. */
static void refill(const struct ratelimit *rl, struct bucket *b, int64_t now_us)
{
    if (now_us > b->at_us) {
        b->tokens += rl->rate * (double)(now_us - b->at_us) / 1e6;
        if (b->tokens > rl->rate)
            b->tokens = rl->rate;
        b->at_us = now_us;
    }
}

/* The address's slot: its own, or taken over from an idle one. */
static struct bucket *address_slot(struct ratelimit *rl, const char *addr, int64_t now_us)
{
    struct bucket *b = &rl->slots[hash_pair("ratelimit", addr) % RATELIMIT_ADDRESS_SLOTS];
    if (strcmp(b->tenant, addr) != 0) {
        refill(rl, b, now_us);
        if (!b->tenant[0] || b->tokens >= rl->rate) {
            memset(b->tenant, 0, sizeof b->tenant);
            strncpy(b->tenant, addr, sizeof b->tenant - 1);
            b->tokens = rl->rate;
            b->at_us = now_us;
        }
    }
    return b;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
    free(rl->slots);
    for (struct bucket *b = rl->buckets, *next; b; b = next) {
        next = b->next;
        free(b);
    }
    pthread_mutex_destroy(&rl->mu);
    free(rl);
}

int ratelimit_take(struct ratelimit *rl, const char *tenant, double cost, int64_t now_us,
                   int *retry_after_s)
{
    if (rl->rate <= 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&rl->mu);
    struct bucket *b = rl->slots ? address_slot(rl, tenant, now_us) : rl->buckets;
    while (!rl->slots && b && strcmp(b->tenant, tenant) != 0)
        b = b->next;
    if (!b && (b = calloc(1, sizeof *b)) != NULL) {
        strncpy(b->tenant, tenant, sizeof b->tenant - 1);
        b->tokens = rl->rate;
        b->at_us = now_us;
        b->next = rl->buckets;
        rl->buckets = b;
    }
    if (b) {
        refill(rl, b, now_us);
        if (cost > rl->rate)
            cost = rl->rate; /* a request dearer than a full bucket waits for a full one */
        if (b->tokens >= cost) {
            b->tokens -= cost;
        } else {
            double wait = (cost - b->tokens) / rl->rate;
            *retry_after_s = (int)ceil(wait) < 1 ? 1 : (int)ceil(wait);
            rc = -1;
        }
    }
    pthread_mutex_unlock(&rl->mu);
    return rc;
}
