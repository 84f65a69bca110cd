/* service.h - what the routes are given: the store, the idempotency
 * layer's settings, the logger, and the few settings of the operations
 *
 * The narrow part of the edge (edge.h) a route sees through its request's
 * svc: no guard, no counter of connections, no civetweb. Filled once at
 * start-up and read-only after, but for list_slots (a semaphore).
 */
#ifndef MOCKERY_SERVICE_H
#define MOCKERY_SERVICE_H

#include <semaphore.h>
#include <stdint.h>

struct acquirer;
struct logger;
struct replay_cache;
struct store;

struct service {
    struct store *store;
    struct replay_cache *replays; /* NULL when --replay-cache is 0 */
    struct logger *log;
    int64_t lease_ms; /* a claim's lease (--lease-s) */
    int64_t ttl_ms;   /* a record's life (--idempotency-ttl-s) */
    int require_key;  /* --require-key */
    int processing_delay_ms;
    struct acquirer *acquirer; /* --acquirer-url's client; NULL: the in-process simulator */
    sem_t list_slots;          /* list queries running at once (an eighth of the pool) */
    int webhook_allow_private; /* --webhook-allow-private: endpoints on any address */
    int webhook_max_endpoints; /* --webhook-max-endpoints: a tenant's at most */
};

#endif
