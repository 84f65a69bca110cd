/* test_http.c - the HTTP API end to end: a real server on 127.0.0.1, real
 * requests over a socket, run against both stores */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store_mem.h"
#include "store_pg.h"
#include "support.h"

static struct test_server srv;

static void start(enum store_kind kind)
{
    struct config c;
    test_config(&c, kind);
    test_server_start(&srv, &c);
}
static void start_mem(void)
{
    start(STORE_KIND_MEMORY);
}
static void start_pg(void)
{
    start(STORE_KIND_POSTGRES);
}
static void stop(void)
{
    test_server_stop(&srv);
}

/* Defines the case `name` against both stores. */
#define BOTH(name)                                                                                 \
    static void name(void);                                                                        \
    Test(http_mem, name, .init = start_mem, .fini = stop, .timeout = 60)                           \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(http_pg, name, .init = start_pg, .fini = stop, .timeout = 60)                             \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)

static void url(char *buf, size_t len, const char *path)
{
    if (snprintf(buf, len, "%s%s", srv.base, path) >= (int)len)
        cr_assert_fail("url too long");
}

static void body_for(char *buf, size_t len, const char *customer, const char *amount)
{
    snprintf(buf, len, "{\"amount\":%s,\"currency\":\"USD\",\"customer_id\":\"%s\"}", amount,
             customer);
}

/* How many payments the API lists for a customer. */
static int count_for(const char *customer)
{
    char u[256];
    struct test_response r;
    snprintf(u, sizeof u, "%s/api/v1/payments?limit=500&customer_id=%s", srv.base, customer);
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cJSON *o = test_json(&r);
    int n = cJSON_GetObjectItem(o, "count")->valueint;
    cJSON_Delete(o);
    test_response_free(&r);
    return n;
}

BOTH(first_payment_is_created_with_location)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    snprintf(
        body, sizeof body,
        "{\"amount\":10.5,\"currency\":\"USD\",\"customer_id\":\"%s\",\"description\":\"tea\"}",
        cust);
    struct test_response r;
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cJSON *o = test_json(&r);
    const char *id = test_json_str(o, "transaction_id");
    cr_assert_eq(strncmp(id, "txn_", 4), 0);
    cr_assert_geq(strlen(id), 28);
    cr_assert_str_eq(test_json_str(o, "status"), "completed");
    cr_assert_float_eq(cJSON_GetObjectItem(o, "amount")->valuedouble, 10.5, 1e-9);
    cr_assert_str_eq(test_json_str(o, "currency"), "USD");
    cr_assert_str_eq(test_json_str(o, "customer_id"), cust);
    cr_assert_str_eq(test_json_str(o, "description"), "tea");
    cr_assert_str_eq(test_json_str(o, "idempotency_key"), key);
    cr_assert_eq(strlen(test_json_str(o, "processed_at")), 27);
    char loc[128];
    snprintf(loc, sizeof loc, "/api/v1/payments/%s", id);
    cr_assert_str_eq(r.location, loc);
    cr_assert_str_empty(r.replay);
    cr_assert_str_empty(r.replayed);

    /* The Location answers with the same object. */
    char u[256];
    struct test_response g;
    url(u, sizeof u, loc);
    test_http("GET", u, NULL, NULL, 0, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, r.body);
    cJSON_Delete(o);
    test_response_free(&r);
    test_response_free(&g);
}

BOTH(retry_replays_the_original_byte_for_byte)
{
    char key[96], cust[64], body[256], body2[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "10.5");
    /* Same payment, other spelling: 10.50, other key order, quoted key. */
    snprintf(body2, sizeof body2,
             "{ \"customer_id\":\"%s\", \"currency\":\"USD\", \"amount\":10.50, "
             "\"description\":null }",
             cust);
    char quoted[100];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    struct test_response a, b;
    test_post_payment(&srv, key, body, &a);
    cr_assert_eq(a.status, 201);
    test_post_payment(&srv, quoted, body2, &b);
    cr_assert_eq(b.status, 200, "%s", b.body);
    cr_assert_str_eq(b.replay, "true");
    cr_assert_str_eq(b.replayed, "true");
    cr_assert_eq(b.len, a.len);
    cr_assert_str_eq(b.body, a.body);
    cr_assert_str_eq(b.location, a.location);
    cr_assert_eq(count_for(cust), 1);
    test_response_free(&a);
    test_response_free(&b);
}

