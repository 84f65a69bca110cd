/* app.c - starting and stopping the service: store, reaper, civetweb */
#define _POSIX_C_SOURCE 200809L
#include "app.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "civetweb_internals.h"
#include "handlers.h"
#include "http.h"
#include "peer_socket.h"

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

/* What a connection over its address's limit is told before it is shut
 * (the body: the error table's row). */
static const char TOO_MANY[] = "HTTP/1.1 429 Too Many Requests\r\n"
                               "Content-Type: application/json\r\n"
                               "Retry-After: 1\r\n"
                               "Connection: close\r\n"
                               "Content-Length: %zu\r\n\r\n%s";

/* Fewer free workers than this, and the connection table sheds (an eighth
 * of the workers, at least one). */
static int reserve_of(int threads)
{
    return threads / 8 > 1 ? threads / 8 : 1;
}

/* The watchdog's tick: the connection table's checks. */
static void on_tick(void *arg, int64_t now_us)
{
    struct app *app = arg;
    if (app->conns) /* (NULL when start-up failed before the table) */
        conntable_check(app->conns, now_us);
}

/* Each connection holds a worker thread for as long as it stays open. One
 * over its address's limit - or, when few workers are free, over its fair
 * share of them - is answered and shut at once, so the worker is free again
 * before civetweb would wait for its request. Every connection gets a slot
 * in the connection table (conntable.h), which sheds idle ones when few
 * workers are free. */
static int on_connection_open(const struct mg_connection *conn, void **conn_data)
{
    struct app *app = mg_get_user_data(mg_get_context(conn));
    const struct mg_request_info *ri = civetweb_early_request_info(conn);
    int open = __atomic_add_fetch(&app->connections, 1, __ATOMIC_RELAXED);
    int64_t now = watchdog_now_us();
    int fd = ri ? peer_socket_find(civetweb_socket_hint(conn), ri->remote_addr, ri->remote_port,
                                   ri->server_port)
                : -1;
    struct conn_slot *slot = conntable_enter(app->conns, fd, now);
    *conn_data = slot;
    int probe = __atomic_load_n(&app->probe_port, __ATOMIC_SEQ_CST);
    if (probe && ri && ri->remote_port == probe && strcmp(ri->remote_addr, app->probe_addr) == 0)
        __atomic_store_n(&app->probe_result, fd >= 0 && fd == civetweb_socket_hint(conn) ? 1 : 2,
                         __ATOMIC_SEQ_CST);
    int reserve = reserve_of(app->cfg.threads);
    int pressed = open > app->cfg.threads - reserve;
    if (ri && slot && fd >= 0) {
        if (connlimit_enter(app->connlimit, ri->remote_addr,
                            pressed ? app->cfg.threads - reserve : 0) != 0) {
            const char *body = apierr_default_json(APIERR_TOO_MANY_CONNECTIONS);
            char answer[sizeof TOO_MANY + 512];
            snprintf(answer, sizeof answer, TOO_MANY, strlen(body), body);
            slot->refused = 1;
            conntable_set(app->conns, slot, CONN_WORKING, now); /* shut already: not shed */
            metrics_connection_refused(app->metrics);
            connlimit_shed(fd, answer); /* fd: found and checked above */
            return 0;
        }
        slot->counted = 1;
    }
    if (pressed)
        conntable_check(app->conns, now);
    return 0;
}

static void on_connection_close(const struct mg_connection *conn)
{
    struct app *app = mg_get_user_data(mg_get_context(conn));
    __atomic_sub_fetch(&app->connections, 1, __ATOMIC_RELAXED);
    struct conn_slot *slot = mg_get_user_connection_data(conn);
    if (slot && slot->counted) {
        const struct mg_request_info *ri = mg_get_request_info(conn);
        if (!ri)
            ri = civetweb_early_request_info(conn);
        if (ri)
            connlimit_leave(app->connlimit, ri->remote_addr);
    }
    conntable_leave(app->conns, slot);
}

/* The routes are registered here, in civetweb's init_context callback:
 * mg_start2() calls it once the port is listening and before it starts the
 * workers and the accepting thread. Registered after mg_start2() returned,
 * a request that came in the meantime found no handler and was answered
 * 404 route_not_found - a final answer - while the server was starting.
 * (civetweb passes the context as const; registering a handler on it before
 * any thread uses it is what the callback is for.) */
