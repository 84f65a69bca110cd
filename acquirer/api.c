/* api.c - mockery-acquirer's routes and faults on civetweb (api.h) */
#define _POSIX_C_SOURCE 200809L
#include "api.h"

#include <arpa/inet.h>
#include <civetweb.h>
#include <cjson/cJSON.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <unistd.h>

#include "apierr.h"
#include "clock.h"
#include "idem.h"
#include "idemkey.h"
#include "ids.h"
#include "ledger.h"

/* ---- answers ------------------------------------------------------------- */

/* civetweb's text for 422 is misspelt ("Unproccessable"); RFC 9110's. */
static const char *reason(struct mg_connection *c, int status)
{
    return status == 422 ? "Unprocessable Content" : mg_get_response_code_text(c, status);
}

static void send_body(struct mg_connection *c, int status, const char *body, size_t len,
                      const char *extra)
{
    mg_printf(c,
              "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
              "Cache-Control: no-store\r\n%s\r\n",
              status, reason(c, status), len, extra ? extra : "");
    mg_write(c, body, len);
}

static void send_error(struct mg_connection *c, const struct apierr *e)
{
    char *body = apierr_json(e);
    const char *fallback = apierr_default_json(APIERR_INTERNAL_ERROR);
    send_body(c, body ? e->status : 500, body ? body : fallback, strlen(body ? body : fallback),
              e->status == 503 ? "Retry-After: 1\r\n" : NULL);
    free(body);
}

static void fail(struct mg_connection *c, int status, const char *code, const char *message)
{
    struct apierr e;
    ledger_error(&e, status, code, message);
    send_error(c, &e);
}

static void send_json(struct mg_connection *c, int status, cJSON *obj)
{
    char *body = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!body) {
        fail(c, 500, "internal_error", "out of memory");
        return;
    }
    send_body(c, status, body, strlen(body), NULL);
    free(body);
}

static void fail_store(struct mg_connection *c, enum store_status st, const char *err)
{
    struct apierr e;
    fprintf(stderr, "mockery-acquirer: store: %s: %s\n", store_status_name(st), err);
    apierr_store(&e, st == STORE_UNAVAILABLE, 0);
    send_error(c, &e);
}

/* Ends the connection with no answer at all: its socket - found by its
 * addresses, through the public socket calls only - is shut, so the
 * client reads an end of stream where the status line should be. Returns
 * 0, or -1 when no socket matched (the caller answers otherwise). */
static int close_without_answer(struct mg_connection *c)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    struct rlimit rl;
    int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? (int)rl.rlim_cur : 65536;
    for (int fd = 3; fd < max; fd++) {
        struct sockaddr_storage peer;
        socklen_t n = sizeof peer;
        char addr[INET6_ADDRSTRLEN] = "";
        int port = 0;
        if (getpeername(fd, (struct sockaddr *)&peer, &n) != 0)
            continue;
        if (peer.ss_family == AF_INET) {
            const struct sockaddr_in *a = (const struct sockaddr_in *)&peer;
            inet_ntop(AF_INET, &a->sin_addr, addr, sizeof addr);
            port = ntohs(a->sin_port);
        } else if (peer.ss_family == AF_INET6) {
            const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&peer;
            inet_ntop(AF_INET6, &a->sin6_addr, addr, sizeof addr);
            port = ntohs(a->sin6_port);
        }
        if (port == ri->remote_port && strcmp(addr, ri->remote_addr) == 0) {
            shutdown(fd, SHUT_RDWR);
            return 0;
        }
    }
    return -1;
}

static void log_fault(const struct api *api, const char *what, const char *key)
{
    if (!api->quiet)
        fprintf(stderr, "mockery-acquirer: fault %s on key %s\n", what, key);
}

/* ---- POST ------------------------------------------------------------------ */

