/* test_outcomes.c - the money moves at the acquirer: the real mockery-server
 * process as the client of the real mockery-acquirer process, both on the
 * PostgreSQL test database, over loopback sockets
 *
 * Every test ends on the invariant, read from the acquirer's own ledger and
 * not only from our tables: one charge per (tenant, key) answered 201 or
 * 402, the payment here names that charge and the charge names the
 * payment's transaction, nothing charged for a key whose payment does not
 * exist.
 *
 * The answers lost after the charge - held past --acquirer-timeout-ms, a
 * 500, a closed connection - are 503 outcome_pending with the transaction
 * id; another body with the key is 422 (the key was not released); the
 * retry completes the payment with the one charge. No verdict depends on
 * the machine's speed: the held answer is held 4 s against a 2 s
 * timeout, an ask that should simply succeed has those 2 s (a fault-free
 * ask takes milliseconds), and a retry that finds its record still held
 * (409) asks again.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "acquirer_proc.h"
#include "config.h"
#include "support.h"

static void teardown(void)
{
    test_acquirers_kill_all();
}

TestSuite(outcomes, .fini = teardown, .timeout = 90);

#define FAULTS                                                                                     \
    "--fault", "hold:prefix=cust-hold:ms=4000", "--fault", "500:prefix=cust-err", "--fault",       \
        "close:prefix=cust-close", "--fault", "503:prefix=cust-busy"
static const char *const PREFIX_FAULTS[] = {FAULTS, NULL};
#define TIMEOUT_MS 2000 /* the server's, below the hold */

/* The time now, in the database's clock (a reconciliation's start). */
static void db_now(char *out, size_t len)
{
    test_query_text(test_db_url(), "SELECT now()::text WHERE $1 = $1", "x", out, len);
}

static int reconcile(const char *since, const char *until, char *out, size_t len)
{
    return test_reconcile(test_db_url(), test_db_url(), since, until, out, len);
}

static void expect_reconciled(const char *since)
{
    test_expect_reconciled(test_db_url(), test_db_url(), since);
}

/* Recovery's pass, in the tests of the client's retry: never (it would
 * finish their records before the retry they test). Its own tests below
 * run it every RECOVERY_MS. The tests run one at a time (CMakeLists.txt):
 * a recovering server takes over any record left processing. */
#define RECOVERY_OFF_MS 86400000
#define RECOVERY_MS 100

/* A server's configuration asking acquirer a, each ask bounded by
 * timeout_ms, under a lease of lease_s, without recovery. */
static void outcome_config(struct config *c, const struct test_acquirer *a, int timeout_ms,
                           int lease_s)
{
    test_config(c, STORE_KIND_POSTGRES);
    snprintf(c->acquirer_url, sizeof c->acquirer_url, "%s", a->base);
    c->acquirer_timeout_ms = timeout_ms;
    c->lease_s = lease_s;
    c->recovery_interval_ms = RECOVERY_OFF_MS;
}

/* A server of the real binary with outcome_config's settings. */
static void server_start_with(struct test_server *s, const struct test_acquirer *a, int timeout_ms,
                              int lease_s)
{
    struct config c;
    outcome_config(&c, a, timeout_ms, lease_s);
    memset(s, 0, sizeof *s);
    test_server_spawn(s, &c, MOCKERY_SERVER_BIN);
}

static void server_start(struct test_server *s, const struct test_acquirer *a)
{
    server_start_with(s, a, TIMEOUT_MS, 30);
}

/* POST a payment as a tenant (an Authorization header line). */
static void pay_as(const struct test_server *s, const char *auth, const char *key, const char *json,
                   struct test_response *r)
{
    char url[256], keyh[160];
    snprintf(url, sizeof url, "%s/api/v1/payments", s->base);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, auth, NULL};
    test_http("POST", url, headers, json, strlen(json), r);
}

static void pay_json(char *buf, size_t len, const char *customer, const char *amount)
{
    snprintf(buf, len, "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\"}", amount,
             customer);
}

/* POST until the answer is neither 409 (the record still held by the
 * first request: its lease has not ended) nor 503 outcome_pending (asked
 * again before the acquirer recorded the first ask - its 409 is unknown
 * too - on a slow machine): the retry a client makes, bounded. */
static void pay_settled(const struct test_server *s, const char *key, const char *json,
                        struct test_response *r)
{
    for (int i = 0; i < 600; i++) {
        test_post_payment(s, key, json, r);
        if (r->status != 409 && !(r->status == 503 && strstr(r->body, "outcome_pending")))
            return;
        test_response_free(r);
        test_sleep_ms(50);
    }
    cr_assert_fail("key %s: still 409 or 503 after 30 s", key);
}

/* Charges at the acquirer for customer (each test's customer is its own):
 * a second charge under another transaction would show here. */
static long customer_charges(const char *customer)
{
    return test_query_long(
        test_db_url(), "SELECT count(*) FROM acquirer_charges WHERE customer_id = $1", customer);
}

static void str_of(const struct test_response *r, const char *name, char *out, size_t len)
{
    cJSON *o = test_json(r);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert(cJSON_IsString(v), "no string %s in %s", name, r->body);
    snprintf(out, len, "%s", v->valuestring);
    cJSON_Delete(o);
}

/* The acquirer's charges whose reference is txn: how many, and the first's
 * id and status. */
static int ledger_charges(const struct test_acquirer *a, const char *txn, char *id, char *status)
{
    char url[256];
    struct test_response r;
    snprintf(url, sizeof url, "%s/v1/charges?reference=%s", a->base, txn);
    test_http("GET", url, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200, "%s: %ld %s", url, r.status, r.body);
    cJSON *o = test_json(&r);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "charges");
    int n = cJSON_GetArraySize(list);
    if (n > 0) {
        const cJSON *c = cJSON_GetArrayItem(list, 0);
        snprintf(id, 64, "%s", cJSON_GetObjectItemCaseSensitive(c, "charge_id")->valuestring);
        snprintf(status, 16, "%s", cJSON_GetObjectItemCaseSensitive(c, "status")->valuestring);
    }
    cJSON_Delete(o);
    test_response_free(&r);
    return n;
}

/* The invariant for one key answered 201 (moved) or 402 (declined) with
 * transaction txn: exactly one charge at the acquirer, referencing txn, of
 * that outcome; the payment here names it. */
static void expect_one_charge(const struct test_acquirer *a, const char *txn, const char *status,
                              const char *charge_id)
{
    char id[64] = "", st[16] = "";
    cr_assert_eq(ledger_charges(a, txn, id, st), 1, "charges at the acquirer for %s", txn);
    cr_assert_str_eq(st, status);
    if (charge_id)
        cr_assert_str_eq(id, charge_id, "the payment's charge is the acquirer's");
    char here[64] = "";
    test_query_text(test_db_url(), "SELECT charge_id FROM payments WHERE transaction_id = $1", txn,
                    here, sizeof here);
    cr_assert_str_eq(here, id, "payment %s names charge %s", txn, id);
}

