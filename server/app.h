/* app.h - the running service: configuration, logger, store, HTTP server
 * and reaper, passed to every handler as civetweb's callback data
 */
#ifndef MOCKERY_APP_H
#define MOCKERY_APP_H

#include <pthread.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>

#include "auth.h"
#include "config.h"
#include "connlimit.h"
#include "conntable.h"
#include "log.h"
#include "metrics.h"
#include "ratelimit.h"
#include "replay_cache.h"
#include "watchdog.h"
#include "../store/store.h"

struct mg_context;

struct app {
    struct config cfg;
    struct logger *log; /* borrowed */
    struct store *store;
    struct auth *auth;
    struct metrics *metrics;
    struct replay_cache *replays; /* NULL when --replay-cache is 0 */
    struct connlimit *connlimit;  /* connections per client address */
    struct ratelimit *ratelimit;  /* requests per tenant */
    struct ratelimit *unauth_limit; /* requests without a valid API key, per address */
    struct conntable *conns;      /* open connections (each one's civetweb user data) */
    struct watchdog *watchdog;    /* body deadlines, and the table's ticks */
    sem_t list_slots;             /* list queries running at once (APP_LIST_SLOTS) */
    int list_slots_ready;
    /* The layout probe at start-up (app.c): its connection's port and
     * address, and what on_connection_open found (1 right, 2 wrong);
     * atomic. */
    int probe_port, probe_result;
    char probe_addr[64];
    struct mg_context *ctx;
    int port;
    int connections; /* held by workers now; atomic (see handlers.c) */
    int in_flight;   /* requests inside a handler now; atomic */
    int draining;    /* set by app_stop: new requests get 503; atomic */
    int64_t lease_ms;
    int64_t ttl_ms;

    pthread_t reaper;
    int reaper_started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;
};

/* Starts the reaper and the HTTP server over store, which the app then owns
 * (freed by app_stop, or here on failure); with store NULL it opens the one
 * cfg names, waiting up to cfg->db_wait_s for PostgreSQL. Returns NULL with
 * err set on failure. */
struct app *app_start(const struct config *cfg, struct logger *log, struct store *store, char *err,
                      size_t errlen);

/* Drains, then stops: new requests get 503 shutting_down (Connection:
 * close) while requests in flight finish and store their results (waiting
 * up to the lease, at least 30 s); then stops the HTTP server and the reaper
 * and closes the store. app_stop(NULL) does nothing. */
void app_stop(struct app *app);

#endif
