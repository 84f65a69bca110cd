/* app.c - starting and stopping the service: the store, the reaper,
 * recovery, the webhook dispatchers, the guards and metrics, and the HTTP
 * edge over them (edge.h) */
#define _POSIX_C_SOURCE 200809L
#include "app.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acquirer.h"
#include "clock.h"
#include "recovery.h"
#include "replay_cache.h"
#include "store_mem.h"
#include "store_pg.h"
#include "webhook_delivery.h"

/* How often the first dispatcher looks for due deliveries while none are:
 * a new event waits this long at most before its first attempt begins.
 * The others wait for it to find some (or look every few seconds): an idle
 * server asks the database five times a second, not five per dispatcher. */
#define DISPATCH_IDLE_MS 200
#define DISPATCH_IDLE_OTHERS_MS 5000
/* How often the first dispatcher counts the backlog for the metrics: every
 * second, or, when the count is slow (it reads every pending row: a
 * backlog of a million takes 0.3 s of PostgreSQL's time), BACKLOG_DUTY times
 * as long as the last count took - counting takes 1% of the time at most,
 * and the gauges are that much older - but never less often than every
 * BACKLOG_MOST_MS. */
#define BACKLOG_EVERY_MS 1000
#define BACKLOG_DUTY 100
#define BACKLOG_MOST_MS 60000

/* A thread sending webhook deliveries (webhook_delivery.h). */
struct dispatcher {
    struct app *app;
    struct webhook_sender *sender;
    pthread_t thread;
    int first; /* counts the backlog */
};

static void on_pg_notice(void *arg, const char *message)
{
    struct app *app = arg;
    cJSON *line = log_begin(app->log, LOG_INFO, "postgres notice");
    cJSON_AddStringToObject(line, "detail", message);
    log_end(app->log, line);
}

/* Waits interval_ms, or until the app stops: 1 when it stops. */
static int wait_or_stop(struct app *app, int interval_ms)
{
    struct timespec deadline;
    clock_deadline_in(&deadline, interval_ms);
    pthread_mutex_lock(&app->mu);
    while (!app->stopping && pthread_cond_timedwait(&app->cv, &app->mu, &deadline) != ETIMEDOUT)
        ;
    int stopping = app->stopping;
    pthread_mutex_unlock(&app->mu);
    return stopping;
}

/* Finishes records left processing past their lease, a bounded number a
 * pass (recovery.h), and counts what waits. */
static void *recovery_main(void *arg)
{
    struct app *app = arg;
    const struct service *svc = &app->edge.svc;
    struct metrics *m = app->edge.metrics;
    while (!wait_or_stop(app, app->cfg.recovery_interval_ms)) {
        struct recovery_pass p;
        recovery_run(svc, app->cfg.recovery_batch, &p);
        metrics_recovered(m, METRICS_RECOVERY_COMPLETED, p.completed);
        metrics_recovered(m, METRICS_RECOVERY_PENDING, p.pending);
        metrics_recovered(m, METRICS_RECOVERY_RELEASED, p.released);
        metrics_recovered(m, METRICS_RECOVERY_UNREADABLE, p.unreadable);
        metrics_recovered(m, METRICS_RECOVERY_LOST, p.lost);
        struct store_unfinished u;
        char err[256] = "";
        if (store_unfinished(svc->store, &u, err, sizeof err) == STORE_OK)
            metrics_recovery_waiting(
                m, (long long)u.waiting,
                u.oldest_created_us ? (double)(clock_wall_us() - u.oldest_created_us) / 1e6 : 0);
    }
    return NULL;
}

/* One reaper statement, again while it deletes a whole batch, ten at most
 * a pass (the rest waits for the next one); keys (events 0) or events.
 * Returns how many it deleted. */
static int reap_some(struct app *app, int events)
{
    int total = 0, deleted = 0;
    char err[256] = "";
    for (int i = 0; i < 10; i++) {
        enum store_status st =
            events
                ? store_reap_events(app->edge.svc.store, (int64_t)app->cfg.event_retention_s * 1000,
                                    app->cfg.reaper_batch, &deleted, err, sizeof err)
                : store_reap(app->edge.svc.store, app->cfg.reaper_batch, &deleted, err, sizeof err);
        if (st != STORE_OK) {
            cJSON *line = log_begin(app->log, LOG_WARN, "reaper pass failed");
            cJSON_AddStringToObject(line, "table", events ? "events" : "idempotency_keys");
            cJSON_AddStringToObject(line, "error", err);
            log_end(app->log, line);
            break;
        }
        total += deleted;
        if (!events)
            metrics_reaped(app->edge.metrics, deleted);
        if (deleted < app->cfg.reaper_batch)
            break;
    }
    return total;
}

/* Deletes expired records, and events past their retention, in bounded
 * batches every interval. */