/* Nothing charged for txn, and no payment. */
static void expect_no_charge(const struct test_acquirer *a, const char *txn)
{
    char id[64], st[16];
    cr_assert_eq(ledger_charges(a, txn, id, st), 0, "charges at the acquirer for %s", txn);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM payments WHERE transaction_id = $1", txn),
                 0);
}

Test(outcomes, a_payment_is_charged_once_at_the_acquirer)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, NULL, 0);
    server_start(&s, &a);
    char key[96], cust[64], json[256], txn[64], charge[64], body[4096];
    struct test_response r;

    test_unique(key, sizeof key, "out-ok");
    test_unique(cust, sizeof cust, "cust-ok");
    pay_json(json, sizeof json, cust, "10.50");
    test_post_payment(&s, key, json, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    cr_assert_eq(strncmp(charge, "ch_", 3), 0, "%s", charge);
    snprintf(body, sizeof body, "%s", r.body);
    test_response_free(&r);
    test_post_payment(&s, key, json, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(r.body, body, "the replay is the first answer");
    test_response_free(&r);
    expect_one_charge(&a, txn, "succeeded", charge);
    /* the charge carries the amount exactly, the tenant as merchant */
    char url[256];
    snprintf(url, sizeof url, "%s/v1/charges/%s", a.base, charge);
    test_http("GET", url, NULL, NULL, 0, &r);
    cJSON *o = test_json(&r);
    cr_assert_eq(cJSON_GetObjectItem(o, "amount_minor")->valuedouble, 1050);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "merchant")->valuestring, "default");
    cr_assert_str_eq(cJSON_GetObjectItem(o, "customer_id")->valuestring, cust);
    cr_assert_str_neq(cJSON_GetObjectItem(o, "idempotency_key")->valuestring, key,
                      "the acquirer never sees the client's key");
    cJSON_Delete(o);
    test_response_free(&r);

    /* declined: 402 with the acquirer's record of it */
    test_unique(key, sizeof key, "out-decl");
    test_unique(cust, sizeof cust, "cust-declined");
    pay_json(json, sizeof json, cust, "3.00");
    test_post_payment(&s, key, json, &r);
    test_expect_error(&r, 402, "card_declined", NULL);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    test_response_free(&r);
    expect_one_charge(&a, txn, "declined", charge);

    /* refused before anything moved: 502, released - the retry asks again */
    test_unique(key, sizeof key, "out-gw");
    test_unique(cust, sizeof cust, "cust-gateway-error");
    pay_json(json, sizeof json, cust, "3.00");
    for (int i = 0; i < 2; i++) {
        test_post_payment(&s, key, json, &r);
        test_expect_error(&r, 502, "gateway_error", NULL);
        test_response_free(&r);
    }
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1",
                                 key),
                 0, "released");
    /* four asks, one after another, on one kept connection */
    char *m = test_scrape(&s);
    cr_assert_eq(
        test_metric(m, "mockery_acquirer_calls_total{operation=\"charge\",verdict=\"moved\"}"), 1);
    cr_assert_eq(
        test_metric(m, "mockery_acquirer_calls_total{operation=\"charge\",verdict=\"declined\"}"),
        1);
    cr_assert_eq(
        test_metric(m,
                    "mockery_acquirer_calls_total{operation=\"charge\",verdict=\"nothing_moved\"}"),
        2);
    cr_assert_eq(test_metric(m, "mockery_acquirer_call_duration_seconds_count"), 4);
    cr_assert_eq(test_metric(m, "mockery_acquirer_connections_opened_total"), 1, "%s", m);
    free(m);
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* One lost answer, each way: 503 outcome_pending with the transaction id
 * and Retry-After; the key kept (another body: 422); the retry completes
 * it with the one charge the acquirer made. */
static void lost_answer_then_completed(const struct test_server *s, const struct test_acquirer *a,
                                       const char *prefix)
{
    char key[96], cust[64], json[256], other[256], txn[64], txn2[64], charge[64];
    struct test_response r;
    test_unique(key, sizeof key, "out-lost");
    test_unique(cust, sizeof cust, prefix);
    pay_json(json, sizeof json, cust, "7.25");
    pay_json(other, sizeof other, cust, "7.26");

    test_post_payment(s, key, json, &r);
    test_expect_error(&r, 503, "outcome_pending", NULL);
    cr_assert_str_eq(r.retry_after, "1", "%s", prefix);
    str_of(&r, "transaction_id", txn, sizeof txn);
    cr_assert_eq(strncmp(txn, "txn_", 4), 0, "%s", txn);
    test_response_free(&r);

    test_post_payment(s, key, other, &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);

    pay_settled(s, key, json, &r);
    cr_assert_eq(r.status, 201, "%s: %ld %s", prefix, r.status, r.body);
    str_of(&r, "transaction_id", txn2, sizeof txn2);
    str_of(&r, "charge_id", charge, sizeof charge);
    cr_assert_str_eq(txn2, txn, "the transaction the 503 named");
    test_response_free(&r);
    expect_one_charge(a, txn, "succeeded", charge);
    cr_assert_eq(customer_charges(cust), 1, "%s: charges of %s", prefix, cust);
}

Test(outcomes, an_answer_lost_after_the_charge_is_pending_then_completed_once)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start(&s, &a);
    /* The close first, on the server's first connection to the acquirer:
     * on a connection kept from an earlier ask, libcurl sends the request
     * again by itself on a new one when the old one closes before any byte
     * of an answer - with the same downstream key, so the acquirer replays
     * (the next test). */
    lost_answer_then_completed(&s, &a, "cust-close");
    lost_answer_then_completed(&s, &a, "cust-hold");
    lost_answer_then_completed(&s, &a, "cust-err");
    char *m = test_scrape(&s);
    /* at least: a retry asked before the acquirer recorded the first ask
     * (a slow machine) is unknown and pending once more */
    cr_assert_geq(test_metric(m, "mockery_idempotency_outcomes_total{outcome=\"pending\"}"), 3);
    cr_assert_geq(
        test_metric(m, "mockery_acquirer_calls_total{operation=\"charge\",verdict=\"unknown\"}"),
        3);
    cr_assert_eq(
        test_metric(m, "mockery_acquirer_calls_total{operation=\"charge\",verdict=\"moved\"}"), 3);
    free(m);
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* The close on a kept connection: libcurl's own second try is answered
 * with the acquirer's replay, or the outcome is pending - either way one
 * charge, and the retry answers it. */