/* The request's body, at most LEDGER_MAX_BODY bytes; NULL when it answered. */
static char *read_body(struct mg_connection *c, size_t *len)
{
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *ct = mg_get_header(c, "Content-Type");
    if (!ct || strncasecmp(ct, "application/json", 16) != 0 ||
        (ct[16] && ct[16] != ';' && ct[16] != ' ')) {
        fail(c, 415, "unsupported_media_type",
             "the body must be sent as Content-Type: application/json");
        return NULL;
    }
    if (ri->content_length > LEDGER_MAX_BODY) {
        fail(c, 413, "body_too_large", "the body is too large");
        return NULL;
    }
    char *buf = malloc(LEDGER_MAX_BODY + 1);
    size_t used = 0;
    int n;
    while (buf && used <= LEDGER_MAX_BODY &&
           (n = mg_read(c, buf + used, LEDGER_MAX_BODY + 1 - used)) > 0)
        used += (size_t)n;
    if (!buf || used > LEDGER_MAX_BODY) {
        free(buf);
        fail(c, buf ? 413 : 500, buf ? "body_too_large" : "internal_error",
             buf ? "the body is too large" : "out of memory");
        return NULL;
    }
    buf[used] = '\0';
    *len = used;
    return buf;
}

/* The parsed request of each operation, and its customer (for faults). */
struct post_kind {
    const struct idem_op *op;
    size_t req_size;
    int (*parse)(const char *body, size_t len, void *out, struct apierr *err);
    char *(*canonical)(const void *req, size_t *len);
    /* The customer whose prefix selects faults: the charge's, or the
     * refunded charge's (read from the ledger); NULL when unknown. */
    int (*customer)(struct api *api, const void *req, char *out, size_t len);
};

static int charge_parse(const char *body, size_t len, void *out, struct apierr *err)
{
    return ledger_parse_charge(body, len, out, err);
}

static char *charge_canonical(const void *req, size_t *len)
{
    return ledger_charge_canonical(req, len);
}

static int charge_customer(struct api *api, const void *req, char *out, size_t len)
{
    (void)api;
    snprintf(out, len, "%s", ((const struct charge_request *)req)->customer_id);
    return 1;
}

static int refund_parse(const char *body, size_t len, void *out, struct apierr *err)
{
    return ledger_parse_refund(body, len, out, err);
}

static char *refund_canonical(const void *req, size_t *len)
{
    return ledger_refund_canonical(req, len);
}

static int refund_customer(struct api *api, const void *req, char *out, size_t len)
{
    struct store_charge ch = {0};
    char err[256];
    if (!faults_by_prefix(&api->faults) ||
        store_get_charge(api->store, ((const struct refund_request *)req)->charge_id, &ch, err,
                         sizeof err) != STORE_OK)
        return 0;
    snprintf(out, len, "%s", ch.customer_id);
    store_charge_clear(&ch);
    return 1;
}

static const struct post_kind CHARGE = {&LEDGER_CHARGE_OP, sizeof(struct charge_request),
                                        charge_parse, charge_canonical, charge_customer};
static const struct post_kind REFUND = {&LEDGER_REFUND_OP, sizeof(struct refund_request),
                                        refund_parse, refund_canonical, refund_customer};

