/* api.h - mockery-acquirer's HTTP API on civetweb: the routes of the
 * acquirer's contract (docs/acquirer.md), and the faults acted out on them
 *
 *   POST /v1/charges          Idempotency-Key required; 201, 402, 422
 *   POST /v1/refunds          Idempotency-Key required; 201, 404, 422
 *   GET  /v1/charges/{id}     one charge
 *   GET  /v1/charges?reference=R   {"charges": [...]}, oldest first
 *   GET  /v1/refunds?charge_id=C   {"refunds": [...]}, oldest first
 *   GET  /health
 * A replay answers the recorded outcome with Idempotent-Replayed: true (200
 * for a recorded 201); the same key while its first request runs, 409; with
 * another body, 422 idempotency_key_reused.
 */
#ifndef MOCKERY_ACQUIRER_API_H
#define MOCKERY_ACQUIRER_API_H

#include <stdint.h>

#include "faults.h"

struct store;
struct mg_context;

/* The idempotency records' tenant: the acquirer knows one client, the
 * payment service, whose downstream keys are its own random ones. */
#define API_CLIENT "mockery"

struct api {
    struct store *store;
    struct faults faults;
    int64_t lease_ms, ttl_ms;
    int quiet; /* no line per fault acted out */
};

/* Starts civetweb on host:port with threads workers, serving api (borrowed
 * until api_stop). NULL with err on failure. */
struct mg_context *api_start(struct api *api, const char *host, int port, int threads, char *err,
                             size_t errlen);

void api_stop(struct mg_context *ctx);

#endif