Test(outcomes, a_close_on_a_kept_connection_still_charges_once)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start(&s, &a);
    char key[96], cust[64], json[256], txn[64], charge[64];
    struct test_response r;
    for (int i = 0; i < 3; i++) {
        test_unique(key, sizeof key, "out-warm");
        test_unique(cust, sizeof cust, "cust-warm");
        pay_json(json, sizeof json, cust, "1.00");
        test_post_payment(&s, key, json, &r);
        cr_assert_eq(r.status, 201, "%s", r.body);
        test_response_free(&r);
    }
    test_unique(key, sizeof key, "out-kept");
    test_unique(cust, sizeof cust, "cust-close");
    pay_json(json, sizeof json, cust, "2.00");
    char first[64];
    test_post_payment(&s, key, json, &r);
    cr_assert(r.status == 201 || r.status == 503, "%ld %s", r.status, r.body);
    if (r.status == 503)
        test_expect_error(&r, 503, "outcome_pending", NULL);
    str_of(&r, "transaction_id", first, sizeof first);
    test_response_free(&r);
    pay_settled(&s, key, json, &r);
    cr_assert(r.status == 200 || r.status == 201, "%ld %s", r.status, r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    test_response_free(&r);
    cr_assert_str_eq(txn, first, "the transaction of the first answer");
    expect_one_charge(&a, txn, "succeeded", charge);
    cr_assert_eq(customer_charges(cust), 1);
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* A 503 from the acquirer says nothing of the money: pending, never
 * released; this acquirer charged nothing. */
Test(outcomes, an_acquirer_503_is_pending_and_nothing_is_charged)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start(&s, &a);
    char key[96], cust[64], json[256], txn[64], txn2[64];
    struct test_response r;
    test_unique(key, sizeof key, "out-busy");
    test_unique(cust, sizeof cust, "cust-busy");
    pay_json(json, sizeof json, cust, "1.00");
    test_post_payment(&s, key, json, &r);
    test_expect_error(&r, 503, "outcome_pending", NULL);
    str_of(&r, "transaction_id", txn, sizeof txn);
    test_response_free(&r);
    test_post_payment(&s, key, json, &r); /* the lease ended: taken over at once */
    test_expect_error(&r, 503, "outcome_pending", NULL);
    str_of(&r, "transaction_id", txn2, sizeof txn2);
    cr_assert_str_eq(txn2, txn, "the same record, the same transaction");
    test_response_free(&r);
    expect_no_charge(&a, txn);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                                 " AND state = 'processing'",
                                 key),
                 1, "kept, not released");
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
    /* the record would wait for ever for an acquirer that says 503 to its
     * customer: no later test's recovery should find it */
    test_query_long(test_db_url(),
                    "WITH d AS (DELETE FROM idempotency_keys WHERE idempotency_key = $1"
                    " RETURNING 1) SELECT count(*) FROM d",
                    key);
}

/* No connection to the acquirer: nothing was sent, nothing moved - 502,
 * the key released; back up on the same port, the retry is charged once. */
Test(outcomes, the_acquirer_down_is_502_released_and_back_up_charges_once)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, NULL, 0);
    server_start(&s, &a);
    int port = a.port;
    test_acquirer_stop(&a);

    char key[96], cust[64], json[256], txn[64], charge[64];
    struct test_response r;
    test_unique(key, sizeof key, "out-down");
    test_unique(cust, sizeof cust, "cust-down");
    pay_json(json, sizeof json, cust, "12.00");
    test_post_payment(&s, key, json, &r);
    test_expect_error(&r, 502, "gateway_error", NULL);
    test_response_free(&r);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1",
                                 key),
                 0, "released");

    a.port = port;
    test_acquirer_start(&a, NULL, 0);
    test_post_payment(&s, key, json, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    test_response_free(&r);
    expect_one_charge(&a, txn, "succeeded", charge);
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* A payment whose server was SIGKILLed mid-charge (kill_mid_charge). */
struct killed {
    char key[96], cust[64], json[256];
    char ref[64]; /* the transaction the acquirer was given */
};

/* Posts json with key to the server at base, the client giving up at once,
 * and returns once the acquirer has recorded the charge for cust (and,
 * the customer's answer held, holds it) - the event, waited for, bounded
 * at 30 s: the transaction it was given in ref. */
static void post_until_charged(const char *base, const char *key, const char *cust,
                               const char *json, char ref[64])
{
    char url[256], keyh[160];
    struct test_response r;
    snprintf(url, sizeof url, "%s/api/v1/payments", base);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    /* the client gives up at once; the server goes on asking */
    cr_assert_neq(httpc_request("POST", url, headers, json, strlen(json), 200, &r), 0,
                  "answered before the held charge: %ld %s", r.status, r.body);
    httpc_response_free(&r);
    test_wait_text(test_db_url(),
                   "SELECT coalesce(max(reference), '') FROM acquirer_charges"
                   " WHERE customer_id = $1",
                   cust, ref, 64, 30, "the acquirer's charge");
}

/* Starts acquirer a with the faults and a server asking it (2.5 s bound,
 * a lease of 3 s); posts a payment of amount for a cust-hold customer
 * (its answer held 4 s after the charge); and SIGKILLs the server once the
 * acquirer has recorded the charge and holds its answer. */
static void kill_mid_charge(struct test_acquirer *a, const char *key_prefix, const char *amount,
                            struct killed *k)
{
    struct test_server s1;
    test_acquirer_start(a, PREFIX_FAULTS, 4);
    /* the ask outlasts the kill: bounded by 2.5 s, the hold is 4 s */
    server_start_with(&s1, a, 2500, 3);
    test_unique(k->key, sizeof k->key, key_prefix);
    test_unique(k->cust, sizeof k->cust, "cust-hold");
    pay_json(k->json, sizeof k->json, k->cust, amount);
    post_until_charged(s1.base, k->key, k->cust, k->json, k->ref);
    test_server_kill(&s1);
}

/* The server SIGKILLed while the acquirer holds an answer it has already
 * charged: the record stays processing under the dead server's lease; a
 * second server's retry takes it over when the lease ends, asks again with
 * the same key downstream and is answered the charge - one charge, the
 * transaction id the acquirer was given. */
Test(outcomes, a_server_killed_mid_charge_is_finished_by_another_with_one_charge)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s2;
    struct killed k;
    kill_mid_charge(&a, "out-kill", "19.99", &k);
    const char *key = k.key, *cust = k.cust, *json = k.json, *ref = k.ref;
    char txn[64], charge[64];
    struct test_response r;

    server_start_with(&s2, &a, 2500, 3);
    pay_settled(&s2, key, json, &r);
    cr_assert_eq(r.status, 201, "%ld %s", r.status, r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    cr_assert_str_eq(txn, ref, "the transaction the first server named at the acquirer");
    test_response_free(&r);
    expect_one_charge(&a, txn, "succeeded", charge);
    cr_assert_eq(customer_charges(cust), 1);
    test_server_stop(&s2);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* A refund of the payment txn, with this key and body: posted until it is
 * not 409 - and, until_done, not 503 outcome_pending either (pay_settled). */
static void refund_settled(const struct test_server *s, const char *txn, const char *key,
                           const char *json, int until_done, struct test_response *r)
{
    char path[128];
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", txn);
    for (int i = 0; i < 600; i++) {
        test_post_json(s, path, key, json, r);
        if (r->status != 409 &&
            !(until_done && r->status == 503 && strstr(r->body, "outcome_pending")))
            return;
        test_response_free(r);
        test_sleep_ms(50);
    }
    cr_assert_fail("refund key %s: still 409 or 503 after 30 s", key);
}

/* The acquirer's refunds of charge: how many, their sum, the first's
 * reference and id. */
static int ledger_refunds(const struct test_acquirer *a, const char *charge, long long *sum,
                          char *reference, char *id)
{
    char url[256];
    struct test_response r;
    snprintf(url, sizeof url, "%s/v1/refunds?charge_id=%s", a->base, charge);
    test_http("GET", url, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200, "%s: %ld %s", url, r.status, r.body);
    cJSON *o = test_json(&r);
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "refunds");
    int n = cJSON_GetArraySize(list);
    *sum = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *x = cJSON_GetArrayItem(list, i);
        *sum += (long long)cJSON_GetObjectItemCaseSensitive(x, "amount_minor")->valuedouble;
        if (i == 0) {
            snprintf(reference, 64, "%s",
                     cJSON_GetObjectItemCaseSensitive(x, "reference")->valuestring);
            snprintf(id, 64, "%s", cJSON_GetObjectItemCaseSensitive(x, "refund_id")->valuestring);
        }
    }
    cJSON_Delete(o);
    test_response_free(&r);
    return n;
}

