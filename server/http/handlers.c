/* handlers.c - what every request goes through (framing, draining,
 * tenant, rate limit, access log, metrics) and routing to the resources
 * (routes.h); health and metrics */
#define _POSIX_C_SOURCE 200809L
#include "handlers.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "civetweb_internals.h"
#include "clock.h"
#include "edge.h"
#include "http.h"
#include "ids.h"
#include "log.h"
#include "routes.h"

/* ---- GET /health ---------------------------------------------------------- */

static void health(struct request *r)
{
    char err[256] = "";
    int pg = strcmp(store_name(r->svc->store), "postgres") == 0;
    enum store_status st = store_ping(r->svc->store, err, sizeof err);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", st == STORE_OK ? "healthy" : "unhealthy");
    cJSON_AddStringToObject(root, "store", store_name(r->svc->store));
    cJSON_AddStringToObject(root, "database", !pg ? "none" : st == STORE_OK ? "up" : "down");
    http_send_json(r, st == STORE_OK ? 200 : 503, root);
    cJSON_Delete(root);
}

/* ---- GET /metrics ------------------------------------------------------------ */

static void metrics(struct request *r)
{
    size_t len = 0;
    struct conntable_counts cc;
    conntable_counts(r->edge->conns, &cc);
    metrics_connections_shed(r->edge->metrics, cc.shed, cc.drained);
    char *text =
        metrics_render(r->edge->metrics, r->svc->store, r->svc->acquirer, log_dropped(r->svc->log),
                       __atomic_load_n(&r->edge->connections, __ATOMIC_RELAXED), &len);
    if (!text) {
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "out of memory");
        return;
    }
    http_send_typed(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len, NULL);
    free(text);
}

/* ---- routing ---------------------------------------------------------------- */

static void not_allowed(struct request *r, const char *allow)
{
    struct apierr e;
    const char *headers[] = {"Allow", allow, NULL};
    apierr_of(&e, APIERR_METHOD_NOT_ALLOWED, NULL, "%s is not allowed here; use %s",
              r->ri->request_method, allow);
    http_send_error(r, &e, headers);
}

static void access_log(struct request *r, double ms)
{
    struct log_line b;
    if (!log_line_begin(r->svc->log, LOG_INFO, "request", &b))
        return;
    log_line_str(&b, "method", r->ri->request_method);
    log_line_str(&b, "path", r->ri->local_uri ? r->ri->local_uri : "");
    log_line_int(&b, "status", r->status);
    log_line_ms(&b, "duration_ms", ms);
    log_line_str(&b, "tenant", r->tenant);
    log_line_str(&b, "outcome", outcome_name(r->outcome));
    if (r->key[0])
        log_line_str(&b, "key", r->key);
    if (r->customer[0])
        log_line_str(&b, "customer", r->customer);
    log_line_end(r->svc->log, &b);
}

/* ---- the route table ------------------------------------------------------- */

static void get_health(struct request *r, const char *id)
{
    (void)id;
    health(r);
}

static void get_metrics(struct request *r, const char *id)
{
    (void)id;
    metrics(r);
}

static void create_payment(struct request *r, const char *id)
{
    (void)id;
    routes_create_payment(r);
}

static void list_payments(struct request *r, const char *id)
{
    (void)id;
    routes_list_payments(r);
}

static void list_events(struct request *r, const char *id)
{
    (void)id;
    routes_list_events(r);
}

static void list_endpoints(struct request *r, const char *id)
{
    (void)id;
    routes_list_endpoints(r);
}

static void create_endpoint(struct request *r, const char *id)
{
    (void)id;
    routes_create_endpoint(r);
}

/* Every path the API serves. A pattern's "{name}" is one path segment, an
 * id of 1 to IDS_MAX bytes, handed to the handler; the rest must match
 * exactly. Routes under /api/ need an API key (and are rate-limited);
 * /health and /metrics do not. A method without a handler is answered 405
 * with the route's Allow. (tests/openapi_check.py compares this table with
 * openapi.yaml.) */
static const struct route {
    const char *pattern;
    enum metrics_route metric;
    int authenticated;
    const char *allow;
    void (*get)(struct request *r, const char *id);
    void (*post)(struct request *r, const char *id);
    void (*del)(struct request *r, const char *id); /* DELETE */
} ROUTE_TABLE[] = {
    {"/health", METRICS_ROUTE_HEALTH, 0, "GET", get_health, NULL, NULL},
    {"/metrics", METRICS_ROUTE_METRICS, 0, "GET", get_metrics, NULL, NULL},
    {ROUTES_PAYMENTS, METRICS_ROUTE_PAYMENTS, 1, "GET, POST", list_payments, create_payment, NULL},
    {ROUTES_PAYMENTS "/{transaction_id}", METRICS_ROUTE_PAYMENT, 1, "GET", routes_get_payment, NULL,
     NULL},
    {ROUTES_PAYMENTS "/{transaction_id}/refunds", METRICS_ROUTE_REFUNDS, 1, "GET, POST",
     routes_list_refunds, routes_create_refund, NULL},
    {ROUTES_REFUNDS "/{refund_id}", METRICS_ROUTE_REFUND, 1, "GET", routes_get_refund, NULL, NULL},
    {ROUTES_EVENTS, METRICS_ROUTE_EVENTS, 1, "GET", list_events, NULL, NULL},
    {ROUTES_EVENTS "/{event_id}", METRICS_ROUTE_EVENT, 1, "GET", routes_get_event, NULL, NULL},
    {ROUTES_WEBHOOK_ENDPOINTS, METRICS_ROUTE_WEBHOOK_ENDPOINTS, 1, "GET, POST", list_endpoints,
     create_endpoint, NULL},
    {ROUTES_WEBHOOK_ENDPOINTS "/{endpoint_id}", METRICS_ROUTE_WEBHOOK_ENDPOINT, 1, "DELETE", NULL,
     NULL, routes_delete_endpoint},
};

