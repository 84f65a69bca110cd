/* test_refunds.c - refunds end to end: a real server on 127.0.0.1, real
 * requests over a socket, against both stores */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

static struct test_server srv;

static void start(enum store_kind kind, const char *api_keys)
{
    struct config c;
    test_config(&c, kind);
    if (api_keys)
        snprintf(c.api_keys, sizeof c.api_keys, "%s", api_keys);
    test_server_start(&srv, &c);
}
static void start_mem(void)
{
    start(STORE_KIND_MEMORY, NULL);
}
static void start_pg(void)
{
    start(STORE_KIND_POSTGRES, NULL);
}
static void start_mem_tenants(void)
{
    start(STORE_KIND_MEMORY, "acme:key-acme-0001,globex:key-globex-0002");
}
static void start_pg_tenants(void)
{
    start(STORE_KIND_POSTGRES, "acme:key-acme-0001,globex:key-globex-0002");
}
static void stop(void)
{
    test_server_stop(&srv);
}

#define BOTH(name)                                                                                 \
    static void name(void);                                                                        \
    Test(refunds_mem, name, .init = start_mem, .fini = stop, .timeout = 60)                        \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(refunds_pg, name, .init = start_pg, .fini = stop, .timeout = 60)                          \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)

/* A payment of amount in currency for customer; its id into id. */
static void pay(const char *amount, const char *currency, const char *customer, char *id,
                size_t len)
{
    char key[96], body[256];
    test_unique(key, sizeof key, "pay");
    snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"%s\",\"customer_id\":\"%s\"}",
             amount, currency, customer);
    struct test_response r;
    test_post_payment(&srv, key, body, &r);
    cr_assert(r.status == 201 || r.status == 402, "payment: %ld %s", r.status, r.body);
    cJSON *o = test_json(&r);
    snprintf(id, len, "%s", test_json_str(o, "transaction_id"));
    cJSON_Delete(o);
    test_response_free(&r);
}

static void refund(const char *payment, const char *key, const char *body, struct test_response *r)
{
    char path[160];
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    test_post_json(&srv, path, key, body, r);
}

static void get(const char *path, struct test_response *r)
{
    char u[512];
    snprintf(u, sizeof u, "%s%s", srv.base, path);
    test_http("GET", u, NULL, NULL, 0, r);
}