static void on_context_ready(const struct mg_context *ctx)
{
    struct app *app = mg_get_user_data(ctx);
    mg_set_request_handler((struct mg_context *)ctx, "/", handlers_route, app);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* civetweb is not the one civetweb_internals.c reads (why): without its
 * reads there is no limit per address and no shedding. Allowed only when
 * the limit is off (--max-client-connections 0): returns 1 and logs it;
 * else 0 with err set (the server refuses to start). */
static int limits_off(struct app *app, struct logger *log, const char *why, char *err,
                      size_t errlen)
{
    civetweb_internals_off();
    if (app->cfg.max_client_connections > 0) {
        snprintf(err, errlen,
                 "%s; --max-client-connections 0 starts without limits per client address "
                 "and without shedding when few workers are free",
                 why);
        return 0;
    }
    cJSON *line = log_begin(log, LOG_WARN, "no limits per client address and no shedding");
    cJSON_AddStringToObject(line, "why", why);
    log_end(log, line);
    return 1;
}

/* The layout probe: a connection of the server's own to its port, made from
 * a port it knows. on_connection_open reads that connection's addresses
 * where civetweb_internals.c says they are, and the socket there must be
 * the one they name. Waits up to 10 s for it; 0, or -1 with why. */
static int probe_layout(struct app *app, char *why, size_t len)
{
    const char *host = app->cfg.listen_host;
    struct in_addr to_ip;
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    if (inet_pton(AF_INET, host, &to_ip) != 1)
        return 0; /* an IPv6 or named listener: the per-request check still runs */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr = to_ip};
    struct sockaddr_in to = {
        .sin_family = AF_INET, .sin_addr = to_ip, .sin_port = htons((uint16_t)app->port)};
    socklen_t flen = sizeof from;
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        getsockname(fd, (struct sockaddr *)&from, &flen) != 0) {
        snprintf(why, len, "the layout probe could not open a socket");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    snprintf(app->probe_addr, sizeof app->probe_addr, "%s", host);
    __atomic_store_n(&app->probe_port, ntohs(from.sin_port), __ATOMIC_SEQ_CST);
    int result = 0;
    if (connect(fd, (struct sockaddr *)&to, sizeof to) == 0)
        for (int waited = 0; waited < 10000 && result == 0; waited += 5) {
            result = __atomic_load_n(&app->probe_result, __ATOMIC_SEQ_CST);
            if (result == 0)
                sleep_ms(5);
        }
    __atomic_store_n(&app->probe_port, 0, __ATOMIC_SEQ_CST);
    close(fd);
    if (result == 1)
        return 0;
    snprintf(why, len,
             result == 2 ? "civetweb's connection layout is not the one this server reads: the "
                           "socket found for the probe's connection is not its own"
                         : "civetweb's connection layout is not the one this server reads: the "
                           "probe's connection was not seen within 10 s");
    return -1;
}

static void on_pg_notice(void *arg, const char *message)
{
    struct app *app = arg;
    cJSON *line = log_begin(app->log, LOG_INFO, "postgres notice");
    cJSON_AddStringToObject(line, "detail", message);
    log_end(app->log, line);
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
        .unnamed_statements = app->cfg.unnamed_statements,
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
    char why[256];
    if (civetweb_internals_check(why, sizeof why) != 0 && !limits_off(app, log, why, err, errlen))
        goto fail;
    app->connlimit = connlimit_new(cfg->max_client_connections);
    app->ratelimit = ratelimit_new(cfg->rate_limit);
    app->unauth_limit = ratelimit_new_per_address(cfg->unauthenticated_rate_limit);
    app->conns = conntable_new(cfg->threads, reserve_of(cfg->threads));
    app->watchdog = watchdog_new(on_tick, app);
    /* An eighth of the pool (one connection by default) for list pages: a
     * flood of large pages leaves the rest to claims, completions and
     * single reads. */
    app->list_slots_ready =
        sem_init(&app->list_slots, 0,
                 (unsigned)(cfg->pool_size / 8 > 1 ? cfg->pool_size / 8 : 1)) == 0;
    if (!app->connlimit || !app->ratelimit || !app->unauth_limit || !app->conns || !app->watchdog ||
        !app->list_slots_ready) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
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
        /* The request line and headers must arrive within this; each read
         * of a body waits at most this long (read_body in http.c bounds the
         * whole body). */
        "request_timeout_ms",
        HTTP_HEADER_TIMEOUT_MS_TEXT,
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
        /* RFC 9112 3.2.2: a server accepts the absolute form of a target
         * ("GET http://host:port/health"); civetweb 1.15 only maps it to a
         * local path when this check is off and the port is ours. */
        "enable_auth_domain_check",
        "no",
        NULL,
    };
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log_message;
    cb.http_error = handlers_http_error;
    cb.init_connection = on_connection_open;
    cb.connection_close = on_connection_close;
    cb.init_context = on_context_ready;
    struct mg_init_data init = {
        .callbacks = &cb, .user_data = app, .configuration_options = options};
    struct mg_error_data edata = {.text = err, .text_buffer_size = errlen};
    app->ctx = mg_start2(&init, &edata);
    if (!app->ctx) {
        if (!err[0])
            snprintf(err, errlen, "could not start the HTTP server on port %d", cfg->port);
        goto fail;
    }
    struct mg_server_port sp[4];
    int n = mg_get_server_ports(app->ctx, 4, sp);
    app->port = n > 0 ? sp[0].port : cfg->port;
    if (civetweb_internals_on() && probe_layout(app, why, sizeof why) != 0 &&
        !limits_off(app, log, why, err, errlen))
        goto fail;

    cJSON *line = log_begin(log, LOG_INFO, "listening");
    cJSON_AddNumberToObject(line, "port", app->port);
    cJSON_AddStringToObject(line, "store", store_name(app->store));
    cJSON_AddNumberToObject(line, "threads", cfg->threads);
    cJSON_AddNumberToObject(line, "pool_size", cfg->pool_size);
    if (cfg->store == STORE_KIND_POSTGRES)
        cJSON_AddStringToObject(line, "statements",
                                cfg->unnamed_statements ? "unnamed" : "prepared");
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
    connlimit_free(app->connlimit);
    ratelimit_free(app->ratelimit);
    ratelimit_free(app->unauth_limit);
    watchdog_free(app->watchdog); /* its tick uses the table */
    conntable_free(app->conns);
    if (app->list_slots_ready)
        sem_destroy(&app->list_slots);
    pthread_cond_destroy(&app->cv);
    pthread_mutex_destroy(&app->mu);
    free(app);
}
