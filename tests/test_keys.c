/* test_keys.c - Idempotency-Key parsing, request fingerprints, the replay cache, outcome names */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "idemkey.h"
#include "outcome.h"
#include "payment.h"
#include "replay_cache.h"

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

/* ---- replay cache ------------------------------------------------------------------ */

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

/* ---- outcomes ----------------------------------------------------------------- */

Test(outcome, each_has_one_name)
{
    cr_assert_null(outcome_name(OUTCOME_NONE));
    cr_assert_null(outcome_name(OUTCOME_COUNT));
    cr_assert_str_eq(outcome_name(OUTCOME_NEW), "new");
    cr_assert_str_eq(outcome_name(OUTCOME_RELEASE_FAILED), "release_failed");
    cr_assert_str_eq(outcome_name(OUTCOME_PENDING), "pending");
    for (int a = OUTCOME_NONE + 1; a < OUTCOME_COUNT; a++) {
        cr_assert_not_null(outcome_name((enum outcome)a), "outcome %d has no name", a);
        for (int b = a + 1; b < OUTCOME_COUNT; b++)
            cr_assert_str_neq(outcome_name((enum outcome)a), outcome_name((enum outcome)b));
    }
}
