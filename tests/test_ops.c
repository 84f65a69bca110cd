/* test_ops.c - what an operator sees: /metrics (parsed strictly, counters
 * that move), the reaper under a short TTL */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <ctype.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

static struct test_server srv;

/* A 1 s TTL and a pass every 100 ms for the reaper tests only; the others
 * keep keys a day and reap once a day, so that a slow run (under a
 * sanitizer) cannot see a key expire mid-request, and so that their reaper
 * does not delete the reaper test's key in the shared database first. */
static void start(enum store_kind kind, int ttl_s)
{
    struct config c;
    test_config(&c, kind);
    c.idempotency_ttl_s = ttl_s;
    c.reaper_interval_ms = ttl_s == 1 ? 100 : 86400000;
    test_server_start(&srv, &c);
}
static void start_mem(void)
{
    start(STORE_KIND_MEMORY, 86400);
}
static void start_pg(void)
{
    start(STORE_KIND_POSTGRES, 86400);
}
static void start_mem_short(void)
{
    start(STORE_KIND_MEMORY, 1);
}
static void start_pg_short(void)
{
    start(STORE_KIND_POSTGRES, 1);
}
static void stop(void)
{
    test_server_stop(&srv);
}

#define BOTH(name)                                                                                 \
    static void name(void);                                                                        \
    Test(ops_mem, name, .init = start_mem, .fini = stop, .timeout = 60)                            \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(ops_pg, name, .init = start_pg, .fini = stop, .timeout = 60)                              \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)

static char *scrape(void)
{
    return test_scrape(&srv);
}

static int valid_name(const char *s, size_t n)
{
    if (n == 0 || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
            return 0;
    return 1;
}

/* Checks the text exposition format line by line: comments are HELP/TYPE
 * with a known type, every sample has a valid name, well-formed quoted
 * labels and a number, every sample's family was declared by TYPE, and
 * histogram buckets are cumulative and end with +Inf equal to _count. */
static void check_exposition(const char *text)
{
    char family[128] = "", type[32] = "";
    double last_bucket = -1;
    cr_assert(strlen(text) > 0 && text[strlen(text) - 1] == '\n', "must end with a newline");
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = (size_t)(nl - line);
        char l[512];
        cr_assert_lt(len, sizeof l);
        memcpy(l, line, len);
        l[len] = '\0';
        line = nl + 1;
        if (l[0] == '#') {
            char what[8], name[128], rest[256] = "";
            cr_assert_geq(sscanf(l, "# %7s %127s %255[^\n]", what, name, rest), 3, "%s", l);
            cr_assert(valid_name(name, strlen(name)), "%s", l);
            if (strcmp(what, "TYPE") == 0) {
                cr_assert(!strcmp(rest, "counter") || !strcmp(rest, "gauge") ||
                              !strcmp(rest, "histogram"),
                          "%s", l);
                snprintf(family, sizeof family, "%s", name);
                snprintf(type, sizeof type, "%s", rest);
                last_bucket = -1;
            } else {
                cr_assert_str_eq(what, "HELP", "%s", l);
            }
            continue;
        }
        size_t nlen = strcspn(l, "{ ");
        cr_assert(valid_name(l, nlen), "bad name: %s", l);
        cr_assert(strncmp(l, family, strlen(family)) == 0, "%s outside its TYPE %s", l, family);
        const char *p = l + nlen;
        if (*p == '{') {
            p++;
            while (*p != '}') {
                size_t ln = strcspn(p, "=");
                cr_assert(valid_name(p, ln), "bad label in %s", l);
                p += ln;
                cr_assert_eq(p[0], '=');
                cr_assert_eq(p[1], '"', "unquoted label value in %s", l);
                p += 2;
                while (*p && *p != '"')
                    p += *p == '\\' ? 2 : 1;
                cr_assert_eq(*p, '"', "%s", l);
                p++;
                if (*p == ',')
                    p++;
                else
                    cr_assert_eq(*p, '}', "%s", l);
            }
            p++;
        }
        cr_assert_eq(*p, ' ', "%s", l);
        char *end;
        double v = strtod(p + 1, &end);
        cr_assert_eq(*end, '\0', "not a number: %s", l);
        cr_assert_geq(v, 0, "%s", l);
        if (strcmp(type, "histogram") == 0 && strstr(l, "_bucket{")) {
            cr_assert_geq(v, last_bucket, "buckets not cumulative: %s", l);
            last_bucket = strstr(l, "le=\"+Inf\"") ? -1 : v;
        }
    }
}

static void post(const char *key, const char *customer, const char *amount, long want)
{
    char body[256];
    struct test_response r;
    snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"USD\",\"customer_id\":\"%s\"}",
             amount, customer);
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, want, "%s", r.body);
    test_response_free(&r);
}

#define OUTCOME(o) "mockery_idempotency_outcomes_total{outcome=\"" o "\"}"

/* How far a series moved between two scrapes (absent before: from 0). */
static double delta(const char *before, const char *after, const char *series)
{
    double b = test_metric(before, series);
    return test_metric(after, series) - (b < 0 ? 0 : b);
}

