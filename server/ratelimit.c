/* ratelimit.c - token buckets, one per tenant */
#define _POSIX_C_SOURCE 200809L
#include "ratelimit.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

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

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
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
    struct bucket *b = rl->buckets;
    while (b && strcmp(b->tenant, tenant) != 0)
        b = b->next;
    if (!b && (b = calloc(1, sizeof *b)) != NULL) {
        strncpy(b->tenant, tenant, sizeof b->tenant - 1);
        b->tokens = rl->rate;
        b->at_us = now_us;
        b->next = rl->buckets;
        rl->buckets = b;
    }
    if (b) {
        if (now_us > b->at_us) {
            b->tokens += rl->rate * (double)(now_us - b->at_us) / 1e6;
            if (b->tokens > rl->rate)
                b->tokens = rl->rate;
            b->at_us = now_us;
        }
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
