/* app.c - starting and stopping the service: store, reaper, civetweb */
#define _POSIX_C_SOURCE 200809L
#include "app.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "handlers.h"

/* civetweb's own messages become JSON lines too. */
static int on_log_message(const struct mg_connection *conn, const char *message)
{
    const struct mg_context *ctx = conn ? mg_get_context(conn) : NULL;
    struct app *app = ctx ? mg_get_user_data(ctx) : NULL;
    if (app) {
        cJSON *line = log_begin(app->log, LOG_WARN, "civetweb");
        cJSON_AddStringToObject(line, "detail", message);
        log_end(app->log, line);
    } else {
        cJSON *line = cJSON_CreateObject();
        cJSON_AddStringToObject(line, "level", "warn");
        cJSON_AddStringToObject(line, "msg", "civetweb");
        cJSON_AddStringToObject(line, "detail", message);
        char *text = cJSON_PrintUnformatted(line);
        if (text)
            fprintf(stderr, "%s\n", text);
        free(text);
        cJSON_Delete(line);
    }
    return 1;
}

/* Each connection holds a worker thread for as long as it stays open. */
static int on_connection_open(const struct mg_connection *conn, void **conn_data)
{
    struct app *app = mg_get_user_data(mg_get_context(conn));
    (void)conn_data;
    __atomic_add_fetch(&app->connections, 1, __ATOMIC_RELAXED);
    return 0;
}

static void on_connection_close(const struct mg_connection *conn)
{
    struct app *app = mg_get_user_data(mg_get_context(conn));
    __atomic_sub_fetch(&app->connections, 1, __ATOMIC_RELAXED);
}

