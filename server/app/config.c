/* config.c - flags and environment variables */
#define _POSIX_C_SOURCE 200809L
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "webhook_delivery.h"

enum opt_type { OPT_INT, OPT_STRING, OPT_BOOL, OPT_STORE, OPT_LEVEL };

struct opt {
    const char *flag;
    const char *env;
    enum opt_type type;
    size_t offset;
    size_t size; /* for OPT_STRING: the buffer's size */
    long min, max;
};

#define INT_OPT(f, e, field, lo, hi)                                                               \
    {                                                                                              \
        f, e, OPT_INT, offsetof(struct config, field), 0, lo, hi                                   \
    }

static const struct opt OPTS[] = {
    INT_OPT("port", "PORT", port, 0, 65535),
    {"database-url", "DATABASE_URL", OPT_STRING, offsetof(struct config, database_url),
     sizeof((struct config *)0)->database_url, 0, 0},
    {"store", "MOCKERY_STORE", OPT_STORE, offsetof(struct config, store), 0, 0, 0},
    INT_OPT("threads", "MOCKERY_THREADS", threads, 2, 4096),
    INT_OPT("pool-size", "MOCKERY_POOL_SIZE", pool_size, 1, 512),
    INT_OPT("idempotency-ttl", "MOCKERY_IDEMPOTENCY_TTL", idempotency_ttl_s, 1, 31 * 86400),
    INT_OPT("lease", "MOCKERY_LEASE", lease_s, 1, 86400),
    INT_OPT("processing-delay-ms", "MOCKERY_PROCESSING_DELAY_MS", processing_delay_ms, 0, 600000),
    {"require-key", "MOCKERY_REQUIRE_KEY", OPT_BOOL, offsetof(struct config, require_key), 0, 0, 0},
    {"api-keys", "MOCKERY_API_KEYS", OPT_STRING, offsetof(struct config, api_keys),
     sizeof((struct config *)0)->api_keys, 0, 0},
    {"log-level", "MOCKERY_LOG_LEVEL", OPT_LEVEL, offsetof(struct config, log_level), 0, 0, 0},
    INT_OPT("db-wait", "MOCKERY_DB_WAIT", db_wait_s, 0, 3600),
    INT_OPT("reaper-interval-ms", "MOCKERY_REAPER_INTERVAL_MS", reaper_interval_ms, 10, 86400000),
    INT_OPT("reaper-batch", "MOCKERY_REAPER_BATCH", reaper_batch, 1, 100000),
    INT_OPT("event-retention", "MOCKERY_EVENT_RETENTION", event_retention_s, 1, 366 * 86400),
    {"webhook-allow-private", "MOCKERY_WEBHOOK_ALLOW_PRIVATE", OPT_BOOL,
     offsetof(struct config, webhook_allow_private), 0, 0, 0},
    INT_OPT("webhook-max-endpoints", "MOCKERY_WEBHOOK_MAX_ENDPOINTS", webhook_max_endpoints, 1,
            1000),
    INT_OPT("webhook-timeout-ms", "MOCKERY_WEBHOOK_TIMEOUT_MS", webhook_timeout_ms, 1, 600000),
    INT_OPT("webhook-max-attempts", "MOCKERY_WEBHOOK_MAX_ATTEMPTS", webhook_max_attempts, 1, 100),
    INT_OPT("webhook-backoff-ms", "MOCKERY_WEBHOOK_BACKOFF_MS", webhook_backoff_ms, 1, 21600000),
    INT_OPT("webhook-dispatchers", "MOCKERY_WEBHOOK_DISPATCHERS", webhook_dispatchers, 0, 64),
    INT_OPT("recovery-interval-ms", "MOCKERY_RECOVERY_INTERVAL_MS", recovery_interval_ms, 10,
            86400000),
    INT_OPT("recovery-batch", "MOCKERY_RECOVERY_BATCH", recovery_batch, 1, 10000),
    INT_OPT("replay-cache", "MOCKERY_REPLAY_CACHE", replay_cache, 0, 10000000),
    INT_OPT("max-client-connections", "MOCKERY_MAX_CLIENT_CONNECTIONS", max_client_connections, 0,
            100000),
    INT_OPT("rate-limit", "MOCKERY_RATE_LIMIT", rate_limit, 0, 100000000),
    INT_OPT("unauthenticated-rate-limit", "MOCKERY_UNAUTHENTICATED_RATE_LIMIT",
            unauthenticated_rate_limit, 0, 100000000),
    {"unnamed-statements", "MOCKERY_UNNAMED_STATEMENTS", OPT_BOOL,
     offsetof(struct config, unnamed_statements), 0, 0, 0},
    {"acquirer-url", "MOCKERY_ACQUIRER_URL", OPT_STRING, offsetof(struct config, acquirer_url),
     sizeof((struct config *)0)->acquirer_url, 0, 0},
    INT_OPT("acquirer-timeout-ms", "MOCKERY_ACQUIRER_TIMEOUT_MS", acquirer_timeout_ms, 1, 3600000),
};

#define NOPTS (sizeof OPTS / sizeof OPTS[0])

