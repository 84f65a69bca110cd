/* idem.h - the idempotency layer: wraps a POST operation so that every retry
 * with the same Idempotency-Key gets the first answer (DESIGN.md section 3)
 *
 * An operation knows nothing of keys: it parses, says what identifies the
 * request, and runs. Register another POST route through idem_handle() and it
 * is idempotent too.
 */
#ifndef MOCKERY_IDEM_H
#define MOCKERY_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"

struct cJSON;
struct log_line;
#include "http.h"
#include "idemkey.h"
#include "replay_cache.h"
#include "../store/store.h"

/* What an operation answered. */
struct idem_result {
    int status;
    char *body; /* malloc'd JSON */
    size_t body_len;
    char *location;                /* malloc'd, or NULL */
    int retryable;                 /* a failure before any effect: release, do not cache */
    struct store_payment *payment; /* the row stored with the completion, or NULL */
};

void idem_result_clear(struct idem_result *r);

struct idem_op {
    const char *route; /* part of the fingerprint, e.g. "/api/v1/payments" */
    size_t max_body;
    /* Validates a body: 0 and *req, or -1 with err (nothing claimed yet). */
    int (*parse)(const char *body, size_t len, void **req, struct apierr *err);
    /* The bytes that identify the request (malloc'd), NULL on failure. */
    char *(*canonical)(const void *req, size_t *len);
    /* The customer the request is for, for the logs. */
    const char *(*customer)(const void *req);
    /* Adds what identifies the request to a log line (amount, currency). */
    void (*log_fields)(const void *req, struct log_line *line);
    /* Runs the operation; key is NULL for a request without one. No store
     * calls happen here: the layer stores the result. Returns 0, or -1 with
     * err on an internal failure (answered 500, the claim released). */
    int (*run)(struct app *app, const void *req, const char *key, struct idem_result *out,
               struct apierr *err);
    void (*free_req)(void *req);
};

/* Handles one POST through op: key, content type, body, validation, claim,
 * then run + complete, or replay / 409 / 422. */
void idem_handle(struct request *r, const struct idem_op *op);

#endif