static void on_pg_notice(void *arg, const char *message)
{
    struct app *app = arg;
    cJSON *line = log_begin(app->log, LOG_INFO, "postgres notice");
    cJSON_AddStringToObject(line, "detail", message);
    log_end(app->log, line);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Deletes expired records in bounded batches every interval. */
static void *reaper_main(void *arg)
{
    struct app *app = arg;
    pthread_mutex_lock(&app->mu);
    while (!app->stopping) {
        struct timespec deadline;
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += app->cfg.reaper_interval_ms / 1000;
        deadline.tv_nsec += (long)(app->cfg.reaper_interval_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
        while (!app->stopping && pthread_cond_timedwait(&app->cv, &app->mu, &deadline) != ETIMEDOUT)
            ;
        if (app->stopping)
            break;
        pthread_mutex_unlock(&app->mu);
        int total = 0, deleted = 0;
        char err[256] = "";
        /* At most ten batches a pass: the rest waits for the next one. */
        for (int i = 0; i < 10; i++) {
            enum store_status st =
                store_reap(app->store, app->cfg.reaper_batch, &deleted, err, sizeof err);
            if (st != STORE_OK) {
                cJSON *line = log_begin(app->log, LOG_WARN, "reaper pass failed");
                cJSON_AddStringToObject(line, "error", err);
                log_end(app->log, line);
                break;
            }
            total += deleted;
            metrics_reaped(app->metrics, deleted);
            if (deleted < app->cfg.reaper_batch)
                break;
        }
        if (total > 0) {
            cJSON *line = log_begin(app->log, LOG_INFO, "reaper deleted expired keys");
            cJSON_AddNumberToObject(line, "deleted", total);
            log_end(app->log, line);
        }
        pthread_mutex_lock(&app->mu);
    }
    pthread_mutex_unlock(&app->mu);
    return NULL;
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
        .acquire_timeout_ms = 5000,
        .notice = on_pg_notice,
        .notice_arg = app,
    };
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct store *s = store_pg_new(&o, err, errlen);
        if (s)
            return s;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= app->cfg.db_wait_s)
            return NULL;
        cJSON *line = log_begin(app->log, LOG_WARN, "waiting for the database");
        cJSON_AddStringToObject(line, "error", err);
        log_end(app->log, line);
        sleep_ms(1000);
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
    app->store = store;
    app->cfg = *cfg;
    app->log = log;
    app->lease_ms = (int64_t)cfg->lease_s * 1000;
    app->ttl_ms = (int64_t)cfg->idempotency_ttl_s * 1000;
    pthread_mutex_init(&app->mu, NULL);
    pthread_cond_init(&app->cv, NULL);

    app->metrics = metrics_new();
    if (!app->metrics) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    app->replays = replay_cache_new((size_t)cfg->replay_cache);
    app->auth = auth_new(cfg->api_keys, err, errlen);
    if (!app->auth)
        goto fail;
    if (!auth_enabled(app->auth))
        log_msg(log, LOG_WARN,
                "no API keys configured: every request is served as the one open tenant "
                "'" AUTH_OPEN_TENANT "'");
    if (!app->store)
        app->store = open_store(app, err, errlen);
    if (!app->store)
        goto fail;
    if (pthread_create(&app->reaper, NULL, reaper_main, app) != 0) {
        snprintf(err, errlen, "could not start the reaper thread");
        goto fail;
    }
    app->reaper_started = 1;

    char ports[96], threads[16];
    if (cfg->listen_host[0])
        snprintf(ports, sizeof ports, "%s:%d", cfg->listen_host, cfg->port);
    else
        snprintf(ports, sizeof ports, "%d", cfg->port);
    snprintf(threads, sizeof threads, "%d", cfg->threads);
    const char *options[] = {
        "listening_ports",
        ports,
        "num_threads",
        threads,
        "tcp_nodelay",
        "1",
        "enable_keep_alive",
        "yes",
        "keep_alive_timeout_ms",
        "5000",
        "request_timeout_ms",
        "10000",
        "linger_timeout_ms",
        "0",
        "max_request_size",
        "16384",
        "listen_backlog",
        "1024",
        "connection_queue",
        "1024",
        "decode_url",
        "yes",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log_message;
    cb.http_error = handlers_http_error;
    cb.init_connection = on_connection_open;
    cb.connection_close = on_connection_close;
    struct mg_init_data init = {
        .callbacks = &cb, .user_data = app, .configuration_options = options};
    struct mg_error_data edata = {.text = err, .text_buffer_size = errlen};
    app->ctx = mg_start2(&init, &edata);
    if (!app->ctx) {
        if (!err[0])
            snprintf(err, errlen, "could not start the HTTP server on port %d", cfg->port);
        goto fail;
    }
    mg_set_request_handler(app->ctx, "/", handlers_route, app);
    struct mg_server_port sp[4];
    int n = mg_get_server_ports(app->ctx, 4, sp);
    app->port = n > 0 ? sp[0].port : cfg->port;

    cJSON *line = log_begin(log, LOG_INFO, "listening");
    cJSON_AddNumberToObject(line, "port", app->port);
    cJSON_AddStringToObject(line, "store", store_name(app->store));
    cJSON_AddNumberToObject(line, "threads", cfg->threads);
    cJSON_AddNumberToObject(line, "pool_size", cfg->pool_size);
    cJSON_AddNumberToObject(line, "lease_s", cfg->lease_s);
    cJSON_AddNumberToObject(line, "idempotency_ttl_s", cfg->idempotency_ttl_s);
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
    if (app->ctx) {
        /* civetweb drops every write once mg_stop has begun, so first let
         * the requests in flight answer. */
        __atomic_store_n(&app->draining, 1, __ATOMIC_SEQ_CST);
        int limit_ms = (app->cfg.lease_s > 30 ? app->cfg.lease_s : 30) * 1000;
        for (int waited = 0;
             __atomic_load_n(&app->in_flight, __ATOMIC_SEQ_CST) > 0 && waited < limit_ms;
             waited += 10)
            sleep_ms(10);
        mg_stop(app->ctx);
    }
    pthread_mutex_lock(&app->mu);
    app->stopping = 1;
    pthread_cond_broadcast(&app->cv);
    pthread_mutex_unlock(&app->mu);
    if (app->reaper_started)
        pthread_join(app->reaper, NULL);
    store_free(app->store);
    auth_free(app->auth);
    metrics_free(app->metrics);
    replay_cache_free(app->replays);
    pthread_cond_destroy(&app->cv);
    pthread_mutex_destroy(&app->mu);
    free(app);
}