BOTH(decline_is_stored_cached_and_replayed)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust-declined");
    body_for(body, sizeof body, cust, "20");
    struct test_response a, b;
    test_post_payment(&srv, key, body, &a);
    test_expect_error(&a, 402, "card_declined", NULL);
    cJSON *o = test_json(&a);
    cr_assert_str_eq(test_json_str(o, "status"), "declined");
    const char *id = test_json_str(o, "transaction_id");
    cr_assert_eq(strncmp(id, "txn_", 4), 0);
    test_post_payment(&srv, key, body, &b);
    cr_assert_eq(b.status, 402, "a replayed decline keeps its status");
    cr_assert_str_eq(b.replay, "true");
    cr_assert_str_eq(b.replayed, "true");
    cr_assert_str_eq(b.body, a.body);
    /* Stored and listed like any other. */
    char u[256];
    struct test_response g;
    snprintf(u, sizeof u, "%s/api/v1/payments/%s", srv.base, id);
    test_http("GET", u, NULL, NULL, 0, &g);
    cr_assert_eq(g.status, 200);
    cJSON *p = test_json(&g);
    cr_assert_str_eq(test_json_str(p, "status"), "declined");
    cr_assert_eq(count_for(cust), 1);
    cJSON_Delete(o);
    cJSON_Delete(p);
    test_response_free(&a);
    test_response_free(&b);
    test_response_free(&g);
}

BOTH(gateway_failure_is_not_cached_and_releases_the_key)
{
    char key[96], cust[64], body[256], ok_cust[64], ok_body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust-gateway-error");
    test_unique(ok_cust, sizeof ok_cust, "cust");
    body_for(body, sizeof body, cust, "5");
    struct test_response a, b, c;
    test_post_payment(&srv, key, body, &a);
    test_expect_error(&a, 502, "gateway_error", NULL);
    test_post_payment(&srv, key, body, &b);
    test_expect_error(&b, 502, "gateway_error", NULL);
    cr_assert_str_empty(b.replay, "a gateway failure must run again, not replay");
    cr_assert_str_empty(b.replayed);
    /* The key is free: another payment may use it now. */
    body_for(ok_body, sizeof ok_body, ok_cust, "5");
    test_post_payment(&srv, key, ok_body, &c);
    cr_assert_eq(c.status, 201, "%s", c.body);
    cr_assert_eq(count_for(cust), 0);
    test_response_free(&a);
    test_response_free(&b);
    test_response_free(&c);
}

BOTH(same_key_different_payload_is_422_and_runs_nothing)
{
    char key[96], cust[64], body[256], other[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "10");
    body_for(other, sizeof other, cust, "11");
    struct test_response a, b;
    test_post_payment(&srv, key, body, &a);
    cr_assert_eq(a.status, 201);
    test_post_payment(&srv, key, other, &b);
    test_expect_error(&b, 422, "idempotency_key_reused", NULL);
    cr_assert_eq(count_for(cust), 1);
    test_response_free(&a);
    test_response_free(&b);
}

/* ---- a retry while the first request runs ------------------------------------ */

/* The store of the server under test, with its completions held until the
 * test lets them go: a request that has claimed its key and run stays in
 * flight for exactly as long as the test needs, however fast or slow the
 * machine (a processor that merely takes a while races the retry). Only
 * the store's complete is replaced; every other operation is its own. */
static const struct store_ops *held_inner;
static struct store_ops held_ops;
static pthread_mutex_t held_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t held_cv = PTHREAD_COND_INITIALIZER;
static int held_waiting; /* completions waiting to be let go */
static int held_open;

static enum store_status held_complete(struct store *s, const char *tenant, const char *key,
                                       int64_t token, const struct store_response *resp,
                                       const struct store_rows *rows, char *err, size_t errlen)
{
    pthread_mutex_lock(&held_mu);
    held_waiting++;
    pthread_cond_broadcast(&held_cv);
    while (!held_open)
        pthread_cond_wait(&held_cv, &held_mu);
    held_waiting--;
    pthread_mutex_unlock(&held_mu);
    return held_inner->complete(s, tenant, key, token, resp, rows, err, errlen);
}

