/* test_payment.c - payments: request validation, strict JSON bodies, response shapes, ids;
 * and which addresses a webhook endpoint may point at */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "apierr.h"
#include "payment.h"
#include "store.h"
#include "utf8.h"
#include "webhook_endpoint.h"

/* ---- payment validation ----------------------------------------------------- */

static void expect_reject(const char *body, int status, const char *code, const char *param)
{
    struct payment_request r;
    struct apierr e;
    memset(&e, 0, sizeof e);
    cr_assert_eq(payment_parse(body, strlen(body), &r, &e), -1, "accepted: %s", body);
    cr_assert_eq(e.status, status, "%s: status %d", body, e.status);
    cr_assert_str_eq(e.code, code, "%s: code %s", body, e.code);
    cr_assert_str_eq(e.param, param ? param : "", "%s: param %s", body, e.param);
}

Test(payment, valid_request_is_normalized)
{
    const char *body = "{\"amount\": 10.5, \"currency\": \"USD\", \"customer_id\": \"cust_1-A\","
                       " \"description\": \"caf\xc3\xa9\"}";
    struct payment_request r;
    struct apierr e;
    cr_assert_eq(payment_parse(body, strlen(body), &r, &e), 0, "%s", e.message);
    cr_assert_eq(r.amount_minor, 1050);
    cr_assert_str_eq(r.currency, "USD");
    cr_assert_str_eq(r.customer_id, "cust_1-A");
    cr_assert_str_eq(r.description, "caf\xc3\xa9");
    payment_request_clear(&r);
}

Test(payment, json_errors_are_400)
{
    expect_reject("", 400, "invalid_json", NULL);
    expect_reject("{", 400, "invalid_json", NULL);
    expect_reject("[1,2]", 400, "invalid_json", NULL);
    expect_reject("\"amount\"", 400, "invalid_json", NULL);
    expect_reject("{\"amount\":1,\"amount\":2,\"currency\":\"USD\",\"customer_id\":\"c\"}", 400,
                  "invalid_json", "amount");
}

/* payment_parse on a thread with a civetweb worker's stack (100 KiB), as the
 * server runs it: 0 accepted, else the error's status. */
struct parse_job {
    const char *body;
    size_t len;
    struct apierr e;
    int rc;
};

static void *parse_on_worker_stack(void *arg)
{
    struct parse_job *j = arg;
    struct payment_request r;
    j->rc = payment_parse(j->body, j->len, &r, &j->e);
    if (j->rc == 0)
        payment_request_clear(&r);
    return NULL;
}

static int parse_status(const char *body, size_t len, struct apierr *e)
{
    struct parse_job j = {.body = body, .len = len};
    pthread_attr_t a;
    pthread_t t;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 100 * 1024);
    cr_assert_eq(pthread_create(&t, &a, parse_on_worker_stack, &j), 0);
    pthread_join(t, NULL);
    pthread_attr_destroy(&a);
    if (e)
        *e = j.e;
    return j.rc == 0 ? 0 : j.e.status;
}

/* Deep nesting anywhere is refused before cJSON's recursion runs: 810 bytes
 * of '[' used to end the process with SIGSEGV on a worker's stack. */
Test(payment, deep_nesting_is_refused_in_every_position)
{
    const char *shapes[] = {
        "{\"amount\":%s",
        "%s",
        "{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":%s",
        "{\"x_unknown\":%s",
        "{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":\"d\"}%s",
    };
    for (int open = 0; open < 2; open++) {
        size_t n = 100000;
        char *deep = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            deep[i] = open ? '{' : '[';
        if (open) /* objects need keys: {"a":{"a":... */
            for (size_t i = 0; i + 5 <= n; i += 5)
                memcpy(deep + i, "{\"a\":", 5);
        deep[n] = '\0';
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            size_t cap = n + 200;
            char *body = malloc(cap);
            int len = snprintf(body, cap, shapes[k], deep);
            struct apierr e;
            cr_assert_eq(parse_status(body, (size_t)len, &e), 400, "shape %zu", k);
            cr_assert_str_eq(e.code, "invalid_json");
            free(body);
        }
        free(deep);
    }
    /* Within the documented depth, a nested value is still a field error. */
    struct apierr e;
    const char *ok_depth = "{\"amount\":[[[1]]],\"currency\":\"USD\",\"customer_id\":\"c\"}";
    cr_assert_eq(parse_status(ok_depth, strlen(ok_depth), &e), 422);
    cr_assert_str_eq(e.code, "invalid_amount");
    const char *too_deep = "{\"amount\":[[[[1]]]],\"currency\":\"USD\",\"customer_id\":\"c\"}";
    cr_assert_eq(parse_status(too_deep, strlen(too_deep), &e), 400);
}