static void serve_post(struct mg_connection *c, struct api *api, const struct post_kind *k)
{
    char key[IDEMKEY_MAX + 1];
    const char *hk = mg_get_header(c, "Idempotency-Key");
    if (!hk) {
        fail(c, 400, "idempotency_key_missing", "the Idempotency-Key header is required");
        return;
    }
    if (idemkey_parse(hk, key) != IDEMKEY_OK) {
        fail(c, 400, "idempotency_key_invalid", "the Idempotency-Key header is not valid");
        return;
    }
    size_t len = 0, clen = 0;
    char *body = read_body(c, &len);
    if (!body)
        return;
    char *canon = NULL;
    void *req = calloc(1, k->req_size);
    struct apierr e;
    struct idem_answer ans = {0};
    if (!req) {
        fail(c, 500, "internal_error", "out of memory");
        goto out;
    }
    if (k->parse(body, len, req, &e) != 0) {
        send_error(c, &e);
        goto out;
    }
    char customer[LEDGER_TEXT_MAX + 1] = "";
    struct fault_pick fp;
    faults_pick(&api->faults, k->customer(api, req, customer, sizeof customer) ? customer : NULL,
                &fp);
    if (fp.on[FAULT_LATENCY]) {
        log_fault(api, "latency", key);
        clock_sleep_ms(fp.latency_ms);
    }
    if (fp.on[FAULT_503]) {
        log_fault(api, "503", key);
        fail(c, 503, "acquirer_unavailable", "the acquirer is unavailable; nothing was recorded");
        goto out;
    }
    canon = k->canonical(req, &clen);
    if (!canon) {
        fail(c, 500, "internal_error", "out of memory");
        goto out;
    }
    struct ledger ledger = {api->store};
    struct idem layer = {api->store, NULL, api->lease_ms, api->ttl_ms};
    struct idem_request rq = {.tenant = API_CLIENT,
                              .key = key,
                              .method = "POST",
                              .canonical = canon,
                              .canonical_len = clen,
                              .req = req,
                              .ctx = &ledger};
    idem_execute(&layer, k->op, &rq, &ans);
    for (int i = 0; i < ans.nfailures; i++)
        fprintf(stderr, "mockery-acquirer: store %s: %s: %s\n", ans.failures[i].op,
                store_status_name(ans.failures[i].status), ans.failures[i].err);
    /* Only the request that recorded the outcome is hurt: a replay tells
     * the recorded outcome, which is how the client learns what happened. */
    int recorded = (ans.outcome == OUTCOME_NEW || ans.outcome == OUTCOME_TAKEOVER) &&
                   (ans.status == 201 || ans.status == 402);
    if (recorded && fp.on[FAULT_HOLD]) {
        log_fault(api, "hold", key);
        faults_hold(fp.hold_ms);
    }
    if (recorded && fp.on[FAULT_CLOSE]) {
        log_fault(api, "close", key);
        if (close_without_answer(c) == 0)
            goto out;
        /* no socket found: never a silent hold - an answer that is no
         * outcome, a 500, like the 500 fault */
        fprintf(stderr, "mockery-acquirer: fault close on key %s: no socket found, a 500 instead\n",
                key);
        fail(c, 500, "internal_error", "the acquirer failed after recording the outcome");
        goto out;
    }
    if (recorded && fp.on[FAULT_500]) {
        log_fault(api, "500", key);
        fail(c, 500, "internal_error", "the acquirer failed after recording the outcome");
        goto out;
    }
    if (!ans.body) {
        fail(c, 500, "internal_error", "out of memory");
        goto out;
    }
    char extra[64] = "";
    if (ans.replayed)
        snprintf(extra, sizeof extra, "Idempotent-Replayed: true\r\n");
    else if (ans.retry_after > 0)
        snprintf(extra, sizeof extra, "Retry-After: %d\r\n", ans.retry_after);
    send_body(c, ans.status, ans.body, ans.body_len, extra); /* a replayed 201 is a 200 */
out:
    idem_answer_clear(&ans);
    free(canon);
    free(req);
    free(body);
}

/* ---- GET ----------------------------------------------------------------- */

static void get_charge(struct mg_connection *c, struct api *api, const char *id)
{
    struct store_charge ch = {0};
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (ids_valid("ch_", id))
        st = store_get_charge(api->store, id, &ch, err, sizeof err);
    if (st == STORE_NOT_FOUND)
        fail(c, 404, "charge_not_found", "no charge with that id");
    else if (st != STORE_OK)
        fail_store(c, st, err);
    else
        send_json(c, 200, ledger_charge_to_cjson(&ch));
    store_charge_clear(&ch);
}

/* A list's JSON: {"<name>": [items]}. */
static cJSON *list_of(const char *name, const void *items, size_t n, size_t size,
                      cJSON *(*to)(const void *))
{
    cJSON *root = cJSON_CreateObject();
    cJSON *arr = root ? cJSON_AddArrayToObject(root, name) : NULL;
    for (size_t i = 0; arr && i < n; i++) {
        cJSON *o = to((const char *)items + i * size);
        if (!o || !cJSON_AddItemToArray(arr, o)) {
            cJSON_Delete(o);
            arr = NULL;
        }
    }
    if (!arr) {
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static cJSON *charge_item(const void *p)
{
    return ledger_charge_to_cjson(p);
}

static cJSON *refund_item(const void *p)
{
    return ledger_refund_to_cjson(p);
}

/* The query parameter name: 1-64 of [A-Za-z0-9_-]; else it answered 400. */
static int query_id(struct mg_connection *c, const char *name, char *out, size_t len)
{
    const char *qs = mg_get_request_info(c)->query_string;
    int n = qs ? mg_get_var(qs, strlen(qs), name, out, len) : -1;
    if (n < 1 || ids_url_safe_len(out) != (size_t)n) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s is required: 1-64 characters of A-Z, a-z, 0-9, _ and -",
                 name);
        fail(c, 400, "invalid_parameter", msg);
        return -1;
    }
    return 0;
}

