/* handlers.c - routing, the payment operation, listing, health */
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

#include "app.h"
#include "http.h"
#include "idem.h"
#include "money.h"
#include "payment.h"

#define PAYMENTS "/api/v1/payments"

/* ---- POST /api/v1/payments, as an idempotent operation ------------------ */

static int pay_parse(const char *body, size_t len, void **req, struct apierr *err)
{
    struct payment_request *pr = calloc(1, sizeof *pr);
    if (!pr)
        return apierr_set(err, 500, "api_error", "internal_error", NULL, "out of memory");
    if (payment_parse(body, len, pr, err) != 0) {
        free(pr);
        return -1;
    }
    *req = pr;
    return 0;
}

static char *pay_canonical(const void *req, size_t *len)
{
    return payment_canonical(req, len);
}

static const char *pay_customer(const void *req)
{
    return ((const struct payment_request *)req)->customer_id;
}

static void pay_log_fields(const void *vreq, struct log_line *line)
{
    const struct payment_request *req = vreq;
    char amount[32];
    if (money_format(req->amount_minor, req->digits, amount, sizeof amount) > 0)
        log_line_raw(line, "amount", amount);
    log_line_str(line, "currency", req->currency);
}

static void pay_free(void *req)
{
    payment_request_clear(req);
    free(req);
}

static int pay_run(struct app *app, const void *vreq, const char *key, struct idem_result *out,
                   struct apierr *err)
{
    const struct payment_request *req = vreq;
    char id[PAYMENT_ID_LEN + 1];
    enum payment_outcome po = payment_process(req, app->cfg.processing_delay_ms);

    if (po == PAYMENT_GATEWAY_ERROR) {
        struct apierr ge;
        apierr_set(&ge, 502, "api_error", "gateway_error", NULL,
                   "the payment gateway failed before charging; retry with the same "
                   "idempotency key");
        out->status = 502;
        out->retryable = 1;
        out->body = apierr_json(&ge);
        if (!out->body)
            return apierr_set(err, 500, "api_error", "internal_error", NULL, "out of memory");
        out->body_len = strlen(out->body);
        return 0;
    }
    if (payment_new_id(id) != 0)
        return apierr_set(err, 500, "api_error", "internal_error", NULL,
                          "the random source failed");
    struct store_payment p = {
        .transaction_id = id,
        .idempotency_key = (char *)key,
        .customer_id = (char *)req->customer_id,
        .amount_minor = req->amount_minor,
        .description = req->description,
        .status = po == PAYMENT_APPROVED ? "completed" : "declined",
        .processed_at_us = payment_now_us(),
    };
    memcpy(p.currency, req->currency, sizeof p.currency);

    out->payment = calloc(1, sizeof *out->payment);
    if (!out->payment || store_payment_copy(out->payment, &p) != 0)
        goto oom;
    if (po == PAYMENT_APPROVED) {
        out->status = 201;
        out->body = payment_json(&p);
        size_t n = sizeof PAYMENTS + 1 + PAYMENT_ID_LEN;
        out->location = malloc(n);
        if (!out->location)
            goto oom;
        snprintf(out->location, n, "%s/%s", PAYMENTS, id);
    } else {
        out->status = 402;
        out->body = payment_declined_json(&p);
    }
    if (!out->body)
        goto oom;
    out->body_len = strlen(out->body);
    return 0;
oom:
    idem_result_clear(out);
    return apierr_set(err, 500, "api_error", "internal_error", NULL, "out of memory");
}

static const struct idem_op PAYMENT_OP = {
    .route = PAYMENTS,
    .max_body = PAYMENT_MAX_BODY,
    .parse = pay_parse,
    .canonical = pay_canonical,
    .customer = pay_customer,
    .log_fields = pay_log_fields,
    .run = pay_run,
    .free_req = pay_free,
};

/* ---- GET /api/v1/payments ----------------------------------------------- */