static void *reaper_main(void *arg)
{
    struct app *app = arg;
    while (!wait_or_stop(app, app->cfg.reaper_interval_ms)) {
        int keys = reap_some(app, 0), events = reap_some(app, 1);
        if (keys > 0) {
            cJSON *line = log_begin(app->log, LOG_INFO, "reaper deleted expired keys");
            cJSON_AddNumberToObject(line, "deleted", keys);
            log_end(app->log, line);
        }
        if (events > 0) {
            cJSON *line = log_begin(app->log, LOG_INFO, "reaper deleted expired events");
            cJSON_AddNumberToObject(line, "deleted", events);
            log_end(app->log, line);
        }
    }
    return NULL;
}

/* 1 when counted. */
static int count_backlog(struct app *app)
{
    struct store_delivery_backlog b;
    char err[256] = "";
    if (store_delivery_backlog(app->edge.svc.store, &b, err, sizeof err) != STORE_OK)
        return 0;
    metrics_webhook_backlog(
        app->edge.metrics, (long long)b.pending,
        b.oldest_created_us ? (double)(clock_wall_us() - b.oldest_created_us) / 1e6 : 0);
    return 1;
}

/* Waits ms, or until another dispatcher found deliveries since *seen, or
 * the app stops (then 1). */
static int wait_for_work(struct app *app, int ms, unsigned long long *seen)
{
    struct timespec deadline;
    clock_deadline_in(&deadline, ms);
    pthread_mutex_lock(&app->mu);
    while (!app->stopping && app->webhook_work == *seen &&
           pthread_cond_timedwait(&app->work_cv, &app->mu, &deadline) != ETIMEDOUT)
        ;
    *seen = app->webhook_work;
    int stopping = app->stopping;
    pthread_mutex_unlock(&app->mu);
    return stopping;
}

static void found_work(struct app *app)
{
    pthread_mutex_lock(&app->mu);
    app->webhook_work++;
    pthread_cond_broadcast(&app->work_cv);
    pthread_mutex_unlock(&app->mu);
}

/* Steps back to back while they find deliveries (waking the other
 * dispatchers) or have attempts under way; else a wait. Never on a
 * request's thread: a slow or dead endpoint holds only this one's slots. */
static void *dispatcher_main(void *arg)
{
    struct dispatcher *d = arg;
    struct app *app = d->app;
    int64_t counted_us = 0, count_every_us = BACKLOG_EVERY_MS * 1000LL;
    unsigned long long seen = 0;
    int wait_ms = 0;
    while (!wait_for_work(app, wait_ms, &seen)) {
        struct webhook_pass p;
        webhook_deliver_due(d->sender, app->edge.svc.store, &p);
        metrics_webhooks(app->edge.metrics, p.delivered, p.retried, p.failed);
        if (p.late) {
            cJSON *line =
                log_begin(app->log, LOG_WARN, "webhook dispatcher: a claim came back late");
            cJSON_AddNumberToObject(line, "deliveries", p.late);
            cJSON_AddStringToObject(line, "why",
                                    "past the lease's margin: not begun, sent again after "
                                    "their lease");
            log_end(app->log, line);
        }
        if (p.store != STORE_OK || p.stalled || p.retried || p.failed) {
            cJSON *line = log_begin(app->log, LOG_WARN,
                                    p.stalled             ? "webhook dispatcher: libcurl failed"
                                    : p.store != STORE_OK ? "webhook dispatcher: store failed"
                                                          : "webhook delivery attempts failed");
            cJSON_AddNumberToObject(line, "retried", p.retried);
            cJSON_AddNumberToObject(line, "failed", p.failed);
            cJSON_AddStringToObject(line, "last_error", p.error);
            log_end(app->log, line);
        }
        if (d->first && clock_mono_us() - counted_us >= count_every_us) {
            int64_t began_us = clock_mono_us();
            int counted = count_backlog(app);
            counted_us = clock_mono_us();
            count_every_us = counted ? BACKLOG_DUTY * (counted_us - began_us) : 0;
            if (count_every_us < BACKLOG_EVERY_MS * 1000LL)
                count_every_us = BACKLOG_EVERY_MS * 1000LL;
            if (count_every_us > BACKLOG_MOST_MS * 1000LL)
                count_every_us = BACKLOG_MOST_MS * 1000LL;
        }
        if (p.claimed > 0 && p.store == STORE_OK && !p.stalled) {
            found_work(app);
            wait_ms = 0;
        } else if (p.in_flight > 0) {
            wait_ms = 0; /* the step waited on its attempts */
        } else {
            wait_ms = d->first ? DISPATCH_IDLE_MS : DISPATCH_IDLE_OTHERS_MS;
        }
    }
    return NULL;
}