static void list_charges(struct mg_connection *c, struct api *api)
{
    char ref[LEDGER_TEXT_MAX + 1], err[256] = "";
    struct store_charge_list l = {0};
    if (query_id(c, "reference", ref, sizeof ref) != 0)
        return;
    enum store_status st = store_list_charges(api->store, ref, &l, err, sizeof err);
    if (st != STORE_OK)
        fail_store(c, st, err);
    else
        send_json(c, 200, list_of("charges", l.items, l.count, sizeof *l.items, charge_item));
    store_charge_list_clear(&l);
}

static void list_refunds(struct mg_connection *c, struct api *api)
{
    char id[LEDGER_TEXT_MAX + 1], err[256] = "";
    struct store_charge_refund_list l = {0};
    if (query_id(c, "charge_id", id, sizeof id) != 0)
        return;
    enum store_status st = store_list_charge_refunds(api->store, id, &l, err, sizeof err);
    if (st != STORE_OK)
        fail_store(c, st, err);
    else
        send_json(c, 200, list_of("refunds", l.items, l.count, sizeof *l.items, refund_item));
    store_charge_refund_list_clear(&l);
}

static void health(struct mg_connection *c, struct api *api)
{
    char err[256] = "";
    enum store_status st = store_ping(api->store, err, sizeof err);
    if (st != STORE_OK) {
        fail_store(c, st, err);
        return;
    }
    static const char ok[] = "{\"status\":\"ok\"}";
    send_body(c, 200, ok, sizeof ok - 1, NULL);
}

/* ---- routing ------------------------------------------------------------- */

static int handle(struct mg_connection *c, void *arg)
{
    struct api *api = arg;
    const struct mg_request_info *ri = mg_get_request_info(c);
    const char *uri = ri->local_uri ? ri->local_uri : "";
    int post = strcmp(ri->request_method, "POST") == 0;
    int get = strcmp(ri->request_method, "GET") == 0;
    static const char charges[] = "/v1/charges/";

    if (strcmp(uri, "/v1/charges") == 0 && post)
        serve_post(c, api, &CHARGE);
    else if (strcmp(uri, "/v1/refunds") == 0 && post)
        serve_post(c, api, &REFUND);
    else if (strcmp(uri, "/v1/charges") == 0 && get)
        list_charges(c, api);
    else if (strcmp(uri, "/v1/refunds") == 0 && get)
        list_refunds(c, api);
    else if (strncmp(uri, charges, sizeof charges - 1) == 0 && get)
        get_charge(c, api, uri + sizeof charges - 1);
    else if (strcmp(uri, "/health") == 0 && get)
        health(c, api);
    else if (strcmp(uri, "/v1/charges") == 0 || strcmp(uri, "/v1/refunds") == 0 ||
             strncmp(uri, charges, sizeof charges - 1) == 0 || strcmp(uri, "/health") == 0)
        fail(c, 405, "method_not_allowed", "this method is not allowed here");
    else
        fail(c, 404, "route_not_found", "no such route");
    return 1;
}

static int on_log(const struct mg_connection *c, const char *message)
{
    (void)c;
    fprintf(stderr, "mockery-acquirer: civetweb: %s\n", message);
    return 1;
}

struct mg_context *api_start(struct api *api, const char *host, int port, int threads, char *err,
                             size_t errlen)
{
    char ports[96], nthreads[16];
    snprintf(ports, sizeof ports, "%s:%d", host, port);
    snprintf(nthreads, sizeof nthreads, "%d", threads);
    const char *options[] = {"listening_ports",
                             ports,
                             "num_threads",
                             nthreads,
                             "tcp_nodelay",
                             "1",
                             "enable_keep_alive",
                             "yes",
                             "keep_alive_timeout_ms",
                             "60000",
                             "request_timeout_ms",
                             "10000",
                             "linger_timeout_ms",
                             "0",
                             "listen_backlog",
                             "1024",
                             "connection_queue",
                             "1024",
                             NULL};
    struct mg_callbacks cb;
    memset(&cb, 0, sizeof cb);
    cb.log_message = on_log;
    struct mg_init_data init = {
        .callbacks = &cb, .user_data = api, .configuration_options = options};
    struct mg_error_data edata = {.text = err, .text_buffer_size = errlen};
    struct mg_context *ctx = mg_start2(&init, &edata);
    if (ctx)
        mg_set_request_handler(ctx, "/", handle, api);
    return ctx;
}

void api_stop(struct mg_context *ctx)
{
    if (ctx)
        mg_stop(ctx);
}
