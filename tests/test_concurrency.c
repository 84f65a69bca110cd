/* test_concurrency.c - concurrent duplicates and concurrent distinct keys
 * against a real server, counted in PostgreSQL itself */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

static struct test_server srv;

static void start_pg_slow(void)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    c.processing_delay_ms = 300;
    c.threads = 64;
    test_server_start(&srv, &c);
}

static void start_pg(void)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    c.threads = 64;
    test_server_start(&srv, &c);
}

static void stop(void)
{
    test_server_stop(&srv);
}

/* Counts rows in PostgreSQL directly: what the store really holds. */
static long count_rows(const char *sql, const char *param)
{
    return test_query_long(test_db_url(), sql, param);
}

#define DUPES 32

struct dupe_arg {
    pthread_barrier_t *barrier;
    const char *key;
    const char *body;
    struct test_response r;
};

static void *dupe_thread(void *p)
{
    struct dupe_arg *a = p;
    pthread_barrier_wait(a->barrier);
    test_post_payment(&srv, a->key, a->body, &a->r);
    return NULL;
}

/* What /metrics says now of POST /api/v1/payments' answers (201, 200, 409)
 * and of the replay cache's hits. */
static void answers_counted(double *answered, double *cached)
{
    char *m = test_scrape(&srv);
    *answered = 0;
    for (size_t i = 0; i < 3; i++) {
        static const char *const statuses[] = {"201", "200", "409"};
        char series[128];
        snprintf(series, sizeof series,
                 "mockery_http_requests_total{route=\"/api/v1/payments\",method=\"POST\","
                 "status=\"%s\"}",
                 statuses[i]);
        double v = test_metric(m, series);
        *answered += v > 0 ? v : 0;
    }
    double c = test_metric(m, "mockery_replay_cache_hits_total");
    *cached = c > 0 ? c : 0;
    free(m);
}

/* One round: DUPES requests with one new key at once. Asserts the
 * invariants; returns how many were told the key is in use (409: they
 * came while the first ran). */
static int dupes_round(void)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "dupe");
    test_unique(cust, sizeof cust, "cust");
    snprintf(body, sizeof body, "{\"amount\":42,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             cust);
    double answered_before, cached_before;
    answers_counted(&answered_before, &cached_before);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, DUPES);
    struct dupe_arg args[DUPES];
    pthread_t t[DUPES];
    for (int i = 0; i < DUPES; i++) {
        args[i] = (struct dupe_arg){&barrier, key, body, {0}};
        pthread_create(&t[i], NULL, dupe_thread, &args[i]);
    }
    for (int i = 0; i < DUPES; i++)
        pthread_join(t[i], NULL);

    /* What the clients saw: one payment; every other request was told the
     * key is in use (it came while the first ran) or got the first answer
     * again (it came after). Which of the two each got depends on when it
     * arrived - on the machine's speed - so only their sum is fixed. */
    int created = 0, conflicts = 0, replays = 0;
    const char *first_body = NULL;
    for (int i = 0; i < DUPES; i++) {
        long s = args[i].r.status;
        if (s == 201) {
            created++;
            first_body = args[i].r.body;
        } else if (s == 409) {
            conflicts++;
            test_expect_error(&args[i].r, 409, "idempotency_key_in_use", NULL);
            cr_assert_str_eq(args[i].r.retry_after, "1");
        } else if (s == 200) {
            replays++;
            cr_assert_str_eq(args[i].r.replay, "true");
        } else {
            cr_assert_fail("unexpected status %ld: %s", s, args[i].r.body);
        }
    }
    cr_assert_eq(created, 1, "%d requests were charged", created);
    cr_assert_eq(conflicts + replays, DUPES - 1, "%d in use + %d replays", conflicts, replays);
    for (int i = 0; i < DUPES; i++)
        if (args[i].r.status == 200)
            cr_assert_str_eq(args[i].r.body, first_body);
    cr_assert_eq(count_rows("SELECT count(*) FROM payments WHERE idempotency_key = $1", key), 1);
    cr_assert_eq(count_rows("SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                            " AND state = 'completed'",
                            key),
                 1);
    /* Every other request was a prevented duplicate, counted once: on the
     * record when it reached the store (a 409, or a replay read from the
     * record), on /metrics when this server's replay cache answered it
     * without asking the store. Each request wrote its count before its
     * answer, so the record's is final now; the server counts /metrics
     * after the answer, so scrape until all 32 answers are counted (bounded:
     * only a count that never comes fails). */
    long recorded =
        count_rows("SELECT duplicate_count FROM idempotency_keys WHERE idempotency_key = $1", key);
    double answered = 0, cached = 0;
    double give_up = test_now_s() + 30;
    for (;;) {
        answers_counted(&answered, &cached);
        answered -= answered_before;
        cached -= cached_before;
        /* (the cache hit is counted just after the request: wait for both) */
        if ((answered == DUPES && recorded + cached == DUPES - 1) || test_now_s() > give_up)
            break;
        test_sleep_ms(20);
    }
    cr_assert_eq(answered, DUPES, "/metrics counted %g of the %d answers within 30 s", answered,
                 DUPES);
    cr_assert_eq(recorded + (long)cached, DUPES - 1,
                 "%ld duplicates on the record + %g answered from the replay cache, want %d",
                 recorded, cached, DUPES - 1);
    cr_assert_geq(recorded, conflicts, "every 409 read the record");
    /* ... and the psql view adds up what the records hold. */
    cr_assert_geq(count_rows("SELECT duplicates_prevented FROM duplicates_prevented_per_hour v"
                             " JOIN idempotency_keys k ON k.tenant_id = v.tenant_id"
                             " AND date_trunc('hour', k.created_at) = v.hour"
                             " AND v.operation = 'payment'"
                             " WHERE k.idempotency_key = $1",
                             key),
                  recorded);
    for (int i = 0; i < DUPES; i++)
        test_response_free(&args[i].r);
    pthread_barrier_destroy(&barrier);
    return conflicts;
}