static void send_list(struct request *r, const struct store_list *list)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *items = cJSON_AddArrayToObject(root, "payments");
    int ok = items != NULL;
    for (size_t i = 0; ok && i < list->count; i++) {
        cJSON *p = payment_to_cjson(&list->items[i]);
        ok = p && cJSON_AddItemToArray(items, p);
    }
    ok = ok && cJSON_AddNumberToObject(root, "count", (double)list->count) &&
         cJSON_AddBoolToObject(root, "has_more", list->has_more);
    if (ok)
        ok = list->has_more && list->count
                 ? cJSON_AddStringToObject(root, "next_cursor",
                                           list->items[list->count - 1].transaction_id) != NULL
                 : cJSON_AddNullToObject(root, "next_cursor") != NULL;
    if (ok)
        http_send_json(r, 200, root);
    else
        http_fail(r, 500, "api_error", "internal_error", NULL, "out of memory");
    cJSON_Delete(root);
}

static int bad_param(struct request *r, const char *param, const char *msg)
{
    return http_fail(r, 400, APIERR_INVALID_REQUEST, "invalid_parameter", param, "%s", msg);
}

static void list_payments(struct request *r)
{
    const char *qs = r->ri->query_string ? r->ri->query_string : "";
    size_t qlen = strlen(qs);
    char limit_s[16], customer[PAYMENT_CUSTOMER_MAX + 2], after[PAYMENT_ID_LEN + 40];
    struct store_list_query q = {.limit = 50};
    struct store_list list = {0};
    char err[256] = "";

    int n = mg_get_var(qs, qlen, "limit", limit_s, sizeof limit_s);
    if (n != -1) {
        char *end;
        long v = n > 0 ? strtol(limit_s, &end, 10) : 0;
        if (n <= 0 || *end || v < 1 || v > 500) {
            bad_param(r, "limit", "limit must be a whole number from 1 to 500");
            return;
        }
        q.limit = (int)v;
    }
    n = mg_get_var(qs, qlen, "customer_id", customer, sizeof customer);
    if (n != -1) {
        if (n < 0 || !payment_customer_valid(customer)) {
            bad_param(r, "customer_id",
                      "customer_id must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
            return;
        }
        q.customer_id = customer;
    }
    n = mg_get_var(qs, qlen, "starting_after", after, sizeof after);
    if (n != -1) {
        if (n <= 0 || !payment_id_valid(after)) {
            bad_param(r, "starting_after", "starting_after must be a transaction id");
            return;
        }
        q.starting_after = after;
    }
    /* Lists take turns for a few slots (app.c: an eighth of the pool); the
     * rest wait as long as a pool connection would be waited for. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 5;
    int waited;
    while ((waited = sem_timedwait(&r->app->list_slots, &until)) != 0 && errno == EINTR)
        ;
    if (waited != 0) {
        http_fail_store(r, "list_payments", STORE_UNAVAILABLE,
                        "every list slot stayed busy for 5 s");
        return;
    }
    /* The slot is held until the page is sent: rendering it costs as much
     * CPU as the query. */
    enum store_status st =
        store_list_payments(r->app->store, r->tenant, &q, &list, err, sizeof err);
    if (st == STORE_NOT_FOUND)
        bad_param(r, "starting_after", "starting_after names no payment of yours");
    else if (st != STORE_OK)
        http_fail_store(r, "list_payments", st, err);
    else
        send_list(r, &list);
    sem_post(&r->app->list_slots);
    store_list_clear(&list);
}

/* ---- GET /api/v1/payments/{id} ------------------------------------------ */

static void get_payment(struct request *r, const char *id)
{
    struct store_payment p = {0};
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (payment_id_valid(id))
        st = store_get_payment(r->app->store, r->tenant, id, &p, err, sizeof err);
    if (st == STORE_NOT_FOUND) {
        http_fail(r, 404, APIERR_INVALID_REQUEST, "payment_not_found", NULL,
                  "no payment with that id");
        return;
    }
    if (st != STORE_OK) {
        http_fail_store(r, "get_payment", st, err);
        return;
    }
    cJSON *obj = payment_to_cjson(&p);
    if (obj)
        http_send_json(r, 200, obj);
    else
        http_fail(r, 500, "api_error", "internal_error", NULL, "out of memory");
    cJSON_Delete(obj);
    store_payment_clear(&p);
}

/* ---- GET /health ---------------------------------------------------------- */

static void health(struct request *r)
{
    char err[256] = "";
    int pg = strcmp(store_name(r->app->store), "postgres") == 0;
    enum store_status st = store_ping(r->app->store, err, sizeof err);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "status", st == STORE_OK ? "healthy" : "unhealthy");
    cJSON_AddStringToObject(root, "store", store_name(r->app->store));
    cJSON_AddStringToObject(root, "database", !pg ? "none" : st == STORE_OK ? "up" : "down");
    http_send_json(r, st == STORE_OK ? 200 : 503, root);
    cJSON_Delete(root);
}

