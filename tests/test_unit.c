/* test_unit.c - pure functions: keys, money, validation, fingerprints, JSON,
 * configuration, API keys, log lines, UTC text, decimals, outcomes */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "apierr.h"
#include "auth.h"
#include "config.h"
#include "decimal.h"
#include "hash.h"
#include "http.h"
#include "idem.h"
#include "idemkey.h"
#include "money.h"
#include "outcome.h"
#include "payment.h"
#include "store.h"
#include "utc_text.h"
#include "utf8.h"

/* ---- Idempotency-Key -------------------------------------------------------- */

Test(idem_key, bare_and_quoted_forms_are_the_same_key)
{
    char a[HTTP_KEY_MAX + 1], b[HTTP_KEY_MAX + 1];
    cr_assert_eq(idemkey_parse("order-42", a), IDEMKEY_OK);
    cr_assert_eq(idemkey_parse("\"order-42\"", b), IDEMKEY_OK);
    cr_assert_str_eq(a, "order-42");
    cr_assert_str_eq(b, "order-42");
}

Test(idem_key, missing_empty_and_malformed)
{
    char k[HTTP_KEY_MAX + 1];
    cr_assert_eq(idemkey_parse(NULL, k), IDEMKEY_MISSING);
    cr_assert_eq(idemkey_parse("", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("\"\"", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("two words", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("tab\there", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("caf\xc3\xa9", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("\"unterminated", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("\"esc\\\"aped\"", k), IDEMKEY_INVALID);
    cr_assert_eq(idemkey_parse("a\"b", k), IDEMKEY_INVALID);
}

Test(idem_key, length_limit_is_255)
{
    char k[HTTP_KEY_MAX + 1], v[300];
    memset(v, 'k', 255);
    v[255] = '\0';
    cr_assert_eq(idemkey_parse(v, k), IDEMKEY_OK);
    cr_assert_eq(strlen(k), 255);
    v[255] = 'k';
    v[256] = '\0';
    cr_assert_eq(idemkey_parse(v, k), IDEMKEY_INVALID);
}

Test(idem_key, every_visible_ascii_character_is_allowed)
{
    char v[100], k[HTTP_KEY_MAX + 1];
    size_t n = 0;
    for (int c = 0x21; c <= 0x7E; c++)
        if (c != '"')
            v[n++] = (char)c;
    v[n] = '\0';
    cr_assert_eq(idemkey_parse(v, k), IDEMKEY_OK);
    cr_assert_str_eq(k, v);
}

/* ---- money ---------------------------------------------------------------------- */

Test(money, currency_table)
{
    cr_assert_eq(money_currency_digits("USD"), 2);
    cr_assert_eq(money_currency_digits("EUR"), 2);
    cr_assert_eq(money_currency_digits("JPY"), 0);
    cr_assert_eq(money_currency_digits("KWD"), 3);
    cr_assert_eq(money_currency_digits("CLF"), 4);
    cr_assert_eq(money_currency_digits("usd"), -1);
    cr_assert_eq(money_currency_digits("XXX"), -1);
    cr_assert_eq(money_currency_digits("US"), -1);
    cr_assert_eq(money_currency_digits("USDD"), -1);
}

static enum money_status parse(const char *text, int digits, int64_t *m)
{
    return money_parse(text, strlen(text), digits, m);
}

Test(money, amounts_become_exact_minor_units)
{
    int64_t m = 0;
    cr_assert_eq(parse("10.5", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1050);
    cr_assert_eq(parse("0.01", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1);
    cr_assert_eq(parse("0.30", 2, &m), MONEY_OK);
    cr_assert_eq(m, 30);
    cr_assert_eq(parse("999999.99", 2, &m), MONEY_OK);
    cr_assert_eq(m, 99999999);
    cr_assert_eq(parse("1000", 0, &m), MONEY_OK);
    cr_assert_eq(m, 1000);
    cr_assert_eq(parse("1.234", 3, &m), MONEY_OK);
    cr_assert_eq(m, 1234);
    cr_assert_eq(parse("1.5e1", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1500);
    cr_assert_eq(parse("1000E-2", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1000);
    cr_assert_eq(parse("1.0e-2", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1);
    cr_assert_eq(parse("12.3400000000", 2, &m), MONEY_OK); /* zeros below the unit are exact */
    cr_assert_eq(m, 1234);
    cr_assert_eq(parse("0.0001", 4, &m), MONEY_OK);
    cr_assert_eq(m, 1);
}

/* No binary floating point decides what is charged: a digit below the minor
 * unit, however far down, is refused rather than rounded away. */
Test(money, edges_are_refused_not_rounded)
{
    int64_t m = 77;
    cr_assert_eq(parse("0", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("-0", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("0.000", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("-5", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("1e999", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("1e300", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("1000000", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("999999.991", 3, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("10.001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("0.001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("10.5", 0, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1.2345", 3, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("12.3400000001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("999999.9899999", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("100.00000001", 0, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1.00000000001", 4, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1e-999999999999999999999", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("00012", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("1.", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse(".5", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("1e", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("0x5a", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(m, 77, "out-parameter written on failure");
}

Test(money, format_uses_the_currency_digits)
{
    char b[32];
    cr_assert_eq(money_format(1050, 2, b, sizeof b), 5);
    cr_assert_str_eq(b, "10.50");
    money_format(5, 2, b, sizeof b);
    cr_assert_str_eq(b, "0.05");
    money_format(1000, 0, b, sizeof b);
    cr_assert_str_eq(b, "1000");
    money_format(1234, 3, b, sizeof b);
    cr_assert_str_eq(b, "1.234");
    cr_assert_eq(money_format(1050, 2, b, 3), -1);
    cr_assert_eq(money_format(99999999, 2, b, sizeof b), 9);
    cr_assert_str_eq(b, "999999.99");
    money_format(1, 4, b, sizeof b);
    cr_assert_str_eq(b, "0.0001");
    cr_assert_eq(money_format(1050, 2, b, 6), 5); /* exactly room for the NUL */
    cr_assert_str_eq(b, "10.50");
}

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

/* ---- fingerprint -------------------------------------------------------------- */

static void fingerprint_of(const char *body, char out[65])
{
    struct payment_request r;
    struct apierr e;
    size_t n;
    cr_assert_eq(payment_parse(body, strlen(body), &r, &e), 0, "%s: %s", body, e.message);
    char *c = payment_canonical(&r, &n);
    cr_assert_not_null(c);
    idemkey_fingerprint("POST", "/api/v1/payments", c, n, out);
    free(c);
    payment_request_clear(&r);
}

Test(fingerprint, equal_under_key_order_whitespace_and_normalization)
{
    char a[65], b[65], c[65], d[65];
    fingerprint_of("{\"amount\":10.5,\"currency\":\"USD\",\"customer_id\":\"c1\"}", a);
    fingerprint_of("{ \"customer_id\" : \"c1\",\n \"currency\":\"USD\", \"amount\": 10.50 }", b);
    fingerprint_of("{\"amount\":1050e-2,\"currency\":\"USD\",\"customer_id\":\"c1\","
                   "\"description\":null}",
                   c);
    cr_assert_str_eq(a, b);
    cr_assert_str_eq(a, c);
    cr_assert_eq(strlen(a), 64);
    fingerprint_of("{\"amount\":10.5,\"currency\":\"USD\",\"customer_id\":\"c1\","
                   "\"description\":\"\"}",
                   d);
    cr_assert_str_neq(a, d, "an empty description differs from none");
}

Test(fingerprint, differs_for_every_field)
{
    char base[65], other[65];
    fingerprint_of("{\"amount\":10,\"currency\":\"USD\",\"customer_id\":\"c1\","
                   "\"description\":\"x\"}",
                   base);
    const char *variants[] = {
        "{\"amount\":10.01,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"x\"}",
        "{\"amount\":10,\"currency\":\"EUR\",\"customer_id\":\"c1\",\"description\":\"x\"}",
        "{\"amount\":10,\"currency\":\"USD\",\"customer_id\":\"c2\",\"description\":\"x\"}",
        "{\"amount\":10,\"currency\":\"USD\",\"customer_id\":\"c1\",\"description\":\"y\"}",
        "{\"amount\":10,\"currency\":\"USD\",\"customer_id\":\"c1\"}",
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        fingerprint_of(variants[i], other);
        cr_assert_str_neq(base, other, "%s", variants[i]);
    }
    /* The route is part of it too. */
    char r1[65], r2[65];
    idemkey_fingerprint("POST", "/a", "x", 1, r1);
    idemkey_fingerprint("POST", "/b", "x", 1, r2);
    cr_assert_str_neq(r1, r2);
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
                        "\"processed_at\":\"2023-11-14T22:13:20.123456Z\","
                        "\"idempotency_key\":\"k1\",\"amount_refunded\":0.00,\"refunded\":false}");
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
    struct store_payment p = {.transaction_id = "txn_x", .status = "declined"};
    char *s = payment_declined_json(&p);
    cr_assert_str_eq(s, "{\"error\":{\"type\":\"card_error\",\"code\":\"card_declined\","
                        "\"message\":\"the card was declined\"},\"transaction_id\":\"txn_x\","
                        "\"status\":\"declined\"}");
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

/* ---- configuration ------------------------------------------------------------ */

Test(config, flags_win_over_environment)
{
    struct config c;
    char err[256];
    setenv("PORT", "9000", 1);
    setenv("MOCKERY_POOL_SIZE", "3", 1);
    setenv("MOCKERY_STORE", "memory", 1);
    char *argv[] = {"mockery-server", "--port=9100", "--lease", "5", "--require-key=false", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 5, argv, err, sizeof err), CONFIG_OK, "%s", err);
    cr_assert_eq(c.port, 9100);
    cr_assert_eq(c.pool_size, 3);
    cr_assert_eq(c.store, STORE_KIND_MEMORY);
    cr_assert_eq(c.lease_s, 5);
    cr_assert_eq(c.require_key, 0);
}

Test(config, bad_values_name_the_flag)
{
    struct config c;
    char err[256];
    char *a1[] = {"s", "--threads=0", NULL};
    char *a2[] = {"s", "--store=mysql", NULL};
    char *a3[] = {"s", "--bogus", NULL};
    char *a4[] = {"s", "--port", NULL};
    char *a5[] = {"s", "--log-level=loud", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 2, a1, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--threads"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a2, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--store"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a3, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--bogus"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a4, err, sizeof err), CONFIG_INVALID);
    cr_assert_eq(config_parse(&c, 2, a5, err, sizeof err), CONFIG_INVALID);
    setenv("MOCKERY_LEASE", "soon", 1);
    char *a6[] = {"s", NULL};
    cr_assert_eq(config_parse(&c, 1, a6, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "MOCKERY_LEASE"), "%s", err);
}

/* ---- API keys ------------------------------------------------------------------- */

Test(auth, keys_map_to_tenants)
{
    char err[256];
    struct auth *a = auth_new("acme:key-acme-123,globex:key-globex-456", err, sizeof err);
    cr_assert_not_null(a, "%s", err);
    cr_assert(auth_enabled(a));
    cr_assert_str_eq(auth_tenant(a, "Bearer key-acme-123"), "acme");
    cr_assert_str_eq(auth_tenant(a, "bearer key-globex-456"), "globex");
    cr_assert_null(auth_tenant(a, "Bearer key-acme-12"));
    cr_assert_null(auth_tenant(a, "key-acme-123"));
    cr_assert_null(auth_tenant(a, NULL));
    auth_free(a);
    a = auth_new("", err, sizeof err);
    cr_assert_not(auth_enabled(a));
    cr_assert_str_eq(auth_tenant(a, NULL), AUTH_OPEN_TENANT);
    auth_free(a);
    cr_assert_null(auth_new("nocolon", err, sizeof err));
    cr_assert_null(auth_new("t:short", err, sizeof err));
    cr_assert_null(auth_new("@/nonexistent/file", err, sizeof err));
}

/* ---- logger --------------------------------------------------------------------- */

#include "log.h"

Test(log, lines_are_json_and_levels_filter)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct logger *l = log_new(f, LOG_WARN);
    log_msg(l, LOG_INFO, "hidden");
    cJSON *line = log_begin(l, LOG_ERROR, "shown \"quoted\"\nnewline");
    cJSON_AddStringToObject(line, "key", "k1");
    log_end(l, line);
    cr_assert_null(log_begin(l, LOG_DEBUG, "filtered"));
    log_flush(l);
    fflush(f);
    cr_assert_null(strstr(buf, "hidden"));
    cr_assert_eq(strchr(buf, '\n'), buf + len - 1, "exactly one line: %s", buf);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s", buf);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "level")->valuestring, "error");
    cr_assert_str_eq(cJSON_GetObjectItem(o, "msg")->valuestring, "shown \"quoted\"\nnewline");
    cr_assert_str_eq(cJSON_GetObjectItem(o, "key")->valuestring, "k1");
    cJSON_Delete(o);
    log_free(l);
    fclose(f);
    free(buf);
}

Test(log, numbers_and_time_are_written_exactly)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct logger *l = log_new(f, LOG_INFO);
    struct log_line line;
    cr_assert(log_line_begin(l, LOG_INFO, "numbers", &line));
    log_line_int(&line, "zero", 0);
    log_line_int(&line, "neg", -9223372036854775807LL - 1);
    log_line_int(&line, "big", 9223372036854775807LL);
    log_line_ms(&line, "ms", 1.2345);
    log_line_ms(&line, "small", 0.0004);
    log_line_ms(&line, "whole", 12.0);
    log_line_end(l, &line);
    log_flush(l);
    fflush(f);
    cr_assert_not_null(strstr(buf, "\"zero\":0,\"neg\":-9223372036854775808,"
                                   "\"big\":9223372036854775807,\"ms\":1.235,"
                                   "\"small\":0.000,\"whole\":12.000}"),
                       "%s", buf);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s", buf);
    const char *t = cJSON_GetObjectItem(o, "time")->valuestring;
    /* YYYY-MM-DDTHH:MM:SS.mmmZ */
    cr_assert_eq(strlen(t), 24, "%s", t);
    cr_assert(t[4] == '-' && t[10] == 'T' && t[19] == '.' && t[23] == 'Z', "%s", t);
    cJSON_Delete(o);
    log_free(l);
    fclose(f);
    free(buf);
}

Test(utc_text, seconds_dates_and_fractions)
{
    char iso[20], date[30], when[28];
    utc_iso_second(0, iso);
    cr_assert_str_eq(iso, "1970-01-01T00:00:00");
    utc_http_date(784111777, date);
    cr_assert_str_eq(date, "Sun, 06 Nov 1994 08:49:37 GMT");
    utc_iso_second(784111777, iso);
    cr_assert_str_eq(iso, "1994-11-06T08:49:37");
    utc_iso_second(784111778, iso);
    cr_assert_str_eq(iso, "1994-11-06T08:49:38");
    utc_iso_micro(784111777000001LL, when);
    cr_assert_str_eq(when, "1994-11-06T08:49:37.000001Z");
    utc_iso_micro(-1, when);
    cr_assert_str_eq(when, "1969-12-31T23:59:59.999999Z");
    utc_iso_micro(253402300800000000LL, when); /* year 10000 */
    cr_assert_str_eq(when, "");
}

/* The arithmetic against gmtime_r + strftime over the years glibc's %Y
 * writes with four digits, leap days and the turns of centuries included;
 * below 1000 strftime writes fewer digits, RFC 3339 four. */
Test(utc_text, agrees_with_gmtime_from_year_1000_to_9999)
{
    const long long first = -30610224000LL, last = 253402300799LL; /* 1000-01-01, 9999-12-31 */
    long long edges[] = {first,
                         last,
                         -1,
                         0,
                         951782400LL /* 2000-02-29 */,
                         4107456000LL /* 2100-02-28 */,
                         4107542400LL /* 2100-03-01 */,
                         68256000LL /* 1972-02-29 */};
    int n = 0;
    for (long long t = first, i = 0; t <= last; t += 7919LL * 86 + 3607, i++) {
        long long secs = i < 8 ? edges[i] : t;
        char iso[20], date[30], want_iso[32], want_date[40];
        time_t tt = (time_t)secs;
        struct tm tm;
        cr_assert_not_null(gmtime_r(&tt, &tm));
        strftime(want_iso, sizeof want_iso, "%Y-%m-%dT%H:%M:%S", &tm);
        strftime(want_date, sizeof want_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        utc_iso_second(tt, iso);
        utc_http_date(tt, date);
        cr_assert_str_eq(iso, want_iso, "at %lld", secs);
        cr_assert_str_eq(date, want_date, "at %lld", secs);
        n++;
    }
    cr_assert_gt(n, 300000);
    char iso[20], date[30];
    utc_iso_second((time_t)(last + 1), iso); /* year 10000 */
    cr_assert_str_eq(iso, "");
    utc_iso_second((time_t)-62167219200LL, iso);
    cr_assert_str_eq(iso, "0000-01-01T00:00:00");
    utc_http_date((time_t)-62167219200LL, date);
    cr_assert_str_eq(date, "Sat, 01 Jan 0000 00:00:00 GMT");
}

Test(decimal, digits_and_fixed_points)
{
    char out[48];
    out[decimal_digits(out, 7, 3)] = '\0';
    cr_assert_str_eq(out, "007");
    out[decimal_digits(out, 0, 1)] = '\0';
    cr_assert_str_eq(out, "0");
    out[decimal_digits(out, ULLONG_MAX, 1)] = '\0';
    cr_assert_str_eq(out, "18446744073709551615");
    out[decimal_fixed(out, 1050, 2)] = '\0';
    cr_assert_str_eq(out, "10.50");
    out[decimal_fixed(out, -5, 2)] = '\0';
    cr_assert_str_eq(out, "-0.05");
    out[decimal_fixed(out, -3, 0)] = '\0';
    cr_assert_str_eq(out, "-3");
    out[decimal_fixed(out, LLONG_MIN, 0)] = '\0';
    cr_assert_str_eq(out, "-9223372036854775808");
    out[decimal_fixed(out, 1, 4)] = '\0';
    cr_assert_str_eq(out, "0.0001");
}

/* Every outcome has its own word, the one logs and metrics print. */
Test(outcome, each_has_one_name)
{
    cr_assert_null(outcome_name(OUTCOME_NONE));
    cr_assert_null(outcome_name(OUTCOME_COUNT));
    cr_assert_str_eq(outcome_name(OUTCOME_NEW), "new");
    cr_assert_str_eq(outcome_name(OUTCOME_RELEASE_FAILED), "release_failed");
    for (int a = OUTCOME_NONE + 1; a < OUTCOME_COUNT; a++) {
        cr_assert_not_null(outcome_name((enum outcome)a), "outcome %d has no name", a);
        for (int b = a + 1; b < OUTCOME_COUNT; b++)
            cr_assert_str_neq(outcome_name((enum outcome)a), outcome_name((enum outcome)b));
    }
}

Test(auth, keys_from_a_file)
{
    char path[] = "/tmp/mockery-keys-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("# tenants of the staging cluster\n"
          "acme:key-acme-123   # the first\n"
          "\n"
          "globex:key-globex-456, initech:key-initech-789\n",
          f);
    fclose(f);
    char spec[64], err[256];
    snprintf(spec, sizeof spec, "@%s", path);
    struct auth *a = auth_new(spec, err, sizeof err);
    cr_assert_not_null(a, "%s", err);
    cr_assert_str_eq(auth_tenant(a, "Bearer key-acme-123"), "acme");
    cr_assert_str_eq(auth_tenant(a, "Bearer key-globex-456"), "globex");
    cr_assert_str_eq(auth_tenant(a, "Bearer key-initech-789"), "initech");
    cr_assert_null(auth_tenant(a, "Bearer # the first"));
    auth_free(a);
    f = fopen(path, "w");
    fputs("# nothing but comments\n", f);
    fclose(f);
    cr_assert_null(auth_new(spec, err, sizeof err), "a file without keys must be refused");
    unlink(path);
}

/* ---- replay cache ------------------------------------------------------------------ */

#include "replay_cache.h"

Test(replay_cache, hit_mismatch_expiry_and_tenants)
{
    struct replay_cache *c = replay_cache_new(10);
    struct replay_entry e = {201, "{\"a\":1}", 7, "/api/v1/payments/txn_1", 1000};
    replay_cache_put(c, "t1", "k", "fp1", &e, 5000);
    struct replay_entry got;
    cr_assert_eq(replay_cache_get(c, "t1", "k", "fp1", 2000, &got), REPLAY_HIT);
    cr_assert_eq(got.status, 201);
    cr_assert_eq(got.body_len, 7);
    cr_assert_eq(memcmp(got.body, "{\"a\":1}", 7), 0);
    cr_assert_str_eq(got.location, "/api/v1/payments/txn_1");
    cr_assert_eq(got.created_at_us, 1000);
    replay_entry_clear(&got);
    cr_assert_eq(replay_cache_get(c, "t1", "k", "fp2", 2000, &got), REPLAY_MISMATCH);
    cr_assert_eq(replay_cache_get(c, "t2", "k", "fp1", 2000, &got), REPLAY_MISS, "other tenant");
    /* "t1"+"k" and "t"+"1k" are different keys. */
    cr_assert_eq(replay_cache_get(c, "t", "1k", "fp1", 2000, &got), REPLAY_MISS);
    cr_assert_eq(replay_cache_get(c, "t1", "k", "fp1", 5000, &got), REPLAY_MISS, "expired");
    cr_assert_eq(replay_cache_size(c), 0, "an expired entry is dropped");
    replay_cache_free(c);
    cr_assert_null(replay_cache_new(0));
    cr_assert_eq(replay_cache_get(NULL, "t", "k", "f", 0, &got), REPLAY_MISS);
}

Test(replay_cache, least_recently_used_goes_first)
{
    struct replay_cache *c = replay_cache_new(3);
    struct replay_entry e = {201, "{}", 2, NULL, 0};
    char key[8];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "k%d", i);
        replay_cache_put(c, "t", key, "fp", &e, 1000);
    }
    struct replay_entry got;
    cr_assert_eq(replay_cache_get(c, "t", "k0", "fp", 1, &got), REPLAY_HIT); /* k0 now recent */
    replay_entry_clear(&got);
    replay_cache_put(c, "t", "k3", "fp", &e, 1000); /* evicts k1 */
    cr_assert_eq(replay_cache_size(c), 3);
    cr_assert_eq(replay_cache_get(c, "t", "k1", "fp", 1, &got), REPLAY_MISS);
    cr_assert_eq(replay_cache_get(c, "t", "k0", "fp", 1, &got), REPLAY_HIT);
    replay_entry_clear(&got);
    cr_assert_null(got.location);
    replay_cache_free(c);
}

/* ---- the keyed hash of the in-memory tables ---------------------------------- */

/* Keyed at random per process: the same (tenant, key) lands in other
 * buckets in another process, so no client can find colliding keys
 * offline. (With FNV-1a, which it was, every process agrees.) The child is
 * forked before this process draws its key (each Criterion test is a
 * process of its own, and nothing hashed in it before). */
Test(key_hash, differs_between_processes_and_separates_its_parts)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        size_t there = hash_pair("tenant", "key-1");
        _exit(write(fds[1], &there, sizeof there) == (ssize_t)sizeof there ? 0 : 1);
    }
    size_t there = 0;
    cr_assert_eq(read(fds[0], &there, sizeof there), (ssize_t)sizeof there);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    close(fds[0]);
    close(fds[1]);
    size_t here = hash_pair("tenant", "key-1");
    cr_assert_eq(here, hash_pair("tenant", "key-1"), "not stable within a process");
    cr_assert_neq(here, there, "two processes hash (tenant, key) alike: the hash is not keyed");
    cr_assert_neq(hash_pair("t1", "k"), hash_pair("t", "1k"));
}

/* Every row of the error table has a default body that is the documented
 * shape, valid JSON, with the row's type, code and message (they are
 * written without escaping: a quote or backslash in a message would break
 * it here). */
Test(apierr, every_row_has_a_valid_default_body)
{
    for (int i = 0; i < APIERR_COUNT; i++) {
        const struct apierr_row *row = apierr_row((enum apierr_id)i);
        cJSON *doc = cJSON_Parse(apierr_default_json((enum apierr_id)i));
        cr_assert_not_null(doc, "row %d (%s): not JSON", i, row->code);
        cJSON *err = cJSON_GetObjectItemCaseSensitive(doc, "error");
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "type")->valuestring, row->type);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "code")->valuestring, row->code);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "message")->valuestring,
                         row->message);
        cr_assert(row->status >= 400 && row->status <= 599, "row %s: status %d", row->code,
                  row->status);
        cJSON_Delete(doc);
    }
}