static int start_dispatchers(struct app *app, char *err, size_t errlen)
{
    const struct config *c = &app->cfg;
    struct webhook_options o = {
        .timeout_ms = c->webhook_timeout_ms,
        .max_attempts = c->webhook_max_attempts,
        .backoff_ms = c->webhook_backoff_ms,
        .allow_private = c->webhook_allow_private,
        .statement_wait_ms = POOL_ACQUIRE_TIMEOUT_MS,
    };
    if (c->webhook_dispatchers == 0)
        return 0;
    app->dispatchers = calloc((size_t)c->webhook_dispatchers, sizeof *app->dispatchers);
    if (!app->dispatchers) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < c->webhook_dispatchers; i++) {
        struct dispatcher *d = &app->dispatchers[i];
        *d = (struct dispatcher){.app = app, .first = i == 0, .sender = webhook_sender_new(&o)};
        if (!d->sender || pthread_create(&d->thread, NULL, dispatcher_main, d) != 0) {
            webhook_sender_free(d->sender);
            d->sender = NULL;
            snprintf(err, errlen, "could not start the webhook dispatchers");
            return -1;
        }
        app->dispatchers_started = i + 1;
    }
    return 0;
}

static void stop_dispatchers(struct app *app)
{
    pthread_mutex_lock(&app->mu);
    pthread_cond_broadcast(&app->work_cv); /* stopping is set */
    pthread_mutex_unlock(&app->mu);
    for (int i = 0; i < app->dispatchers_started; i++)
        webhook_sender_stop(app->dispatchers[i].sender);
    for (int i = 0; i < app->dispatchers_started; i++) {
        pthread_join(app->dispatchers[i].thread, NULL);
        webhook_sender_free(app->dispatchers[i].sender);
    }
    free(app->dispatchers);
    app->dispatchers = NULL;
    app->dispatchers_started = 0;
}

/* A payment's completion handed deliveries off: a dispatcher waiting
 * for work takes them now rather than at its next look. */
static void handoff_wake(void *arg)
{
    found_work(arg);
}

static struct store *open_store(struct app *app, char *err, size_t errlen)
{
    if (app->cfg.store == STORE_KIND_MEMORY) {
        struct store *s = store_mem_new();
        if (!s)
            snprintf(err, errlen, "out of memory");
        return s;
    }
    struct store_pg_options o = {
        .database_url = app->cfg.database_url,
        .pool_size = app->cfg.pool_size,
        .connect_timeout_s = 5,
        .acquire_timeout_ms = POOL_ACQUIRE_TIMEOUT_MS,
        .unnamed_statements = app->cfg.unnamed_statements,
        .notice = on_pg_notice,
        .notice_arg = app,
        .handoff_wake = handoff_wake,
        .handoff_wake_arg = app,
    };
    int64_t start = clock_mono_us();
    for (;;) {
        struct store *s = store_pg_new(&o, err, errlen);
        if (s)
            return s;
        if (clock_mono_us() - start >= (int64_t)app->cfg.db_wait_s * 1000000)
            return NULL;
        cJSON *line = log_begin(app->log, LOG_WARN, "waiting for the database");
        cJSON_AddStringToObject(line, "error", err);
        log_end(app->log, line);
        clock_sleep_ms(1000);
    }
}