/* ---- GET /metrics ------------------------------------------------------------ */

static void metrics(struct request *r)
{
    size_t len = 0;
    char *text = metrics_render(r->app->metrics, r->app->store, log_dropped(r->app->log), &len);
    if (!text) {
        http_fail(r, 500, "api_error", "internal_error", NULL, "out of memory");
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
    apierr_set(&e, 405, APIERR_INVALID_REQUEST, "method_not_allowed", NULL,
               "%s is not allowed here; use %s", r->ri->request_method, allow);
    http_send_error(r, &e, headers);
}

static void access_log(struct request *r, double ms)
{
    struct log_line b;
    if (!log_line_begin(r->app->log, LOG_INFO, "request", &b))
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
    log_line_end(r->app->log, &b);
}

static void dispatch(struct request *r)
{
    const char *path = r->ri->local_uri ? r->ri->local_uri : "";
    const char *method = r->ri->request_method;
    int get = strcmp(method, "GET") == 0;

    if (strcmp(path, "/health") == 0 || strcmp(path, "/metrics") == 0) {
        int is_health = path[1] == 'h';
        r->route = is_health ? ROUTE_HEALTH : ROUTE_METRICS;
        if (!get)
            not_allowed(r, "GET");
        else if (is_health)
            health(r);
        else
            metrics(r);
        return;
    }
    size_t plen = strlen(PAYMENTS);
    int is_list = strcmp(path, PAYMENTS) == 0;
    int is_one = strncmp(path, PAYMENTS "/", plen + 1) == 0 && path[plen + 1] &&
                 !strchr(path + plen + 1, '/');
    if (!is_list && !is_one) {
        r->route = ROUTE_OTHER;
        http_fail(r, 404, APIERR_INVALID_REQUEST, "route_not_found", NULL, "no such route");
        return;
    }
    r->route = is_list ? ROUTE_PAYMENTS : ROUTE_PAYMENT;
    /* Every /api/ route needs a key, and its 401 comes first; a second
     * Authorization header is refused, not silently ignored. */
    r->tenant = http_header_count(r->ri, "Authorization") > 1
                    ? NULL
                    : auth_tenant(r->app->auth, mg_get_header(r->conn, "Authorization"));
    int retry_after = 1;
    if (r->tenant &&
        ratelimit_take(r->app->ratelimit, r->tenant, 1, watchdog_now_us(), &retry_after) != 0) {
        /* Before the key is claimed: nothing is cached or consumed. */
        char secs[16];
        snprintf(secs, sizeof secs, "%d", retry_after);
        const char *headers[] = {"Retry-After", secs, NULL};
        struct apierr e;
        metrics_rate_limited(r->app->metrics);
        apierr_set(&e, 429, "rate_limit_error", "rate_limited", NULL,
                   "this API key sent more than %d requests a second; retry after %d s",
                   r->app->cfg.rate_limit, retry_after);
        http_send_error(r, &e, headers);
        return;
    }
    if (!r->tenant) {
        const char *headers[] = {"WWW-Authenticate", "Bearer", NULL};
        struct apierr e;
        apierr_set(&e, 401, "authentication_error", "unauthorized", NULL,
                   "a valid API key is required as Authorization: Bearer <key>");
        http_send_error(r, &e, headers);
        return;
    }
    if (is_list && strcmp(method, "POST") == 0)
        idem_handle(r, &PAYMENT_OP);
    else if (is_list && get)
        list_payments(r);
    else if (is_one && get)
        get_payment(r, path + plen + 1);
    else
        not_allowed(r, is_list ? "GET, POST" : "GET");
}

int handlers_route(struct mg_connection *conn, void *cbdata)
{
    struct request r = {.conn = conn, .ri = mg_get_request_info(conn), .app = cbdata};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    /* With keep-alive a connection holds its worker between requests. When
     * every worker holds one, a new client would wait in the queue for as
     * long as the busy ones keep talking: close this connection after its
     * answer so the worker serves whoever waits. */
    struct app *app = cbdata;
    if (__atomic_load_n(&app->early_info_ok, __ATOMIC_RELAXED) && !app_layout_matches(conn, r.ri)) {
        __atomic_store_n(&app->early_info_ok, 0, __ATOMIC_RELAXED);
        log_msg(app->log, LOG_ERROR,
                "civetweb's connection layout is not the one expected: connections per client "
                "address are no longer limited");
    }
    if (__atomic_load_n(&app->connections, __ATOMIC_RELAXED) >= app->cfg.threads)
        http_close_after(&r);
    /* Counted before the draining check: app_stop waits for every request
     * that got past it. */
    __atomic_add_fetch(&app->in_flight, 1, __ATOMIC_SEQ_CST);
    const char *why = NULL;
    int framing = http_check_framing(r.ri, &why);
    if (mg_get_user_connection_data(conn) == &app->shed_marker) {
        /* Over its address's limit and not shut in time (see app.c). */
        const char *headers[] = {"Connection", "close", "Retry-After", "1", NULL};
        struct apierr e;
        r.route = ROUTE_OTHER;
        apierr_set(&e, 429, "rate_limit_error", "too_many_connections", NULL,
                   "this client address has too many open connections; close one and retry");
        http_send_error(&r, &e, headers);
    } else if (framing) {
        /* What follows on this connection cannot be framed: answer, close. */
        const char *headers[] = {"Connection", "close", NULL};
        struct apierr e;
        r.route = ROUTE_OTHER;
        apierr_set(&e, framing, APIERR_INVALID_REQUEST,
                   framing == 431 ? "headers_too_large" : "bad_request", NULL, "%s", why);
        http_send_error(&r, &e, headers);
    } else if (__atomic_load_n(&app->draining, __ATOMIC_SEQ_CST)) {
        const char *headers[] = {"Connection", "close", "Retry-After", "1", NULL};
        struct apierr e;
        http_close_after(&r);
        apierr_set(&e, 503, "api_error", "shutting_down", NULL,
                   "this server is shutting down; retry (another server will answer)");
        http_send_error(&r, &e, headers);
    } else {
        dispatch(&r);
    }
    __atomic_sub_fetch(&app->in_flight, 1, __ATOMIC_SEQ_CST);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    metrics_request(app->metrics, (enum metrics_route)r.route, r.ri->request_method, r.status, secs,
                    r.outcome, r.payment_status);
    access_log(&r, secs * 1e3);
    return r.status ? r.status : 500;
}

/* What civetweb itself may refuse before a handler runs, and the code each
 * gets; anything else is a 400 bad_request (or a 500). */
static const struct {
    int status;
    const char *code;
} CIVETWEB_ERRORS[] = {
    {400, "bad_request"},       {404, "route_not_found"},   {405, "method_not_allowed"},
    {408, "request_timeout"},   {413, "request_too_large"}, {414, "request_too_large"},
    {431, "headers_too_large"}, {500, "internal_error"},    {505, "bad_request"},
};

int handlers_http_error(struct mg_connection *conn, int status, const char *msg)
{
    struct request r = {.conn = conn, .ri = mg_get_request_info(conn)};
    const char *code = status >= 500 ? "internal_error" : "bad_request";
    for (size_t i = 0; i < sizeof CIVETWEB_ERRORS / sizeof CIVETWEB_ERRORS[0]; i++)
        if (CIVETWEB_ERRORS[i].status == status)
            code = CIVETWEB_ERRORS[i].code;
    const char *headers[] = {"Connection", "close", NULL};
    struct apierr e;
    apierr_set(&e, status, status >= 500 ? "api_error" : APIERR_INVALID_REQUEST, code, NULL, "%s",
               msg && *msg ? msg : "the request could not be handled");
    http_send_error(&r, &e, headers);
    return 0;
}
