/* edge.c - civetweb started over the service (edge.h): its options, the
 * callbacks of its connections, the layout probe, draining at the end */
#define _POSIX_C_SOURCE 200809L
#include "edge.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <arpa/inet.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "civetweb_internals.h"
#include "clock.h"
#include "handlers.h"
#include "http.h"
#include "log.h"
#include "peer_socket.h"
#include "self_connect.h"

/* civetweb's own messages become JSON lines too. */
static int on_log_message(const struct mg_connection *conn, const char *message)
{
    const struct mg_context *ctx = conn ? mg_get_context(conn) : NULL;
    struct edge *e = ctx ? mg_get_user_data(ctx) : NULL;
    if (e) {
        cJSON *line = log_begin(e->svc.log, LOG_WARN, "civetweb");
        cJSON_AddStringToObject(line, "detail", message);
        log_end(e->svc.log, line);
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

int edge_reserve(int threads)
{
    return threads / 8 > 1 ? threads / 8 : 1;
}

void edge_on_tick(void *arg, int64_t now_us)
{
    struct edge *e = arg;
    if (e->conns) /* (NULL when start-up failed before the table) */
        conntable_check(e->conns, now_us);
}

/* Each connection holds a worker thread for as long as it stays open. One
 * over its address's limit - or, when few workers are free, over its fair
 * share of them - is answered and shut at once, so the worker is free again
 * before civetweb would wait for its request. Every connection gets a slot
 * in the connection table (conntable.h), which sheds idle ones when few
 * workers are free. */
static int on_connection_open(const struct mg_connection *conn, void **conn_data)
{
    struct edge *e = mg_get_user_data(mg_get_context(conn));
    const struct mg_request_info *ri = civetweb_early_request_info(conn);
    int open = __atomic_add_fetch(&e->connections, 1, __ATOMIC_RELAXED);
    int64_t now = clock_mono_us();
    int fd = ri ? peer_socket_find(civetweb_socket_hint(conn), ri->remote_addr, ri->remote_port,
                                   ri->server_port)
                : -1;
    struct conn_slot *slot = conntable_enter(e->conns, fd, now);
    *conn_data = slot;
    int probe = __atomic_load_n(&e->probe_port, __ATOMIC_SEQ_CST);
    if (probe && ri && ri->remote_port == probe && strcmp(ri->remote_addr, e->probe_addr) == 0)
        __atomic_store_n(&e->probe_result, fd >= 0 && fd == civetweb_socket_hint(conn) ? 1 : 2,
                         __ATOMIC_SEQ_CST);
    int reserve = edge_reserve(e->opt.threads);
    int pressed = open > e->opt.threads - reserve;
    if (ri && slot && fd >= 0) {
        if (connlimit_enter(e->connlimit, ri->remote_addr,
                            pressed ? e->opt.threads - reserve : 0) != 0) {
            const char *body = apierr_default_json(APIERR_TOO_MANY_CONNECTIONS);
            char answer[sizeof TOO_MANY + 512];
            snprintf(answer, sizeof answer, TOO_MANY, strlen(body), body);
            slot->refused = 1;
            conntable_set(e->conns, slot, CONN_WORKING, now); /* shut already: not shed */
            metrics_connection_refused(e->metrics);
            connlimit_shed(fd, answer); /* fd: found and checked above */
            return 0;
        }
        slot->counted = 1;
    }
    if (pressed)
        conntable_check(e->conns, now);
    return 0;
}

static void on_connection_close(const struct mg_connection *conn)
{
    struct edge *e = mg_get_user_data(mg_get_context(conn));
    __atomic_sub_fetch(&e->connections, 1, __ATOMIC_RELAXED);
    struct conn_slot *slot = mg_get_user_connection_data(conn);
    if (slot && slot->counted) {
        const struct mg_request_info *ri = mg_get_request_info(conn);
        if (!ri)
            ri = civetweb_early_request_info(conn);
        if (ri)
            connlimit_leave(e->connlimit, ri->remote_addr);
    }
    conntable_leave(e->conns, slot);
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
    struct edge *e = mg_get_user_data(ctx);
    mg_set_request_handler((struct mg_context *)ctx, "/", handlers_route, e);
}

/* civetweb is not the one civetweb_internals.c reads (why): without its
 * reads there is no limit per address and no shedding. Allowed only when
 * the limit is off (--max-client-connections 0): returns 1 and logs it;
 * else 0 with err set (the server refuses to start). */
static int limits_off(struct edge *e, const char *why, char *err, size_t errlen)
{
    civetweb_internals_off();
    if (e->opt.max_client_connections > 0) {
        snprintf(err, errlen,
                 "%s; --max-client-connections 0 starts without limits per client address "
                 "and without shedding when few workers are free",
                 why);
        return 0;
    }
    cJSON *line = log_begin(e->svc.log, LOG_WARN, "no limits per client address and no shedding");
    cJSON_AddStringToObject(line, "why", why);
    log_end(e->svc.log, line);
    return 1;
}

/* The layout probe: a connection of the server's own to its port, made from
 * a port it knows. on_connection_open reads that connection's addresses
 * where civetweb_internals.c says they are, and the socket there must be
 * the one they name. Waits up to 10 s for it; 0, or -1 with why. */
static int probe_layout(struct edge *e, char *why, size_t len)
{
    struct sockaddr_in to;
    if (self_address(e->opt.listen_host, e->port, &to) != 0)
        return 0; /* an IPv6 or named listener: the per-request check still runs */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr = to.sin_addr};
    socklen_t flen = sizeof from;
    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof from) != 0 ||
        getsockname(fd, (struct sockaddr *)&from, &flen) != 0) {
        snprintf(why, len, "the layout probe could not open a socket");
        if (fd >= 0)
            close(fd);
        return -1;
    }
    inet_ntop(AF_INET, &to.sin_addr, e->probe_addr, sizeof e->probe_addr);
    __atomic_store_n(&e->probe_port, ntohs(from.sin_port), __ATOMIC_SEQ_CST);
    int result = 0;
    if (connect(fd, (struct sockaddr *)&to, sizeof to) == 0)
        for (int waited = 0; waited < 10000 && result == 0; waited += 5) {
            result = __atomic_load_n(&e->probe_result, __ATOMIC_SEQ_CST);
            if (result == 0)
                clock_sleep_ms(5);
        }
    __atomic_store_n(&e->probe_port, 0, __ATOMIC_SEQ_CST);
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