void config_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    c->port = 8080;
    c->store = STORE_KIND_POSTGRES;
    c->threads = 128;
    c->pool_size = 8;
    c->idempotency_ttl_s = 86400;
    c->lease_s = 30;
    c->processing_delay_ms = 0;
    c->require_key = 1;
    c->log_level = LOG_INFO;
    c->reaper_interval_ms = 60000;
    c->reaper_batch = 1000;
    c->event_retention_s = 30 * 86400;
    c->webhook_max_endpoints = 16;
    c->webhook_timeout_ms = 10000;
    c->webhook_max_attempts = 16;
    c->webhook_backoff_ms = 10000;
    c->webhook_dispatchers = 2;
    c->recovery_interval_ms = 1000;
    c->recovery_batch = 100;
    c->replay_cache = 10000;
    c->db_wait_s = 30;
    c->max_client_connections = 64;
    c->rate_limit = 100000;
    c->unauthenticated_rate_limit = 20;
    c->acquirer_timeout_ms = 5000;
}

const char *config_usage(void)
{
    return "usage: mockery-server [flags]\n"
           "  --port N                 listening port (8080; env PORT)\n"
           "  --database-url URL       PostgreSQL URL (env DATABASE_URL)\n"
           "  --store postgres|memory  where records live (postgres)\n"
           "  --threads N              HTTP worker threads (128)\n"
           "  --pool-size N            database connections (8)\n"
           "  --idempotency-ttl S      seconds a key is remembered (86400)\n"
           "  --lease S                seconds a claim is held before a retry may take "
           "over (30)\n"
           "  --processing-delay-ms N  simulated processor time (0)\n"
           "  --require-key BOOL       reject POSTs without Idempotency-Key (true)\n"
           "  --api-keys LIST|@FILE    tenant:key pairs, comma-separated\n"
           "  --log-level LEVEL        debug|info|warn|error (info)\n"
           "  --db-wait S              seconds start-up waits for PostgreSQL (30)\n"
           "  --reaper-interval-ms N   how often expired keys are deleted (60000)\n"
           "  --reaper-batch N         keys deleted per statement, ten a pass at most (1000)\n"
           "  --event-retention S      seconds an event is kept (2592000: 30 days)\n"
           "  --webhook-allow-private BOOL  webhook endpoints on loopback and private\n"
           "                           addresses too, for tests and local stacks (false)\n"
           "  --webhook-max-endpoints N  webhook endpoints a tenant may have (16)\n"
           "  --webhook-timeout-ms N   a webhook delivery attempt's bound (10000)\n"
           "  --webhook-max-attempts N  attempts before a delivery is failed, the first\n"
           "                           included (16)\n"
           "  --webhook-backoff-ms N   wait before a delivery's first retry, doubled for each\n"
           "                           further one (up to 6 h), with jitter (10000)\n"
           "  --webhook-dispatchers N  threads sending webhook deliveries, 0: none here (2)\n"
           "  --replay-cache N         completed answers kept in memory for retries (10000)\n"
           "  --max-client-connections N  open connections per client address, 0: no limit "
           "(64)\n"
           "  --rate-limit N           API requests a second per tenant, 0: no limit (100000)\n"
           "  --unauthenticated-rate-limit N  requests without a valid API key a second per\n"
           "                           client address, 0: no limit (20)\n"
           "  --unnamed-statements BOOL  no prepared statements: for pgbouncer in transaction\n"
           "                           pooling mode (false)\n"
           "  --acquirer-url URL       the acquirer that moves the money (docs/acquirer.md);\n"
           "                           unset: the in-process simulator\n"
           "  --acquirer-timeout-ms N  an ask's bound, below the lease; past it the outcome is\n"
           "                           unknown: 503 outcome_pending (5000)\n"
           "  --recovery-interval-ms N with --acquirer-url: how often records left processing\n"
           "                           past their lease are finished without their client (1000)\n"
           "  --recovery-batch N       records recovered a pass at most (100)\n"
           "Each flag also reads MOCKERY_<FLAG> (e.g. MOCKERY_POOL_SIZE); flags win.\n";
}

static int set_opt(struct config *c, const struct opt *o, const char *v, const char *src, char *err,
                   size_t errlen)
{
    char *field = (char *)c + o->offset;
    switch (o->type) {
    case OPT_INT: {
        char *end;
        errno = 0;
        long n = strtol(v, &end, 10);
        if (errno || end == v || *end || n < o->min || n > o->max) {
            snprintf(err, errlen,
                     "invalid value '%.64s' for %s: want a whole number from %ld to %ld", v, src,
                     o->min, o->max);
            return -1;
        }
        *(int *)field = (int)n;
        return 0;
    }
    case OPT_STRING:
        if (strlen(v) >= o->size) {
            snprintf(err, errlen, "invalid value for %s: longer than %zu bytes", src, o->size - 1);
            return -1;
        }
        memcpy(field, v, strlen(v) + 1);
        return 0;
    case OPT_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on"))
            *(int *)field = 1;
        else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off"))
            *(int *)field = 0;
        else {
            snprintf(err, errlen, "invalid value '%.64s' for %s: want true or false", v, src);
            return -1;
        }
        return 0;
    case OPT_STORE:
        if (!strcmp(v, "postgres"))
            *(enum store_kind *)field = STORE_KIND_POSTGRES;
        else if (!strcmp(v, "memory"))
            *(enum store_kind *)field = STORE_KIND_MEMORY;
        else {
            snprintf(err, errlen, "invalid value '%.64s' for %s: want postgres or memory", v, src);
            return -1;
        }
        return 0;
    case OPT_LEVEL:
        if (log_parse_level(v, (enum log_level *)field) != 0) {
            snprintf(err, errlen, "invalid value '%.64s' for %s: want debug, info, warn or error",
                     v, src);
            return -1;
        }
        return 0;
    }
    return -1;
}

