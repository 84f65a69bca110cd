/* connlimit.c - connections per client address, and shedding one */
#define _POSIX_C_SOURCE 200809L
#include "connlimit.h"

#include "hashtab.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define NBUCKETS 1024
#define ADDR_MAX 64

struct node {
    struct hashtab_link link; /* in nodes, by address */
    char addr[ADDR_MAX];
    int count;
};

struct connlimit {
    int max;
    int addresses; /* holding a connection now */
    pthread_mutex_t mu;
    unsigned long long refused;
    struct hashtab nodes; /* of struct node: the addresses holding connections */
};

struct connlimit *connlimit_new(int max)
{
    struct connlimit *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->max = max;
    if (hashtab_init(&c->nodes, NBUCKETS, 1) != 0) {
        free(c);
        return NULL;
    }
    pthread_mutex_init(&c->mu, NULL);
    return c;
}

void connlimit_free(struct connlimit *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nodes.nbuckets; i++)
        for (struct hashtab_link *l = c->nodes.buckets[i], *next; l; l = next) {
            next = l->next;
            free(hashtab_entry(l, struct node, link));
        }
    hashtab_destroy(&c->nodes);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int same_addr(const struct hashtab_link *l, const char *unused, const char *addr)
{
    (void)unused;
    return strcmp(hashtab_entry(l, struct node, link)->addr, addr) == 0;
}

static struct node *node_of(struct hashtab_link *l)
{
    return l ? hashtab_entry(l, struct node, link) : NULL;
}

/* Under the mutex: n holds no connection any more. */
static void forget(struct connlimit *c, struct node *n)
{
    hashtab_unlink(&c->nodes, &n->link);
    free(n);
    c->addresses--;
}

int connlimit_enter(struct connlimit *c, const char *addr, int shared)
{
    if (c->max <= 0)
        return 0;
    int rc = 0;
    pthread_mutex_lock(&c->mu);
    /* the one keyed hash table: addresses are the client's to choose */
    size_t hash;
    struct node *n = node_of(*hashtab_find(&c->nodes, "addr", addr, &hash, same_addr));
    if (!n) {
        n = calloc(1, sizeof *n);
        if (n) {
            strncpy(n->addr, addr, ADDR_MAX - 1);
            hashtab_add(&c->nodes, &n->link, hash);
            c->addresses++;
        }
    }
    int limit = c->max;
    if (shared > 0 && c->addresses > 1) { /* alone, an address takes nothing from others */
        int share = shared / c->addresses;
        share = share < 1 ? 1 : share;
        limit = share < limit ? share : limit;
    }
    if (!n || n->count >= limit) {
        __atomic_add_fetch(&c->refused, 1, __ATOMIC_RELAXED);
        rc = -1;
        if (n && n->count == 0)
            forget(c, n);
    } else {
        n->count++;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void connlimit_leave(struct connlimit *c, const char *addr)
{
    if (c->max <= 0)
        return;
    pthread_mutex_lock(&c->mu);
    struct node *n = node_of(*hashtab_find(&c->nodes, "addr", addr, NULL, same_addr));
    if (n && --n->count <= 0)
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