/* A payment of customer prefix cust, completed (after its own lost answer
 * when the prefix is a fault's): its transaction and charge. */
static void paid(const struct test_server *s, const char *cust_prefix, const char *amount,
                 char *txn, char *charge)
{
    char key[96], cust[64], json[256];
    struct test_response r;
    test_unique(key, sizeof key, "out-pay");
    test_unique(cust, sizeof cust, cust_prefix);
    pay_json(json, sizeof json, cust, amount);
    test_post_payment(s, key, json, &r);
    if (r.status == 503) {
        test_response_free(&r);
        pay_settled(s, key, json, &r);
    }
    cr_assert_eq(r.status, 201, "%ld %s", r.status, r.body);
    str_of(&r, "transaction_id", txn, 64);
    str_of(&r, "charge_id", charge, 64);
    test_response_free(&r);
}

/* Refunds are made at the acquirer against the payment's charge, once per
 * key: a refund whose answer is lost (held, a 500, a closed connection) is
 * 503 outcome_pending with its refund id, and the retry completes it with
 * the one refund the acquirer made; refunds never add up to more than the
 * charge there. */
Test(outcomes, refunds_are_made_once_at_the_acquirer)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start(&s, &a);
    const char *prefixes[] = {"cust-refund", "cust-close", "cust-hold", "cust-err"};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        char txn[64], charge[64], key[96], rid[64], rid2[64], aid[64], ref[64], lid[64];
        struct test_response r;
        long long sum = 0;
        paid(&s, prefixes[i], "10.00", txn, charge);
        test_unique(key, sizeof key, "out-refund");
        const char *json = "{\"amount\":4.00}";
        refund_settled(&s, txn, key, json, 0, &r);
        /* a fault's customer: the answer was lost - but for the close on a
         * kept connection, which libcurl sends again by itself on a new
         * one, answered with the acquirer's replay */
        int lost = i > 0 && !(r.status == 201 && strcmp(prefixes[i], "cust-close") == 0);
        if (lost) {
            test_expect_error(&r, 503, "outcome_pending", NULL);
            str_of(&r, "refund_id", rid, sizeof rid);
            test_response_free(&r);
            refund_settled(&s, txn, key, "{\"amount\":4.01}", 0, &r);
            test_expect_error(&r, 422, "idempotency_key_reused", NULL);
            test_response_free(&r);
            refund_settled(&s, txn, key, json, 1, &r);
        }
        cr_assert_eq(r.status, 201, "%s: %ld %s", prefixes[i], r.status, r.body);
        str_of(&r, "refund_id", rid2, sizeof rid2);
        str_of(&r, "acquirer_refund_id", aid, sizeof aid);
        test_response_free(&r);
        if (lost)
            cr_assert_str_eq(rid2, rid, "the refund the 503 named");
        cr_assert_eq(ledger_refunds(&a, charge, &sum, ref, lid), 1, "%s", prefixes[i]);
        cr_assert_eq(sum, 400);
        cr_assert_str_eq(ref, rid2, "the acquirer's refund references ours");
        cr_assert_str_eq(lid, aid, "ours names the acquirer's");
        /* the rest, then nothing: the acquirer holds no more than the charge */
        test_unique(key, sizeof key, "out-refund-rest");
        refund_settled(&s, txn, key, "{\"amount\":6.00}", 1, &r);
        cr_assert_eq(r.status, 201, "%ld %s", r.status, r.body);
        test_response_free(&r);
        test_unique(key, sizeof key, "out-refund-over");
        refund_settled(&s, txn, key, "{\"amount\":0.01}", 0, &r);
        test_expect_error(&r, 422, "refund_exceeds_payment", NULL);
        test_response_free(&r);
        cr_assert_eq(ledger_refunds(&a, charge, &sum, ref, lid), 2);
        cr_assert_eq(sum, 1000, "refunded at the acquirer: all of the charge, no more");
    }
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* The reconciliation finds what it is for: a charge at the acquirer that no
 * payment names, and a payment whose charge the acquirer does not have -
 * written by hand two days back, where no other test writes. */
Test(outcomes, reconciliation_reports_a_charge_and_a_payment_without_their_other_half)
{
    char since[64], until[64], report[16384], id[64], txn[64];
    test_query_text(test_db_url(), "SELECT (now() - interval '2 days')::text WHERE $1 = $1", "x",
                    since, sizeof since);
    test_query_text(test_db_url(),
                    "SELECT (now() - interval '2 days' + interval '1 minute')::text"
                    " WHERE $1 = $1",
                    "x", until, sizeof until);
    test_unique(id, sizeof id, "ch_orphan");
    test_unique(txn, sizeof txn, "txn_orphan");
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO acquirer_charges (charge_id, merchant, customer_id, amount_minor,"
             " currency, status, reference, idempotency_key, created_at)"
             " VALUES ($1, 'default', 'cust-x', 500, 'EUR', 'succeeded', 'txn_nowhere', 'dk_x',"
             " '%s'::timestamptz + interval '10 seconds') RETURNING 1",
             since);
    cr_assert_eq(test_query_long(test_db_url(), sql, id), 1);
    snprintf(sql, sizeof sql,
             "INSERT INTO payments (tenant_id, transaction_id, customer_id, amount_minor, currency,"
             " status, processed_at, charge_id) VALUES ('default', $1, 'cust-x', 700, 'EUR',"
             " 'completed', '%s'::timestamptz + interval '20 seconds', 'ch_nowhere') RETURNING 1",
             since);
    cr_assert_eq(test_query_long(test_db_url(), sql, txn), 1);
    int st = reconcile(since, until, report, sizeof report);
    cr_assert_eq(st, 1, "exit %d:\n%s", st, report);
    char want[160];
    snprintf(want, sizeof want, "charge without a payment here: %s ", id);
    cr_assert_not_null(strstr(report, want), "%s", report);
    snprintf(want, sizeof want, "payment without its charge: %s ", txn);
    cr_assert_not_null(strstr(report, want), "%s", report);
    cr_assert_not_null(strstr(report, "faults: 2\n"), "%s", report);
    test_query_long(test_db_url(),
                    "WITH d AS (DELETE FROM acquirer_charges WHERE charge_id = $1"
                    " RETURNING 1) SELECT count(*) FROM d",
                    id);
    test_query_long(test_db_url(),
                    "WITH d AS (DELETE FROM payments WHERE transaction_id = $1"
                    " RETURNING 1) SELECT count(*) FROM d",
                    txn);
}