static void held_let_go(void)
{
    pthread_mutex_lock(&held_mu);
    held_open = 1;
    pthread_cond_broadcast(&held_cv);
    pthread_mutex_unlock(&held_mu);
}

/* Waits until a completion is held: its request claimed the key and ran. */
static void held_wait_for_completion(void)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 30; /* only a request that never gets there fails */
    pthread_mutex_lock(&held_mu);
    int rc = 0;
    while (held_waiting == 0 && rc == 0)
        rc = pthread_cond_timedwait(&held_cv, &held_mu, &deadline);
    int waiting = held_waiting;
    pthread_mutex_unlock(&held_mu);
    cr_assert_gt(waiting, 0, "the first request did not reach its completion within 30 s");
}

static void start_held(enum store_kind kind)
{
    struct config c;
    char err[256] = "";
    test_config(&c, kind);
    struct store *inner = NULL;
    if (kind == STORE_KIND_MEMORY) {
        inner = store_mem_new();
    } else {
        struct store_pg_options o = {.database_url = test_db_url(), .pool_size = c.pool_size};
        inner = store_pg_new(&o, err, sizeof err);
    }
    cr_assert_not_null(inner, "%s", err);
    held_inner = inner->ops;
    held_ops = *inner->ops;
    held_ops.complete = held_complete;
    inner->ops = &held_ops;
    held_waiting = 0;
    held_open = 0;
    test_server_start_with_store(&srv, &c, inner);
}
static void start_mem_held(void)
{
    start_held(STORE_KIND_MEMORY);
}
static void start_pg_held(void)
{
    start_held(STORE_KIND_POSTGRES);
}
static void stop_held(void)
{
    held_let_go(); /* (a failed test leaves none held: the server can drain) */
    stop();
}

struct post_arg {
    const char *key;
    const char *body;
    struct test_response r;
};

static void *post_thread(void *p)
{
    struct post_arg *a = p;
    test_post_payment(&srv, a->key, a->body, &a->r);
    return NULL;
}

static void retry_while_running_is_409_then_replay(void)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "7");
    struct post_arg first = {key, body, {0}};
    pthread_t t;
    pthread_create(&t, NULL, post_thread, &first);
    /* The first request holds the key and is still running (its completion
     * is held): a retry now is told the key is in use. */
    held_wait_for_completion();
    struct test_response b;
    test_post_payment(&srv, key, body, &b);
    test_expect_error(&b, 409, "idempotency_key_in_use", NULL);
    cr_assert_str_eq(b.retry_after, "1");
    cr_assert_str_empty(b.replay);
    test_response_free(&b);
    /* It finishes: its answer is the payment, and a retry replays it. */
    held_let_go();
    pthread_join(t, NULL);
    cr_assert_eq(first.r.status, 201, "%s", first.r.body);
    struct test_response c;
    test_post_payment(&srv, key, body, &c);
    cr_assert_eq(c.status, 200);
    cr_assert_str_eq(c.replay, "true");
    cr_assert_str_eq(c.replayed, "true");
    cr_assert_str_eq(c.body, first.r.body);
    cr_assert_eq(count_for(cust), 1);
    test_response_free(&first.r);
    test_response_free(&c);
}

Test(http_mem, retry_while_running_is_409_then_replay, .init = start_mem_held, .fini = stop_held,
     .timeout = 90)
{
    retry_while_running_is_409_then_replay();
}

Test(http_pg, retry_while_running_is_409_then_replay, .init = start_pg_held, .fini = stop_held,
     .timeout = 90)
{
    retry_while_running_is_409_then_replay();
}

/* ---- bad input: clear errors, nothing stored, the key not consumed -------- */

static void post_raw(const char *const *headers, const char *body, size_t len,
                     struct test_response *r)
{
    char u[256];
    url(u, sizeof u, "/api/v1/payments");
    test_http("POST", u, headers, body, len, r);
}

