/* host_lookup.c - a host name's addresses, looked up with a bound (host_lookup.h)
 *
 * Each lookup runs getaddrinfo() on a detached thread of its own, which the
 * asking thread waits for with a deadline. Not glibc's getaddrinfo_a(): it
 * runs lookups and their notifications on threads glibc creates
 * internally, past the sanitizers' interception of pthread_create, and a
 * ThreadSanitizer-built server crashed on them. */
#define _GNU_SOURCE /* EAI_NODATA, EAI_ADDRFAMILY */
#include "host_lookup.h"

#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

/* One lookup, shared by the thread that asked and the thread that looks
 * up, each holding a reference: the last to let go frees it. */
struct lookup {
    pthread_mutex_t mu;
    pthread_cond_t ended;
    int done, rc, refs;
    int place;
    struct addrinfo *res;
    char host[];
};

/* The places of the lookups under way, each with its owner's name ("":
 * free; a longer name is cut, and owners alike that far share a cap). */
#define OWNER_LEN 128
static struct {
    pthread_mutex_t mu;
    char owner[HOST_LOOKUPS_MAX][OWNER_LEN];
    int used[HOST_LOOKUPS_MAX];
} places = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* A free place for owner's lookup: its index, or -1 with why. */
static int place_take(const char *owner, const char **why)
{
    int free_at = -1, mine = 0;
    pthread_mutex_lock(&places.mu);
    for (int i = 0; i < HOST_LOOKUPS_MAX; i++) {
        if (!places.used[i])
            free_at = free_at < 0 ? i : free_at;
        else
            mine += strncmp(places.owner[i], owner, OWNER_LEN - 1) == 0;
    }
    if (free_at < 0)
        *why = "too many lookups under way";
    else if (mine >= HOST_LOOKUPS_PER_OWNER)
        *why = "too many lookups of yours under way";
    if (free_at >= 0 && mine < HOST_LOOKUPS_PER_OWNER) {
        places.used[free_at] = 1;
        snprintf(places.owner[free_at], OWNER_LEN, "%s", owner);
    } else {
        free_at = -1;
    }
    pthread_mutex_unlock(&places.mu);
    return free_at;
}

static void place_free(int i)
{
    pthread_mutex_lock(&places.mu);
    places.used[i] = 0;
    pthread_mutex_unlock(&places.mu);
}

static void lookup_release(struct lookup *l)
{
    pthread_mutex_lock(&l->mu);
    int last = --l->refs == 0;
    pthread_mutex_unlock(&l->mu);
    if (!last)
        return;
    if (l->res)
        freeaddrinfo(l->res);
    pthread_cond_destroy(&l->ended);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static void *lookup_main(void *arg)
{
    struct lookup *l = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(l->host, NULL, &hints, &res);
    /* no longer under way: its place is free before anyone hears of it */
    place_free(l->place);
    pthread_mutex_lock(&l->mu);
    l->rc = rc;
    l->res = rc == 0 ? res : NULL;
    l->done = 1;
    pthread_cond_signal(&l->ended);
    pthread_mutex_unlock(&l->mu);
    lookup_release(l);
    return NULL;
}

/* each() over the addresses until it returns nonzero. */
static void visit(const struct addrinfo *res, host_lookup_each each, void *arg)
{
    for (const struct addrinfo *a = res; a; a = a->ai_next)
        if (each(a->ai_addr, arg))
            break;
}

static enum host_lookup_result unavailable(const char **why, const char *cause)
{
    *why = cause;
    return HOST_LOOKUP_UNAVAILABLE;
}

/* A new lookup of host on a thread of its own, in place; NULL when it
 * could not start. */
static struct lookup *lookup_start(const char *host, int place)
{
    size_t n = strlen(host) + 1;
    struct lookup *l = calloc(1, sizeof *l + n);
    if (!l)
        return NULL;
    memcpy(l->host, host, n);
    l->refs = 2;
    l->place = place;
    pthread_mutex_init(&l->mu, NULL);
    /* waited for on the monotonic clock: a step of the wall clock moves
     * no deadline */
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->ended, &ca);
    pthread_condattr_destroy(&ca);
    pthread_attr_t attr;
    pthread_t t;
    int ok = 0;
    if (pthread_attr_init(&attr) == 0) {
        ok = pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED) == 0 &&
             pthread_create(&t, &attr, lookup_main, l) == 0;
        pthread_attr_destroy(&attr);
    }
    if (!ok) {
        pthread_cond_destroy(&l->ended);
        pthread_mutex_destroy(&l->mu);
        free(l);
        return NULL;
    }
    return l;
}

enum host_lookup_result host_lookup(const char *host, const char *owner, int timeout_ms,
                                    host_lookup_each each, void *arg, const char **why)
{
    const char *unused;
    why = why ? why : &unused;
    /* An address written out asks no nameserver: no wait, no place taken. */
    struct addrinfo numeric = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res;
    if (getaddrinfo(host, NULL, &numeric, &res) == 0) {
        visit(res, each, arg);
        freeaddrinfo(res);
        return HOST_LOOKUP_OK;
    }
    int place = place_take(owner ? owner : "", why);
    if (place < 0)
        return HOST_LOOKUP_UNAVAILABLE;
    struct lookup *l = lookup_start(host, place);
    if (!l) {
        place_free(place);
        return unavailable(why, "the lookup could not be started");
    }
    struct timespec deadline;
    clock_mono_deadline_in(&deadline, timeout_ms);
    pthread_mutex_lock(&l->mu);
    while (!l->done && pthread_cond_timedwait(&l->ended, &l->mu, &deadline) == 0)
        ;
    int done = l->done, rc = l->rc;
    pthread_mutex_unlock(&l->mu);
    enum host_lookup_result result = HOST_LOOKUP_OK;
    if (!done) {
        result = unavailable(why, "no answer within the bound");
    } else if (rc == 0) {
        visit(l->res, each, arg); /* written before done was set, and not changed since */
    } else if (rc == EAI_NONAME
#ifdef EAI_NODATA
               || rc == EAI_NODATA
#endif
#ifdef EAI_ADDRFAMILY
               || rc == EAI_ADDRFAMILY
#endif
    ) {
        result = HOST_LOOKUP_NOT_FOUND;
    } else {
        result = unavailable(why, gai_strerror(rc));
    }
    lookup_release(l);
    return result;
}
