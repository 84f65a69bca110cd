/* connlimit.c - connections per client address, and shedding one */
#define _POSIX_C_SOURCE 200809L
#include "connlimit.h"

#include "hash.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define NBUCKETS 1024
#define ADDR_MAX 64

struct node {
    char addr[ADDR_MAX];
    int count;
    struct node *next;
};

struct connlimit {
    int max;
    int addresses; /* holding a connection now */
    pthread_mutex_t mu;
    unsigned long long refused;
    struct node *buckets[NBUCKETS];
};

struct connlimit *connlimit_new(int max)
{
    struct connlimit *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->max = max;
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void connlimit_free(struct connlimit *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct node *n = c->buckets[i], *next; n; n = next) {
            next = n->next;
            free(n);
        }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static struct node **slot(struct connlimit *c, const char *addr)
{
    /* the one keyed hash: addresses are the client's to choose */
    struct node **n = &c->buckets[hash_pair("addr", addr) % NBUCKETS];
    while (*n && strcmp((*n)->addr, addr) != 0)
        n = &(*n)->next;
    return n;
}

/* Under the mutex: *n holds no connection any more. */
static void forget(struct connlimit *c, struct node **n)
{
    struct node *gone = *n;
    *n = gone->next;
    free(gone);
    c->addresses--;
}

int connlimit_enter(struct connlimit *c, const char *addr, int shared)
{
    if (c->max <= 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    struct node **n = slot(c, addr);
    if (!*n) {
        *n = calloc(1, sizeof **n);
        if (*n) {
            strncpy((*n)->addr, addr, ADDR_MAX - 1);
            c->addresses++;
        }
    }
    int limit = c->max;
    if (shared > 0 && c->addresses > 1) { /* alone, an address takes nothing from others */
        int share = shared / c->addresses;
        share = share < 1 ? 1 : share;
        limit = share < limit ? share : limit;
    }
    if (!*n || (*n)->count >= limit) {
        __atomic_add_fetch(&c->refused, 1, __ATOMIC_RELAXED);
        rc = -1;
        if (*n && (*n)->count == 0)
            forget(c, n);
    } else {
        (*n)->count++;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void connlimit_leave(struct connlimit *c, const char *addr)
{
    if (c->max <= 0)
        return;
    pthread_mutex_lock(&c->mu);
    struct node **n = slot(c, addr);
    if (*n && --(*n)->count <= 0)
        forget(c, n);
    pthread_mutex_unlock(&c->mu);
}

unsigned long long connlimit_refused(const struct connlimit *c)
{
    return __atomic_load_n(&c->refused, __ATOMIC_RELAXED);
}

void connlimit_shed(int fd, const char *response)
{
    /* Non-blocking (civetweb's sockets are): an answer that does not fit
     * the send buffer at once is cut, and the close says the rest. */
    (void)!send(fd, response, strlen(response), MSG_NOSIGNAL | MSG_DONTWAIT);
    shutdown(fd, SHUT_RDWR);
}
