/* metrics.h - counters and histograms for GET /metrics (Prometheus text)
 *
 * Lock-free: every update is one relaxed atomic add, safe from any worker.
 */
#ifndef MOCKERY_METRICS_H
#define MOCKERY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "effect.h"
#include "outcome.h"

struct store;

enum metrics_route {
    METRICS_ROUTE_PAYMENTS = 0,      /* /api/v1/payments */
    METRICS_ROUTE_PAYMENT,           /* /api/v1/payments/{transaction_id} */
    METRICS_ROUTE_REFUNDS,           /* /api/v1/payments/{transaction_id}/refunds */
    METRICS_ROUTE_REFUND,            /* /api/v1/refunds/{refund_id} */
    METRICS_ROUTE_EVENTS,            /* /api/v1/events */
    METRICS_ROUTE_EVENT,             /* /api/v1/events/{event_id} */
    METRICS_ROUTE_WEBHOOK_ENDPOINTS, /* /api/v1/webhook_endpoints */
    METRICS_ROUTE_WEBHOOK_ENDPOINT,  /* /api/v1/webhook_endpoints/{endpoint_id} */
    METRICS_ROUTE_HEALTH,            /* /health */
    METRICS_ROUTE_METRICS,           /* /metrics */
    METRICS_ROUTE_OTHER,             /* anything else (404s) */
    METRICS_ROUTE_COUNT
};

enum metrics_method { METHOD_GET = 0, METHOD_POST, METHOD_DELETE, METHOD_OTHER, METHOD_COUNT };

struct metrics;

/* Zeroed metrics; NULL on allocation failure. */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/* What a finished request was, beyond its route, method and status. */
struct metrics_answer {
    enum outcome outcome;   /* or OUTCOME_NONE */
    enum effect effect;     /* or EFFECT_NONE */
    int replay_cached;      /* a replay answered from the replay cache */
    const char *error_code; /* the error code answered, or NULL */
};

/* One finished request. */
void metrics_request(struct metrics *m, enum metrics_route route, const char *method, int status,
                     double seconds, const struct metrics_answer *a);

/* Expired records the reaper deleted. */
void metrics_reaped(struct metrics *m, int n);

/* Webhook delivery attempts by what came of them, from one dispatcher
 * pass, and the backlog as the store counted it last (pending deliveries,
 * the oldest one's age in seconds; 0 when none). */
void metrics_webhooks(struct metrics *m, int delivered, int retried, int failed);
void metrics_webhook_backlog(struct metrics *m, long long pending, double oldest_s);

/* Records recovery finished or tried, by result (metrics.c's RECOVERY
 * names): completed, pending, released, unreadable, lost. */
enum metrics_recovery {
    METRICS_RECOVERY_COMPLETED = 0,
    METRICS_RECOVERY_PENDING,
    METRICS_RECOVERY_RELEASED,
    METRICS_RECOVERY_UNREADABLE,
    METRICS_RECOVERY_LOST,
    METRICS_RECOVERY_COUNT
};
void metrics_recovered(struct metrics *m, enum metrics_recovery result, int n);

/* The records waiting for recovery as its last pass saw them: how many,
 * and the oldest's age in seconds (0 when none). */
void metrics_recovery_waiting(struct metrics *m, long long waiting, double oldest_s);

/* A request refused by the tenant's rate limit. */
void metrics_rate_limited(struct metrics *m);

/* A connection refused: its address had too many open. */
void metrics_connection_refused(struct metrics *m);

/* The connection table's totals (conntable.h), set before each render:
 * connections shed while few workers were free, and ended because their
 * answers were not taken. */
void metrics_connections_shed(struct metrics *m, unsigned long long shed,
                              unsigned long long drained);

struct acquirer;

/* The Prometheus text exposition, malloc'd; NULL on allocation failure.
 * store (may be NULL) supplies the pool gauges, acquirer (may be NULL: the
 * in-process simulator) its asks; log_dropped is the logger's count of
 * dropped lines; connections the HTTP connections open. */
char *metrics_render(struct metrics *m, struct store *store, const struct acquirer *acquirer,
                     unsigned long long log_dropped, int connections, size_t *len);

#endif