BOTH(bad_input_is_rejected_before_the_key_is_claimed)
{
    char key[96], cust[64], good[256], keyh[128];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    body_for(good, sizeof good, cust, "3");
    struct {
        const char *body;
        long status;
        const char *code;
        const char *param;
    } cases[] = {
        {"{not json", 400, "invalid_json", NULL},
        {"[]", 400, "invalid_json", NULL},
        {"{\"amount\":3,\"currency\":\"USD\",\"customer_id\":\"c\",\"x\":1}", 422, "unknown_field",
         "x"},
        {"{\"amount\":\"3\",\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":0,\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":-1,\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":1.001,\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":1000000,\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":1e999,\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount",
         "amount"},
        {"{\"amount\":3,\"currency\":\"usd\",\"customer_id\":\"c\"}", 422, "invalid_currency",
         "currency"},
        {"{\"amount\":3,\"currency\":\"USD\",\"customer_id\":\"a b\"}", 422, "invalid_customer_id",
         "customer_id"},
        {"{\"amount\":3,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":[]}", 422,
         "invalid_description", "description"},
    };
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct test_response r;
        post_raw(headers, cases[i].body, strlen(cases[i].body), &r);
        test_expect_error(&r, cases[i].status, cases[i].code, cases[i].param);
        test_response_free(&r);
    }
    /* 415: no content type, another one; parameters are fine. */
    const char *no_ct[] = {keyh, "Content-Type:", NULL};
    const char *text[] = {keyh, "Content-Type: text/plain", NULL};
    struct test_response r;
    post_raw(no_ct, good, strlen(good), &r);
    test_expect_error(&r, 415, "unsupported_media_type", NULL);
    test_response_free(&r);
    post_raw(text, good, strlen(good), &r);
    test_expect_error(&r, 415, "unsupported_media_type", NULL);
    test_response_free(&r);
    /* 413: over 64 KiB. */
    size_t big = 64 * 1024 + 1;
    char *huge = malloc(big);
    memset(huge, ' ', big);
    huge[0] = '{';
    huge[big - 1] = '}';
    post_raw(headers, huge, big, &r);
    test_expect_error(&r, 413, "body_too_large", NULL);
    test_response_free(&r);
    free(huge);

    /* None of that consumed the key or stored anything. */
    const char *charset[] = {"Content-Type: application/json; charset=utf-8", keyh, NULL};
    post_raw(charset, good, strlen(good), &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
    cr_assert_eq(count_for(cust), 1);
}

BOTH(idempotency_key_header_rules)
{
    char cust[64], good[256];
    test_unique(cust, sizeof cust, "cust");
    body_for(good, sizeof good, cust, "4");
    char longkey[300] = "Idempotency-Key: ";
    memset(longkey + strlen(longkey), 'k', 256);
    const char *const cases[][4] = {
        {"Content-Type: application/json", NULL},
        {"Content-Type: application/json", "Idempotency-Key: \"\"", NULL},
        {"Content-Type: application/json", longkey, NULL},
        {"Content-Type: application/json", "Idempotency-Key: caf\xc3\xa9", NULL},
        {"Content-Type: application/json", "Idempotency-Key: \"open", NULL},
        {"Content-Type: application/json", "Idempotency-Key: a", "Idempotency-Key: b", NULL},
    };
    const char *codes[] = {"idempotency_key_missing", "idempotency_key_invalid",
                           "idempotency_key_invalid", "idempotency_key_invalid",
                           "idempotency_key_invalid", "idempotency_key_invalid"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct test_response r;
        post_raw(cases[i], good, strlen(good), &r);
        test_expect_error(&r, 400, codes[i], NULL);
        test_response_free(&r);
    }
    cr_assert_eq(count_for(cust), 0);
}

/* ---- reading ------------------------------------------------------------------ */