/* Two tenants send one client key: two records, two keys downstream -
 * neither the client's key - so two charges, one per merchant. */
Test(outcomes, two_tenants_with_one_client_key_are_two_charges)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    struct config c;
    test_acquirer_start(&a, NULL, 0);
    outcome_config(&c, &a, TIMEOUT_MS, 30);
    snprintf(c.api_keys, sizeof c.api_keys, "acme:key-acme-0001,globex:key-globex-0002");
    memset(&s, 0, sizeof s);
    test_server_spawn(&s, &c, MOCKERY_SERVER_BIN);

    char key[96], cust[64], json[256], txn[2][64], charge[2][64];
    const char *auth[2] = {"Authorization: Bearer key-acme-0001",
                           "Authorization: Bearer key-globex-0002"};
    const char *merchant[2] = {"acme", "globex"};
    test_unique(key, sizeof key, "out-shared");
    test_unique(cust, sizeof cust, "cust-shared");
    pay_json(json, sizeof json, cust, "5.00");
    for (int i = 0; i < 2; i++) {
        struct test_response r;
        pay_as(&s, auth[i], key, json, &r);
        cr_assert_eq(r.status, 201, "%s: %ld %s", merchant[i], r.status, r.body);
        str_of(&r, "transaction_id", txn[i], sizeof txn[i]);
        str_of(&r, "charge_id", charge[i], sizeof charge[i]);
        test_response_free(&r);
        char url[256];
        snprintf(url, sizeof url, "%s/v1/charges/%s", a.base, charge[i]);
        test_http("GET", url, NULL, NULL, 0, &r);
        cJSON *o = test_json(&r);
        cr_assert_str_eq(cJSON_GetObjectItem(o, "merchant")->valuestring, merchant[i]);
        cr_assert_str_eq(cJSON_GetObjectItem(o, "reference")->valuestring, txn[i]);
        const char *dk = cJSON_GetObjectItem(o, "idempotency_key")->valuestring;
        cr_assert_str_neq(dk, key, "never the client's key downstream");
        cJSON_Delete(o);
        test_response_free(&r);
    }
    cr_assert_str_neq(txn[0], txn[1]);
    cr_assert_str_neq(charge[0], charge[1]);
    cr_assert_eq(customer_charges(cust), 2, "one charge per tenant");
    char dks[2][64];
    for (int i = 0; i < 2; i++) {
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT downstream_key FROM idempotency_keys WHERE tenant_id = '%s'"
                 " AND idempotency_key = $1",
                 merchant[i]);
        test_query_text(test_db_url(), sql, key, dks[i], sizeof dks[i]);
        cr_assert_eq(strncmp(dks[i], "dk_", 3), 0, "%s", dks[i]);
    }
    cr_assert_str_neq(dks[0], dks[1], "two records, two keys downstream");
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* A key used again after its completed record expired is a new payment:
 * a new record, a new key downstream, a new charge - the first one's
 * charge untouched. (The wait is for the event: the record's expiry in
 * the database.) */
Test(outcomes, a_key_reused_after_expiry_is_a_new_charge_under_a_new_key)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s;
    struct config c;
    test_acquirer_start(&a, NULL, 0);
    outcome_config(&c, &a, TIMEOUT_MS, 3);
    c.idempotency_ttl_s = 4;
    memset(&s, 0, sizeof s);
    test_server_spawn(&s, &c, MOCKERY_SERVER_BIN);

    char key[96], cust[64], json[256], txn[2][64], dk[2][64];
    struct test_response r;
    test_unique(key, sizeof key, "out-expire");
    test_unique(cust, sizeof cust, "cust-expire");
    pay_json(json, sizeof json, cust, "3.00");
    for (int i = 0; i < 2; i++) {
        test_post_payment(&s, key, json, &r);
        cr_assert_eq(r.status, 201, "%d: %ld %s", i, r.status, r.body);
        str_of(&r, "transaction_id", txn[i], sizeof txn[i]);
        test_response_free(&r);
        test_query_text(test_db_url(),
                        "SELECT downstream_key FROM idempotency_keys WHERE idempotency_key = $1",
                        key, dk[i], sizeof dk[i]);
        if (i == 0)
            test_wait_count(test_db_url(),
                            "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                            " AND expires_at > now()",
                            key, 0, 30, "the record's expiry");
    }
    cr_assert_str_neq(txn[0], txn[1]);
    cr_assert_str_neq(dk[0], dk[1], "a new record, a new key downstream");
    cr_assert_eq(customer_charges(cust), 2);
    char id[64], st[16];
    cr_assert_eq(ledger_charges(&a, txn[0], id, st), 1);
    cr_assert_eq(ledger_charges(&a, txn[1], id, st), 1);
    test_server_stop(&s);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* ---- recovery without the client ---------------------------------------- */

/* Waits for the event - the record of key completed - bounded at 60 s. */
static void wait_completed(const char *key)
{
    test_wait_count(test_db_url(),
                    "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                    " AND state = 'completed'",
                    key, 1, 60, "the record completed by recovery");
}

/* The lines of a server's log saying that the record of key was recovered
 * with this result. */
static int recovered_lines(const char *log_path, const char *key, const char *result)
{
    FILE *f = fopen(log_path, "r");
    cr_assert_not_null(f, "%s", log_path);
    char line[8192], k[160], res[64];
    snprintf(k, sizeof k, "\"key\":\"%s\"", key);
    snprintf(res, sizeof res, "\"result\":\"%s\"", result);
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, "\"record recovered\"") && strstr(line, k) && strstr(line, res);
    fclose(f);
    return n;
}

/* A server that recovers every RECOVERY_MS, its log kept for the test. */
static void recovering_server(struct test_server *s, const struct test_acquirer *a, int timeout_ms,
                              int lease_s)
{
    struct config c;
    outcome_config(&c, a, timeout_ms, lease_s);
    c.recovery_interval_ms = RECOVERY_MS;
    memset(s, 0, sizeof *s);
    s->keep_log = 1;
    test_server_spawn(s, &c, MOCKERY_SERVER_BIN);
}

/* Stops s (kept_log set), its log's path in path. */
static void stop_keeping_log(struct test_server *s, char *path, size_t len)
{
    snprintf(path, len, "%s", s->log_path);
    test_server_stop(s);
}

static double metric_of(const struct test_server *s, const char *series)
{
    char *text = test_scrape(s);
    double v = test_metric(text, series);
    free(text);
    return v;
}

