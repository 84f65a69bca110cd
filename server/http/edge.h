/* edge.h - the HTTP edge: civetweb started over the service, the callbacks
 * of its connections (limits per address, the connection table, the
 * layout probe), the requests in flight, and draining at the end
 *
 * The app (app.h) builds the guards, the metrics and the service, hands
 * them to the edge and frees them after edge_stop(). The counters are
 * atomic; everything else is set before edge_start() and read-only after.
 */
#ifndef MOCKERY_EDGE_H
#define MOCKERY_EDGE_H

#include <stdint.h>

#include "auth.h"
#include "connlimit.h"
#include "conntable.h"
#include "metrics.h"
#include "ratelimit.h"
#include "service.h"
#include "watchdog.h"

struct mg_context;

struct edge_options {
    const char *listen_host; /* empty: every interface */
    int port;                /* 0: any free port */
    int threads;             /* civetweb's workers */
    int max_client_connections;
    int rate_limit;                 /* for the 429's message */
    int unauthenticated_rate_limit; /* the same */
};

struct edge {
    struct service svc; /* what the routes see */
    struct edge_options opt;
    struct auth *auth;
    struct metrics *metrics;
    struct connlimit *connlimit;    /* connections per client address */
    struct ratelimit *ratelimit;    /* requests per tenant */
    struct ratelimit *unauth_limit; /* requests without a valid API key, per address */
    struct conntable *conns;        /* open connections (each one's civetweb user data) */
    struct watchdog *watchdog;      /* body deadlines, and the table's ticks */
    struct mg_context *ctx;
    int port; /* the port listened on, once started */
    /* The layout probe at start-up (edge.c): its connection's port and
     * address, and what on_connection_open found (1 right, 2 wrong);
     * atomic. */
    int probe_port, probe_result;
    char probe_addr[64];
    int connections; /* held by workers now; atomic */
    int in_flight;   /* requests inside a handler now; atomic */
    int draining;    /* set by edge_stop: new requests get 503; atomic */
    int stopping;    /* set by edge_stop just before mg_stop(), after which
                      * civetweb answers nothing more; atomic */
};

/* Fewer free workers than this, and the connection table sheds (an eighth
 * of the workers, at least one): what conntable_new() is given. */
int edge_reserve(int threads);

/* The watchdog's tick (watchdog_new(edge_on_tick, edge)): the connection
 * table's checks. */
void edge_on_tick(void *edge, int64_t now_us);

/* Checks, before anything starts, that civetweb is the one
 * civetweb_internals.c reads (its version): one it cannot read is refused
 * unless max_client_connections is 0 (then logged, and the limits per
 * address are off). 0, or -1 with err set. */
int edge_check(struct edge *e, char *err, size_t errlen);

/* Starts civetweb on e->opt with the API's routes, and probes its layout
 * on a connection of its own (refused as edge_check() says). Returns 0,
 * or -1 with err set (edge_stop() still to be called). */
int edge_start(struct edge *e, char *err, size_t errlen);

/* Drains, then stops civetweb: new requests get 503 shutting_down
 * (Connection: close) while those in flight finish, for up to drain_ms.
 * Does nothing if civetweb did not start. */
void edge_stop(struct edge *e, int drain_ms);

#endif
