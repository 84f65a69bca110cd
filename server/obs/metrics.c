/* metrics.c - Prometheus text exposition of the server's counters */
#define _POSIX_C_SOURCE 200809L
#include "metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acquirer.h"
#include "store.h"

#define NBUCKETS 14
static const double BUCKETS[NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const char *const ROUTES[METRICS_ROUTE_COUNT] = {"/api/v1/payments",
                                                        "/api/v1/payments/{id}",
                                                        "/api/v1/payments/{id}/refunds",
                                                        "/api/v1/refunds/{id}",
                                                        "/api/v1/events",
                                                        "/api/v1/events/{id}",
                                                        "/api/v1/webhook_endpoints",
                                                        "/api/v1/webhook_endpoints/{id}",
                                                        "/health",
                                                        "/metrics",
                                                        "other"};
static const char *const METHODS[METHOD_COUNT] = {"GET", "POST", "DELETE", "other"};

#define STATUS_MIN 100
#define STATUS_SLOTS 500 /* 100..599 */

struct metrics {
    uint64_t requests[METRICS_ROUTE_COUNT][METHOD_COUNT][STATUS_SLOTS];
    uint64_t latency_buckets[METRICS_ROUTE_COUNT][NBUCKETS]; /* not cumulative: one bucket each */
    uint64_t latency_count[METRICS_ROUTE_COUNT];
    uint64_t latency_sum_us[METRICS_ROUTE_COUNT];
    uint64_t outcomes[OUTCOME_COUNT];
    uint64_t payments_completed;
    uint64_t payments_declined;
    uint64_t refunds;
    uint64_t reaped;
    uint64_t recovered[METRICS_RECOVERY_COUNT];
    int64_t recovery_waiting;
    uint64_t recovery_oldest_ms;
    uint64_t webhook_delivered, webhook_retried, webhook_failed;
    int64_t webhook_pending;
    uint64_t webhook_oldest_ms;
    uint64_t rate_limited;
    uint64_t connections_refused;
    uint64_t connections_shed; /* totals, as the connection table counts them */
    uint64_t connections_drained;
    uint64_t replay_cache_hits;
    uint64_t store_unavailable;
};

#define ADD(field, n) __atomic_add_fetch(&(field), (n), __ATOMIC_RELAXED)
#define LOAD(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

struct metrics *metrics_new(void)
{
    return calloc(1, sizeof(struct metrics));
}

void metrics_free(struct metrics *m)
{
    free(m);
}

void metrics_request(struct metrics *m, enum metrics_route route, const char *method, int status,
                     double seconds, const struct metrics_answer *a)
{
    enum outcome outcome = a->outcome;
    enum effect effect = a->effect;
    int mi = strcmp(method, "GET") == 0      ? METHOD_GET
             : strcmp(method, "POST") == 0   ? METHOD_POST
             : strcmp(method, "DELETE") == 0 ? METHOD_DELETE
                                             : METHOD_OTHER;
    if (status >= STATUS_MIN && status < STATUS_MIN + STATUS_SLOTS)
        ADD(m->requests[route][mi][status - STATUS_MIN], 1);
    int b = 0;
    while (b < NBUCKETS - 1 && seconds > BUCKETS[b])
        b++;
    if (seconds <= BUCKETS[NBUCKETS - 1])
        ADD(m->latency_buckets[route][b], 1);
    ADD(m->latency_count[route], 1);
    ADD(m->latency_sum_us[route], (uint64_t)(seconds * 1e6));
    if (outcome_name(outcome))
        ADD(m->outcomes[outcome], 1);
    if (effect == EFFECT_PAYMENT_COMPLETED)
        ADD(m->payments_completed, 1);
    else if (effect == EFFECT_PAYMENT_DECLINED)
        ADD(m->payments_declined, 1);
    else if (effect == EFFECT_REFUND)
        ADD(m->refunds, 1);
    if (a->replay_cached)
        ADD(m->replay_cache_hits, 1);
    if (status == 503 && a->error_code && strcmp(a->error_code, "store_unavailable") == 0)
        ADD(m->store_unavailable, 1);
}

static const char *const RECOVERY[METRICS_RECOVERY_COUNT] = {"completed", "pending", "released",
                                                             "unreadable", "lost"};

void metrics_recovered(struct metrics *m, enum metrics_recovery result, int n)
{
    if (n > 0)
        ADD(m->recovered[result], (uint64_t)n);
}

void metrics_recovery_waiting(struct metrics *m, long long waiting, double oldest_s)
{
    __atomic_store_n(&m->recovery_waiting, (int64_t)waiting, __ATOMIC_RELAXED);
    __atomic_store_n(&m->recovery_oldest_ms, (uint64_t)(oldest_s * 1000), __ATOMIC_RELAXED);
}

void metrics_webhooks(struct metrics *m, int delivered, int retried, int failed)
{
    ADD(m->webhook_delivered, (uint64_t)delivered);
    ADD(m->webhook_retried, (uint64_t)retried);
    ADD(m->webhook_failed, (uint64_t)failed);
}

void metrics_webhook_backlog(struct metrics *m, long long pending, double oldest_s)
{
    __atomic_store_n(&m->webhook_pending, (int64_t)pending, __ATOMIC_RELAXED);
    __atomic_store_n(&m->webhook_oldest_ms, (uint64_t)(oldest_s > 0 ? oldest_s * 1000 : 0),
                     __ATOMIC_RELAXED);
}

void metrics_reaped(struct metrics *m, int n)
{
    if (n > 0)
        ADD(m->reaped, (uint64_t)n);
}

void metrics_rate_limited(struct metrics *m)
{
    ADD(m->rate_limited, 1);
}

void metrics_connection_refused(struct metrics *m)
{
    ADD(m->connections_refused, 1);
}

void metrics_connections_shed(struct metrics *m, unsigned long long shed,
                              unsigned long long drained)
{
    __atomic_store_n(&m->connections_shed, (uint64_t)shed, __ATOMIC_RELAXED);
    __atomic_store_n(&m->connections_drained, (uint64_t)drained, __ATOMIC_RELAXED);
}

struct buf {
    char *p;
    size_t len, cap;
    int failed;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap + (size_t)n + 1) * 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* A counter without labels: its HELP, TYPE and value. */
static void put_counter(struct buf *b, const char *name, const char *help, unsigned long long v)
{
    put(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, v);
}

/* The acquirer's asks (acquirer.h), when the money moves there. */
static void put_acquirer(struct buf *b, const struct acquirer *a)
{
    struct acquirer_stats st;
    acquirer_stats(a, &st);
    put(b, "# HELP mockery_acquirer_calls_total Asks to the acquirer, by operation and what the "
           "answer meant for the money (unknown: 503 outcome_pending).\n"
           "# TYPE mockery_acquirer_calls_total counter\n");
    for (int op = 0; op < ACQUIRER_OPS; op++)
        for (int v = 0; v < ACQUIRER_VERDICTS; v++)
            put(b, "mockery_acquirer_calls_total{operation=\"%s\",verdict=\"%s\"} %llu\n",
                acquirer_op_name((enum acquirer_op)op),
                acquirer_verdict_name((enum acquirer_verdict)v), st.calls[op][v]);
    put(b, "# HELP mockery_acquirer_call_duration_seconds Time an ask to the acquirer took.\n"
           "# TYPE mockery_acquirer_call_duration_seconds histogram\n");
    unsigned long long cum = 0;
    for (int i = 0; i < ACQUIRER_BUCKETS; i++) {
        cum += st.buckets[i];
        put(b, "mockery_acquirer_call_duration_seconds_bucket{le=\"%g\"} %llu\n",
            ACQUIRER_BUCKET_S[i], cum);
    }
    /* the counters are read one by one while asks end: +Inf and count are
     * never below the last bucket */
    unsigned long long count = st.count > cum ? st.count : cum;
    put(b,
        "mockery_acquirer_call_duration_seconds_bucket{le=\"+Inf\"} %llu\n"
        "mockery_acquirer_call_duration_seconds_sum %.6f\n"
        "mockery_acquirer_call_duration_seconds_count %llu\n",
        count, (double)st.sum_us / 1e6, count);
    put_counter(b, "mockery_acquirer_connections_opened_total",
                "TCP connections opened to the acquirer (kept open and reused across asks).",
                st.connections);
}

char *metrics_render(struct metrics *m, struct store *store, const struct acquirer *acquirer,
                     unsigned long long log_dropped, int connections, size_t *len)
{
    struct buf b = {malloc(16384), 0, 16384, 0};
    if (!b.p)
        return NULL;

    put(&b, "# HELP mockery_http_requests_total HTTP requests answered, by route, method and "
            "status.\n# TYPE mockery_http_requests_total counter\n");
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++)
        for (int mi = 0; mi < METHOD_COUNT; mi++)
            for (int s = 0; s < STATUS_SLOTS; s++) {
                uint64_t n = LOAD(m->requests[r][mi][s]);
                if (n)
                    put(&b,
                        "mockery_http_requests_total{route=\"%s\",method=\"%s\",status=\"%d\"} "
                        "%llu\n",
                        ROUTES[r], METHODS[mi], s + STATUS_MIN, (unsigned long long)n);
            }

    put(&b, "# HELP mockery_http_request_duration_seconds Time to answer a request, by route.\n"
            "# TYPE mockery_http_request_duration_seconds histogram\n");
    for (int r = 0; r < METRICS_ROUTE_COUNT; r++) {
        uint64_t cum = 0;
        for (int i = 0; i < NBUCKETS; i++) {
            cum += LOAD(m->latency_buckets[r][i]);
            put(&b, "mockery_http_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"} %llu\n",
                ROUTES[r], BUCKETS[i], (unsigned long long)cum);
        }
        uint64_t count = LOAD(m->latency_count[r]);
        put(&b, "mockery_http_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"} %llu\n",
            ROUTES[r], (unsigned long long)count);
        put(&b, "mockery_http_request_duration_seconds_sum{route=\"%s\"} %.6f\n", ROUTES[r],
            (double)LOAD(m->latency_sum_us[r]) / 1e6);
        put(&b, "mockery_http_request_duration_seconds_count{route=\"%s\"} %llu\n", ROUTES[r],
            (unsigned long long)count);
    }

    put(&b, "# HELP mockery_idempotency_outcomes_total What the idempotency layer did with a "
            "POST.\n# TYPE mockery_idempotency_outcomes_total counter\n");
    for (int o = OUTCOME_NONE + 1; o < OUTCOME_COUNT; o++)
        put(&b, "mockery_idempotency_outcomes_total{outcome=\"%s\"} %llu\n",
            outcome_name((enum outcome)o), (unsigned long long)LOAD(m->outcomes[o]));

    put(&b,
        "# HELP mockery_payments_total Payments stored, by status.\n"
        "# TYPE mockery_payments_total counter\n"
        "mockery_payments_total{status=\"completed\"} %llu\n"
        "mockery_payments_total{status=\"declined\"} %llu\n",
        (unsigned long long)LOAD(m->payments_completed),
        (unsigned long long)LOAD(m->payments_declined));
    put_counter(&b, "mockery_refunds_total", "Refunds stored.", LOAD(m->refunds));
    put_counter(&b, "mockery_replay_cache_hits_total",
                "Replays answered from this server's replay cache (the rest of the replay "
                "outcomes read the store).",
                LOAD(m->replay_cache_hits));
    put_counter(&b, "mockery_store_unavailable_total",
                "Answers 503 store_unavailable: the database did not answer, nothing was "
                "recorded.",
                LOAD(m->store_unavailable));

    put(&b,
        "# HELP mockery_http_connections HTTP connections open, each holding a worker.\n"
        "# TYPE mockery_http_connections gauge\n"
        "mockery_http_connections %d\n",
        connections);
    struct store_pool_stats ps = {0};
    if (store)
        store_pool_stats(store, &ps);
    put(&b,
        "# HELP mockery_store_pool_connections Database connections in the pool.\n"
        "# TYPE mockery_store_pool_connections gauge\n"
        "mockery_store_pool_connections{state=\"in_use\"} %d\n"
        "mockery_store_pool_connections{state=\"idle\"} %d\n"
        "# HELP mockery_store_pool_waiting Requests waiting for a database connection,"
        " or for their claim's or completion's batch.\n"
        "# TYPE mockery_store_pool_waiting gauge\n"
        "mockery_store_pool_waiting %d\n",
        ps.in_use, ps.size - ps.in_use, ps.waiting);
    put(&b,
        "# HELP mockery_store_batches_total Statements that carried claims or completions"
        " (several requests' at once under load).\n"
        "# TYPE mockery_store_batches_total counter\n"
        "mockery_store_batches_total{kind=\"claim\"} %llu\n"
        "mockery_store_batches_total{kind=\"complete\"} %llu\n"
        "# HELP mockery_store_batched_total Claims or completions those statements carried.\n"
        "# TYPE mockery_store_batched_total counter\n"
        "mockery_store_batched_total{kind=\"claim\"} %llu\n"
        "mockery_store_batched_total{kind=\"complete\"} %llu\n",
        ps.claim_batches, ps.complete_batches, ps.claims_batched, ps.completes_batched);
    put_counter(&b, "mockery_store_batches_split_total",
                "Batches that failed as a whole (a deadlock, one bad row) and ran again one "
                "operation at a time.",
                ps.batches_split);
    put(&b,
        "# HELP mockery_webhook_handoffs_total Deliveries a payment's completion handed to this"
        " server's dispatchers in memory: taken (begun without a claim statement), or expired"
        " (not begun within 1 s: put back in the table, due now).\n"
        "# TYPE mockery_webhook_handoffs_total counter\n"
        "mockery_webhook_handoffs_total{result=\"taken\"} %llu\n"
        "mockery_webhook_handoffs_total{result=\"expired\"} %llu\n",
        ps.handoffs_taken, ps.handoffs_expired);

    put_counter(&b, "mockery_reaper_deleted_total", "Expired idempotency records deleted.",
                LOAD(m->reaped));
    put_counter(&b, "mockery_rate_limited_total",
                "Requests refused with 429 rate_limited (a tenant over --rate-limit).",
                LOAD(m->rate_limited));
    put_counter(&b, "mockery_connections_refused_total",
                "Connections answered 429 and closed: their client address already had "
                "--max-client-connections open.",
                LOAD(m->connections_refused));
    put_counter(&b, "mockery_connections_shed_total",
                "Connections shut while few workers were free: idle, or their worker waiting "
                "on the client for headers, a body or an answer to be taken.",
                LOAD(m->connections_shed));
    put_counter(&b, "mockery_connections_undrained_total",
                "Connections ended because their client had not taken their answers for 10 s.",
                LOAD(m->connections_drained));
    put_counter(&b, "mockery_log_lines_dropped_total",
                "Log lines dropped because the log sink was slower than the lines (its 1 MiB "
                "buffer was full).",
                log_dropped);

    put(&b,
        "# HELP mockery_webhook_deliveries_total Webhook delivery attempts this server made, "
        "by what came of them (retried: failed, due again; failed: given up).\n"
        "# TYPE mockery_webhook_deliveries_total counter\n"
        "mockery_webhook_deliveries_total{result=\"delivered\"} %llu\n"
        "mockery_webhook_deliveries_total{result=\"retried\"} %llu\n"
        "mockery_webhook_deliveries_total{result=\"failed\"} %llu\n"
        "# HELP mockery_webhook_pending Webhook deliveries not yet made (every server's), as "
        "this server's dispatcher last counted them.\n"
        "# TYPE mockery_webhook_pending gauge\n"
        "mockery_webhook_pending %lld\n"
        "# HELP mockery_webhook_oldest_pending_seconds Age of the oldest event with a "
        "delivery not yet made, as last counted; 0 when none.\n"
        "# TYPE mockery_webhook_oldest_pending_seconds gauge\n"
        "mockery_webhook_oldest_pending_seconds %.3f\n",
        (unsigned long long)LOAD(m->webhook_delivered),
        (unsigned long long)LOAD(m->webhook_retried), (unsigned long long)LOAD(m->webhook_failed),
        (long long)LOAD(m->webhook_pending), (double)LOAD(m->webhook_oldest_ms) / 1000.0);

    if (acquirer) {
        put_acquirer(&b, acquirer);
        put(&b, "# HELP mockery_recovery_records_total Records left processing past their lease "
                "that recovery took over, by what came of them.\n"
                "# TYPE mockery_recovery_records_total counter\n");
        for (int r = 0; r < METRICS_RECOVERY_COUNT; r++)
            put(&b, "mockery_recovery_records_total{result=\"%s\"} %llu\n", RECOVERY[r],
                (unsigned long long)LOAD(m->recovered[r]));
        put(&b,
            "# HELP mockery_recovery_waiting_records Records waiting for recovery (processing, "
            "past their lease), as the last pass saw them.\n"
            "# TYPE mockery_recovery_waiting_records gauge\n"
            "mockery_recovery_waiting_records %lld\n"
            "# HELP mockery_recovery_oldest_waiting_seconds Age of the oldest record waiting for "
            "recovery (since its first claim), as the last pass saw it; 0 when none.\n"
            "# TYPE mockery_recovery_oldest_waiting_seconds gauge\n"
            "mockery_recovery_oldest_waiting_seconds %.3f\n",
            (long long)LOAD(m->recovery_waiting), (double)LOAD(m->recovery_oldest_ms) / 1000.0);
    }

    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