/* What RFC 8259 forbids is refused, however cJSON would have read it. */
Test(payment, only_strict_json_is_accepted)
{
    static const struct {
        const char *body;
        size_t len; /* 0: strlen */
    } bad[] = {
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"} xyz", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"}\0garbage", 51},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"}{\"amount\":999}", 0},
        {"{\"amount\":00012,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":-01,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":1.,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":.5,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":+1,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"a\nb\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"a\tb\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"\x1b[2J\"}",
         0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\\u0000; DROP TABLE x\"}", 0},
        {"{\"amount\\u0000junk\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\\u0000X\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"\\ud800\"}",
         0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"\\udc00x\"}",
         0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"\\x41\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\x00\",\"d\":1}", 47},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\",}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"", 0},
        {"{'amount':1}", 0},
        {"{\"amount\":NaN,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
        {"{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"\xc0\xaf\"}", 0},
        {"\xef\xbb\xbf{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c1\"}", 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = bad[i].len ? bad[i].len : strlen(bad[i].body);
        struct apierr e;
        cr_assert_eq(parse_status(bad[i].body, len, &e), 400, "case %zu accepted or %d", i,
                     e.status);
        cr_assert_str_eq(e.code, "invalid_json", "case %zu", i);
    }
    /* Escapes RFC 8259 allows still work, and decode to what they name. */
    const char *good = "{\"am\\u006funt\":1,\"currency\":\"USD\",\"customer_id\":\"c1\","
                       "\"description\":\"tab\\there \\ud83d\\udcb8 \\\" \\\\ \\/\"}";
    struct payment_request r;
    struct apierr e;
    cr_assert_eq(payment_parse(good, strlen(good), &r, &e), 0, "%s", e.message);
    cr_assert_str_eq(r.description, "tab\there \xf0\x9f\x92\xb8 \" \\ /");
    payment_request_clear(&r);
}

/* The amount charged is the decimal text sent, or a 422: never a rounding. */
Test(payment, amounts_are_read_from_their_text)
{
    static const struct {
        const char *amount, *currency;
        long long minor; /* 0: refused */
    } cases[] = {
        {"12.3400000001", "USD", 0},
        {"999999.9899999", "USD", 0},
        {"100.00000001", "JPY", 0},
        {"1.00000000001", "CLF", 0},
        {"1e999", "USD", 0},
        {"0.1", "JPY", 0},
        {"12.34", "USD", 1234},
        {"1.2e1", "USD", 1200},
        {"100", "JPY", 100},
        {"1.0000", "CLF", 10000},
        {"999999.99", "USD", 99999999},
        {"0.001", "KWD", 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char body[200];
        snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"%s\",\"customer_id\":\"c\"}",
                 cases[i].amount, cases[i].currency);
        struct payment_request r;
        struct apierr e;
        int rc = payment_parse(body, strlen(body), &r, &e);
        if (cases[i].minor == 0) {
            cr_assert_eq(rc, -1, "%s %s accepted as %lld", cases[i].amount, cases[i].currency,
                         (long long)r.amount_minor);
            cr_assert_str_eq(e.code, "invalid_amount");
            cr_assert_eq(e.status, 422);
        } else {
            cr_assert_eq(rc, 0, "%s: %s", body, e.message);
            cr_assert_eq(r.amount_minor, cases[i].minor, "%s", body);
            payment_request_clear(&r);
        }
    }
}

/* What is echoed is valid UTF-8, cut at a character boundary. */
Test(payment, echoed_field_names_stay_utf8)
{
    char body[400], name[200] = "";
    for (int i = 0; i < 30; i++)
        strcat(name, "\xe4\xb8\xad"); /* U+4E2D, 3 bytes */
    snprintf(body, sizeof body, "{\"%s\":1}", name);
    struct apierr e;
    cr_assert_eq(parse_status(body, strlen(body), &e), 422);
    cr_assert_str_eq(e.code, "unknown_field");
    cr_assert(utf8_valid(e.param, strlen(e.param)), "param cut mid-character");
    cr_assert(utf8_valid(e.message, strlen(e.message)), "message cut mid-character");
    cr_assert_eq(strlen(e.param), 63, "21 whole characters fit in the 64-byte param");
    char *json = apierr_json(&e);
    cr_assert(utf8_valid(json, strlen(json)));
    free(json);
}

Test(payment, unknown_field_is_422)
{
    expect_reject("{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"cvv\":\"123\"}", 422,
                  "unknown_field", "cvv");
}

Test(payment, amount_rules)
{
    expect_reject("{\"currency\":\"USD\",\"customer_id\":\"c\"}", 422, "invalid_amount", "amount");
    const char *bad[] = {"\"10\"", "0",      "-1",     "10.001", "1000000", "999999.991",
                         "1e400",  "-1e400", "1e-400", "null",   "true",    "[1]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char body[200];
        snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"USD\",\"customer_id\":\"c\"}",
                 bad[i]);
        expect_reject(body, 422, "invalid_amount", "amount");
    }
    expect_reject("{\"amount\":10.5,\"currency\":\"JPY\",\"customer_id\":\"c\"}", 422,
                  "invalid_amount", "amount");
    expect_reject("{\"amount\":1.2345,\"currency\":\"KWD\",\"customer_id\":\"c\"}", 422,
                  "invalid_amount", "amount");
}