int edge_check(struct edge *e, char *err, size_t errlen)
{
    char why[256];
    if (civetweb_internals_check(why, sizeof why) != 0 && !limits_off(e, why, err, errlen))
        return -1;
    return 0;
}

int edge_start(struct edge *e, char *err, size_t errlen)
{
    char why[256];
    char ports[96], threads[16];
    if (e->opt.listen_host[0])
        snprintf(ports, sizeof ports, "%s:%d", e->opt.listen_host, e->opt.port);
    else
        snprintf(ports, sizeof ports, "%d", e->opt.port);
    snprintf(threads, sizeof threads, "%d", e->opt.threads);
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
    struct mg_init_data init = {.callbacks = &cb, .user_data = e, .configuration_options = options};
    struct mg_error_data edata = {.text = err, .text_buffer_size = errlen};
    e->ctx = mg_start2(&init, &edata);
    if (!e->ctx) {
        if (!err[0])
            snprintf(err, errlen, "could not start the HTTP server on port %d", e->opt.port);
        return -1;
    }
    struct mg_server_port sp[4];
    int n = mg_get_server_ports(e->ctx, 4, sp);
    e->port = n > 0 ? sp[0].port : e->opt.port;
    if (civetweb_internals_on() && probe_layout(e, why, sizeof why) != 0 &&
        !limits_off(e, why, err, errlen))
        return -1;
    return 0;
}

/* The stop's tick (self_connect.h): idle kept-alive connections are shut
 * from the start of the drain, so that their clients go elsewhere at once;
 * every idle connection once civetweb answers nothing more. A line for each
 * tick that shut some (while a drain lasts, connections turn idle one by
 * one: the operator sees the stop progress). */
static void shut_idle(void *edge)
{
    struct edge *e = edge;
    if (!e->conns) /* (NULL when start-up failed before the table) */
        return;
    int n = conntable_shut_idle(e->conns, !__atomic_load_n(&e->stopping, __ATOMIC_SEQ_CST));
    if (n > 0) {
        cJSON *line = log_begin(e->svc.log, LOG_INFO, "stopping: closed idle connections");
        cJSON_AddNumberToObject(line, "connections", n);
        log_end(e->svc.log, line);
    }
}

void edge_stop(struct edge *e, int drain_ms)
{
    if (!e->ctx)
        return;
    /* civetweb drops every write once mg_stop has begun, so first let the
     * requests in flight answer. */
    __atomic_store_n(&e->draining, 1, __ATOMIC_SEQ_CST);
    struct stop_waker *w = stop_waker_start(shut_idle, e);
    for (int waited = 0; __atomic_load_n(&e->in_flight, __ATOMIC_SEQ_CST) > 0 && waited < drain_ms;
         waited += 10)
        clock_sleep_ms(10);
    /* mg_stop() waits for civetweb's accept loop, which a connection of
     * our own wakes (self_connect.h) */
    __atomic_store_n(&e->stopping, 1, __ATOMIC_SEQ_CST);
    struct sockaddr_in to;
    if (self_address(e->opt.listen_host, e->port, &to) == 0)
        stop_waker_knock(w, &to);
    mg_stop(e->ctx);
    stop_waker_end(w);
    e->ctx = NULL;
}