/* The server SIGKILLed while the acquirer holds an answer it has charged,
 * and no client asks again: another server's recovery takes the record
 * over once its lease ends, asks again under the same key downstream
 * (409 while the acquirer still holds the first ask: unknown, kept, asked
 * again) and completes the payment with the one charge; the client's retry,
 * whenever it comes, is answered that payment. */
Test(outcomes, a_server_killed_mid_charge_is_finished_by_recovery_without_a_retry)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s2;
    struct killed k;
    kill_mid_charge(&a, "out-recover", "23.45", &k);
    const char *key = k.key, *cust = k.cust, *json = k.json, *ref = k.ref;
    char txn[64], charge[64];
    struct test_response r;

    recovering_server(&s2, &a, 2500, 3);
    wait_completed(key);
    test_query_text(test_db_url(), "SELECT transaction_id FROM payments WHERE idempotency_key = $1",
                    key, txn, sizeof txn);
    cr_assert_str_eq(txn, ref, "the transaction the first server named at the acquirer");
    expect_one_charge(&a, txn, "succeeded", NULL);
    cr_assert_eq(customer_charges(cust), 1);

    test_post_payment(&s2, key, json, &r);
    cr_assert_eq(r.status, 200, "the retry is answered the recovered payment: %ld %s", r.status,
                 r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    str_of(&r, "charge_id", charge, sizeof charge);
    cr_assert_str_eq(txn, ref);
    test_response_free(&r);
    expect_one_charge(&a, txn, "succeeded", charge);
    cr_assert_geq(metric_of(&s2, "mockery_recovery_records_total{result=\"completed\"}"), 1);
    char log[128];
    stop_keeping_log(&s2, log, sizeof log);
    cr_assert_eq(recovered_lines(log, key, "completed"), 1, "log %s", log);
    unlink(log);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* A refund's answer held by the acquirer after it refunded, its server
 * SIGKILLed, and no client asking again: another server's recovery
 * revives the kept refund (its route, its payment's id in the path, its
 * body), asks again under the refund record's key downstream and completes
 * it with the one refund the acquirer made; the client's retry is answered
 * that refund. */
Test(outcomes, a_refund_whose_server_died_is_finished_by_recovery)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s1, s2;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start_with(&s1, &a, 2500, 3);
    char txn[64], charge[64], key[96], path[160], url[256], keyh[160], ref[64] = "";
    paid(&s1, "cust-hold", "40.00", txn, charge); /* answered after its own held answer */
    test_unique(key, sizeof key, "out-refund-recover");
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", txn);
    snprintf(url, sizeof url, "%s%s", s1.base, path);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    const char *json = "{\"amount\":15.00}";
    struct test_response r;
    cr_assert_neq(httpc_request("POST", url, headers, json, strlen(json), 200, &r), 0,
                  "answered before the held refund: %ld %s", r.status, r.body);
    httpc_response_free(&r);
    test_wait_text(test_db_url(),
                   "SELECT coalesce(max(reference), '') FROM acquirer_refunds"
                   " WHERE charge_id = $1",
                   charge, ref, sizeof ref, 30, "the acquirer's refund");
    test_server_kill(&s1);

    recovering_server(&s2, &a, 2500, 3);
    wait_completed(key);
    char refund_id[64] = "";
    test_query_text(test_db_url(), "SELECT refund_id FROM refunds WHERE idempotency_key = $1", key,
                    refund_id, sizeof refund_id);
    cr_assert_str_eq(refund_id, ref, "the refund the acquirer was asked for");
    long long sum = 0;
    char first_ref[64], first_id[64], acquirer_id[64] = "";
    cr_assert_eq(ledger_refunds(&a, charge, &sum, first_ref, first_id), 1, "refunds of %s", charge);
    cr_assert_eq(sum, 1500);
    test_query_text(test_db_url(),
                    "SELECT acquirer_refund_id FROM refunds WHERE idempotency_key = $1", key,
                    acquirer_id, sizeof acquirer_id);
    cr_assert_str_eq(acquirer_id, first_id);

    test_post_json(&s2, path, key, json, &r);
    cr_assert_eq(r.status, 200, "the retry is answered the recovered refund: %ld %s", r.status,
                 r.body);
    char again[64];
    str_of(&r, "refund_id", again, sizeof again);
    cr_assert_str_eq(again, ref);
    test_response_free(&r);
    test_server_stop(&s2);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

#define RECOVERED 8

/* Records whose outcome stayed unknown (the acquirer answered 503) and
 * whose clients never came back: one recovering server keeps them (asked
 * again, still unknown: counted pending, waiting). It stops while the
 * acquirer restarts without the fault: a pass then would find nothing
 * listening - nothing sent, so the record is released, rightly (the
 * acquirer-down test) - and how long the restart takes is the machine's.
 * Then two recovering servers side by side, and each record is completed
 * once - by one server, one line - with one charge. */
Test(outcomes, recovery_on_two_servers_finishes_each_record_once)
{
    char since[64];
    db_now(since, sizeof since);
    struct test_acquirer a = {0};
    struct test_server s, r1, r2;
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    server_start(&s, &a);
    char key[RECOVERED][96], cust[RECOVERED][64], txn[RECOVERED][64], json[256], paid_txn[64];
    struct test_response r;
    for (int i = 0; i < RECOVERED; i++) {
        test_unique(key[i], sizeof key[i], "out-rec2");
        test_unique(cust[i], sizeof cust[i], "cust-busy");
        pay_json(json, sizeof json, cust[i], "3.10");
        test_post_payment(&s, key[i], json, &r);
        test_expect_error(&r, 503, "outcome_pending", NULL);
        str_of(&r, "transaction_id", txn[i], sizeof txn[i]);
        test_response_free(&r);
    }
    test_server_stop(&s);

    /* still 503 at the acquirer: recovered as pending, kept, waiting */
    recovering_server(&r1, &a, TIMEOUT_MS, 3);
    for (int i = 0;
         i < 1200 &&
         metric_of(&r1, "mockery_recovery_records_total{result=\"pending\"}") < RECOVERED;
         i++)
        test_sleep_ms(50);
    cr_assert_geq(metric_of(&r1, "mockery_recovery_records_total{result=\"pending\"}"), RECOVERED);
    cr_assert_geq(metric_of(&r1, "mockery_recovery_waiting_records"), 1);
    cr_assert_gt(metric_of(&r1, "mockery_recovery_oldest_waiting_seconds"), 0);
    for (int i = 0; i < RECOVERED; i++)
        expect_no_charge(&a, txn[i]);

    char log0[128];
    stop_keeping_log(&r1, log0, sizeof log0);
    int port = a.port;
    test_acquirer_stop(&a);
    a.port = port;
    test_acquirer_start(&a, NULL, 0);
    recovering_server(&r1, &a, TIMEOUT_MS, 3);
    recovering_server(&r2, &a, TIMEOUT_MS, 3);
    for (int i = 0; i < RECOVERED; i++)
        wait_completed(key[i]);
    for (int i = 0; i < RECOVERED; i++) {
        test_query_text(test_db_url(),
                        "SELECT transaction_id FROM payments WHERE idempotency_key = $1", key[i],
                        paid_txn, sizeof paid_txn);
        cr_assert_str_eq(paid_txn, txn[i], "the transaction the client was told");
        expect_one_charge(&a, txn[i], "succeeded", NULL);
        cr_assert_eq(customer_charges(cust[i]), 1);
    }
    char log1[128], log2[128];
    stop_keeping_log(&r1, log1, sizeof log1);
    stop_keeping_log(&r2, log2, sizeof log2);
    for (int i = 0; i < RECOVERED; i++) {
        cr_assert_eq(recovered_lines(log0, key[i], "completed") +
                         recovered_lines(log0, key[i], "released"),
                     0, "record %s finished while the acquirer answered 503", key[i]);
        cr_assert_eq(recovered_lines(log1, key[i], "completed") +
                         recovered_lines(log2, key[i], "completed"),
                     1, "record %s completed by one recovery, once", key[i]);
    }
    unlink(log0);
    unlink(log1);
    unlink(log2);
    expect_reconciled(since);
    test_acquirer_stop(&a);
}

/* ---- chaos: the acquirer restarted, PostgreSQL crashed, a server SIGKILLed
 * under load ---------------------------------------------------------------- */

#define CHAOS_CLIENTS 8
#define CHAOS_EACH 16 /* payments per client, each for a customer of its own */
#define CHAOS_EVENTS 3

struct chaos {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char base[2][64]; /* the two servers, as they are now */
    int answered;     /* payments answered 201 or 402 */
    int events_done;  /* the events that have happened */
    char key[CHAOS_CLIENTS * CHAOS_EACH][96];
    char cust[CHAOS_CLIENTS * CHAOS_EACH][64];
    char txn[CHAOS_CLIENTS * CHAOS_EACH][64];
    long status[CHAOS_CLIENTS * CHAOS_EACH];
    int attempts;
};

struct chaos_client {
    struct chaos *c;
    int id;
};

/* One client: each payment posted, and retried as the README says -
 * after a 409, a 5xx or no answer, the same key and body again (after
 * Retry-After, or 100 ms), on either server - until it is answered 201 or
 * 402, for 120 s at most. Its last payment waits until every event has
 * happened, so that no event lands after the load. */
static void *chaos_client(void *p)
{
    struct chaos_client *cl = p;
    struct chaos *c = cl->c;
    for (int j = 0; j < CHAOS_EACH; j++) {
        int i = cl->id * CHAOS_EACH + j;
        if (j == CHAOS_EACH - 1) {
            pthread_mutex_lock(&c->mu);
            while (c->events_done < CHAOS_EVENTS)
                pthread_cond_wait(&c->cv, &c->mu);
            pthread_mutex_unlock(&c->mu);
        }
        char json[256], url[128], keyh[160];
        pay_json(json, sizeof json, c->cust[i], "7.77");
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", c->key[i]);
        const char *headers[] = {"Content-Type: application/json", keyh, NULL};
        struct timespec t0, now;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int attempt = 0;; attempt++) {
            pthread_mutex_lock(&c->mu);
            snprintf(url, sizeof url, "%s/api/v1/payments", c->base[(i + attempt) % 2]);
            c->attempts++;
            pthread_mutex_unlock(&c->mu);
            struct test_response r;
            httpc_request("POST", url, headers, json, strlen(json), 5000, &r);
            long st = r.status;
            if (st == 201 || st == 402 || st == 200) {
                cJSON *o = cJSON_Parse(r.body);
                const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "transaction_id");
                pthread_mutex_lock(&c->mu);
                snprintf(c->txn[i], sizeof c->txn[i], "%s",
                         cJSON_IsString(t) ? t->valuestring : "");
                c->status[i] = st;
                c->answered++;
                pthread_cond_broadcast(&c->cv);
                pthread_mutex_unlock(&c->mu);
                cJSON_Delete(o);
                httpc_response_free(&r);
                break;
            }
            long wait = st && atol(r.retry_after) > 0 ? atol(r.retry_after) * 1000 : 100;
            httpc_response_free(&r);
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec - t0.tv_sec > 120)
                break; /* status stays 0: the test fails on it */
            test_sleep_ms(wait);
        }
    }
    return NULL;
}