Test(payment, currency_rules)
{
    expect_reject("{\"amount\":1,\"customer_id\":\"c\"}", 422, "invalid_currency", "currency");
    expect_reject("{\"amount\":1,\"currency\":\"usd\",\"customer_id\":\"c\"}", 422,
                  "invalid_currency", "currency");
    expect_reject("{\"amount\":1,\"currency\":\"ABC\",\"customer_id\":\"c\"}", 422,
                  "invalid_currency", "currency");
    expect_reject("{\"amount\":1,\"currency\":840,\"customer_id\":\"c\"}", 422, "invalid_currency",
                  "currency");
}

Test(payment, customer_id_rules)
{
    cr_assert(payment_customer_valid("a"));
    cr_assert(payment_customer_valid("A-z_09"));
    char longest[66];
    memset(longest, 'c', 64);
    longest[64] = '\0';
    cr_assert(payment_customer_valid(longest));
    longest[64] = 'c';
    longest[65] = '\0';
    cr_assert_not(payment_customer_valid(longest));
    cr_assert_not(payment_customer_valid(""));
    cr_assert_not(payment_customer_valid("a b"));
    cr_assert_not(payment_customer_valid("a/b"));
    cr_assert_not(payment_customer_valid("caf\xc3\xa9"));
    expect_reject("{\"amount\":1,\"currency\":\"USD\"}", 422, "invalid_customer_id", "customer_id");
    expect_reject("{\"amount\":1,\"currency\":\"USD\",\"customer_id\":7}", 422,
                  "invalid_customer_id", "customer_id");
    expect_reject("{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"\"}", 422,
                  "invalid_customer_id", "customer_id");
}

Test(payment, description_rules)
{
    char body[600], d[300];
    memset(d, 'd', 255);
    d[255] = '\0';
    snprintf(body, sizeof body,
             "{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":\"%s\"}", d);
    struct payment_request r;
    struct apierr e;
    cr_assert_eq(payment_parse(body, strlen(body), &r, &e), 0);
    payment_request_clear(&r);
    d[255] = 'd';
    d[256] = '\0';
    snprintf(body, sizeof body,
             "{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":\"%s\"}", d);
    expect_reject(body, 422, "invalid_description", "description");
    expect_reject("{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":5}",
                  422, "invalid_description", "description");
    /* Not UTF-8: not a JSON text at all (RFC 8259 section 8.1). */
    expect_reject("{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"c\",\"description\":"
                  "\"\xff\xfe\"}",
                  400, "invalid_json", NULL);
    cr_assert(utf8_valid("\xf0\x9f\x92\xb8", 4));
    cr_assert_not(utf8_valid("\xc0\xaf", 2));     /* overlong */
    cr_assert_not(utf8_valid("\xed\xa0\x80", 3)); /* surrogate */
    cr_assert_not(utf8_valid("\xe2\x82", 2));     /* truncated */
}

/* ---- JSON ---------------------------------------------------------------------- */