/* 32 requests with one key at once make one payment. The test is about
 * duplicates that arrive while the first runs (300 ms here): a round in
 * which every other request came after it (all replays) proves less, so
 * rounds go on until one had a 409 - bounded, so a server that never
 * tells a duplicate the key is in use fails. */
Test(concurrency, thirty_two_duplicates_make_one_payment, .init = start_pg_slow, .fini = stop,
     .timeout = 120)
{
    int overlapped = 0;
    for (int round = 0; round < 5 && !overlapped; round++)
        overlapped = dupes_round() > 0;
    cr_assert(overlapped, "in 5 rounds of %d at once, none came while the first ran", DUPES);
}

#define WORKERS 16
#define KEYS 1000

struct distinct_arg {
    pthread_barrier_t *barrier;
    const char *cust;
    int worker;
    int created;
    int failed;
};

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static void *distinct_thread(void *p)
{
    struct distinct_arg *a = p;
    char url[128], body[256], keyh[160];
    snprintf(url, sizeof url, "%s/api/v1/payments", srv.base);
    snprintf(body, sizeof body, "{\"amount\":1.25,\"currency\":\"USD\",\"customer_id\":\"%s\"}",
             a->cust);
    /* One keep-alive connection per worker, as a client pool would hold. */
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    pthread_barrier_wait(a->barrier);
    for (int i = a->worker; i < KEYS; i += WORKERS) {
        struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s-%d", a->cust, i);
        h = curl_slist_append(h, keyh);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
        long status = 0;
        if (curl_easy_perform(c) == CURLE_OK)
            curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        if (status == 201)
            a->created++;
        else
            a->failed++;
        curl_slist_free_all(h);
    }
    curl_easy_cleanup(c);
    return NULL;
}

Test(concurrency, thousand_distinct_keys_make_thousand_payments, .init = start_pg, .fini = stop,
     .timeout = 300)
{
    char cust[64];
    test_unique(cust, sizeof cust, "bulk");
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, WORKERS);
    struct distinct_arg args[WORKERS];
    pthread_t t[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        args[i] = (struct distinct_arg){&barrier, cust, i, 0, 0};
        pthread_create(&t[i], NULL, distinct_thread, &args[i]);
    }
    int created = 0, failed = 0;
    for (int i = 0; i < WORKERS; i++) {
        pthread_join(t[i], NULL);
        created += args[i].created;
        failed += args[i].failed;
    }
    cr_assert_eq(failed, 0, "%d requests failed", failed);
    cr_assert_eq(created, KEYS);
    cr_assert_eq(count_rows("SELECT count(*) FROM payments WHERE customer_id = $1", cust), KEYS);
    cr_assert_eq(count_rows("SELECT count(DISTINCT idempotency_key) FROM payments"
                            " WHERE customer_id = $1",
                            cust),
                 KEYS);
    pthread_barrier_destroy(&barrier);
}