struct app *app_start(const struct config *cfg, struct logger *log, struct store *store, char *err,
                      size_t errlen)
{
    struct app *app = calloc(1, sizeof *app);
    if (!app) {
        store_free(store);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    struct edge *e = &app->edge;
    struct service *svc = &e->svc;
    app->cfg = *cfg;
    app->log = log;
    svc->store = store;
    svc->log = log;
    svc->lease_ms = (int64_t)cfg->lease_s * 1000;
    svc->ttl_ms = (int64_t)cfg->idempotency_ttl_s * 1000;
    svc->webhook_allow_private = cfg->webhook_allow_private;
    svc->webhook_max_endpoints = cfg->webhook_max_endpoints;
    svc->require_key = cfg->require_key;
    svc->processing_delay_ms = cfg->processing_delay_ms;
    e->opt = (struct edge_options){
        .listen_host = app->cfg.listen_host,
        .port = cfg->port,
        .threads = cfg->threads,
        .max_client_connections = cfg->max_client_connections,
        .rate_limit = cfg->rate_limit,
        .unauthenticated_rate_limit = cfg->unauthenticated_rate_limit,
    };
    pthread_mutex_init(&app->mu, NULL);
    pthread_cond_init(&app->cv, NULL);
    pthread_cond_init(&app->work_cv, NULL);

    e->metrics = metrics_new();
    if (!e->metrics) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    svc->replays = replay_cache_new((size_t)cfg->replay_cache);
    if (cfg->acquirer_url[0]) {
        /* one kept connection per worker at most: a worker asks once at a time */
        svc->acquirer = acquirer_new(cfg->acquirer_url, cfg->acquirer_timeout_ms, cfg->threads);
        if (!svc->acquirer) {
            snprintf(err, errlen, "could not start the acquirer's client");
            goto fail;
        }
    }
    if (edge_check(e, err, errlen) != 0) /* before the database is touched */
        goto fail;
    e->connlimit = connlimit_new(cfg->max_client_connections);
    e->ratelimit = ratelimit_new(cfg->rate_limit);
    e->unauth_limit = ratelimit_new_per_address(cfg->unauthenticated_rate_limit);
    e->conns = conntable_new(cfg->threads, edge_reserve(cfg->threads));
    e->watchdog = watchdog_new(edge_on_tick, e);
    /* An eighth of the pool (one connection by default) for list pages: a
     * flood of large pages leaves the rest to claims, completions and
     * single reads. */
    app->list_slots_ready =
        sem_init(&svc->list_slots, 0,
                 (unsigned)(cfg->pool_size / 8 > 1 ? cfg->pool_size / 8 : 1)) == 0;
    if (!e->connlimit || !e->ratelimit || !e->unauth_limit || !e->conns || !e->watchdog ||
        !app->list_slots_ready) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    e->auth = auth_new(cfg->api_keys, err, errlen);
    if (!e->auth)
        goto fail;
    if (!auth_enabled(e->auth))
        log_msg(log, LOG_WARN,
                "no API keys configured: every request is served as the one open tenant "
                "'" AUTH_OPEN_TENANT "'");
    if (!svc->store)
        svc->store = open_store(app, err, errlen);
    if (!svc->store)
        goto fail;
    if (pthread_create(&app->reaper, NULL, reaper_main, app) != 0) {
        snprintf(err, errlen, "could not start the reaper thread");
        goto fail;
    }
    app->reaper_started = 1;
    if (svc->acquirer) {
        if (pthread_create(&app->recovery, NULL, recovery_main, app) != 0) {
            snprintf(err, errlen, "could not start the recovery thread");
            goto fail;
        }
        app->recovery_started = 1;
    }
    if (start_dispatchers(app, err, errlen) != 0)
        goto fail;
    if (edge_start(e, err, errlen) != 0)
        goto fail;
    app->port = e->port;

    cJSON *line = log_begin(log, LOG_INFO, "listening");
    cJSON_AddNumberToObject(line, "port", app->port);
    cJSON_AddStringToObject(line, "store", store_name(svc->store));
    cJSON_AddNumberToObject(line, "threads", cfg->threads);
    cJSON_AddNumberToObject(line, "pool_size", cfg->pool_size);
    if (cfg->store == STORE_KIND_POSTGRES)
        cJSON_AddStringToObject(line, "statements",
                                cfg->unnamed_statements ? "unnamed" : "prepared");
    cJSON_AddNumberToObject(line, "lease_s", cfg->lease_s);
    cJSON_AddNumberToObject(line, "idempotency_ttl_s", cfg->idempotency_ttl_s);
    cJSON_AddNumberToObject(line, "event_retention_s", cfg->event_retention_s);
    cJSON_AddBoolToObject(line, "webhook_allow_private", cfg->webhook_allow_private);
    cJSON_AddNumberToObject(line, "webhook_dispatchers", cfg->webhook_dispatchers);
    cJSON_AddStringToObject(line, "acquirer",
                            cfg->acquirer_url[0] ? cfg->acquirer_url : "in-process");
    if (cfg->acquirer_url[0])
        cJSON_AddNumberToObject(line, "recovery_interval_ms", cfg->recovery_interval_ms);
    log_end(log, line);
    return app;
fail:
    app_stop(app);
    return NULL;
}

void app_stop(struct app *app)
{
    if (!app)
        return;
    struct edge *e = &app->edge;
    edge_stop(e, (app->cfg.lease_s > 30 ? app->cfg.lease_s : 30) * 1000);
    pthread_mutex_lock(&app->mu);
    app->stopping = 1;
    pthread_cond_broadcast(&app->cv);
    pthread_mutex_unlock(&app->mu);
    if (app->reaper_started)
        pthread_join(app->reaper, NULL);
    if (app->recovery_started)
        pthread_join(app->recovery, NULL);
    stop_dispatchers(app);
    store_free(e->svc.store);
    auth_free(e->auth);
    metrics_free(e->metrics);
    replay_cache_free(e->svc.replays);
    acquirer_free(e->svc.acquirer);
    connlimit_free(e->connlimit);
    ratelimit_free(e->ratelimit);
    ratelimit_free(e->unauth_limit);
    watchdog_free(e->watchdog); /* its tick uses the table */
    conntable_free(e->conns);
    if (app->list_slots_ready)
        sem_destroy(&e->svc.list_slots);
    pthread_cond_destroy(&app->cv);
    pthread_cond_destroy(&app->work_cv);
    pthread_mutex_destroy(&app->mu);
    free(app);
}
