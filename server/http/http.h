/* http.h - one HTTP exchange on civetweb: the request's context, body
 * reading with a bound, and JSON responses
 *
 * Reentrant: everything lives in the struct request of the worker thread.
 */
#ifndef MOCKERY_HTTP_H
#define MOCKERY_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "store.h"

struct mg_connection;
struct mg_request_info;
struct cJSON;
struct edge;
struct service;
struct conn_slot;

#include "idemkey.h"
#include "effect.h"
#include "outcome.h"

#define HTTP_KEY_MAX IDEMKEY_MAX

struct request {
    struct mg_connection *conn;
    const struct mg_request_info *ri;
    struct edge *edge;      /* the edge's guards and counters (edge.h) */
    struct service *svc;    /* what the routes see (service.h) */
    struct conn_slot *slot; /* the connection's in the table (conntable.h), or NULL */
    const char *tenant;
    /* What the access log reports. */
    int status;
    enum outcome outcome;   /* what the idempotency layer did, or OUTCOME_NONE */
    enum effect effect;     /* what the request's rows were, once written */
    int route;              /* enum metrics_route */
    int replay_cached;      /* a replay answered from the replay cache */
    const char *error_code; /* the code of an error sent (a static string), or NULL */
    int close;              /* the connection ends with this answer */
    char key[HTTP_KEY_MAX + 1];
    char customer[65];
};

/* The senders below answer the request, and return nothing: an answer sent
 * is never a signal to carry on (paging once returned 0 after its 400, and
 * the route sent a page as well - two answers to one request, so every
 * later answer on the keep-alive connection went to the wrong request).
 * Each request gets one answer: a second is not written, it is logged as an
 * error and the connection is closed after the first.
 *
 * Sends a response with a JSON body. headers: name, value, ..., NULL (may be
 * NULL). A client that is gone is not an error of the caller's. */
void http_send(struct request *r, int status, const char *body, size_t len,
               const char *const *headers);

/* Ends the connection after this request's answer (Connection: close). */
void http_close_after(struct request *r);

/* The same with another Content-Type. */
void http_send_typed(struct request *r, int status, const char *content_type, const char *body,
                     size_t len, const char *const *headers);

/* A 500 internal_error with the error table's body, built without
 * allocating: for when an answer could not be built. */
void http_send_internal(struct request *r);

/* Serializes obj (not freed) and sends it; a 500 if it cannot be serialized. */
void http_send_json(struct request *r, int status, const struct cJSON *obj);

/* Sends the error shape of docs/api.md. */
void http_send_error(struct request *r, const struct apierr *e, const char *const *headers);

/* Shorthand for apierr_of() + http_send_error(). */
void http_fail(struct request *r, enum apierr_id id, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Logs a failed store call once (op names it, err is the store's message). */
void http_log_store_error(struct request *r, const char *op, enum store_status st, const char *err);

/* The one place a store failure becomes an HTTP answer: logs it, then sends
 * 503 store_unavailable (Retry-After: 1) or 500 internal_error. */
void http_fail_store(struct request *r, const char *op, enum store_status st, const char *err);

/* The answer to a GET of one resource, after its store call op answered st
 * (and err): not_found (a 404 row, with its message) when st is
 * STORE_NOT_FOUND, the store's failure when it failed, else 200 with obj (a
 * 500 when obj is NULL: it could not be built). Deletes obj. */
void http_send_found(struct request *r, const char *op, enum store_status st, const char *err,
                     enum apierr_id not_found, struct cJSON *obj);

/* The request line and headers arrive within HTTP_HEADER_TIMEOUT_MS (a
 * civetweb option); the whole body within HTTP_BODY_DEADLINE_MS of the
 * start of its reading, enforced by the watchdog (watchdog.h): a request
 * ends within 5 + 10 s (and a 50 ms tick), however its bytes
 * trickle in. */
#define HTTP_HEADER_TIMEOUT_MS 5000
#define HTTP_HEADER_TIMEOUT_MS_TEXT "5000"
#define HTTP_BODY_DEADLINE_MS 10000

/* The request's method ("POST"), as civetweb parsed it. */
const char *http_method(const struct request *r);

/* Reads what an idempotent POST carries, in the documented order: the
 * Idempotency-Key header (400 if sent twice or malformed, or missing when
 * require_key; the key goes to r->key), the content type (415), then the
 * body, at most max_body bytes (413, 408, 400). On a refusal it answers the
 * request and returns -1; else 0 with *key_status (IDEMKEY_OK or, without
 * require_key, IDEMKEY_MISSING) and the malloc'd body in *body, *len. */
int http_read_idempotent_post(struct request *r, size_t max_body, int require_key,
                              enum idemkey_status *key_status, char **body, size_t *len);

/* Reads a JSON body, as the above does after the key: the content type
 * (415), then at most max_body bytes (413, 408, 400). -1 once answered;
 * else 0 with the malloc'd body in *body, *len. */
int http_read_json_body(struct request *r, size_t max_body, char **body, size_t *len);

/* What RFC 9112 says a server must refuse and civetweb 1.15 lets through,
 * each a way to smuggle a request past a proxy that frames it otherwise:
 * several or malformed Content-Length, Content-Length with
 * Transfer-Encoding, a transfer coding other than chunked, whitespace
 * between a field name and its colon, an obsolete line folding, more header
 * fields than civetweb keeps (the rest it would ignore), and an HTTP/1.1
 * request without exactly one Host. Returns 0, or the status to answer
 * (400 or 431, then close) with *why set to a static message. */
int http_check_framing(const struct mg_request_info *ri, const char **why);

/* How many times the request carries header name (case-insensitive). */
int http_header_count(const struct mg_request_info *ri, const char *name);

#endif