Test(json, payment_object_has_every_field)
{
    struct store_payment p = {.transaction_id = "txn_abc",
                              .idempotency_key = "k1",
                              .customer_id = "c1",
                              .amount_minor = 1050,
                              .currency = "USD",
                              .description = NULL,
                              .status = "completed",
                              .processed_at_us = 1700000000123456LL};
    char *s = payment_json(&p);
    cr_assert_str_eq(s, "{\"transaction_id\":\"txn_abc\",\"status\":\"completed\",\"amount\":10.50,"
                        "\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":null,"
                        "\"processed_at\":\"2023-11-14T22:13:20.123456Z\",\"charge_id\":null,"
                        "\"idempotency_key\":\"k1\",\"amount_refunded\":0.00,\"refunded\":false}");
    free(s);
    p.charge_id = "ch_1";
    s = payment_json(&p);
    cr_assert(strstr(s, "\"charge_id\":\"ch_1\""), "%s", s);
    free(s);
    p.currency[0] = 'J', p.currency[1] = 'P', p.currency[2] = 'Y';
    p.amount_minor = 500;
    p.description = "say \"hi\"";
    s = payment_json(&p);
    cJSON *o = cJSON_Parse(s);
    cr_assert_not_null(o, "not JSON: %s", s);
    cr_assert_eq(cJSON_GetObjectItem(o, "amount")->valuedouble, 500);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "description")->valuestring, "say \"hi\"");
    cJSON_Delete(o);
    free(s);
}

Test(json, declined_and_error_shapes)
{
    struct store_payment p = {.transaction_id = "txn_x", .status = "declined", .charge_id = "ch_d"};
    char *s = payment_declined_json(&p);
    cr_assert_str_eq(s, "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
                        "\"message\":\"the card was declined\"},\"transaction_id\":\"txn_x\","
                        "\"status\":\"declined\",\"charge_id\":\"ch_d\"}");
    free(s);
    struct apierr e;
    apierr_of(&e, APIERR_INVALID_AMOUNT, "amount", "bad \"%s\"", "x");
    s = apierr_json(&e);
    cr_assert_str_eq(s, "{\"error\":{\"type\":\"invalid_request_error\",\"code\":"
                        "\"invalid_amount\",\"message\":\"bad \\\"x\\\"\",\"param\":\"amount\"}}");
    free(s);
    apierr_of(&e, APIERR_INVALID_JSON, NULL, "x");
    s = apierr_json(&e);
    cr_assert_null(strstr(s, "param"));
    free(s);
}

Test(payment, transaction_ids_are_random_and_url_safe)
{
    char a[PAYMENT_ID_LEN + 1], b[PAYMENT_ID_LEN + 1];
    cr_assert_eq(payment_new_id(a), 0);
    cr_assert_eq(payment_new_id(b), 0);
    cr_assert_eq(strlen(a), 28);
    cr_assert_eq(strncmp(a, "txn_", 4), 0);
    cr_assert_str_neq(a, b);
    for (int i = 4; i < 28; i++)
        cr_assert(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", a[i]));
}

Test(payment, simulated_processor_by_customer)
{
    struct payment_request r = {.amount_minor = 1};
    strcpy(r.customer_id, "cust-1");
    cr_assert_eq(payment_process(&r, 0), PAYMENT_APPROVED);
    strcpy(r.customer_id, "cust-declined-7");
    cr_assert_eq(payment_process(&r, 0), PAYMENT_DECLINED);
    strcpy(r.customer_id, "cust-gateway-error");
    cr_assert_eq(payment_process(&r, 0), PAYMENT_GATEWAY_ERROR);
}

/* ---- webhook endpoints: the addresses a tenant may make us connect to ---------- */

/* Whether webhook_address_public() calls text (an IPv4 or IPv6 address)
 * public, asked with the sockaddr the resolver would hand it. */
static int address_public(const char *text)
{
    struct sockaddr_in v4 = {.sin_family = AF_INET};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6};
    if (inet_pton(AF_INET, text, &v4.sin_addr) == 1)
        return webhook_address_public((const struct sockaddr *)&v4);
    cr_assert_eq(inet_pton(AF_INET6, text, &v6.sin6_addr), 1, "not an address: %s", text);
    return webhook_address_public((const struct sockaddr *)&v6);
}