BOTH(list_pages_newest_first_and_filters_by_customer)
{
    char cust[64], other[64], body[256], ids[5][64];
    test_unique(cust, sizeof cust, "cust");
    test_unique(other, sizeof other, "cust");
    for (int i = 0; i < 5; i++) {
        char key[96];
        struct test_response r;
        test_unique(key, sizeof key, "k");
        body_for(body, sizeof body, i == 2 ? other : cust, "1");
        test_post_payment(&srv, key, body, &r);
        cr_assert_eq(r.status, 201);
        cJSON *o = test_json(&r);
        snprintf(ids[i], sizeof ids[i], "%s", test_json_str(o, "transaction_id"));
        cJSON_Delete(o);
        test_response_free(&r);
    }
    /* Page through cust's four, two at a time. */
    const char *want[] = {ids[4], ids[3], ids[1], ids[0]};
    char cursor[64] = "";
    int seen = 0;
    for (int page = 0; page < 2; page++) {
        char u[300];
        struct test_response r;
        snprintf(u, sizeof u, "%s/api/v1/payments?limit=2&customer_id=%s%s%s", srv.base, cust,
                 cursor[0] ? "&starting_after=" : "", cursor);
        test_http("GET", u, NULL, NULL, 0, &r);
        cr_assert_eq(r.status, 200, "%s", r.body);
        cJSON *o = test_json(&r);
        cJSON *items = cJSON_GetObjectItem(o, "payments");
        cr_assert_eq(cJSON_GetArraySize(items), 2);
        cr_assert_eq(cJSON_GetObjectItem(o, "count")->valueint, 2);
        for (int i = 0; i < 2; i++)
            cr_assert_str_eq(test_json_str(cJSON_GetArrayItem(items, i), "transaction_id"), want[seen++]);
        cJSON *more = cJSON_GetObjectItem(o, "has_more");
        cJSON *next = cJSON_GetObjectItem(o, "next_cursor");
        if (page == 0) {
            cr_assert(cJSON_IsTrue(more));
            snprintf(cursor, sizeof cursor, "%s", next->valuestring);
            cr_assert_str_eq(cursor, ids[3]);
        } else {
            cr_assert(cJSON_IsFalse(more));
            cr_assert(cJSON_IsNull(next));
        }
        cJSON_Delete(o);
        test_response_free(&r);
    }
    cr_assert_eq(count_for(other), 1);
}

BOTH(list_rejects_bad_parameters)
{
    const char *bad[][2] = {{"?limit=0", "limit"},
                            {"?limit=501", "limit"},
                            {"?limit=ten", "limit"},
                            {"?limit=", "limit"},
                            {"?customer_id=a%20b", "customer_id"},
                            {"?starting_after=txn_nope", "starting_after"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char u[256];
        struct test_response r;
        snprintf(u, sizeof u, "%s/api/v1/payments%s", srv.base, bad[i][0]);
        test_http("GET", u, NULL, NULL, 0, &r);
        test_expect_error(&r, 400, "invalid_parameter", bad[i][1]);
        test_response_free(&r);
    }
}

BOTH(unknown_payment_is_404)
{
    char u[256];
    struct test_response r;
    url(u, sizeof u, "/api/v1/payments/txn_doesnotexist0000000000000");
    test_http("GET", u, NULL, NULL, 0, &r);
    test_expect_error(&r, 404, "payment_not_found", NULL);
    test_response_free(&r);
}

BOTH(unknown_routes_and_methods)
{
    char u[256];
    struct test_response r;
    url(u, sizeof u, "/api/v2/payments");
    test_http("GET", u, NULL, NULL, 0, &r);
    test_expect_error(&r, 404, "route_not_found", NULL);
    test_response_free(&r);
    url(u, sizeof u, "/api/v1/payments");
    test_http("DELETE", u, NULL, NULL, 0, &r);
    test_expect_error(&r, 405, "method_not_allowed", NULL);
    cr_assert_str_eq(r.allow, "GET, POST");
    test_response_free(&r);
    url(u, sizeof u, "/api/v1/payments/txn_x");
    test_http("PUT", u, NULL, "{}", 2, &r);
    test_expect_error(&r, 405, "method_not_allowed", NULL);
    cr_assert_str_eq(r.allow, "GET");
    test_response_free(&r);
    url(u, sizeof u, "/health");
    test_http("POST", u, NULL, "{}", 2, &r);
    test_expect_error(&r, 405, "method_not_allowed", NULL);
    cr_assert_str_eq(r.allow, "GET");
    test_response_free(&r);
}

Test(http_pg, health_reports_postgres_up, .init = start_pg, .fini = stop, .timeout = 30)
{
    char u[256];
    struct test_response r;
    url(u, sizeof u, "/health");
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"status\":\"healthy\",\"store\":\"postgres\",\"database\":\"up\"}");
    test_response_free(&r);
}