enum config_status config_parse(struct config *c, int argc, char **argv, char *err, size_t errlen)
{
    for (size_t i = 0; i < NOPTS; i++) {
        const char *v = getenv(OPTS[i].env);
        if (v && set_opt(c, &OPTS[i], v, OPTS[i].env, err, errlen) != 0)
            return CONFIG_INVALID;
    }
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h"))
            return CONFIG_HELP;
        if (strncmp(arg, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%.64s' (see --help)", arg);
            return CONFIG_INVALID;
        }
        const char *name = arg + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = NULL;
        for (size_t k = 0; k < NOPTS; k++)
            if (strlen(OPTS[k].flag) == nlen && !strncmp(OPTS[k].flag, name, nlen))
                o = &OPTS[k];
        if (!o) {
            snprintf(err, errlen, "unknown flag '--%.*s' (see --help)",
                     (int)(nlen > 64 ? 64 : nlen), name);
            return CONFIG_INVALID;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "flag --%s needs a value", o->flag);
                return CONFIG_INVALID;
            }
            v = argv[++i];
        }
        char src[80];
        snprintf(src, sizeof src, "--%s", o->flag);
        if (set_opt(c, o, v, src, err, errlen) != 0)
            return CONFIG_INVALID;
    }
    /* An ask must end while its lease holds: past the lease another
     * request may take the record over and ask at the same time (the same
     * key downstream, so the acquirer answers 409 or replays, but the
     * first is then told nothing useful). */
    if (c->acquirer_url[0] && (int64_t)c->acquirer_timeout_ms >= (int64_t)c->lease_s * 1000) {
        snprintf(err, errlen, "--acquirer-timeout-ms (%d) must be below the lease (--lease %d s)",
                 c->acquirer_timeout_ms, c->lease_s);
        return CONFIG_INVALID;
    }
    /* A record waiting for its retry after an unknown outcome keeps its key
     * downstream until it is finished; its answer must then outlive its
     * lease. And a request without a key has no record to ask again from. */
    if (c->acquirer_url[0] && c->idempotency_ttl_s <= c->lease_s) {
        snprintf(err, errlen,
                 "--idempotency-ttl (%d s) must be above the lease (--lease %d s)"
                 " with --acquirer-url",
                 c->idempotency_ttl_s, c->lease_s);
        return CONFIG_INVALID;
    }
    if (c->acquirer_url[0] && !c->require_key) {
        snprintf(err, errlen,
                 "--require-key false cannot be used with --acquirer-url: a payment "
                 "without a key could not be asked again under the same key downstream");
        return CONFIG_INVALID;
    }
    /* Reaping an event takes its deliveries along: one still being retried
     * would vanish without being failed. */
    struct webhook_options wo = {.timeout_ms = c->webhook_timeout_ms,
                                 .max_attempts = c->webhook_max_attempts,
                                 .backoff_ms = c->webhook_backoff_ms,
                                 .statement_wait_ms = POOL_ACQUIRE_TIMEOUT_MS};
    int64_t span_ms = webhook_retry_span_ms(&wo);
    if ((int64_t)c->event_retention_s * 1000 <= span_ms) {
        snprintf(err, errlen,
                 "--event-retention (%d s) must outlast a delivery's retries: at least %lld s "
                 "with --webhook-max-attempts %d, --webhook-backoff-ms %d and "
                 "--webhook-timeout-ms %d",
                 c->event_retention_s, (long long)(span_ms / 1000 + 1), c->webhook_max_attempts,
                 c->webhook_backoff_ms, c->webhook_timeout_ms);
        return CONFIG_INVALID;
    }
    /* With an acquirer the in-process simulator, and its delay, never run:
     * a flag that changed nothing would mislead. */
    if (c->acquirer_url[0] && c->processing_delay_ms > 0) {
        snprintf(err, errlen,
                 "--processing-delay-ms simulates the in-process processor and cannot be used "
                 "with --acquirer-url: the acquirer's own time counts then (its slow customers, "
                 "cust-slow..., take 1.5 s more)");
        return CONFIG_INVALID;
    }
    if (c->acquirer_url[0] && strncmp(c->acquirer_url, "http://", 7) != 0 &&
        strncmp(c->acquirer_url, "https://", 8) != 0) {
        snprintf(err, errlen, "--acquirer-url must start with http:// or https://");
        return CONFIG_INVALID;
    }
    return CONFIG_OK;
}