Test(webhook_address, the_operators_own_network_is_refused)
{
    static const struct {
        const char *address, *what;
    } refused[] = {
        {"127.0.0.1", "loopback"},
        {"127.255.255.254", "loopback"},
        {"10.0.0.1", "private"},
        {"10.255.255.255", "private"},
        {"172.16.0.1", "private"},
        {"172.31.255.255", "private"},
        {"192.168.1.1", "private"},
        {"192.168.255.255", "private"},
        {"100.64.0.1", "shared (carrier NAT)"},
        {"100.127.255.255", "shared (carrier NAT)"},
        {"169.254.169.254", "link-local: cloud metadata"},
        {"169.254.0.1", "link-local"},
        {"0.0.0.0", "unspecified"},
        {"0.1.2.3", "this network"},
        {"224.0.0.1", "multicast"},
        {"239.255.255.250", "multicast"},
        {"255.255.255.255", "broadcast"},
        {"240.0.0.1", "reserved"},
        {"198.18.0.1", "benchmarking"},
        {"198.19.255.255", "benchmarking"},
        {"192.0.0.1", "IETF protocol assignments"},
        {"::", "unspecified"},
        {"::1", "loopback"},
        {"fc00::1", "unique local"},
        {"fd12::1", "unique local"},
        {"fdff:ffff::1", "unique local"},
        {"fe80::1", "link-local"},
        {"febf::1", "link-local"},
        {"ff02::1", "multicast"},
        {"ff05::1:3", "multicast"},
        {"::ffff:127.0.0.1", "loopback, IPv4-mapped"},
        {"::ffff:10.0.0.1", "private, IPv4-mapped"},
        {"::ffff:169.254.169.254", "cloud metadata, IPv4-mapped"},
        {"::ffff:192.168.0.1", "private, IPv4-mapped"},
        {"::ffff:0.0.0.0", "unspecified, IPv4-mapped"},
        {"64:ff9b::a00:1", "private, through NAT64"},
        {"64:ff9b::7f00:1", "loopback, through NAT64"},
        {"64:ff9b::a9fe:a9fe", "cloud metadata, through NAT64"},
        {"::127.0.0.1", "loopback, IPv4-compatible"},
        {"::8.8.8.8", "IPv4-compatible: deprecated, never public"},
        {"2002:7f00:1::", "loopback, through 6to4"},
        {"2002:a00:1::1", "private, through 6to4"},
        {"fec0::1", "site-local (deprecated)"},
        {"feff::1", "site-local (deprecated)"},
        {"fe7f::1", "reserved: outside 2000::/3"},
        {"4000::1", "reserved: outside 2000::/3"},
        {"2001:db8::1", "documentation"},
        {"3fff::1", "documentation (3fff::/20)"},
        {"2001:0:4136:e378::1", "Teredo: IPv4 behind a tunnel"},
        {"192.0.2.1", "documentation (TEST-NET-1)"},
        {"198.51.100.7", "documentation (TEST-NET-2)"},
        {"203.0.113.200", "documentation (TEST-NET-3)"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        cr_expect_eq(address_public(refused[i].address), 0, "%s (%s) is called public",
                     refused[i].address, refused[i].what);
}

Test(webhook_address, public_addresses_are_accepted)
{
    /* public ones, and those just outside each refused range */
    static const struct {
        const char *address, *what;
    } accepted[] = {
        {"8.8.8.8", "public"},
        {"1.1.1.1", "public"},
        {"9.255.255.255", "below 10/8"},
        {"11.0.0.1", "above 10/8"},
        {"100.63.255.255", "below 100.64/10"},
        {"100.128.0.1", "above 100.64/10"},
        {"126.255.255.255", "below 127/8"},
        {"128.0.0.1", "above 127/8"},
        {"169.253.255.255", "below 169.254/16"},
        {"169.255.0.1", "above 169.254/16"},
        {"172.15.255.255", "below 172.16/12"},
        {"172.32.0.1", "above 172.16/12"},
        {"192.0.1.1", "above 192.0.0/24"},
        {"192.167.255.255", "below 192.168/16"},
        {"192.169.0.1", "above 192.168/16"},
        {"198.17.255.255", "below 198.18/15"},
        {"198.20.0.1", "above 198.18/15"},
        {"223.255.255.255", "below multicast"},
        {"2606:4700:4700::1111", "public"},
        {"2001:4860:4860::8888", "public"},
        {"::ffff:8.8.8.8", "public, IPv4-mapped"},
        {"64:ff9b::808:808", "public, through NAT64"},
        {"2002:808:808::1", "public, through 6to4"},
        {"3fff:1000::1", "in 2000::/3, above 3fff::/20"},
        {"2001:200::1", "global unicast, outside Teredo"},
        {"192.0.3.1", "above TEST-NET-1"},
        {"203.0.114.1", "above TEST-NET-3"},
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++)
        cr_expect_eq(address_public(accepted[i].address), 1, "%s (%s) is refused",
                     accepted[i].address, accepted[i].what);
}

Test(webhook_address, an_address_of_another_family_is_refused)
{
    struct sockaddr sa = {.sa_family = AF_UNIX};
    cr_assert_eq(webhook_address_public(&sa), 0);
}