/* Waits until n payments are answered. */
static void chaos_wait_answered(struct chaos *c, int n)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 120;
    pthread_mutex_lock(&c->mu);
    while (c->answered < n && pthread_cond_timedwait(&c->cv, &c->mu, &deadline) == 0)
        ;
    int got = c->answered;
    pthread_mutex_unlock(&c->mu);
    cr_assert_geq(got, n, "only %d payments answered within 120 s", got);
}

static void chaos_event_done(struct chaos *c)
{
    pthread_mutex_lock(&c->mu);
    c->events_done++;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static char own_cluster[64]; /* a test's own PostgreSQL, removed even on failure */

static void own_cluster_teardown(void)
{
    test_acquirers_kill_all();
    if (own_cluster[0])
        test_cluster(own_cluster, "down", NULL, 0);
}

/* Runs one statement on url (outside a transaction block). */
static void exec_on(const char *url, const char *sql)
{
    PGconn *conn = PQconnectdb(url);
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    PQfinish(conn);
}

/* A server of the chaos test: on its own cluster, recovering, a 1 s bound
 * on each ask and a lease of 3 s. */
static void chaos_server(struct test_server *s, const struct test_acquirer *a, const char *url)
{
    struct config c;
    outcome_config(&c, a, 1000, 3);
    snprintf(c.database_url, sizeof c.database_url, "%s", url);
    c.recovery_interval_ms = 200;
    memset(s, 0, sizeof *s);
    test_server_spawn(s, &c, MOCKERY_SERVER_BIN);
}

/* Many clients retrying as the README says, against two servers and the
 * acquirer, on a PostgreSQL of the test's own; while they run - each event
 * once a share of the payments is answered, and before any client's last
 * payment - a server is SIGKILLed (and another started), the acquirer is
 * SIGKILLed and started again on its port, and PostgreSQL is crashed and
 * recovered. The acquirer slows some asks (300 ms), so that asks are in
 * flight when they happen. Then, once recovery has finished what waits:
 * every payment answered, one charge at the acquirer for each (by its
 * transaction, and by its customer: no customer charged twice), and the
 * reconciliation finds no fault. */
Test(outcomes, chaos_under_load_charges_each_payment_once, .fini = own_cluster_teardown,
     .timeout = 600)
{
    char url[256], acq_url[300], since[64];
    snprintf(own_cluster, sizeof own_cluster, "chaos-%d", (int)getpid());
    test_cluster(own_cluster, "up", url, sizeof url);
    test_query_text(url, "SELECT now()::text WHERE $1 = $1", "x", since, sizeof since);
    /* the acquirer's ledger: a database of its own in the same cluster */
    test_acquirer_database(url, "chaos_acquirer", acq_url, sizeof acq_url);
    char env_url[340];
    snprintf(env_url, sizeof env_url, "MOCKERY_ACQUIRER_DATABASE_URL=%s", acq_url);
    char *env[] = {env_url, "PATH=/usr/bin:/bin", NULL};
    static const char *const faults[] = {"--fault", "latency:rate=0.3:ms=300", NULL};
    struct test_acquirer a = {0};
    test_acquirer_start_env(&a, faults, 1, 0, env);

    struct chaos *c = calloc(1, sizeof *c);
    cr_assert_not_null(c);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    struct test_server srv[2];
    for (int k = 0; k < 2; k++) {
        chaos_server(&srv[k], &a, url);
        snprintf(c->base[k], sizeof c->base[k], "%s", srv[k].base);
    }
    int total = CHAOS_CLIENTS * CHAOS_EACH;
    for (int i = 0; i < total; i++) {
        test_unique(c->key[i], sizeof c->key[i], "chaos");
        test_unique(c->cust[i], sizeof c->cust[i], "cust-chaos");
    }
    pthread_t t[CHAOS_CLIENTS];
    struct chaos_client cl[CHAOS_CLIENTS];
    for (int k = 0; k < CHAOS_CLIENTS; k++) {
        cl[k] = (struct chaos_client){c, k};
        cr_assert_eq(pthread_create(&t[k], NULL, chaos_client, &cl[k]), 0);
    }

    /* 1: a server SIGKILLed mid-load, another started in its place */
    chaos_wait_answered(c, total / 5);
    test_server_kill(&srv[0]);
    chaos_server(&srv[0], &a, url);
    pthread_mutex_lock(&c->mu);
    snprintf(c->base[0], sizeof c->base[0], "%s", srv[0].base);
    pthread_mutex_unlock(&c->mu);
    chaos_event_done(c);
    /* 2: the acquirer SIGKILLed, and started again on its port */
    chaos_wait_answered(c, 2 * total / 5);
    int port = a.port;
    test_acquirer_kill(&a);
    a.port = port;
    test_acquirer_start_env(&a, faults, 1, 0, env);
    chaos_event_done(c);
    /* 3: PostgreSQL crashed (SIGKILL) and recovered */
    chaos_wait_answered(c, 3 * total / 5);
    test_cluster(own_cluster, "crash", NULL, 0);
    test_cluster(own_cluster, "up", NULL, 0);
    chaos_event_done(c);

    for (int k = 0; k < CHAOS_CLIENTS; k++)
        pthread_join(t[k], NULL);
    for (int i = 0; i < total; i++)
        cr_assert(c->status[i] == 201 || c->status[i] == 402 || c->status[i] == 200,
                  "payment %s was never answered (last status %ld)", c->key[i], c->status[i]);
    /* what recovery has left to finish: nothing, within 60 s */
    test_wait_count(url,
                    "SELECT count(*) FROM idempotency_keys WHERE request IS NOT NULL"
                    " AND state = 'processing' AND $1 = $1",
                    "x", 0, 60, "records waiting for recovery");
    for (int i = 0; i < total; i++) {
        long n = test_query_long(
            acq_url, "SELECT count(*) FROM acquirer_charges WHERE reference = $1", c->txn[i]);
        cr_assert_eq(n, 1, "payment %s (%s): %ld charges at the acquirer", c->key[i], c->txn[i], n);
    }
    cr_assert_eq(test_query_long(acq_url,
                                 "SELECT count(*) FROM (SELECT customer_id FROM acquirer_charges"
                                 " WHERE customer_id LIKE $1 GROUP BY customer_id"
                                 " HAVING count(*) > 1) twice",
                                 "cust-chaos%"),
                 0, "a customer charged twice");
    for (int k = 0; k < 2; k++)
        test_server_stop(&srv[k]);
    test_expect_reconciled(url, acq_url, since);
    cr_log_info("chaos: %d payments, %d posts, three events: one charge each", total, c->attempts);
    test_acquirer_stop(&a);
    free(c);
}

/* A claim that keeps its request waits for its WAL flush: the acquirer is
 * asked next, under the record's key downstream, and a claim a crash lost
 * would be made again by the retry with a new key - a second charge. Here
 * the service's PostgreSQL (a cluster of the test's own; the acquirer's
 * ledger is on another, whose commits flush nothing of this one's WAL)
 * leaves asynchronous commits unwritten for up to 10 s (wal_writer_delay);
 * the server claims and asks, the acquirer charges and holds its answer,
 * and PostgreSQL is SIGKILLed then: the record is there after the crash
 * recovery, under the key the acquirer was asked with, and the retry is
 * answered the one charge. */
Test(outcomes, a_claim_that_asked_the_acquirer_survives_a_postgresql_crash,
     .fini = own_cluster_teardown, .timeout = 180)
{
    char url[256];
    snprintf(own_cluster, sizeof own_cluster, "durable-%d", (int)getpid());
    test_cluster(own_cluster, "up", url, sizeof url);
    exec_on(url, "ALTER SYSTEM SET wal_writer_delay = '10s'");
    exec_on(url, "SELECT pg_reload_conf()");
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct config c;
    outcome_config(&c, &a, 2500, 3);
    snprintf(c.database_url, sizeof c.database_url, "%s", url);
    struct test_server s;
    memset(&s, 0, sizeof s);
    test_server_spawn(&s, &c, MOCKERY_SERVER_BIN);

    char key[96], cust[64], json[256], ref[64] = "", dk[80] = "";
    struct test_response r;
    test_unique(key, sizeof key, "out-durable");
    test_unique(cust, sizeof cust, "cust-hold");
    pay_json(json, sizeof json, cust, "31.41");
    post_until_charged(s.base, key, cust, json, ref);
    test_cluster(own_cluster, "crash", NULL, 0);
    test_cluster(own_cluster, "up", NULL, 0); /* crash recovery */

    test_query_text(url,
                    "SELECT coalesce(max(downstream_key), '') FROM idempotency_keys"
                    " WHERE idempotency_key = $1",
                    key, dk, sizeof dk);
    cr_assert(dk[0], "the claim was lost in the crash: the retry would ask under a new key "
                     "downstream, and the customer pay twice");
    cr_assert_str_eq(ref + strlen("txn_"), dk + strlen("dk_"),
                     "the record's key downstream is the one the acquirer was asked with");
    /* the retry: 503 until the server's connections are back, then the charge */
    for (int i = 0; i < 600; i++) {
        test_post_payment(&s, key, json, &r);
        if (r.status == 201 || r.status == 200)
            break;
        test_response_free(&r);
        test_sleep_ms(50);
    }
    cr_assert(r.status == 201 || r.status == 200, "%ld %s", r.status, r.body);
    char txn[64];
    str_of(&r, "transaction_id", txn, sizeof txn);
    test_response_free(&r);
    cr_assert_str_eq(txn, ref);
    cr_assert_eq(customer_charges(cust), 1);
    test_server_stop(&s);
    test_acquirer_stop(&a);
}