BOTH(metrics_parse_and_move)
{
    char *before = scrape();
    check_exposition(before);
    char key[96], key2[96], cust[64], declined[64], failing[64];
    test_unique(key, sizeof key, "k");
    test_unique(key2, sizeof key2, "k");
    test_unique(cust, sizeof cust, "cust");
    test_unique(declined, sizeof declined, "cust-declined");
    test_unique(failing, sizeof failing, "cust-gateway-error");

    post(key, cust, "1", 201);      /* new, completed */
    post(key, cust, "1", 200);      /* replay */
    post(key, cust, "2", 422);      /* mismatch */
    post(key2, declined, "1", 402); /* new, declined */
    test_unique(key2, sizeof key2, "k");
    post(key2, failing, "1", 502); /* new, then released */

    struct {
        const char *series;
        double delta;
    } want[] = {
        {OUTCOME("new"), 2}, /* each POST counts once, under its final outcome */
        {OUTCOME("replay"), 1},
        {OUTCOME("mismatch"), 1},
        {OUTCOME("released"), 1},
        {"mockery_payments_total{status=\"completed\"}", 1},
        {"mockery_payments_total{status=\"declined\"}", 1},
        {"mockery_http_requests_total{route=\"/api/v1/payments\",method=\"POST\",status=\"201\"}",
         1},
        {"mockery_http_requests_total{route=\"/api/v1/payments\",method=\"POST\",status=\"502\"}",
         1},
        {"mockery_http_request_duration_seconds_count{route=\"/api/v1/payments\"}", 5},
        /* the replay came from this server's memory (it answered the first) */
        {"mockery_replay_cache_hits_total", 1},
        {"mockery_store_unavailable_total", 0},
    };
    /* A request is counted just after its answer is written: the worker
     * that answered the last POST, or the first scrape, may not have
     * counted it yet when the next scrape arrives on another connection
     * (seen under TSan and in CI). Scrape until every count has arrived;
     * the 30 s bound only turns a count that never comes into a failure. */
    const char *scrapes = "mockery_http_requests_total{route=\"/metrics\","
                          "method=\"GET\",status=\"200\"}";
    char *after = NULL;
    size_t ok = 0;
    for (int tries = 0; tries < 1500; tries++) {
        if (after) {
            free(after);
            struct timespec ts = {0, 20 * 1000000L};
            nanosleep(&ts, NULL);
        }
        after = scrape();
        for (ok = 0; ok < sizeof want / sizeof want[0]; ok++) {
            if (delta(before, after, want[ok].series) != want[ok].delta)
                break;
        }
        if (ok == sizeof want / sizeof want[0] && delta(before, after, scrapes) >= 1)
            break;
    }
    check_exposition(after);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cr_assert_geq(test_metric(after, want[i].series), 0, "%s missing", want[i].series);
        cr_assert_float_eq(delta(before, after, want[i].series), want[i].delta, 1e-9,
                           "%s: %g -> %g", want[i].series, test_metric(before, want[i].series),
                           test_metric(after, want[i].series));
    }
    /* the scrapes themselves: at least the first one is counted */
    cr_assert_geq(delta(before, after, scrapes), 1);
    cr_assert_geq(test_metric(after, "mockery_store_pool_waiting"), 0);
    free(before);
    free(after);
}

static long key_rows(const char *key)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1", key);
}

static void reaper_deletes_expired_keys_and_keeps_payments(int check_db)
{
    char key[96], cust[64];
    test_unique(key, sizeof key, "reap");
    test_unique(cust, sizeof cust, "cust");
    post(key, cust, "3", 201);
    char *m = scrape();
    double reaped_before = test_metric(m, "mockery_reaper_deleted_total");
    free(m);
    /* TTL 1 s, a pass every 100 ms: wait until the record is gone. In
     * PostgreSQL that is the row itself (any server of a test running
     * beside this one shares the table and may reap it first, so this
     * server's count is not the evidence); in
     * memory only this server can delete it, so its count must move. The
     * 30 s bound only turns a reaper that never runs into a failure. */
    double reaped = reaped_before;
    long rows = 1;
    for (int i = 0; i < 600; i++) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        if (check_db) {
            rows = key_rows(key);
            if (rows == 0)
                break;
        } else {
            m = scrape();
            reaped = test_metric(m, "mockery_reaper_deleted_total");
            free(m);
            if (reaped > reaped_before)
                break;
        }
    }
    if (check_db)
        cr_assert_eq(rows, 0, "the expired record is still there after 30 s");
    else
        cr_assert_gt(reaped, reaped_before, "the reaper deleted nothing within 30 s");
    /* The payment stays; the key is free again and runs a new payment. */
    char u[256];
    struct test_response r;
    snprintf(u, sizeof u, "%s/api/v1/payments?customer_id=%s", srv.base, cust);
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert(strstr(r.body, "\"count\":1"), "%s", r.body);
    test_response_free(&r);
    post(key, cust, "3", 201);
}

Test(ops_mem, reaper_deletes_expired_keys_and_keeps_payments, .init = start_mem_short, .fini = stop,
     .timeout = 60)
{
    reaper_deletes_expired_keys_and_keeps_payments(0);
}

Test(ops_pg, reaper_deletes_expired_keys_and_keeps_payments, .init = start_pg_short, .fini = stop,
     .timeout = 60)
{
    reaper_deletes_expired_keys_and_keeps_payments(1);
}