/* The payment's amount_refunded as text, and whether it is refunded. */
static void payment_state(const char *payment, char *refunded, size_t len, int *full)
{
    char path[128];
    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/payments/%s", payment);
    get(path, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    /* the raw text: "amount_refunded":30.00 (money is never a float here) */
    const char *p = strstr(r.body, "\"amount_refunded\":");
    cr_assert_not_null(p, "%s", r.body);
    p += strlen("\"amount_refunded\":");
    size_t n = strcspn(p, ",}");
    snprintf(refunded, len, "%.*s", (int)n, p);
    cJSON *o = test_json(&r);
    *full = cJSON_IsTrue(cJSON_GetObjectItem(o, "refunded"));
    cJSON_Delete(o);
    test_response_free(&r);
}

BOTH(refund_is_created_replayed_and_listed)
{
    char cust[64], payment[64], key[96], refunded[32];
    int full;
    test_unique(cust, sizeof cust, "cust");
    test_unique(key, sizeof key, "refund");
    pay("100.00", "USD", cust, payment, sizeof payment);

    struct test_response a, b, g;
    refund(payment, key, "{\"amount\":30,\"reason\":\"requested_by_customer\"}", &a);
    cr_assert_eq(a.status, 201, "%s", a.body);
    cJSON *o = test_json(&a);
    const char *id = test_json_str(o, "refund_id");
    cr_assert_eq(strncmp(id, "re_", 3), 0);
    cr_assert_str_eq(test_json_str(o, "transaction_id"), payment);
    cr_assert_str_eq(test_json_str(o, "currency"), "USD");
    cr_assert_str_eq(test_json_str(o, "status"), "succeeded");
    cr_assert_str_eq(test_json_str(o, "reason"), "requested_by_customer");
    cr_assert_str_eq(test_json_str(o, "idempotency_key"), key);
    cr_assert_eq(strlen(test_json_str(o, "created_at")), 27);
    cr_assert(strstr(a.body, "\"amount\":30.00,"), "%s", a.body);
    char loc[128];
    snprintf(loc, sizeof loc, "/api/v1/refunds/%s", id);
    cr_assert_str_eq(a.location, loc);
    cr_assert_str_empty(a.replay);

    /* the retry, spelled otherwise: the first answer, byte for byte */
    refund(payment, key, "{ \"reason\": \"requested_by_customer\", \"amount\": 30.0 }", &b);
    cr_assert_eq(b.status, 200, "%s", b.body);
    cr_assert_str_eq(b.replay, "true");
    cr_assert_str_eq(b.replayed, "true");
    cr_assert_str_eq(b.body, a.body);
    cr_assert_str_eq(b.location, a.location);
    get(loc, &g);
    cr_assert_eq(g.status, 200);
    cr_assert_str_eq(g.body, a.body);
    test_response_free(&g);
    payment_state(payment, refunded, sizeof refunded, &full);
    cr_assert_str_eq(refunded, "30.00");
    cr_assert_not(full);

    /* no amount: the rest; then the payment is fully refunded */
    struct test_response c;
    test_unique(key, sizeof key, "refund");
    refund(payment, key, "{}", &c);
    cr_assert_eq(c.status, 201, "%s", c.body);
    cr_assert(strstr(c.body, "\"amount\":70.00,"), "%s", c.body);
    cr_assert(strstr(c.body, "\"reason\":null"), "%s", c.body);
    payment_state(payment, refunded, sizeof refunded, &full);
    cr_assert_str_eq(refunded, "100.00");
    cr_assert(full);

    /* the list: newest first, one page at a time */
    char path[256];
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds?limit=1", payment);
    get(path, &g);
    cr_assert_eq(g.status, 200, "%s", g.body);
    cJSON *l = test_json(&g);
    cr_assert_eq(cJSON_GetObjectItem(l, "count")->valueint, 1);
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(l, "has_more")));
    cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItem(l, "refunds"), 0);
    cJSON *second_o = test_json(&c);
    cr_assert_str_eq(test_json_str(first, "refund_id"), test_json_str(second_o, "refund_id"));
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds?starting_after=%s", payment,
             test_json_str(l, "next_cursor"));
    struct test_response g2;
    get(path, &g2);
    cJSON *l2 = test_json(&g2);
    cr_assert_eq(cJSON_GetObjectItem(l2, "count")->valueint, 1);
    cr_assert_not(cJSON_IsTrue(cJSON_GetObjectItem(l2, "has_more")));
    cr_assert(cJSON_IsNull(cJSON_GetObjectItem(l2, "next_cursor")));
    cr_assert_str_eq(
        test_json_str(cJSON_GetArrayItem(cJSON_GetObjectItem(l2, "refunds"), 0), "refund_id"), id);
    /* counted once each, under their route templates. The server counts a
     * request just after writing its answer, so a scrape can come before
     * the last count: scrape until all three show (30 s only turns counts
     * that never come into a failure). */
    const char *const counted[] = {
        "\nmockery_refunds_total 2\n",
        "\nmockery_http_requests_total{route=\"/api/v1/payments/{id}/refunds\",method=\"POST\","
        "status=\"201\"} 2\n",
        "\nmockery_http_requests_total{route=\"/api/v1/refunds/{id}\",method=\"GET\","
        "status=\"200\"} 1\n"};
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        char *m = test_scrape(&srv);
        size_t missing = 0;
        while (missing < 3 && strstr(m, counted[missing]))
            missing++;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (missing == 3 || now.tv_sec - t0.tv_sec >= 30) {
            cr_assert_eq(missing, 3, "no '%s' on /metrics within 30 s:\n%s",
                         missing < 3 ? counted[missing] + 1 : "", m);
            free(m);
            break;
        }
        free(m);
        nanosleep(&(struct timespec){0, 20 * 1000000L}, NULL);
    }
    cJSON_Delete(l);
    cJSON_Delete(l2);
    cJSON_Delete(second_o);
    cJSON_Delete(o);
    test_response_free(&g);
    test_response_free(&g2);
    test_response_free(&a);
    test_response_free(&b);
    test_response_free(&c);
}

