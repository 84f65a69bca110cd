/* host_lookup.c - a host name's addresses, looked up with a bound (host_lookup.h) */
#define _GNU_SOURCE /* getaddrinfo_a */
#include "host_lookup.h"

#include <errno.h>
#include <netdb.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* One lookup, shared by the thread that asked and glibc's notification,
 * each holding a reference: the last to let go frees it. */
struct lookup {
    struct gaicb cb;
    struct addrinfo hints;
    atomic_int refs;
    char host[];
};

static atomic_int under_way;

static void lookup_release(struct lookup *l)
{
    if (atomic_fetch_sub(&l->refs, 1) != 1)
        return;
    if (l->cb.ar_result)
        freeaddrinfo(l->cb.ar_result);
    free(l);
    atomic_fetch_sub(&under_way, 1);
}

/* glibc's notification that the lookup ended (on a thread of its own). */
static void lookup_ended(union sigval v)
{
    lookup_release(v.sival_ptr);
}

static enum host_lookup_result unavailable(const char **why, const char *cause)
{
    if (why)
        *why = cause;
    return HOST_LOOKUP_UNAVAILABLE;
}

enum host_lookup_result host_lookup(const char *host, int timeout_ms, host_lookup_each each,
                                    void *arg, const char **why)
{
    /* An address written out asks no nameserver: no wait, no place taken. */
    struct addrinfo numeric = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST}, *res;
    if (getaddrinfo(host, NULL, &numeric, &res) == 0) {
        for (const struct addrinfo *a = res; a; a = a->ai_next)
            if (each(a->ai_addr, arg))
                break;
        freeaddrinfo(res);
        return HOST_LOOKUP_OK;
    }
    if (atomic_fetch_add(&under_way, 1) >= HOST_LOOKUPS_MAX) {
        atomic_fetch_sub(&under_way, 1);
        return unavailable(why, "too many lookups under way");
    }
    size_t n = strlen(host) + 1;
    struct lookup *l = calloc(1, sizeof *l + n);
    if (!l) {
        atomic_fetch_sub(&under_way, 1);
        return unavailable(why, "out of memory");
    }
    memcpy(l->host, host, n);
    l->hints.ai_socktype = SOCK_STREAM;
    l->cb.ar_name = l->host;
    l->cb.ar_request = &l->hints;
    atomic_init(&l->refs, 2);
    struct sigevent ended = {.sigev_notify = SIGEV_THREAD,
                             .sigev_notify_function = lookup_ended,
                             .sigev_value.sival_ptr = l};
    struct gaicb *list[] = {&l->cb};
    if (getaddrinfo_a(GAI_NOWAIT, list, 1, &ended) != 0) {
        free(l);
        atomic_fetch_sub(&under_way, 1);
        return unavailable(why, "the lookup could not be started");
    }
    int64_t deadline = clock_mono_us() + (int64_t)timeout_ms * 1000;
    int rc;
    while ((rc = gai_error(&l->cb)) == EAI_INPROGRESS) {
        int64_t left = deadline - clock_mono_us();
        if (left <= 0)
            break;
        struct timespec wait = {(time_t)(left / 1000000), (long)(left % 1000000) * 1000};
        gai_suspend((const struct gaicb *const *)list, 1, &wait); /* ended, timed out or a signal */
    }
    enum host_lookup_result result = HOST_LOOKUP_OK;
    if (rc == 0) {
        for (const struct addrinfo *a = l->cb.ar_result; a; a = a->ai_next)
            if (each(a->ai_addr, arg))
                break;
    } else if (rc == EAI_NONAME || rc == EAI_NODATA || rc == EAI_ADDRFAMILY || rc == EAI_FAIL) {
        result = HOST_LOOKUP_NOT_FOUND;
    } else {
        result = unavailable(why, rc == EAI_INPROGRESS ? "no answer within the bound"
                                                       : gai_strerror(rc));
    }
    lookup_release(l);
    return result;
}