Test(http_mem, health_reports_memory, .init = start_mem, .fini = stop, .timeout = 30)
{
    char u[256];
    struct test_response r;
    url(u, sizeof u, "/health");
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, "{\"status\":\"healthy\",\"store\":\"memory\",\"database\":\"none\"}");
    test_response_free(&r);
}

/* ---- keep-alive cannot starve a new client ------------------------------- */

struct busy_arg {
    int *stop;
    pthread_barrier_t *barrier;
    int sent;
};

static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

static void *busy_client(void *p)
{
    struct busy_arg *a = p;
    char u[256];
    url(u, sizeof u, "/health");
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, u);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    /* One keep-alive connection, kept busy: bounded in count. */
    curl_easy_perform(c);
    pthread_barrier_wait(a->barrier);
    while (!__atomic_load_n(a->stop, __ATOMIC_RELAXED) && a->sent < 200000) {
        curl_easy_perform(c);
        a->sent++;
    }
    curl_easy_cleanup(c);
    return NULL;
}

static void start_mem_few_threads(void)
{
    struct config c;
    test_config(&c, STORE_KIND_MEMORY);
    c.threads = 4;
    test_server_start(&srv, &c);
}

Test(http_mem, busy_keep_alive_clients_do_not_starve_a_new_one, .init = start_mem_few_threads,
     .fini = stop, .timeout = 120)
{
    enum { BUSY = 8 };
    int stop_flag = 0;
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, BUSY + 1);
    struct busy_arg args[BUSY];
    pthread_t t[BUSY];
    for (int i = 0; i < BUSY; i++) {
        args[i] = (struct busy_arg){&stop_flag, &barrier, 0};
        pthread_create(&t[i], NULL, busy_client, &args[i]);
    }
    pthread_barrier_wait(&barrier);
    /* Twice as many busy keep-alive clients as workers: a new client must
     * still be answered. A starved one never is; 15 s tells the two apart
     * on any machine (an answer takes milliseconds, the busy clients' too). */
    for (int i = 0; i < 3; i++) {
        char u[256];
        url(u, sizeof u, "/health");
        CURL *c = curl_easy_init();
        curl_easy_setopt(c, CURLOPT_URL, u);
        curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(c, CURLOPT_TIMEOUT, 15L);
        curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
        CURLcode rc = curl_easy_perform(c);
        long status = 0;
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(c);
        cr_assert_eq(rc, CURLE_OK, "new client starved: %s", curl_easy_strerror(rc));
        cr_assert_eq(status, 200);
    }
    __atomic_store_n(&stop_flag, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < BUSY; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&barrier);
}

/* ---- --require-key=false ------------------------------------------------------ */

static void start_optional_key(enum store_kind kind)
{
    struct config c;
    test_config(&c, kind);
    c.require_key = 0;
    test_server_start(&srv, &c);
}
static void start_mem_optional_key(void)
{
    start_optional_key(STORE_KIND_MEMORY);
}
static void start_pg_optional_key(void)
{
    start_optional_key(STORE_KIND_POSTGRES);
}

static void payment_without_key_runs_each_time(void)
{
    char cust[64], body[256], key[96];
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "9");
    struct test_response a, b, c;
    test_post_payment(&srv, NULL, body, &a);
    cr_assert_eq(a.status, 201, "%s", a.body);
    cJSON *o = test_json(&a);
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "idempotency_key")));
    cJSON_Delete(o);
    test_post_payment(&srv, NULL, body, &b);
    cr_assert_eq(b.status, 201, "without a key nothing is deduplicated");
    cr_assert_str_neq(a.body, b.body);
    /* Keys still work as usual. */
    test_unique(key, sizeof key, "k");
    test_post_payment(&srv, key, body, &c);
    cr_assert_eq(c.status, 201);
    test_response_free(&c);
    test_post_payment(&srv, key, body, &c);
    cr_assert_eq(c.status, 200);
    cr_assert_eq(count_for(cust), 3);
    test_response_free(&a);
    test_response_free(&b);
    test_response_free(&c);
}