BOTH(refusals_are_clear_and_not_cached)
{
    char cust[64], payment[64], yen[64], declined[64], key[96], path[160];
    struct test_response r;
    test_unique(cust, sizeof cust, "cust");
    pay("10.00", "USD", cust, payment, sizeof payment);
    pay("500", "JPY", cust, yen, sizeof yen);
    char dcust[64];
    test_unique(dcust, sizeof dcust, "cust-declined");
    pay("5.00", "USD", dcust, declined, sizeof declined);
    test_unique(key, sizeof key, "refund");

    /* before anything is claimed, then against the payment (too precise
     * for its currency, more than it, declined); one key for all */
    const struct {
        const char *payment, *body;
        long status;
        const char *code, *param;
    } refused[] = {
        {payment, "{\"amount\":0}", 422, "invalid_amount", "amount"},
        {payment, "{\"amount\":-1}", 422, "invalid_amount", "amount"},
        {payment, "{\"amount\":\"1\"}", 422, "invalid_amount", "amount"},
        {payment, "{\"reason\":\"whim\"}", 422, "invalid_reason", "reason"},
        {payment, "{\"amount\":1,\"currency\":\"USD\"}", 422, "unknown_field", "currency"},
        {payment, "{\"amount\":1", 400, "invalid_json", NULL},
        {"txn_doesnotexist", "{}", 404, "payment_not_found", NULL},
        {"not-an-id", "{}", 404, "payment_not_found", NULL},
        {payment, "{\"amount\":0.001}", 422, "invalid_amount", "amount"},
        {yen, "{\"amount\":0.5}", 422, "invalid_amount", "amount"},
        {payment, "{\"amount\":10.01}", 422, "refund_exceeds_payment", "amount"},
        {declined, "{}", 409, "payment_not_refundable", NULL},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        refund(refused[i].payment, key, refused[i].body, &r);
        test_expect_error(&r, refused[i].status, refused[i].code, refused[i].param);
        test_response_free(&r);
    }

    /* none of that was cached: the key still works, for the first request
     * that succeeds */
    refund(payment, key, "{\"amount\":10}", &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
    refund(payment, key, "{\"amount\":10}", &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    test_response_free(&r);

    /* reads of what is not there */
    get("/api/v1/refunds/re_doesnotexist", &r);
    test_expect_error(&r, 404, "refund_not_found", NULL);
    test_response_free(&r);
    get("/api/v1/payments/txn_doesnotexist/refunds", &r);
    test_expect_error(&r, 404, "payment_not_found", NULL);
    test_response_free(&r);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds?starting_after=re_nope", payment);
    get(path, &r);
    test_expect_error(&r, 400, "invalid_parameter", "starting_after");
    test_response_free(&r);
    snprintf(path, sizeof path, "%s/api/v1/payments/%s/refunds", srv.base, payment);
    test_http("PUT", path, NULL, NULL, 0, &r);
    test_expect_error(&r, 405, "method_not_allowed", NULL);
    cr_assert_str_eq(r.allow, "GET, POST");
    test_response_free(&r);
}

BOTH(gateway_failure_is_502_and_runs_again)
{
    char cust[64], payment[64], key[96], path[160];
    struct test_response r;
    test_unique(cust, sizeof cust, "cust-refund-error");
    test_unique(key, sizeof key, "refund");
    pay("20.00", "EUR", cust, payment, sizeof payment);
    for (int i = 0; i < 2; i++) {
        refund(payment, key, "{\"amount\":5}", &r);
        test_expect_error(&r, 502, "gateway_error", NULL);
        cr_assert_str_empty(r.replay, "a 502 is never replayed");
        test_response_free(&r);
    }
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    get(path, &r);
    cJSON *o = test_json(&r);
    cr_assert_eq(cJSON_GetObjectItem(o, "count")->valueint, 0);
    cJSON_Delete(o);
    test_response_free(&r);
}

BOTH(a_payment_key_used_on_a_refund_route_is_422)
{
    char cust[64], key[96], body[256], path[160];
    struct test_response p, r;
    test_unique(cust, sizeof cust, "cust");
    test_unique(key, sizeof key, "shared");
    snprintf(body, sizeof body, "{\"amount\":3,\"currency\":\"USD\",\"customer_id\":\"%s\"}", cust);
    test_post_payment(&srv, key, body, &p);
    cr_assert_eq(p.status, 201, "%s", p.body);
    cJSON *o = test_json(&p);
    refund(test_json_str(o, "transaction_id"), key, "{}", &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", test_json_str(o, "transaction_id"));
    get(path, &r);
    cr_assert(strstr(r.body, "\"count\":0"), "%s", r.body);
    test_response_free(&r);
    cJSON_Delete(o);
    test_response_free(&p);
}

static void refunds_of_another_tenant_are_404(void)
{
    const char *acme = "Authorization: Bearer key-acme-0001";
    const char *globex = "Authorization: Bearer key-globex-0002";
    char cust[64], u[256], key[96], keyh[128], body[256];
    test_unique(cust, sizeof cust, "cust");
    test_unique(key, sizeof key, "k");
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    snprintf(body, sizeof body, "{\"amount\":3,\"currency\":\"USD\",\"customer_id\":\"%s\"}", cust);
    const char *pay_h[] = {"Content-Type: application/json", keyh, acme, NULL};
    struct test_response p, r;
    snprintf(u, sizeof u, "%s/api/v1/payments", srv.base);
    test_http("POST", u, pay_h, body, strlen(body), &p);
    cr_assert_eq(p.status, 201, "%s", p.body);
    cJSON *o = test_json(&p);
    snprintf(u, sizeof u, "%s/api/v1/payments/%s/refunds", srv.base,
             test_json_str(o, "transaction_id"));
    test_unique(key, sizeof key, "k");
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *as_globex[] = {"Content-Type: application/json", keyh, globex, NULL};
    test_http("POST", u, as_globex, "{}", 2, &r);
    test_expect_error(&r, 404, "payment_not_found", NULL);
    test_response_free(&r);
    const char *as_acme[] = {"Content-Type: application/json", keyh, acme, NULL};
    test_http("POST", u, as_acme, "{}", 2, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    char loc[512];
    snprintf(loc, sizeof loc, "%s%s", srv.base, r.location);
    test_response_free(&r);
    const char *read_globex[] = {globex, NULL};
    test_http("GET", loc, read_globex, NULL, 0, &r);
    test_expect_error(&r, 404, "refund_not_found", NULL);
    test_response_free(&r);
    cJSON_Delete(o);
    test_response_free(&p);
}

Test(refunds_mem, refunds_of_another_tenant_are_404, .init = start_mem_tenants, .fini = stop,
     .timeout = 60)
{
    refunds_of_another_tenant_are_404();
}

Test(refunds_pg, refunds_of_another_tenant_are_404, .init = start_pg_tenants, .fini = stop,
     .timeout = 60)
{
    refunds_of_another_tenant_are_404();
}
