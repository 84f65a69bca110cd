/* post_route.h - an idempotent POST route over HTTP
 *
 * The one place a POST meets the idempotency layer: the request is read
 * (key, content type, body: http.c), parsed with the route's functions, run
 * through the layer (idem.h), and the layer's answer is sent and logged. A
 * route gives its parse / canonical functions and its operation; it holds no
 * idempotency logic.
 */
#ifndef MOCKERY_POST_ROUTE_H
#define MOCKERY_POST_ROUTE_H

#include <stddef.h>

#include "apierr.h"
#include "http.h"
#include "idem.h"

struct log_line;
struct service;

struct post_route {
    const struct idem_op *op;
    size_t max_body;
    /* Validates a body: 0 and *req (malloc'd), or -1 with err (nothing is
     * claimed). path_id: the id in the route's path, or NULL. */
    int (*parse)(const char *body, size_t len, const char *path_id, void **req, struct apierr *err);
    /* The bytes that identify the request (malloc'd), NULL on failure. */
    char *(*canonical)(const void *req, size_t *len);
    /* The customer the request is for, for the logs; may be NULL. */
    const char *(*customer)(const void *req);
    /* Adds what identifies the request to a log line (amount, currency). */
    void (*log_fields)(const void *req, struct log_line *line);
    void (*free_req)(void *req);
    /* The operation's context for a request of tenant, malloc'd (NULL when
     * out of memory): for recovery, which has no request in hand. */
    void *(*context)(const struct service *svc, const char *tenant);
};

/* Serves one POST through route; ctx is given to the operation. */
void post_route_serve(struct request *r, const struct post_route *route, const char *path_id,
                      void *ctx);

/* An operation's answer that is an error (an apierr row, message fmt: NULL
 * for the row's), with one more member name: id beside "error" when name is
 * not NULL; retryable as idem_result says. 0, or -1 with err when out of
 * memory. For the answers the payment and refund operations share: 503
 * outcome_pending with their id, 502 gateway_error released. */
int post_route_error_result(struct idem_result *out, enum apierr_id row, const char *name,
                            const char *id, int retryable, struct apierr *err, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

#endif