Test(http_mem, payment_without_key_runs_each_time, .init = start_mem_optional_key, .fini = stop,
     .timeout = 60)
{
    payment_without_key_runs_each_time();
}

Test(http_pg, payment_without_key_runs_each_time, .init = start_pg_optional_key, .fini = stop,
     .timeout = 60)
{
    payment_without_key_runs_each_time();
}

/* ---- tenants ---------------------------------------------------------------------- */

static void start_tenants(enum store_kind kind)
{
    struct config c;
    test_config(&c, kind);
    snprintf(c.api_keys, sizeof c.api_keys, "acme:key-acme-0001,globex:key-globex-0002");
    test_server_start(&srv, &c);
}
static void start_mem_tenants(void)
{
    start_tenants(STORE_KIND_MEMORY);
}
static void start_pg_tenants(void)
{
    start_tenants(STORE_KIND_POSTGRES);
}

static void tenant_post(const char *auth, const char *key, const char *body,
                        struct test_response *r)
{
    char keyh[160];
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, auth, NULL};
    post_raw(headers, body, strlen(body), r);
}

static void tenants_are_isolated(void)
{
    const char *acme = "Authorization: Bearer key-acme-0001";
    const char *globex = "Authorization: Bearer key-globex-0002";
    char key[96], cust[64], body_a[256], body_b[256], u[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body_a, sizeof body_a, cust, "1");
    body_for(body_b, sizeof body_b, cust, "2");
    struct test_response r, ra, rb;

    /* No key, a wrong key: 401 before anything else, nothing cached. */
    tenant_post("X-None: 1", key, body_a, &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    tenant_post("Authorization: Bearer key-acme-0002", key, "{bad", &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    url(u, sizeof u, "/api/v1/payments");
    test_http("GET", u, NULL, NULL, 0, &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    url(u, sizeof u, "/health");
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200, "/health needs no key");
    test_response_free(&r);

    /* One idempotency key, two tenants: two separate payments. */
    tenant_post(acme, key, body_a, &ra);
    cr_assert_eq(ra.status, 201, "%s", ra.body);
    tenant_post(globex, key, body_b, &rb);
    cr_assert_eq(rb.status, 201, "another tenant's key is not a mismatch: %s", rb.body);
    tenant_post(acme, key, body_a, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, ra.body);
    test_response_free(&r);

    /* Neither sees the other's payment. */
    const char *as_globex[] = {globex, NULL};
    const char *as_acme[] = {acme, NULL};
    url(u, sizeof u, ra.location);
    test_http("GET", u, as_globex, NULL, 0, &r);
    test_expect_error(&r, 404, "payment_not_found", NULL);
    test_response_free(&r);
    test_http("GET", u, as_acme, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    test_response_free(&r);
    snprintf(u, sizeof u, "%s/api/v1/payments?customer_id=%s", srv.base, cust);
    test_http("GET", u, as_globex, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cJSON *o = test_json(&r);
    cJSON *items = cJSON_GetObjectItem(o, "payments");
    cr_assert_eq(cJSON_GetArraySize(items), 1);
    cJSON *amount = cJSON_GetObjectItem(cJSON_GetArrayItem(items, 0), "amount");
    cr_assert_float_eq(amount->valuedouble, 2.0, 1e-9);
    cJSON_Delete(o);
    test_response_free(&r);
    test_response_free(&ra);
    test_response_free(&rb);
}

Test(http_mem, tenants_are_isolated, .init = start_mem_tenants, .fini = stop, .timeout = 60)
{
    tenants_are_isolated();
}

Test(http_pg, tenants_are_isolated, .init = start_pg_tenants, .fini = stop, .timeout = 60)
{
    tenants_are_isolated();
}

/* ---- the store failing after the claim ------------------------------------------- */

#include "faulty_store.h"

static struct store *faulty;

static void start_faulty(enum store_kind kind)
{
    struct config c;
    char err[256] = "";
    test_config(&c, kind);
    struct store *inner = NULL;
    if (kind == STORE_KIND_MEMORY) {
        inner = store_mem_new();
    } else {
        struct store_pg_options o = {.database_url = test_db_url(), .pool_size = 2};
        inner = store_pg_new(&o, err, sizeof err);
    }
    cr_assert_not_null(inner, "%s", err);
    faulty = faulty_store_new(inner);
    cr_assert_not_null(faulty);
    test_server_start_with_store(&srv, &c, faulty);
}
static void start_mem_faulty(void)
{
    start_faulty(STORE_KIND_MEMORY);
}
static void start_pg_faulty(void)
{
    start_faulty(STORE_KIND_POSTGRES);
}

static void store_failure_after_claim_is_503_and_not_cached(void)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "12");
    struct test_response r;

    /* The completion fails: 503, the claim released, nothing stored. */
    faulty_store_fail(faulty, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    test_post_payment(&srv, key, body, &r);
    test_expect_error(&r, 503, "store_unavailable", NULL);
    cr_assert_str_eq(r.retry_after, "1");
    test_response_free(&r);
    cr_assert_eq(faulty_store_calls(faulty, FAULTY_RELEASE), 1);
    cr_assert_eq(count_for(cust), 0);

    /* The retry runs again - not a replay of the 503. */
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cr_assert_str_empty(r.replay);
    test_response_free(&r);
    cr_assert_eq(count_for(cust), 1);

    /* The claim itself fails: 503 before anything ran. */
    test_unique(key, sizeof key, "k");
    faulty_store_fail(faulty, FAULTY_CLAIM, 1, STORE_UNAVAILABLE);
    test_post_payment(&srv, key, body, &r);
    test_expect_error(&r, 503, "store_unavailable", NULL);
    test_response_free(&r);
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);

    /* A store error that is not an outage is a 500, also not cached. */
    test_unique(key, sizeof key, "k");
    faulty_store_fail(faulty, FAULTY_COMPLETE, 1, STORE_ERROR);
    test_post_payment(&srv, key, body, &r);
    test_expect_error(&r, 500, "internal_error", NULL);
    test_response_free(&r);
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
    cr_assert_eq(count_for(cust), 3);

    /* An operator sees the two outages, and not the 500. The server counts
     * a request just after writing its answer: scrape until the counts
     * arrive (30 s only turns a count that never comes into a failure). */
    double n = -1;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        char *m = test_scrape(&srv);
        n = test_metric(m, "mockery_store_unavailable_total");
        free(m);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (n == 2 || now.tv_sec - t0.tv_sec >= 30)
            break;
        nanosleep(&(struct timespec){0, 20 * 1000000L}, NULL);
    }
    cr_assert_eq(n, 2, "mockery_store_unavailable_total %g, want 2", n);
}

Test(http_mem, store_failure_after_claim_is_503_and_not_cached, .init = start_mem_faulty,
     .fini = stop, .timeout = 60)
{
    store_failure_after_claim_is_503_and_not_cached();
}

Test(http_pg, store_failure_after_claim_is_503_and_not_cached, .init = start_pg_faulty,
     .fini = stop, .timeout = 60)
{
    store_failure_after_claim_is_503_and_not_cached();
}

static void release_failure_leaves_the_lease_to_expire(void)
{
    char key[96], cust[64], body[256];
    test_unique(key, sizeof key, "k");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust, "13");
    struct test_response r;
    /* The database is gone for the completion and the release alike: the
     * record stays claimed, so a retry is told to wait, never charged twice. */
    faulty_store_fail(faulty, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    faulty_store_fail(faulty, FAULTY_RELEASE, 1, STORE_UNAVAILABLE);
    test_post_payment(&srv, key, body, &r);
    test_expect_error(&r, 503, "store_unavailable", NULL);
    test_response_free(&r);
    test_post_payment(&srv, key, body, &r);
    test_expect_error(&r, 409, "idempotency_key_in_use", NULL);
    test_response_free(&r);
    cr_assert_eq(count_for(cust), 0);
}

Test(http_mem, release_failure_leaves_the_lease_to_expire, .init = start_mem_faulty, .fini = stop,
     .timeout = 60)
{
    release_failure_leaves_the_lease_to_expire();
}
