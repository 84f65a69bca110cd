/* app.h - the running service: configuration, logger, store, reaper,
 * recovery, webhook dispatchers and the HTTP edge (edge.h), started and
 * stopped together
 */
#ifndef MOCKERY_APP_H
#define MOCKERY_APP_H

#include <pthread.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "edge.h"
#include "log.h"

struct app {
    struct config cfg;
    struct logger *log; /* borrowed */
    struct edge edge;   /* civetweb, the guards, the metrics, the service */
    int list_slots_ready;
    int port; /* listened on */

    pthread_t reaper;
    int reaper_started;
    pthread_t recovery; /* with --acquirer-url */
    int recovery_started;
    struct dispatcher *dispatchers; /* --webhook-dispatchers of them */
    int dispatchers_started;
    unsigned long long webhook_work; /* passes that found deliveries (under mu) */
    pthread_cond_t work_cv;          /* signalled with it, and at stop */
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