/* Whether path matches pattern; the "{...}" segment, if any, goes to id. */
static int route_matches(const char *pattern, const char *path, char id[IDS_MAX + 1])
{
    while (*pattern) {
        if (*pattern == '{') {
            size_t n = strcspn(path, "/");
            if (n == 0 || n > IDS_MAX)
                return 0;
            memcpy(id, path, n);
            id[n] = '\0';
            path += n;
            pattern = strchr(pattern, '}') + 1;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return *path == '\0';
}

/* The tenant of an /api/ request and its rate limit: 0 with r->tenant set,
 * or -1 once answered (429, or 401 without a valid key). */
static int authenticate(struct request *r)
{
    /* A second Authorization header is refused, not silently ignored. */
    r->tenant = http_header_count(r->ri, "Authorization") > 1
                    ? NULL
                    : auth_tenant(r->edge->auth, mg_get_header(r->conn, "Authorization"));
    /* A bucket per tenant; without a valid key, one per client address
     * (guessing keys, or a client misconfigured in a loop, gets 429s, not
     * endless 401s). Before the key is claimed: nothing cached or consumed. */
    int retry_after = 1;
    if (r->tenant
            ? ratelimit_take(r->edge->ratelimit, r->tenant, 1, clock_mono_us(), &retry_after) != 0
            : ratelimit_take(r->edge->unauth_limit, r->ri->remote_addr, 1, clock_mono_us(),
                             &retry_after) != 0) {
        char secs[16];
        snprintf(secs, sizeof secs, "%d", retry_after);
        const char *headers[] = {"Retry-After", secs, NULL};
        struct apierr e;
        metrics_rate_limited(r->edge->metrics);
        if (r->tenant)
            apierr_of(&e, APIERR_RATE_LIMITED, NULL,
                      "this API key sent more than %d requests a second; retry after %d s",
                      r->edge->opt.rate_limit, retry_after);
        else
            apierr_of(&e, APIERR_RATE_LIMITED, NULL,
                      "this address sent more than %d requests a second without a valid API "
                      "key; retry after %d s",
                      r->edge->opt.unauthenticated_rate_limit, retry_after);
        http_send_error(r, &e, headers);
        return -1;
    }
    if (!r->tenant) {
        const char *headers[] = {"WWW-Authenticate", "Bearer", NULL};
        struct apierr e;
        apierr_of(&e, APIERR_UNAUTHORIZED, NULL,
                  "a valid API key is required as Authorization: Bearer <key>");
        http_send_error(r, &e, headers);
        return -1;
    }
    return 0;
}

static void dispatch(struct request *r)
{
    const char *path = r->ri->local_uri ? r->ri->local_uri : "";
    const char *method = r->ri->request_method;
    char id[IDS_MAX + 1] = "";
    const struct route *route = NULL;
    for (size_t i = 0; i < sizeof ROUTE_TABLE / sizeof ROUTE_TABLE[0] && !route; i++)
        if (route_matches(ROUTE_TABLE[i].pattern, path, id))
            route = &ROUTE_TABLE[i];
    if (!route) {
        r->route = METRICS_ROUTE_OTHER;
        http_fail(r, APIERR_ROUTE_NOT_FOUND, NULL, "no such route");
        return;
    }
    r->route = route->metric;
    void (*handler)(struct request *, const char *) = strcmp(method, "GET") == 0      ? route->get
                                                      : strcmp(method, "POST") == 0   ? route->post
                                                      : strcmp(method, "DELETE") == 0 ? route->del
                                                                                      : NULL;
    /* Every /api/ route needs a key, and its 401 comes first (before 405). */
    if (route->authenticated && authenticate(r) != 0)
        return;
    if (handler)
        handler(r, id);
    else
        not_allowed(r, route->allow);
}

int handlers_route(struct mg_connection *conn, void *cbdata)
{
    struct request r = {.conn = conn,
                        .ri = mg_get_request_info(conn),
                        .edge = cbdata,
                        .svc = &((struct edge *)cbdata)->svc,
                        .slot = mg_get_user_connection_data(conn)};
    int64_t t0 = clock_mono_us();
    /* Shed by the connection table as this request arrived (it had waited
     * idle while few workers were free): not worked on; answered 503
     * server_busy, and the connection ends. Shut by the stop instead: 503
     * shutting_down, below. */
    int shed = conntable_set(r.edge->conns, r.slot, CONN_WORKING, clock_mono_us()) != 0 &&
               !__atomic_load_n(&((struct edge *)cbdata)->draining, __ATOMIC_SEQ_CST);
    /* With keep-alive a connection holds its worker between requests. When
     * every worker holds one, a new client would wait in the queue for as
     * long as the busy ones keep talking: close this connection after its
     * answer so the worker serves whoever waits. */
    struct edge *e = cbdata;
    if (civetweb_internals_on() && !civetweb_layout_matches(conn, r.ri)) {
        civetweb_internals_off();
        log_msg(e->svc.log, LOG_ERROR,
                "civetweb's connection layout is not the one expected: connections per client "
                "address are no longer limited");
    }
    if (__atomic_load_n(&e->connections, __ATOMIC_RELAXED) >= e->opt.threads)
        http_close_after(&r);
    /* Counted before the draining check: edge_stop waits for every request
     * that got past it. */
    __atomic_add_fetch(&e->in_flight, 1, __ATOMIC_SEQ_CST);
    const char *why = NULL;
    int framing = http_check_framing(r.ri, &why);
    if (shed) {
        const char *headers[] = {"Connection", "close", "Retry-After", "1", NULL};
        struct apierr e;
        r.route = METRICS_ROUTE_OTHER;
        http_close_after(&r);
        apierr_of(&e, APIERR_SERVER_BUSY, NULL, NULL);
        http_send_error(&r, &e, headers);
    } else if (r.slot && r.slot->refused) {
        /* Over its address's limit and not shut in time (see edge.c). */
        const char *headers[] = {"Connection", "close", "Retry-After", "1", NULL};
        struct apierr e;
        r.route = METRICS_ROUTE_OTHER;
        apierr_of(&e, APIERR_TOO_MANY_CONNECTIONS, NULL,
                  "this client address has too many open connections; close one and retry");
        http_send_error(&r, &e, headers);
    } else if (framing) {
        /* What follows on this connection cannot be framed: answer, close. */
        const char *headers[] = {"Connection", "close", NULL};
        struct apierr e;
        r.route = METRICS_ROUTE_OTHER;
        apierr_of(&e, framing == 431 ? APIERR_HEADERS_TOO_LARGE : APIERR_BAD_REQUEST, NULL, "%s",
                  why);
        http_send_error(&r, &e, headers);
    } else if (__atomic_load_n(&e->draining, __ATOMIC_SEQ_CST)) {
        const char *headers[] = {"Connection", "close", "Retry-After", "1", NULL};
        struct apierr e;
        http_close_after(&r);
        apierr_of(&e, APIERR_SHUTTING_DOWN, NULL,
                  "this server is shutting down; retry (another server will answer)");
        http_send_error(&r, &e, headers);
    } else {
        dispatch(&r);
    }
    __atomic_sub_fetch(&e->in_flight, 1, __ATOMIC_SEQ_CST);
    double secs = (double)(clock_mono_us() - t0) / 1e6;
    struct metrics_answer ma = {r.outcome, r.effect, r.replay_cached, r.error_code};
    metrics_request(e->metrics, (enum metrics_route)r.route, r.ri->request_method, r.status, secs,
                    &ma);
    access_log(&r, secs * 1e3);
    conntable_set(e->conns, r.slot, CONN_WAITING, clock_mono_us());
    return r.status ? r.status : 500;
}

/* What civetweb itself may refuse before a handler runs, and the row of
 * the error table each gets; a status not listed keeps its number, as
 * bad_request (or internal_error from 500 up). */
static const struct {
    int status;
    enum apierr_id id;
} CIVETWEB_ERRORS[] = {
    {400, APIERR_BAD_REQUEST},        {404, APIERR_ROUTE_NOT_FOUND},
    {405, APIERR_METHOD_NOT_ALLOWED}, {408, APIERR_REQUEST_TIMEOUT},
    {413, APIERR_REQUEST_TOO_LARGE},  {414, APIERR_URI_TOO_LONG},
    {431, APIERR_HEADERS_TOO_LARGE},  {500, APIERR_INTERNAL_ERROR},
    {505, APIERR_HTTP_VERSION},
};

int handlers_http_error(struct mg_connection *conn, int status, const char *msg)
{
    struct request r = {.conn = conn, .ri = mg_get_request_info(conn)};
    enum apierr_id id = status >= 500 ? APIERR_INTERNAL_ERROR : APIERR_BAD_REQUEST;
    int listed = 0;
    for (size_t i = 0; i < sizeof CIVETWEB_ERRORS / sizeof CIVETWEB_ERRORS[0]; i++)
        if (CIVETWEB_ERRORS[i].status == status) {
            id = CIVETWEB_ERRORS[i].id;
            listed = 1;
        }
    const char *headers[] = {"Connection", "close", NULL};
    struct apierr e;
    apierr_of(&e, id, NULL, "%s", msg && *msg ? msg : apierr_row(id)->message);
    if (!listed)
        e.status = status;
    http_send_error(&r, &e, headers);
    return 0;
}
