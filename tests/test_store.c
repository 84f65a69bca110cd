/* test_store.c - the store contract, written once and run against both the
 * memory and the PostgreSQL store */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ids.h"
#include "migrations.h"
#include "store.h"
#include "store_mem.h"
#include "store_pg.h"
#include "support.h"

#define LONG_MS (60 * 1000)
#define DAY_MS (86400 * 1000)

static struct store *store;
/* The options the case's PostgreSQL store was opened with. */
static struct store_pg_options pg_opened;

static void open_mem(void)
{
    store = store_mem_new();
    cr_assert_not_null(store);
}

static void open_pg(void)
{
    char err[256] = "";
    struct store_pg_options o = {.database_url = test_db_url(), .pool_size = 2};
    pg_opened = o;
    store = store_pg_new(&o, err, sizeof err);
    cr_assert_not_null(store, "store_pg_new: %s", err);
}

/* The same database through pgbouncer (transaction pooling, fewer server
 * connections than clients), with unnamed statements. */
static void open_pgbouncer(void)
{
    char err[256] = "";
    struct store_pg_options o = {
        .database_url = test_pgbouncer_url(), .pool_size = 2, .unnamed_statements = 1};
    pg_opened = o;
    store = store_pg_new(&o, err, sizeof err);
    cr_assert_not_null(store, "store_pg_new through pgbouncer: %s", err);
}

static void close_store(void)
{
    store_free(store);
    store = NULL;
}

static void wait_ms(int ms)
{
    /* Lets a lease or TTL run out: time passing is the behaviour under test. */
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Defines the contract case `name` for both stores, the PostgreSQL one
 * twice: direct with prepared statements, and through pgbouncer with
 * unnamed ones. */
#define CONTRACT(name)                                                                             \
    static void name(void);                                                                        \
    Test(store_mem, name, .init = open_mem, .fini = close_store, .timeout = 30)                    \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(store_pg, name, .init = open_pg, .fini = close_store, .timeout = 30)                      \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(store_pgbouncer, name, .init = open_pgbouncer, .fini = close_store, .timeout = 30)        \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)

static const char *T = "tenant-a";
static const char *FP = "fp-1";

/* A claim keeping request (NULL: none). */
static struct store_claim_result claim_with(const char *key, const char *fp, const char *request,
                                            int64_t lease_ms, int64_t ttl_ms)
{
    struct store_claim_result r;
    char err[256] = "";
    memset(&r, 0, sizeof r);
    enum store_status st =
        store_claim(store, T, key, fp, request, lease_ms, ttl_ms, &r, err, sizeof err);
    cr_assert_eq(st, STORE_OK, "claim %s: %s", key, err);
    return r;
}

static struct store_claim_result claim(const char *key, const char *fp, int64_t lease_ms,
                                       int64_t ttl_ms)
{
    return claim_with(key, fp, NULL, lease_ms, ttl_ms);
}

/* A claim of a record that recovery passes beside the case may be taking
 * and handing back as it runs: one that did not settle in its rounds
 * (STORE_UNAVAILABLE, which a client is told to retry) is made again, as a
 * client would. */
static struct store_claim_result claim_settling(const char *key, const char *fp)
{
    struct store_claim_result r;
    char err[256] = "";
    enum store_status st = STORE_UNAVAILABLE;
    for (int i = 0; st == STORE_UNAVAILABLE && i < 100; i++) {
        if (i > 0)
            wait_ms(50);
        memset(&r, 0, sizeof r);
        st = store_claim(store, T, key, fp, NULL, LONG_MS, DAY_MS, &r, err, sizeof err);
    }
    cr_assert_eq(st, STORE_OK, "claim %s: %s", key, err);
    return r;
}

/* Reaps until a pass deletes less than a full batch. */
static void reap_all(void)
{
    char err[256];
    int deleted = 0;
    do
        cr_assert_eq(store_reap(store, 100, &deleted, err, sizeof err), STORE_OK, "%s", err);
    while (deleted == 100);
}

static struct store_payment payment_for(const char *key, const char *id, const char *customer,
                                        int64_t at)
{
    struct store_payment p = {.transaction_id = (char *)id,
                              .idempotency_key = (char *)key,
                              .customer_id = (char *)customer,
                              .amount_minor = 1234,
                              .currency = "EUR",
                              .description = "contract",
                              .status = "completed",
                              .processed_at_us = at};
    return p;
}

static enum store_status complete(const char *key, int64_t token, const char *body,
                                  const struct store_payment *p)
{
    char err[256] = "";
    struct store_response resp = {201, body, strlen(body), "/api/v1/payments/x"};
    struct store_rows rows = {.payment = p};
    return store_complete(store, T, key, token, &resp, &rows, err, sizeof err);
}

CONTRACT(claim_new_key_wins)
{
    char key[96];
    test_unique(key, sizeof key, "new");
    struct store_claim_result r = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(r.outcome, CLAIM_NEW);
    cr_assert_gt(r.lease_token, 0);
    store_claim_result_clear(&r);
}

CONTRACT(claim_in_progress_is_in_use)
{
    char key[96];
    test_unique(key, sizeof key, "busy");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    struct store_claim_result b = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_IN_PROGRESS);
    cr_assert_eq(b.created_at_us, a.created_at_us);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(claim_completed_replays_the_exact_response)
{
    char key[96], id[64];
    test_unique(key, sizeof key, "done");
    test_unique(id, sizeof id, "txn");
    const char *body = "{\"a\": 1,  \"b\":\"\\u00e9 \xc3\xa9\"}";
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    struct store_payment p = payment_for(key, id, "cust-c", 1700000000000001LL);
    cr_assert_eq(complete(key, a.lease_token, body, &p), STORE_OK);
    struct store_claim_result b = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_COMPLETED);
    cr_assert_eq(b.response_status, 201);
    cr_assert_eq(b.response_body_len, strlen(body));
    cr_assert_eq(memcmp(b.response_body, body, strlen(body)), 0);
    cr_assert_str_eq(b.response_location, "/api/v1/payments/x");
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);

    struct store_payment got;
    char err[256];
    cr_assert_eq(store_get_payment(store, T, id, &got, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_str_eq(got.idempotency_key, key);
    cr_assert_str_eq(got.customer_id, "cust-c");
    cr_assert_eq(got.amount_minor, 1234);
    cr_assert_str_eq(got.currency, "EUR");
    cr_assert_str_eq(got.description, "contract");
    cr_assert_eq(got.processed_at_us, 1700000000000001LL);
    store_payment_clear(&got);
}

CONTRACT(fingerprint_mismatch_is_reported)
{
    char key[96];
    test_unique(key, sizeof key, "mismatch");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    struct store_claim_result b = claim(key, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_MISMATCH, "while processing");
    cr_assert_eq(complete(key, a.lease_token, "{}", NULL), STORE_OK);
    struct store_claim_result c = claim(key, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_MISMATCH, "once completed");
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
}

CONTRACT(lease_expiry_takeover_bumps_token_and_fences_the_old_holder)
{
    char key[96], id_old[64], id_new[64];
    test_unique(key, sizeof key, "lease");
    test_unique(id_old, sizeof id_old, "txn-old");
    test_unique(id_new, sizeof id_new, "txn-new");
    struct store_claim_result a = claim(key, FP, 100, DAY_MS);
    wait_ms(250);
    /* A different request may not take a dead holder's key. */
    struct store_claim_result m = claim(key, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(m.outcome, CLAIM_MISMATCH);
    struct store_claim_result b = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    cr_assert_neq(b.lease_token, a.lease_token);

    /* The old holder wakes up: its completion is refused and stores nothing. */
    struct store_payment old = payment_for(key, id_old, "cust-l", 1);
    cr_assert_eq(complete(key, a.lease_token, "{\"old\":1}", &old), STORE_LEASE_LOST);
    struct store_payment got;
    char err[256];
    cr_assert_eq(store_get_payment(store, T, id_old, &got, err, sizeof err), STORE_NOT_FOUND);

    struct store_payment fresh = payment_for(key, id_new, "cust-l", 2);
    cr_assert_eq(complete(key, b.lease_token, "{\"new\":1}", &fresh), STORE_OK);
    cr_assert_eq(store_get_payment(store, T, id_new, &got, err, sizeof err), STORE_OK);
    store_payment_clear(&got);
    struct store_claim_result c = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_COMPLETED);
    cr_assert_str_eq(c.response_body, "{\"new\":1}");
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
    store_claim_result_clear(&m);
}

/* The key a record sends downstream (to an acquirer): chosen when the record
 * is made, never the client's key, one per tenant; the same for a takeover
 * (every ask for one record carries it, so the acquirer replays); new for a
 * record claimed again after it expired or was released. */
CONTRACT(downstream_key_is_the_records_own_across_takeovers)
{
    char key[96], err[256];
    test_unique(key, sizeof key, "downstream");
    struct store_claim_result a = claim(key, FP, 100, DAY_MS);
    cr_assert_eq(a.outcome, CLAIM_NEW);
    cr_assert_eq(strncmp(a.downstream_key, STORE_DOWNSTREAM_PREFIX, 3), 0, "%s", a.downstream_key);
    cr_assert_eq(strlen(a.downstream_key), 27, "%s", a.downstream_key);
    cr_assert_str_neq(a.downstream_key, key);
    /* another tenant, the same client key: another record, another key */
    struct store_claim_result t;
    memset(&t, 0, sizeof t);
    cr_assert_eq(
        store_claim(store, "tenant-b", key, FP, NULL, LONG_MS, DAY_MS, &t, err, sizeof err),
        STORE_OK, "%s", err);
    cr_assert_eq(t.outcome, CLAIM_NEW);
    cr_assert_str_neq(t.downstream_key, a.downstream_key);
    /* the holder died: the takeover asks downstream with the same key */
    wait_ms(250);
    struct store_claim_result b = claim(key, FP, 100, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    cr_assert_str_eq(b.downstream_key, a.downstream_key);
    /* released: nothing moved downstream; the next claim is a new record */
    cr_assert_eq(store_release(store, T, key, b.lease_token, err, sizeof err), STORE_OK, "%s", err);
    struct store_claim_result c = claim(key, FP, LONG_MS, 100);
    cr_assert_eq(c.outcome, CLAIM_NEW);
    cr_assert_str_neq(c.downstream_key, a.downstream_key);
    /* completed, then expired: claimed again, a new key */
    cr_assert_eq(complete(key, c.lease_token, "{}", NULL), STORE_OK);
    wait_ms(250);
    struct store_claim_result d = claim(key, FP, LONG_MS, DAY_MS);
    /* (NEW when another case's reaper pass deleted it first: the PostgreSQL
     * cases share one database) */
    cr_assert(d.outcome == CLAIM_TAKEOVER || d.outcome == CLAIM_NEW, "outcome %d", d.outcome);
    cr_assert_str_neq(d.downstream_key, c.downstream_key);
    cr_assert_str_neq(d.downstream_key, a.downstream_key);
    store_claim_result_clear(&a);
    store_claim_result_clear(&t);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
    store_claim_result_clear(&d);
}

CONTRACT(completion_with_stale_token_is_refused)
{
    char key[96], id[64];
    test_unique(key, sizeof key, "stale");
    test_unique(id, sizeof id, "txn");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    struct store_payment p = payment_for(key, id, "cust-s", 1);
    cr_assert_eq(complete(key, a.lease_token + 1000000, "{}", &p), STORE_LEASE_LOST);
    struct store_payment got;
    char err[256];
    cr_assert_eq(store_get_payment(store, T, id, &got, err, sizeof err), STORE_NOT_FOUND);
    /* Completing twice is refused too: the record is no longer processing. */
    cr_assert_eq(complete(key, a.lease_token, "{}", &p), STORE_OK);
    cr_assert_eq(complete(key, a.lease_token, "{}", &p), STORE_LEASE_LOST);
    store_claim_result_clear(&a);
}

/* An unknown outcome downstream: the lease ends, the record stays
 * processing - not free, not completed - and the next claim with the same
 * request takes it over at once, with the same downstream key; the old
 * holder can no longer complete it. */
CONTRACT(abandon_ends_the_lease_and_keeps_the_record)
{
    char key[96], err[256];
    test_unique(key, sizeof key, "abandon");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(store_abandon(store, T, key, a.lease_token + 1000000, err, sizeof err),
                 STORE_LEASE_LOST);
    struct store_claim_result held = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(held.outcome, CLAIM_IN_PROGRESS, "a wrong token ended nothing");
    cr_assert_eq(store_abandon(store, T, key, a.lease_token, err, sizeof err), STORE_OK, "%s", err);
    struct store_claim_result other = claim_settling(key, "fp-other");
    cr_assert_eq(other.outcome, CLAIM_MISMATCH, "still the first request's record");
    struct store_claim_result b = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    cr_assert_str_eq(b.downstream_key, a.downstream_key);
    cr_assert_eq(complete(key, a.lease_token, "{}", NULL), STORE_LEASE_LOST);
    cr_assert_eq(store_abandon(store, T, key, a.lease_token, err, sizeof err), STORE_LEASE_LOST);
    cr_assert_eq(complete(key, b.lease_token, "{}", NULL), STORE_OK);
    cr_assert_eq(store_abandon(store, T, key, b.lease_token, err, sizeof err), STORE_LEASE_LOST,
                 "a completed record is not abandoned");
    store_claim_result_clear(&a);
    store_claim_result_clear(&held);
    store_claim_result_clear(&other);
    store_claim_result_clear(&b);
}

CONTRACT(release_frees_the_key_for_a_retry)
{
    char key[96], err[256];
    test_unique(key, sizeof key, "release");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(store_release(store, T, key, a.lease_token + 1000000, err, sizeof err),
                 STORE_LEASE_LOST);
    cr_assert_eq(store_release(store, T, key, a.lease_token, err, sizeof err), STORE_OK);
    struct store_claim_result b = claim(key, "fp-any", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_NEW);
    cr_assert_eq(store_release(store, T, key, a.lease_token, err, sizeof err), STORE_LEASE_LOST);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(expired_records_are_free_and_reaped)
{
    char key[96], key2[96], err[256];
    test_unique(key, sizeof key, "expire");
    test_unique(key2, sizeof key2, "expire2");
    struct store_claim_result a = claim(key, FP, LONG_MS, 100);
    cr_assert_eq(complete(key, a.lease_token, "{}", NULL), STORE_OK);
    struct store_claim_result a2 = claim(key2, FP, LONG_MS, 100);
    cr_assert_eq(complete(key2, a2.lease_token, "{}", NULL), STORE_OK);
    wait_ms(250);
    /* An expired key is free, whatever the new request. */
    struct store_claim_result b = claim(key, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    /* The reaper deletes the other; it comes back as new. (The PostgreSQL
     * cases share one database and run at the same time: the other one's
     * pass may have deleted it first, so what this pass counted is not the
     * test - that the key comes back new is.) */
    int deleted = 0;
    do
        cr_assert_eq(store_reap(store, 100, &deleted, err, sizeof err), STORE_OK, "%s", err);
    while (deleted == 100);
    struct store_claim_result c = claim(key2, FP, LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_NEW);
    /* The live one was not reaped. */
    struct store_claim_result d = claim(key, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(d.outcome, CLAIM_IN_PROGRESS);
    store_claim_result_clear(&a);
    store_claim_result_clear(&a2);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
    store_claim_result_clear(&d);
}

/* A record still processing that kept its request never expires: its
 * request may have moved money at an acquirer (an unknown outcome), so
 * another request cannot take its key, the reaper keeps it, and the retry
 * of the same request takes it over - however late - with the same key
 * downstream; then its answer lives a full TTL. */
CONTRACT(a_record_still_processing_outlives_its_expiry)
{
    char key[96];
    test_unique(key, sizeof key, "unfinished");
    struct store_claim_result a = claim_with(key, FP, "{\"route\":\"/api/v1/payments\"}", 100, 100);
    wait_ms(250);
    struct store_claim_result other = claim_settling(key, "fp-other");
    cr_assert_eq(other.outcome, CLAIM_MISMATCH, "outcome %d", other.outcome);
    reap_all();
    /* Recovery cases running beside this one take any record that kept
     * its request and whose lease ended, this one too, and hand it back
     * (its lease ended again) at once: a while in progress, then free. */
    struct store_claim_result b = claim_settling(key, FP);
    for (int i = 0; b.outcome == CLAIM_IN_PROGRESS && i < 200; i++) {
        store_claim_result_clear(&b);
        wait_ms(50);
        b = claim_settling(key, FP);
    }
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER, "not reaped, not made anew: outcome %d", b.outcome);
    cr_assert_str_eq(b.downstream_key, a.downstream_key);
    cr_assert_eq(complete(key, b.lease_token, "{\"ok\":1}", NULL), STORE_OK);
    wait_ms(150);
    struct store_claim_result c = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_COMPLETED, "its answer lives on: outcome %d", c.outcome);
    store_claim_result_clear(&a);
    store_claim_result_clear(&other);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
}

/* A record still processing that kept no request asked no one outside (its
 * operation's rows are written with its completion, or not at all): once
 * expired and its lease ended - a server killed mid-request that no client
 * retried - the reaper deletes it, and the key is free for any request. A
 * lease still running keeps it. */
CONTRACT(a_record_without_a_request_is_reaped_once_expired_and_its_lease_ended)
{
    char dead[96], live[96];
    test_unique(dead, sizeof dead, "abandoned");
    test_unique(live, sizeof live, "running");
    struct store_claim_result a = claim(dead, FP, 100, 100);
    struct store_claim_result l = claim(live, FP, LONG_MS, 100);
    wait_ms(250);
    reap_all();
    struct store_claim_result b = claim(dead, "fp-other", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_NEW, "not reaped: outcome %d", b.outcome);
    cr_assert_str_neq(b.downstream_key, a.downstream_key, "a new record, a new key downstream");
    struct store_claim_result m = claim(live, FP, LONG_MS, DAY_MS);
    cr_assert_eq(m.outcome, CLAIM_IN_PROGRESS, "a running request's record reaped: outcome %d",
                 m.outcome);
    store_claim_result_clear(&a);
    store_claim_result_clear(&l);
    store_claim_result_clear(&b);
    store_claim_result_clear(&m);
}

CONTRACT(tenants_do_not_share_keys_or_payments)
{
    char key[96], id[64], err[256];
    test_unique(key, sizeof key, "tenant");
    test_unique(id, sizeof id, "txn");
    struct store_claim_result a, b;
    cr_assert_eq(store_claim(store, "t1", key, FP, NULL, LONG_MS, DAY_MS, &a, err, sizeof err),
                 STORE_OK);
    cr_assert_eq(
        store_claim(store, "t2", key, "fp-other", NULL, LONG_MS, DAY_MS, &b, err, sizeof err),
        STORE_OK);
    cr_assert_eq(a.outcome, CLAIM_NEW);
    cr_assert_eq(b.outcome, CLAIM_NEW);
    struct store_payment p = payment_for(key, id, "cust-t", 1);
    struct store_response resp = {201, "{}", 2, NULL};
    struct store_rows rows = {.payment = &p};
    cr_assert_eq(store_complete(store, "t1", key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_OK);
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, "t2", id, &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(store_get_payment(store, "t1", id, &got, err, sizeof err), STORE_OK);
    store_payment_clear(&got);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(list_is_newest_first_with_cursor_and_customer_filter)
{
    char cust[64], other[64], err[256];
    char keys[5][96], ids[5][96];
    test_unique(cust, sizeof cust, "cust");
    test_unique(other, sizeof other, "cust");
    for (int i = 0; i < 5; i++) {
        test_unique(keys[i], sizeof keys[i], "list");
        snprintf(ids[i], sizeof ids[i], "txn_%s_%d", cust, i);
        struct store_claim_result a = claim(keys[i], FP, LONG_MS, DAY_MS);
        /* Two share a timestamp: the id breaks the tie. */
        struct store_payment p =
            payment_for(keys[i], ids[i], i == 4 ? other : cust, 1700000000000000LL + (i / 2) * 10);
        cr_assert_eq(complete(keys[i], a.lease_token, "{}", &p), STORE_OK);
        store_claim_result_clear(&a);
    }
    struct store_list l = {0};
    struct store_list_query q = {.customer_id = cust, .limit = 3};
    cr_assert_eq(store_list_payments(store, T, &q, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 3);
    cr_assert(l.has_more);
    cr_assert_str_eq(l.items[0].transaction_id, ids[3]);
    cr_assert_str_eq(l.items[1].transaction_id, ids[2]);
    cr_assert_str_eq(l.items[2].transaction_id, ids[1]);
    q.starting_after = ids[1];
    struct store_list l2 = {0};
    cr_assert_eq(store_list_payments(store, T, &q, &l2, err, sizeof err), STORE_OK);
    cr_assert_eq(l2.count, 1);
    cr_assert_not(l2.has_more);
    cr_assert_str_eq(l2.items[0].transaction_id, ids[0]);
    q.starting_after = "txn_does_not_exist";
    struct store_list l3 = {0};
    cr_assert_eq(store_list_payments(store, T, &q, &l3, err, sizeof err), STORE_NOT_FOUND);
    store_list_clear(&l);
    store_list_clear(&l2);
}

CONTRACT(payment_without_key_is_stored)
{
    char id[64], err[256];
    test_unique(id, sizeof id, "txn");
    struct store_payment p = payment_for(NULL, id, "cust-nokey", 5);
    struct store_rows rows = {.payment = &p};
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_OK, "%s", err);
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, T, id, &got, err, sizeof err), STORE_OK);
    cr_assert_null(got.idempotency_key);
    store_payment_clear(&got);
}

CONTRACT(ping_answers)
{
    char err[256];
    cr_assert_eq(store_ping(store, err, sizeof err), STORE_OK);
}

/* ---- refunds: rows written with a completion, under a condition -------- */

/* A completed payment of 100.00 (10000 minor units) with a new id in id. */
static void paid(char *id, size_t len, const char *status)
{
    char key[96];
    test_unique(key, sizeof key, "pay");
    test_unique(id, len, "txn");
    struct store_claim_result a = claim(key, FP, LONG_MS, DAY_MS);
    struct store_payment p = payment_for(key, id, "cust-r", 1700000000000000LL);
    p.amount_minor = 10000;
    p.status = (char *)status;
    cr_assert_eq(complete(key, a.lease_token, "{}", &p), STORE_OK);
    store_claim_result_clear(&a);
}

static struct store_refund refund_of(const char *payment, const char *id, const char *key,
                                     int64_t amount, int64_t at)
{
    struct store_refund r = {.refund_id = (char *)id,
                             .transaction_id = (char *)payment,
                             .idempotency_key = (char *)key,
                             .amount_minor = amount,
                             .currency = "USD",
                             .reason = NULL,
                             .status = "succeeded",
                             .created_at_us = at};
    return r;
}

/* Claims a new key and completes it with a refund of amount: the status. */
static enum store_status refund_with_key(const char *payment, int64_t amount, char *refund_id,
                                         size_t len)
{
    char key[96], err[256] = "";
    test_unique(key, sizeof key, "refund");
    test_unique(refund_id, len, "re");
    struct store_claim_result a = claim(key, "fp-refund", LONG_MS, DAY_MS);
    struct store_refund r = refund_of(payment, refund_id, key, amount, 1700000000000000LL);
    struct store_rows rows = {.refund = &r};
    struct store_response resp = {201, "{\"refund\":1}", 12, NULL};
    enum store_status st =
        store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err);
    store_claim_result_clear(&a);
    return st;
}

static int64_t refunded(const char *payment)
{
    char err[256] = "";
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, T, payment, &got, err, sizeof err), STORE_OK, "%s", err);
    int64_t n = got.amount_refunded_minor;
    store_payment_clear(&got);
    return n;
}

CONTRACT(refund_within_the_payment_is_written_with_its_completion)
{
    char pay[96], re1[96], re2[96], err[256] = "";
    paid(pay, sizeof pay, "completed");
    cr_assert_eq(refund_with_key(pay, 2500, re1, sizeof re1), STORE_OK);
    cr_assert_eq(refund_with_key(pay, 7500, re2, sizeof re2), STORE_OK);
    cr_assert_eq(refunded(pay), 10000);
    struct store_refund got;
    cr_assert_eq(store_get_refund(store, T, re1, &got, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(got.amount_minor, 2500);
    cr_assert_str_eq(got.transaction_id, pay);
    cr_assert_str_eq(got.currency, "USD");
    cr_assert_str_eq(got.status, "succeeded");
    store_refund_clear(&got);
    cr_assert_eq(store_get_refund(store, "tenant-other", re1, &got, err, sizeof err),
                 STORE_NOT_FOUND);

    /* newest first (same time: the id breaks the tie), with a cursor */
    struct store_refund_list l = {0}, l2 = {0};
    struct store_refund_query q = {.transaction_id = pay, .limit = 1};
    cr_assert_eq(store_list_refunds(store, T, &q, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 1);
    cr_assert(l.has_more);
    const char *newer = strcmp(re1, re2) > 0 ? re1 : re2, *older = newer == re1 ? re2 : re1;
    cr_assert_str_eq(l.items[0].refund_id, newer);
    q.starting_after = newer;
    q.limit = 5;
    cr_assert_eq(store_list_refunds(store, T, &q, &l2, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l2.count, 1);
    cr_assert_not(l2.has_more);
    cr_assert_str_eq(l2.items[0].refund_id, older);
    store_refund_list_clear(&l);
    store_refund_list_clear(&l2);
    q.starting_after = "re_not_there";
    cr_assert_eq(store_list_refunds(store, T, &q, &l, err, sizeof err), STORE_NOT_FOUND);
}

CONTRACT(refund_over_what_is_left_is_rejected_and_writes_nothing)
{
    char pay[96], re[96], err[256] = "";
    paid(pay, sizeof pay, "completed");
    cr_assert_eq(refund_with_key(pay, 6000, re, sizeof re), STORE_OK);
    cr_assert_eq(refund_with_key(pay, 4001, re, sizeof re), STORE_REJECTED);
    struct store_refund got;
    cr_assert_eq(store_get_refund(store, T, re, &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(refunded(pay), 6000);
    /* the rejected key's record is still processing: nothing was completed */
    char key[96];
    test_unique(key, sizeof key, "refund-over");
    struct store_claim_result a = claim(key, "fp-refund", LONG_MS, DAY_MS);
    char ids[3][96];
    for (int i = 0; i < 3; i++)
        test_unique(ids[i], sizeof ids[i], "re");
    struct store_refund r = refund_of(pay, ids[0], key, 5000, 1);
    struct store_rows rows = {.refund = &r};
    struct store_response resp = {201, "{}", 2, NULL};
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_REJECTED);
    struct store_claim_result b = claim(key, "fp-refund", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_IN_PROGRESS);
    cr_assert_eq(store_release(store, T, key, a.lease_token, err, sizeof err), STORE_OK);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    /* without a key too; and a declined payment, or none, takes no refund */
    r = refund_of(pay, ids[1], NULL, 4001, 1);
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_REJECTED);
    r = refund_of(pay, ids[2], NULL, 4000, 1);
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(refunded(pay), 10000);
    char declined[96];
    paid(declined, sizeof declined, "declined");
    cr_assert_eq(refund_with_key(declined, 1, re, sizeof re), STORE_REJECTED);
    cr_assert_eq(refund_with_key("txn_nobody", 1, re, sizeof re), STORE_REJECTED);
}

CONTRACT(refund_with_a_stale_token_is_refused_with_no_row)
{
    char pay[96], key[96], err[256] = "";
    paid(pay, sizeof pay, "completed");
    test_unique(key, sizeof key, "refund-stale");
    struct store_claim_result a = claim(key, "fp-refund", 200, DAY_MS);
    wait_ms(400);
    struct store_claim_result b = claim(key, "fp-refund", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    char stale[96], fresh[96];
    test_unique(stale, sizeof stale, "re");
    test_unique(fresh, sizeof fresh, "re");
    struct store_refund r = refund_of(pay, stale, key, 1000, 1);
    struct store_rows rows = {.refund = &r};
    struct store_response resp = {201, "{}", 2, NULL};
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_LEASE_LOST);
    struct store_refund got;
    cr_assert_eq(store_get_refund(store, T, stale, &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(refunded(pay), 0, "the stale holder's share was rolled back");
    r.refund_id = fresh;
    cr_assert_eq(store_complete(store, T, key, b.lease_token, &resp, &rows, err, sizeof err),
                 STORE_OK, "%s", err);
    cr_assert_eq(refunded(pay), 1000);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

struct racer {
    const char *payment;
    enum store_status st;
};

static void *race_refund(void *arg)
{
    struct racer *rc = arg;
    char re[96];
    rc->st = refund_with_key(rc->payment, 1000, re, sizeof re);
    return NULL;
}

CONTRACT(concurrent_refunds_with_different_keys_never_exceed_the_payment)
{
    enum { N = 16 }; /* 16 refunds of 10% each: exactly 10 fit */
    char pay[96];
    paid(pay, sizeof pay, "completed");
    pthread_t th[N];
    struct racer rc[N];
    for (int i = 0; i < N; i++) {
        rc[i] = (struct racer){pay, STORE_ERROR};
        cr_assert_eq(pthread_create(&th[i], NULL, race_refund, &rc[i]), 0);
    }
    int ok = 0, rejected = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        ok += rc[i].st == STORE_OK;
        rejected += rc[i].st == STORE_REJECTED;
    }
    cr_assert_eq(ok, 10, "%d refunds written", ok);
    cr_assert_eq(rejected, N - 10);
    cr_assert_eq(refunded(pay), 10000);
    char err[256] = "";
    struct store_refund_list l = {0};
    struct store_refund_query q = {.transaction_id = pay, .limit = 100};
    cr_assert_eq(store_list_refunds(store, T, &q, &l, err, sizeof err), STORE_OK, "%s", err);
    int64_t sum = 0;
    for (size_t i = 0; i < l.count; i++)
        sum += l.items[i].amount_minor;
    cr_assert_eq(l.count, 10);
    cr_assert_eq(sum, 10000);
    store_refund_list_clear(&l);
}

/* ---- the acquirer's ledger: charges and their refunds, no tenant's ------ */

#define LEDGER_AT 1700000000000000LL

static struct store_charge charge_of(const char *id, const char *reference, const char *key,
                                     const char *status, int64_t at)
{
    struct store_charge c = {.charge_id = (char *)id,
                             .merchant = "merchant-ledger",
                             .customer_id = "cust-ledger",
                             .amount_minor = 10000,
                             .currency = "EUR",
                             .status = (char *)status,
                             .decline_code =
                                 strcmp(status, "declined") == 0 ? "insufficient_funds" : NULL,
                             .reference = (char *)reference,
                             .idempotency_key = (char *)key,
                             .created_at_us = at};
    return c;
}

/* Claims key (a new one) and completes it with the ledger's rows: the status. */
static enum store_status complete_ledger(const char *key, const struct store_rows *rows)
{
    char err[256] = "";
    struct store_claim_result a = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    cr_assert_eq(a.outcome, CLAIM_NEW);
    struct store_response resp = {201, "{\"ledger\":1}", 12, NULL};
    enum store_status st =
        store_complete(store, T, key, a.lease_token, &resp, rows, err, sizeof err);
    store_claim_result_clear(&a);
    return st;
}

/* A charge of 100.00 (10000 minor units) with a new id in id and a new
 * reference, written with its completion. */
static void charged(char *id, size_t len, const char *status)
{
    char key[96], ref[96];
    test_unique(key, sizeof key, "dk");
    test_unique(ref, sizeof ref, "txn");
    test_unique(id, len, "ch");
    struct store_charge c = charge_of(id, ref, key, status, LEDGER_AT);
    struct store_rows rows = {.charge = &c};
    cr_assert_eq(complete_ledger(key, &rows), STORE_OK);
}

static struct store_charge_refund charge_refund_of(const char *charge, const char *id,
                                                   const char *key, int64_t amount, int64_t at)
{
    struct store_charge_refund r = {.refund_id = (char *)id,
                                    .charge_id = (char *)charge,
                                    .amount_minor = amount,
                                    .reference = (char *)id,
                                    .idempotency_key = (char *)key,
                                    .created_at_us = at};
    return r;
}

/* Claims a new key and completes it with a refund of amount of charge,
 * its id in refund_id: the status. */
static enum store_status charge_refund_with_key(const char *charge, int64_t amount, int64_t at,
                                                char *refund_id, size_t len)
{
    char key[96];
    test_unique(key, sizeof key, "dk-refund");
    test_unique(refund_id, len, "rf");
    struct store_charge_refund r = charge_refund_of(charge, refund_id, key, amount, at);
    struct store_rows rows = {.charge_refund = &r};
    return complete_ledger(key, &rows);
}

static int64_t charge_refunded(const char *charge)
{
    char err[256] = "";
    struct store_charge got;
    cr_assert_eq(store_get_charge(store, charge, &got, err, sizeof err), STORE_OK, "%s", err);
    int64_t n = got.amount_refunded_minor;
    store_charge_clear(&got);
    return n;
}

static size_t charge_refund_count(const char *charge)
{
    char err[256] = "";
    struct store_charge_refund_list l = {0};
    cr_assert_eq(store_list_charge_refunds(store, charge, &l, err, sizeof err), STORE_OK, "%s",
                 err);
    size_t n = l.count;
    store_charge_refund_list_clear(&l);
    return n;
}

CONTRACT(charge_written_with_its_completion_is_read_back_whole)
{
    char key[96], ref[96], id[96], err[256] = "";
    test_unique(key, sizeof key, "dk");
    test_unique(ref, sizeof ref, "txn");
    test_unique(id, sizeof id, "ch");
    struct store_charge c = charge_of(id, ref, key, "succeeded", LEDGER_AT + 1);
    c.amount_minor = 4321;
    c.currency[0] = 'U', c.currency[1] = 'S', c.currency[2] = 'D';
    struct store_rows rows = {.charge = &c};
    cr_assert_eq(complete_ledger(key, &rows), STORE_OK);
    struct store_charge got;
    cr_assert_eq(store_get_charge(store, id, &got, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_str_eq(got.charge_id, id);
    cr_assert_str_eq(got.merchant, "merchant-ledger");
    cr_assert_str_eq(got.customer_id, "cust-ledger");
    cr_assert_eq(got.amount_minor, 4321);
    cr_assert_str_eq(got.currency, "USD");
    cr_assert_str_eq(got.status, "succeeded");
    cr_assert_null(got.decline_code);
    cr_assert_str_eq(got.reference, ref);
    cr_assert_str_eq(got.idempotency_key, key);
    cr_assert_eq(got.created_at_us, LEDGER_AT + 1);
    cr_assert_eq(got.amount_refunded_minor, 0);
    store_charge_clear(&got);
    /* the completion happened with it: the key replays */
    struct store_claim_result b = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_COMPLETED);
    cr_assert_str_eq(b.response_body, "{\"ledger\":1}");
    store_claim_result_clear(&b);
    char none[96];
    test_unique(none, sizeof none, "ch-none");
    cr_assert_eq(store_get_charge(store, none, &got, err, sizeof err), STORE_NOT_FOUND);
}

CONTRACT(declined_charge_keeps_its_decline_code)
{
    char id[96], err[256] = "";
    charged(id, sizeof id, "declined");
    struct store_charge got;
    cr_assert_eq(store_get_charge(store, id, &got, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_str_eq(got.status, "declined");
    cr_assert_str_eq(got.decline_code, "insufficient_funds");
    cr_assert_eq(got.amount_refunded_minor, 0);
    store_charge_clear(&got);
}

CONTRACT(charges_by_reference_are_oldest_first)
{
    char ref[96], other[96], ids[3][128], err[256] = "";
    test_unique(ref, sizeof ref, "txn");
    test_unique(other, sizeof other, "txn");
    /* ids[0] and ids[1] share a time (the id breaks the tie), ids[2] is
     * later; written newest first, with another reference's charge between */
    for (int i = 0; i < 3; i++)
        snprintf(ids[i], sizeof ids[i], "ch_%s_%d", ref, i);
    const int64_t at[3] = {LEDGER_AT + 10, LEDGER_AT + 10, LEDGER_AT + 20};
    for (int i = 2; i >= 0; i--) {
        char key[96];
        test_unique(key, sizeof key, "dk");
        struct store_charge c =
            charge_of(ids[i], ref, key, i == 1 ? "declined" : "succeeded", at[i]);
        struct store_rows rows = {.charge = &c};
        cr_assert_eq(complete_ledger(key, &rows), STORE_OK);
        if (i == 1) {
            char oid[96];
            test_unique(key, sizeof key, "dk");
            test_unique(oid, sizeof oid, "ch");
            struct store_charge o = charge_of(oid, other, key, "succeeded", LEDGER_AT + 15);
            rows.charge = &o;
            cr_assert_eq(complete_ledger(key, &rows), STORE_OK);
        }
    }
    struct store_charge_list l = {0};
    cr_assert_eq(store_list_charges(store, ref, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 3);
    for (int i = 0; i < 3; i++) {
        cr_assert_str_eq(l.items[i].charge_id, ids[i]);
        cr_assert_str_eq(l.items[i].reference, ref);
        cr_assert_eq(l.items[i].created_at_us, at[i]);
    }
    cr_assert_str_eq(l.items[1].decline_code, "insufficient_funds");
    store_charge_list_clear(&l);
    cr_assert_eq(store_list_charges(store, other, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 1);
    store_charge_list_clear(&l);
    char unknown[96];
    test_unique(unknown, sizeof unknown, "txn-none");
    cr_assert_eq(store_list_charges(store, unknown, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 0);
    store_charge_list_clear(&l);
}

CONTRACT(charge_refund_within_the_charge_adds_to_it_and_is_listed)
{
    char ch[96], rf1[96], rf2[96], dk[96], err[256] = "";
    charged(ch, sizeof ch, "succeeded");
    cr_assert_eq(charge_refund_with_key(ch, 2500, LEDGER_AT + 2, rf1, sizeof rf1), STORE_OK);
    cr_assert_eq(charge_refunded(ch), 2500);
    /* without a key too, and older than the first: listed before it */
    test_unique(rf2, sizeof rf2, "rf");
    test_unique(dk, sizeof dk, "dk-given"); /* unique: sql/010 */
    struct store_charge_refund r = charge_refund_of(ch, rf2, dk, 7500, LEDGER_AT + 1);
    struct store_rows rows = {.charge_refund = &r};
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(charge_refunded(ch), 10000);

    struct store_charge_refund_list l = {0};
    cr_assert_eq(store_list_charge_refunds(store, ch, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 2);
    cr_assert_str_eq(l.items[0].refund_id, rf2);
    cr_assert_str_eq(l.items[0].charge_id, ch);
    cr_assert_eq(l.items[0].amount_minor, 7500);
    cr_assert_str_eq(l.items[0].reference, rf2);
    cr_assert_str_eq(l.items[0].idempotency_key, dk);
    cr_assert_eq(l.items[0].created_at_us, LEDGER_AT + 1);
    cr_assert_str_eq(l.items[1].refund_id, rf1);
    cr_assert_eq(l.items[1].amount_minor, 2500);
    cr_assert_eq(l.items[1].created_at_us, LEDGER_AT + 2);
    store_charge_refund_list_clear(&l);
    /* no charge of that id: an empty list, not an error */
    char none[96];
    test_unique(none, sizeof none, "ch-none");
    cr_assert_eq(store_list_charge_refunds(store, none, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 0);
    store_charge_refund_list_clear(&l);
}

CONTRACT(charge_refund_over_what_is_left_is_rejected_and_writes_nothing)
{
    char ch[96], rf[96], key[96], err[256] = "";
    charged(ch, sizeof ch, "succeeded");
    cr_assert_eq(charge_refund_with_key(ch, 6000, LEDGER_AT + 1, rf, sizeof rf), STORE_OK);
    /* 4001 of the 4000 left: rejected, and the record stays processing */
    test_unique(key, sizeof key, "dk-over");
    test_unique(rf, sizeof rf, "rf");
    struct store_claim_result a = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    struct store_charge_refund r = charge_refund_of(ch, rf, key, 4001, LEDGER_AT + 2);
    struct store_rows rows = {.charge_refund = &r};
    struct store_response resp = {201, "{}", 2, NULL};
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_REJECTED);
    struct store_claim_result b = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_IN_PROGRESS);
    cr_assert_eq(charge_refunded(ch), 6000);
    cr_assert_eq(charge_refund_count(ch), 1);
    /* without a key too; then what is left exactly fits */
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_REJECTED);
    cr_assert_eq(charge_refund_count(ch), 1);
    r.amount_minor = 4000;
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_OK, "%s", err);
    cr_assert_eq(charge_refunded(ch), 10000);
    cr_assert_eq(charge_refund_count(ch), 2);
    /* nothing left: even one unit is too much; and a charge that is not there takes none */
    cr_assert_eq(charge_refund_with_key(ch, 1, LEDGER_AT + 3, rf, sizeof rf), STORE_REJECTED);
    char none[96];
    test_unique(none, sizeof none, "ch-none");
    cr_assert_eq(charge_refund_with_key(none, 1, LEDGER_AT + 3, rf, sizeof rf), STORE_REJECTED);
    cr_assert_eq(charge_refund_count(none), 0);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(charge_refund_of_a_declined_charge_is_rejected)
{
    char ch[96], rf[96];
    charged(ch, sizeof ch, "declined");
    cr_assert_eq(charge_refund_with_key(ch, 1, LEDGER_AT + 1, rf, sizeof rf), STORE_REJECTED);
    cr_assert_eq(charge_refunded(ch), 0);
    cr_assert_eq(charge_refund_count(ch), 0);
}

CONTRACT(charge_with_a_stale_token_is_refused_with_no_row)
{
    char key[96], ref[96], stale[96], fresh[96], err[256] = "";
    test_unique(key, sizeof key, "dk-stale");
    test_unique(ref, sizeof ref, "txn");
    test_unique(stale, sizeof stale, "ch");
    test_unique(fresh, sizeof fresh, "ch");
    struct store_claim_result a = claim(key, "fp-ledger", 200, DAY_MS);
    wait_ms(400);
    struct store_claim_result b = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    struct store_charge c = charge_of(stale, ref, key, "succeeded", LEDGER_AT);
    struct store_rows rows = {.charge = &c};
    struct store_response resp = {201, "{}", 2, NULL};
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_LEASE_LOST);
    struct store_charge got;
    cr_assert_eq(store_get_charge(store, stale, &got, err, sizeof err), STORE_NOT_FOUND);
    struct store_charge_list l = {0};
    cr_assert_eq(store_list_charges(store, ref, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 0);
    store_charge_list_clear(&l);
    c.charge_id = fresh;
    cr_assert_eq(store_complete(store, T, key, b.lease_token, &resp, &rows, err, sizeof err),
                 STORE_OK, "%s", err);
    cr_assert_eq(store_list_charges(store, ref, &l, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_eq(l.count, 1);
    cr_assert_str_eq(l.items[0].charge_id, fresh);
    store_charge_list_clear(&l);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(rows_carrying_two_kinds_are_an_error_and_write_nothing)
{
    char key[96], ref[96], ch[96], pay[96], err[256] = "";
    test_unique(key, sizeof key, "dk-two");
    test_unique(ref, sizeof ref, "txn");
    test_unique(ch, sizeof ch, "ch");
    test_unique(pay, sizeof pay, "txn");
    struct store_claim_result a = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    struct store_charge c = charge_of(ch, ref, key, "succeeded", LEDGER_AT);
    struct store_payment p = payment_for(key, pay, "cust-two", LEDGER_AT);
    struct store_rows rows = {.payment = &p, .charge = &c};
    struct store_response resp = {201, "{}", 2, NULL};
    err[0] = '\0';
    cr_assert_eq(store_complete(store, T, key, a.lease_token, &resp, &rows, err, sizeof err),
                 STORE_ERROR);
    cr_assert_neq(err[0], '\0', "no message");
    err[0] = '\0';
    cr_assert_eq(store_write_rows(store, T, &rows, err, sizeof err), STORE_ERROR);
    cr_assert_neq(err[0], '\0', "no message");
    struct store_charge got_c;
    struct store_payment got_p;
    cr_assert_eq(store_get_charge(store, ch, &got_c, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(store_get_payment(store, T, pay, &got_p, err, sizeof err), STORE_NOT_FOUND);
    struct store_claim_result b = claim(key, "fp-ledger", LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_IN_PROGRESS);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

/* ---- recovery without the client: records that kept their request ------ */

/* What a claim keeps for recovery: opaque text, any bytes of UTF-8. */
static const char *KEPT = "{\"route\":\"/api/v1/payments\",\"body\":\"caf\xc3\xa9 \\u00e9\"}";

/* How long a case waits for a record to come back to recovery (a lease to
 * run out, another case's recovery to hand it back): only a record that
 * never comes back turns into a failure. */
#define RECOVER_WAIT_S 10
/* At most this many records taken in one pass over the waiting ones. */
#define SWEEP_MAX 100

static struct store_claim_result claim_kept(const char *key, const char *request, int64_t lease_ms)
{
    struct store_claim_result r;
    char err[256] = "";
    memset(&r, 0, sizeof r);
    enum store_status st =
        store_claim(store, T, key, FP, request, lease_ms, DAY_MS, &r, err, sizeof err);
    cr_assert_eq(st, STORE_OK, "claim %s: %s", key, err);
    return r;
}

static int is_ours(const struct store_recovery *r, const char *key)
{
    return key && strcmp(r->tenant, T) == 0 && strcmp(r->key, key) == 0;
}

/* One store_recover() under a lease of LONG_MS: STORE_OK or STORE_NOT_FOUND. */
static enum store_status recover_next(struct store_recovery *r)
{
    char err[256] = "";
    memset(r, 0, sizeof *r);
    enum store_status st = store_recover(store, LONG_MS, r, err, sizeof err);
    cr_assert(st == STORE_OK || st == STORE_NOT_FOUND, "store_recover: %s: %s",
              store_status_name(st), err);
    return st;
}

/* Another case's record, taken on the way (the PostgreSQL cases share one
 * database and run at once): handed back as it was, waiting, its lease
 * ended. */
static void hand_back(struct store_recovery *r)
{
    char err[256] = "";
    cr_assert_eq(store_abandon(store, r->tenant, r->key, r->lease_token, err, sizeof err), STORE_OK,
                 "handing back %s: %s", r->key, err);
    store_recovery_clear(r);
}

/* Takes over the waiting records until the one of key comes back, waiting
 * for its lease to run out: 1 with *got filled (ours, under a lease of
 * LONG_MS), or 0 when it did not within RECOVER_WAIT_S. Fails the case if
 * the record of never (may be NULL) comes back on the way. */
static int recover_key(const char *key, const char *never, struct store_recovery *got)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct store_recovery r;
        if (recover_next(&r) == STORE_OK) {
            cr_assert_not(is_ours(&r, never), "the record of %s was recovered", never);
            if (is_ours(&r, key)) {
                *got = r;
                return 1;
            }
            hand_back(&r);
        } else {
            wait_ms(10);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= RECOVER_WAIT_S)
            return 0;
    }
}

/* Takes over the records waiting now, until none is left (or SWEEP_MAX),
 * handing each back: fails the case if the record of key is among them. */
static void sweep_without(const char *key)
{
    for (int i = 0; i < SWEEP_MAX; i++) {
        struct store_recovery r;
        if (recover_next(&r) == STORE_NOT_FOUND)
            return;
        cr_assert_not(is_ours(&r, key), "the record of %s was recovered", key);
        hand_back(&r);
    }
}

/* A record that kept its request and whose lease ended (its holder gave up
 * on an unknown outcome, or died) is taken over by recovery - with its own
 * downstream key, its request and when it was first claimed - under a new
 * token; never while a lease on it is live, its holder's or another
 * recovery's. */
CONTRACT(recover_takes_a_kept_record_only_once_its_lease_ended)
{
    char key[96], err[256] = "";
    test_unique(key, sizeof key, "recover");
    struct store_claim_result a = claim_kept(key, KEPT, LONG_MS);
    cr_assert_eq(a.outcome, CLAIM_NEW);
    sweep_without(key); /* its holder's lease is live */
    cr_assert_eq(store_abandon(store, T, key, a.lease_token, err, sizeof err), STORE_OK, "%s", err);
    struct store_recovery got;
    cr_assert(recover_key(key, NULL, &got), "the record of %s never came back", key);
    cr_assert_str_eq(got.fingerprint, FP);
    cr_assert_str_eq(got.request, KEPT);
    cr_assert_str_eq(got.downstream_key, a.downstream_key);
    cr_assert_eq(got.created_at_us, a.created_at_us);
    cr_assert_gt(got.lease_token, 0);
    cr_assert_neq(got.lease_token, a.lease_token);
    /* recovery holds a live lease now: no other recovery takes it, and its
     * client's retry is told it is in progress */
    sweep_without(key);
    struct store_claim_result retry = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(retry.outcome, CLAIM_IN_PROGRESS);
    cr_assert_eq(complete(key, got.lease_token, "{\"recovered\":1}", NULL), STORE_OK);
    store_recovery_clear(&got);
    store_claim_result_clear(&a);
    store_claim_result_clear(&retry);
}

/* Recovery's takeover fences the holder whose lease ran out: its old token
 * completes nothing, the new one completes the record; a completed record
 * is never recovered again, and its retry replays recovery's answer. */
CONTRACT(recovery_fences_the_old_holder_and_a_completed_record_is_not_recovered)
{
    char key[96], id_old[64], id_new[64], err[256] = "";
    test_unique(key, sizeof key, "recover-fence");
    test_unique(id_old, sizeof id_old, "txn-old");
    test_unique(id_new, sizeof id_new, "txn-new");
    struct store_claim_result a = claim_kept(key, KEPT, 100);
    struct store_recovery got;
    cr_assert(recover_key(key, NULL, &got), "the record of %s never came back", key);
    cr_assert_neq(got.lease_token, a.lease_token);

    struct store_payment old = payment_for(key, id_old, "cust-rec", 1);
    cr_assert_eq(complete(key, a.lease_token, "{\"old\":1}", &old), STORE_LEASE_LOST);
    struct store_payment p;
    cr_assert_eq(store_get_payment(store, T, id_old, &p, err, sizeof err), STORE_NOT_FOUND);
    struct store_payment fresh = payment_for(key, id_new, "cust-rec", 2);
    cr_assert_eq(complete(key, got.lease_token, "{\"recovered\":1}", &fresh), STORE_OK);
    cr_assert_eq(store_get_payment(store, T, id_new, &p, err, sizeof err), STORE_OK, "%s", err);
    store_payment_clear(&p);

    sweep_without(key);
    struct store_claim_result c = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_COMPLETED);
    cr_assert_str_eq(c.response_body, "{\"recovered\":1}");
    store_recovery_clear(&got);
    store_claim_result_clear(&a);
    store_claim_result_clear(&c);
}

/* A retry that takes the record over keeping no request of its own (a
 * server that keeps none) leaves the one kept: recovery still has it. */
CONTRACT(a_takeover_without_a_request_leaves_the_one_kept)
{
    char key[96], err[256] = "";
    test_unique(key, sizeof key, "recover-retry");
    struct store_claim_result a = claim_kept(key, KEPT, LONG_MS);
    cr_assert_eq(store_abandon(store, T, key, a.lease_token, err, sizeof err), STORE_OK, "%s", err);
    struct store_claim_result b = claim(key, FP, LONG_MS, DAY_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    cr_assert_eq(store_abandon(store, T, key, b.lease_token, err, sizeof err), STORE_OK, "%s", err);
    struct store_recovery got;
    cr_assert(recover_key(key, NULL, &got), "the record of %s never came back", key);
    cr_assert_str_eq(got.request, KEPT);
    cr_assert_str_eq(got.downstream_key, a.downstream_key);
    cr_assert_eq(complete(key, got.lease_token, "{}", NULL), STORE_OK);
    store_recovery_clear(&got);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

/* A record that kept no request (an operation that asks no one outside) is
 * never recovered, its lease long ended: only its client's retry finishes
 * it. */
CONTRACT(a_record_without_a_request_is_never_recovered)
{
    char bare[96], kept[96];
    test_unique(bare, sizeof bare, "recover-bare");
    test_unique(kept, sizeof kept, "recover-kept");
    /* claimed first with the same lease: its lease has ended whenever the
     * kept one's has, and recovery would take it first */
    struct store_claim_result a = claim(bare, FP, 100, DAY_MS);
    struct store_claim_result b = claim_kept(kept, KEPT, 100);
    struct store_recovery got;
    cr_assert(recover_key(kept, bare, &got), "the record of %s never came back", kept);
    cr_assert_eq(complete(kept, got.lease_token, "{}", NULL), STORE_OK);
    sweep_without(bare);
    /* still processing, its lease ended: its retry takes it over */
    struct store_claim_result c = claim(bare, FP, LONG_MS, DAY_MS);
    cr_assert_eq(c.outcome, CLAIM_TAKEOVER);
    cr_assert_eq(complete(bare, c.lease_token, "{}", NULL), STORE_OK);
    store_recovery_clear(&got);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
}

/* The records waiting for recovery are counted, with when the oldest was
 * first claimed: a kept record whose lease ended is among them. */
CONTRACT(unfinished_counts_a_kept_record_waiting_for_recovery)
{
    char key[96], err[256] = "";
    /* the memory store holds this case's records alone: counted exactly */
    int alone = strcmp(store_name(store), "memory") == 0;
    struct store_unfinished u;
    test_unique(key, sizeof key, "unfinished-kept");
    struct store_claim_result a = claim_kept(key, KEPT, LONG_MS);
    if (alone) {
        cr_assert_eq(store_unfinished(store, &u, err, sizeof err), STORE_OK, "%s", err);
        cr_assert_eq(u.waiting, 0, "a live lease is not waiting");
        cr_assert_eq(u.oldest_created_us, 0);
    }
    cr_assert_eq(store_abandon(store, T, key, a.lease_token, err, sizeof err), STORE_OK, "%s", err);
    /* (another case's recovery may hold it for a moment: wait for it back) */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        cr_assert_eq(store_unfinished(store, &u, err, sizeof err), STORE_OK, "%s", err);
        if (u.waiting >= 1 && u.oldest_created_us > 0 && u.oldest_created_us <= a.created_at_us)
            break;
        clock_gettime(CLOCK_MONOTONIC, &now);
        cr_assert_lt(now.tv_sec - t0.tv_sec, RECOVER_WAIT_S,
                     "not counted: %lld waiting, the oldest created at %lld (ours %lld)",
                     (long long)u.waiting, (long long)u.oldest_created_us,
                     (long long)a.created_at_us);
        wait_ms(10);
    }
    if (alone) {
        cr_assert_eq(u.waiting, 1);
        cr_assert_eq(u.oldest_created_us, a.created_at_us);
    }
    /* completed: no longer waiting (and gone from the shared database) */
    struct store_recovery got;
    cr_assert(recover_key(key, NULL, &got), "the record of %s never came back", key);
    cr_assert_eq(complete(key, got.lease_token, "{}", NULL), STORE_OK);
    if (alone) {
        cr_assert_eq(store_unfinished(store, &u, err, sizeof err), STORE_OK, "%s", err);
        cr_assert_eq(u.waiting, 0);
    }
    store_recovery_clear(&got);
    store_claim_result_clear(&a);
}

/* ---- events: written with their payment or refund, or not at all ------- */

#define HOUR_US (3600LL * 1000000)
#define DAY_US (24 * HOUR_US)

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* A new event id as the service makes them: "evt_" and 24 URL-safe
 * characters. */
static void new_event_id(char out[IDS_MAX])
{
    cr_assert_eq(ids_new("evt_", out), 0);
}

static struct store_event event_of(const char *id, const char *type, int64_t at, const char *body)
{
    struct store_event e = {.event_id = (char *)id,
                            .type = (char *)type,
                            .created_at_us = at,
                            .body = (char *)body,
                            .body_len = strlen(body)};
    return e;
}

/* Each case's events are its own tenant's: the PostgreSQL cases share one
 * database and run at once, and a tenant's list is the test. */
static struct store_claim_result claim_in(const char *tenant, const char *key, int64_t lease_ms)
{
    struct store_claim_result r;
    char err[256] = "";
    memset(&r, 0, sizeof r);
    cr_assert_eq(store_claim(store, tenant, key, FP, NULL, lease_ms, DAY_MS, &r, err, sizeof err),
                 STORE_OK, "claim %s: %s", key, err);
    return r;
}

static enum store_status complete_in(const char *tenant, const char *key, int64_t token,
                                     const struct store_rows *rows)
{
    char err[256] = "";
    struct store_response resp = {201, "{\"done\":1}", 10, NULL};
    return store_complete(store, tenant, key, token, &resp, rows, err, sizeof err);
}

static enum store_status write_in(const char *tenant, const struct store_rows *rows)
{
    char err[256] = "";
    return store_write_rows(store, tenant, rows, err, sizeof err);
}

/* A payment of 100.00 (10000 minor units) of tenant, written without a key
 * and without an event, with a new id in id. */
static void paid_in(const char *tenant, char *id, size_t len, const char *status)
{
    test_unique(id, len, "txn");
    struct store_payment p = payment_for(NULL, id, "cust-ev", now_us());
    p.amount_minor = 10000;
    p.status = (char *)status;
    struct store_rows rows = {.payment = &p};
    cr_assert_eq(write_in(tenant, &rows), STORE_OK);
}

static int64_t refunded_in(const char *tenant, const char *payment)
{
    char err[256] = "";
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, tenant, payment, &got, err, sizeof err), STORE_OK, "%s",
                 err);
    int64_t n = got.amount_refunded_minor;
    store_payment_clear(&got);
    return n;
}

/* Whether tenant has the event id. */
static int event_there(const char *tenant, const char *id)
{
    char err[256] = "";
    struct store_event got;
    enum store_status st = store_get_event(store, tenant, id, &got, err, sizeof err);
    cr_assert(st == STORE_OK || st == STORE_NOT_FOUND, "store_get_event %s: %s: %s", id,
              store_status_name(st), err);
    if (st == STORE_OK)
        store_event_clear(&got);
    return st == STORE_OK;
}

/* A page of tenant's events (type NULL: every type) in *l. */
static void events_page(const char *tenant, const char *type, const char *after, int limit,
                        struct store_event_list *l)
{
    char err[256] = "";
    struct store_event_query q = {.type = type, .starting_after = after, .limit = limit};
    memset(l, 0, sizeof *l);
    cr_assert_eq(store_list_events(store, tenant, &q, l, err, sizeof err), STORE_OK, "%s", err);
}

/* How many events tenant has, of every type. */
static size_t event_count(const char *tenant)
{
    struct store_event_list l;
    events_page(tenant, NULL, NULL, 100, &l);
    size_t n = l.count;
    store_event_list_clear(&l);
    return n;
}

/* got is want, its body byte for byte (and NUL-terminated for the caller). */
static void assert_same_event(const struct store_event *got, const struct store_event *want)
{
    cr_assert_str_eq(got->event_id, want->event_id);
    cr_assert_str_eq(got->type, want->type);
    cr_assert_eq(got->created_at_us, want->created_at_us, "created at %lld, written %lld",
                 (long long)got->created_at_us, (long long)want->created_at_us);
    cr_assert_eq(got->body_len, want->body_len, "body %zu bytes, written %zu: %.*s", got->body_len,
                 want->body_len, (int)got->body_len, got->body);
    cr_assert_eq(memcmp(got->body, want->body, want->body_len), 0, "body %.*s", (int)got->body_len,
                 got->body);
    cr_assert_eq(got->body[got->body_len], '\0');
}

/* tenant's event reads back as want was written. */
static void assert_event_reads_back(const char *tenant, const struct store_event *want)
{
    char err[256] = "";
    struct store_event got;
    cr_assert_eq(store_get_event(store, tenant, want->event_id, &got, err, sizeof err), STORE_OK,
                 "%s: %s", want->event_id, err);
    assert_same_event(&got, want);
    store_event_clear(&got);
}

/* The page holds exactly the events ids[0..n), in that order. */
static void assert_listed(const struct store_event_list *l, const char *const *ids, size_t n,
                          int has_more)
{
    cr_assert_eq(l->count, n, "%zu events listed, want %zu", l->count, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(l->items[i].event_id, ids[i], "event %zu", i);
    cr_assert_eq(!!l->has_more, has_more, "has_more %d", l->has_more);
}

CONTRACT(an_event_is_written_with_its_payment_and_read_back_byte_for_byte)
{
    char tenant[96], other[96], key[96], txn[64], evt[IDS_MAX], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev");
    test_unique(other, sizeof other, "tenant-ev");
    test_unique(key, sizeof key, "ev-pay");
    test_unique(txn, sizeof txn, "txn");
    new_event_id(evt);
    /* as written: its spacing, its escapes, its number and its UTF-8 kept */
    const char *body = "{\"id\": \"evt\",\n  \"type\":\"payment.succeeded\" , \"created\":1.50e2,"
                       "\"data\":{\"object\":{\"description\":\"caf\xc3\xa9 \\u00e9 \\\"q\\\"\"}}}";
    int64_t at = now_us() / 1000000 * 1000000 + 654321;
    struct store_event ev = event_of(evt, "payment.succeeded", at, body);
    struct store_payment p = payment_for(key, txn, "cust-ev", at);
    struct store_rows rows = {.payment = &p, .event = &ev};
    struct store_claim_result a = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_OK);

    struct store_payment got_p;
    cr_assert_eq(store_get_payment(store, tenant, txn, &got_p, err, sizeof err), STORE_OK, "%s",
                 err);
    store_payment_clear(&got_p);
    assert_event_reads_back(tenant, &ev);
    struct store_event_list l;
    events_page(tenant, NULL, NULL, 10, &l);
    cr_assert_eq(l.count, 1);
    cr_assert_not(l.has_more);
    assert_same_event(&l.items[0], &ev);
    store_event_list_clear(&l);

    /* another tenant sees none of it */
    cr_assert_not(event_there(other, evt));
    cr_assert_eq(event_count(other), 0);
    /* the key replays: no second event */
    struct store_claim_result b = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(b.outcome, CLAIM_COMPLETED);
    cr_assert_eq(event_count(tenant), 1);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

/* A holder whose lease ran out and was taken over completes nothing, its
 * event neither - a payment's completion and a refund's alike; the holder
 * that took over writes the record's one event. */
CONTRACT(a_fenced_out_completion_writes_no_event)
{
    char tenant[96], key[96], rkey[96], pay[96], err[256] = "";
    char txn_old[64], txn_new[64], re_old[64], re_new[64], evt[IDS_MAX], revt[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-ev-fenced");
    test_unique(key, sizeof key, "ev-fenced");
    test_unique(rkey, sizeof rkey, "ev-fenced-refund");
    test_unique(txn_old, sizeof txn_old, "txn-old");
    test_unique(txn_new, sizeof txn_new, "txn-new");
    test_unique(re_old, sizeof re_old, "re-old");
    test_unique(re_new, sizeof re_new, "re-new");
    /* one record, one event id, whoever runs it (as the service names them) */
    new_event_id(evt);
    new_event_id(revt);
    paid_in(tenant, pay, sizeof pay, "completed");
    struct store_claim_result a = claim_in(tenant, key, 200);
    struct store_claim_result ra = claim_in(tenant, rkey, 200);
    wait_ms(400);
    struct store_claim_result b = claim_in(tenant, key, LONG_MS);
    struct store_claim_result rb = claim_in(tenant, rkey, LONG_MS);
    cr_assert_eq(b.outcome, CLAIM_TAKEOVER);
    cr_assert_eq(rb.outcome, CLAIM_TAKEOVER);

    int64_t at = now_us();
    struct store_event old_ev = event_of(evt, "payment.succeeded", at, "{\"run\":\"old\"}");
    struct store_payment old_p = payment_for(key, txn_old, "cust-ev", at);
    struct store_rows rows = {.payment = &old_p, .event = &old_ev};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_LEASE_LOST);
    struct store_payment got_p;
    cr_assert_eq(store_get_payment(store, tenant, txn_old, &got_p, err, sizeof err),
                 STORE_NOT_FOUND);
    cr_assert_not(event_there(tenant, evt), "the fenced-out completion wrote its event");

    struct store_event rold_ev = event_of(revt, "refund.succeeded", at, "{\"run\":\"old\"}");
    struct store_refund old_r = refund_of(pay, re_old, rkey, 1000, at);
    struct store_rows rrows = {.refund = &old_r, .event = &rold_ev};
    cr_assert_eq(complete_in(tenant, rkey, ra.lease_token, &rrows), STORE_LEASE_LOST);
    struct store_refund got_r;
    cr_assert_eq(store_get_refund(store, tenant, re_old, &got_r, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_not(event_there(tenant, revt), "the fenced-out refund wrote its event");
    cr_assert_eq(refunded_in(tenant, pay), 0);
    cr_assert_eq(event_count(tenant), 0);

    /* the holder that took over writes the one event of each */
    struct store_event new_ev = event_of(evt, "payment.succeeded", at + 1, "{\"run\":\"new\"}");
    struct store_payment new_p = payment_for(key, txn_new, "cust-ev", at + 1);
    rows = (struct store_rows){.payment = &new_p, .event = &new_ev};
    cr_assert_eq(complete_in(tenant, key, b.lease_token, &rows), STORE_OK);
    assert_event_reads_back(tenant, &new_ev);
    struct store_event rnew_ev = event_of(revt, "refund.succeeded", at + 1, "{\"run\":\"new\"}");
    struct store_refund new_r = refund_of(pay, re_new, rkey, 1000, at + 1);
    rrows = (struct store_rows){.refund = &new_r, .event = &rnew_ev};
    cr_assert_eq(complete_in(tenant, rkey, rb.lease_token, &rrows), STORE_OK);
    assert_event_reads_back(tenant, &rnew_ev);
    cr_assert_eq(refunded_in(tenant, pay), 1000);

    /* the old holders once more, after the completions: still nothing */
    rows = (struct store_rows){.payment = &old_p, .event = &old_ev};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_LEASE_LOST);
    rrows = (struct store_rows){.refund = &old_r, .event = &rold_ev};
    cr_assert_eq(complete_in(tenant, rkey, ra.lease_token, &rrows), STORE_LEASE_LOST);
    cr_assert_eq(event_count(tenant), 2);
    assert_event_reads_back(tenant, &new_ev);
    assert_event_reads_back(tenant, &rnew_ev);
    store_claim_result_clear(&a);
    store_claim_result_clear(&ra);
    store_claim_result_clear(&b);
    store_claim_result_clear(&rb);
}

CONTRACT(a_rejected_refund_writes_no_event_and_one_that_fits_writes_its_own)
{
    char tenant[96], pay[96], declined[96], key[96], ids[6][64], evts[6][IDS_MAX];
    char err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev-refund");
    paid_in(tenant, pay, sizeof pay, "completed");
    paid_in(tenant, declined, sizeof declined, "declined");
    for (int i = 0; i < 6; i++) {
        test_unique(ids[i], sizeof ids[i], "re");
        new_event_id(evts[i]);
    }
    int64_t at = now_us();
    struct store_event ev[6];
    for (int i = 0; i < 6; i++)
        ev[i] = event_of(evts[i], "refund.succeeded", at + i, "{\"object\":\"refund\"}");

    /* 6000 of 10000, with its key: written, with its event */
    test_unique(key, sizeof key, "ev-refund");
    struct store_claim_result a = claim_in(tenant, key, LONG_MS);
    struct store_refund r = refund_of(pay, ids[0], key, 6000, at);
    struct store_rows rows = {.refund = &r, .event = &ev[0]};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_OK);
    assert_event_reads_back(tenant, &ev[0]);
    store_claim_result_clear(&a);

    /* 4001 of the 4000 left, with a key and without: rejected, no event */
    test_unique(key, sizeof key, "ev-refund-over");
    a = claim_in(tenant, key, LONG_MS);
    r = refund_of(pay, ids[1], key, 4001, at);
    rows.event = &ev[1];
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_REJECTED);
    cr_assert_not(event_there(tenant, evts[1]), "the rejected refund wrote its event");
    r = refund_of(pay, ids[2], NULL, 4001, at);
    rows.event = &ev[2];
    cr_assert_eq(write_in(tenant, &rows), STORE_REJECTED);
    cr_assert_not(event_there(tenant, evts[2]), "the rejected refund wrote its event");
    struct store_refund got;
    cr_assert_eq(store_get_refund(store, tenant, ids[1], &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(store_get_refund(store, tenant, ids[2], &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(refunded_in(tenant, pay), 6000);

    /* a declined payment takes no refund, and no event comes of it */
    r = refund_of(declined, ids[3], NULL, 1, at);
    rows.event = &ev[3];
    cr_assert_eq(write_in(tenant, &rows), STORE_REJECTED);
    cr_assert_not(event_there(tenant, evts[3]));

    /* the rejected key's record is still processing; what is left exactly
     * fits: written, with its event - and without a key too */
    r = refund_of(pay, ids[4], key, 2000, at);
    rows.event = &ev[4];
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_OK);
    assert_event_reads_back(tenant, &ev[4]);
    r = refund_of(pay, ids[5], NULL, 2000, at);
    rows.event = &ev[5];
    cr_assert_eq(write_in(tenant, &rows), STORE_OK);
    assert_event_reads_back(tenant, &ev[5]);
    cr_assert_eq(refunded_in(tenant, pay), 10000);

    struct store_event_list l;
    events_page(tenant, "refund.succeeded", NULL, 10, &l);
    const char *want[] = {evts[5], evts[4], evts[0]};
    assert_listed(&l, want, 3, 0);
    store_event_list_clear(&l);
    cr_assert_eq(event_count(tenant), 3);
    store_claim_result_clear(&a);
}

/* A released claim completed nothing: its holder's completion afterwards
 * is refused and writes no event; the retry's completion writes the one. */
CONTRACT(a_released_claim_leaves_no_event)
{
    char tenant[96], key[96], txn[64], evt[IDS_MAX], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev-released");
    test_unique(key, sizeof key, "ev-released");
    test_unique(txn, sizeof txn, "txn");
    new_event_id(evt);
    struct store_claim_result a = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(store_release(store, tenant, key, a.lease_token, err, sizeof err), STORE_OK, "%s",
                 err);
    cr_assert_eq(event_count(tenant), 0);
    int64_t at = now_us();
    struct store_event ev = event_of(evt, "payment.declined", at, "{\"status\":\"declined\"}");
    struct store_payment p = payment_for(key, txn, "cust-ev", at);
    p.status = "declined";
    struct store_rows rows = {.payment = &p, .event = &ev};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_LEASE_LOST);
    cr_assert_not(event_there(tenant, evt), "a released record's completion wrote its event");
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, tenant, txn, &got, err, sizeof err), STORE_NOT_FOUND);
    cr_assert_eq(event_count(tenant), 0);

    struct store_claim_result b = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(b.outcome, CLAIM_NEW);
    cr_assert_eq(complete_in(tenant, key, b.lease_token, &rows), STORE_OK);
    assert_event_reads_back(tenant, &ev);
    cr_assert_eq(event_count(tenant), 1);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

CONTRACT(a_payment_without_a_key_is_written_with_its_event)
{
    char tenant[96], txn[64], bare[64], evt[IDS_MAX], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev-nokey");
    test_unique(txn, sizeof txn, "txn");
    new_event_id(evt);
    int64_t at = now_us();
    const char *body = "{ \"id\" : \"evt\", \"data\" : { \"object\" : {\"amount\":\"12.34\"} } }";
    struct store_event ev = event_of(evt, "payment.succeeded", at, body);
    struct store_payment p = payment_for(NULL, txn, "cust-ev", at);
    struct store_rows rows = {.payment = &p, .event = &ev};
    cr_assert_eq(store_write_rows(store, tenant, &rows, err, sizeof err), STORE_OK, "%s", err);
    struct store_payment got;
    cr_assert_eq(store_get_payment(store, tenant, txn, &got, err, sizeof err), STORE_OK, "%s", err);
    cr_assert_null(got.idempotency_key);
    store_payment_clear(&got);
    assert_event_reads_back(tenant, &ev);
    struct store_event_list l;
    events_page(tenant, NULL, NULL, 10, &l);
    cr_assert_eq(l.count, 1);
    assert_same_event(&l.items[0], &ev);
    store_event_list_clear(&l);
    /* a payment without one writes none */
    paid_in(tenant, bare, sizeof bare, "completed");
    cr_assert_eq(event_count(tenant), 1);
}

/* An event comes with its payment or refund: alone, or with a row of the
 * acquirer's ledger, it is an error before anything is written, and the
 * record stays processing. */
CONTRACT(an_event_without_its_payment_or_refund_is_an_error_and_writes_nothing)
{
    char tenant[96], key[96], ch[96], ref[96], dk[96], txn[64], evt[IDS_MAX], err[256];
    test_unique(tenant, sizeof tenant, "tenant-ev-alone");
    test_unique(key, sizeof key, "ev-alone");
    test_unique(ch, sizeof ch, "ch");
    test_unique(ref, sizeof ref, "txn");
    test_unique(dk, sizeof dk, "dk-ev"); /* unique: sql/010 */
    test_unique(txn, sizeof txn, "txn");
    new_event_id(evt);
    int64_t at = now_us();
    struct store_event ev = event_of(evt, "payment.succeeded", at, "{\"alone\":true}");
    struct store_charge c = charge_of(ch, ref, dk, "succeeded", at);
    struct store_rows alone = {.event = &ev}, with_charge = {.charge = &c, .event = &ev};
    struct store_response resp = {201, "{}", 2, NULL};
    struct store_claim_result a = claim_in(tenant, key, LONG_MS);
    const struct store_rows *bad[] = {&alone, &with_charge};
    for (int i = 0; i < 2; i++) {
        err[0] = '\0';
        cr_assert_eq(
            store_complete(store, tenant, key, a.lease_token, &resp, bad[i], err, sizeof err),
            STORE_ERROR, "case %d", i);
        cr_assert_neq(err[0], '\0', "no message");
        err[0] = '\0';
        cr_assert_eq(store_write_rows(store, tenant, bad[i], err, sizeof err), STORE_ERROR,
                     "case %d", i);
        cr_assert_neq(err[0], '\0', "no message");
    }
    cr_assert_not(event_there(tenant, evt));
    cr_assert_eq(event_count(tenant), 0);
    struct store_charge got_c;
    cr_assert_eq(store_get_charge(store, ch, &got_c, err, sizeof err), STORE_NOT_FOUND);
    struct store_claim_result b = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(b.outcome, CLAIM_IN_PROGRESS, "outcome %d", b.outcome);
    /* the record was left as it was: its holder completes it with its payment */
    struct store_payment p = payment_for(key, txn, "cust-ev", at);
    struct store_rows rows = {.payment = &p, .event = &ev};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_OK);
    assert_event_reads_back(tenant, &ev);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
}

/* Newest first by when they were made, the id breaking a tie; of one type
 * or all; in pages after a cursor; a tenant's own only. */
CONTRACT(events_are_listed_newest_first_by_type_and_in_pages_per_tenant)
{
    enum { N = 5 };
    char tenant[96], other[96], txns[N][64], re[64], other_txn[64], other_evt[IDS_MAX];
    char ids[N][IDS_MAX], bodies[N][128], unknown[IDS_MAX], err[256] = "";
    static const char *const types[N] = {"payment.succeeded", "payment.declined",
                                         "payment.succeeded", "refund.succeeded",
                                         "payment.succeeded"};
    test_unique(tenant, sizeof tenant, "tenant-ev-list");
    test_unique(other, sizeof other, "tenant-ev-list");
    int64_t base = now_us();
    /* 1 and 2 share a time: the id breaks the tie (the same id but its last
     * character, which orders them alike in every collation) */
    const int64_t at[N] = {base, base + 10, base + 10, base + 20, base + 30};
    for (int i = 0; i < N; i++) {
        new_event_id(ids[i]);
        test_unique(txns[i], sizeof txns[i], "txn");
    }
    memcpy(ids[2], ids[1], sizeof ids[1]);
    ids[1][strlen(ids[1]) - 1] = '0';
    ids[2][strlen(ids[2]) - 1] = '1';
    struct store_event ev[N];
    for (int i = 0; i < N; i++) {
        snprintf(bodies[i], sizeof bodies[i], "{\"id\":\"%s\",\"type\":\"%s\"}", ids[i], types[i]);
        ev[i] = event_of(ids[i], types[i], at[i], bodies[i]);
    }
    /* written out of time order; 3 is a refund of 0 */
    test_unique(re, sizeof re, "re");
    const int order[N] = {2, 0, 4, 1, 3};
    for (int k = 0; k < N; k++) {
        int i = order[k];
        struct store_payment p = payment_for(NULL, txns[i], "cust-ev", at[i]);
        p.status = i == 1 ? "declined" : "completed";
        struct store_refund r = refund_of(txns[0], re, NULL, 100, at[i]);
        struct store_rows rows = {.event = &ev[i]};
        if (i == 3)
            rows.refund = &r;
        else
            rows.payment = &p;
        cr_assert_eq(store_write_rows(store, tenant, &rows, err, sizeof err), STORE_OK, "%d: %s", i,
                     err);
        if (k == 2) {
            /* another tenant's event, between ours in time */
            test_unique(other_txn, sizeof other_txn, "txn");
            new_event_id(other_evt);
            struct store_event oe = event_of(other_evt, "payment.succeeded", base + 15, "{}");
            struct store_payment op = payment_for(NULL, other_txn, "cust-ev", base + 15);
            struct store_rows orows = {.payment = &op, .event = &oe};
            cr_assert_eq(store_write_rows(store, other, &orows, err, sizeof err), STORE_OK, "%s",
                         err);
        }
    }

    struct store_event_list l;
    events_page(tenant, NULL, NULL, 10, &l);
    const char *all[] = {ids[4], ids[3], ids[2], ids[1], ids[0]};
    assert_listed(&l, all, N, 0);
    for (int i = 0; i < N; i++)
        assert_same_event(&l.items[i], &ev[N - 1 - i]);
    store_event_list_clear(&l);

    /* pages of two */
    events_page(tenant, NULL, NULL, 2, &l);
    assert_listed(&l, all, 2, 1);
    store_event_list_clear(&l);
    events_page(tenant, NULL, ids[3], 2, &l);
    assert_listed(&l, all + 2, 2, 1);
    store_event_list_clear(&l);
    events_page(tenant, NULL, ids[1], 2, &l);
    assert_listed(&l, all + 4, 1, 0);
    store_event_list_clear(&l);
    events_page(tenant, NULL, ids[0], 2, &l);
    assert_listed(&l, NULL, 0, 0);
    store_event_list_clear(&l);
    /* a page of exactly what is left has no more */
    events_page(tenant, NULL, ids[2], 2, &l);
    assert_listed(&l, all + 3, 2, 0);
    store_event_list_clear(&l);

    /* one type; its pages; a cursor of another type */
    const char *succeeded[] = {ids[4], ids[2], ids[0]};
    events_page(tenant, "payment.succeeded", NULL, 10, &l);
    assert_listed(&l, succeeded, 3, 0);
    store_event_list_clear(&l);
    events_page(tenant, "payment.succeeded", NULL, 3, &l);
    assert_listed(&l, succeeded, 3, 0);
    store_event_list_clear(&l);
    events_page(tenant, "payment.succeeded", NULL, 1, &l);
    assert_listed(&l, succeeded, 1, 1);
    store_event_list_clear(&l);
    events_page(tenant, "payment.succeeded", ids[4], 1, &l);
    assert_listed(&l, succeeded + 1, 1, 1);
    store_event_list_clear(&l);
    events_page(tenant, "payment.succeeded", ids[3], 10, &l);
    assert_listed(&l, succeeded + 1, 2, 0);
    store_event_list_clear(&l);
    events_page(tenant, "payment.declined", NULL, 10, &l);
    assert_listed(&l, (const char *[]){ids[1]}, 1, 0);
    store_event_list_clear(&l);
    events_page(tenant, "refund.succeeded", NULL, 10, &l);
    assert_listed(&l, (const char *[]){ids[3]}, 1, 0);
    store_event_list_clear(&l);
    events_page(tenant, "refund.succeeded", ids[3], 10, &l);
    assert_listed(&l, NULL, 0, 0);
    store_event_list_clear(&l);

    /* the other tenant: its own event only; neither reads nor pages from
     * the other's; an event that is no one's is no cursor */
    events_page(other, NULL, NULL, 10, &l);
    assert_listed(&l, (const char *[]){other_evt}, 1, 0);
    store_event_list_clear(&l);
    events_page(other, "payment.declined", NULL, 10, &l);
    assert_listed(&l, NULL, 0, 0);
    store_event_list_clear(&l);
    cr_assert_not(event_there(other, ids[0]));
    cr_assert_not(event_there(tenant, other_evt));
    new_event_id(unknown);
    struct store_event_query q = {.starting_after = ids[4], .limit = 10};
    memset(&l, 0, sizeof l);
    cr_assert_eq(store_list_events(store, other, &q, &l, err, sizeof err), STORE_NOT_FOUND,
                 "another tenant's event as the cursor");
    q.starting_after = other_evt;
    cr_assert_eq(store_list_events(store, tenant, &q, &l, err, sizeof err), STORE_NOT_FOUND,
                 "another tenant's event as the cursor");
    q.starting_after = unknown;
    cr_assert_eq(store_list_events(store, tenant, &q, &l, err, sizeof err), STORE_NOT_FOUND);
    q.type = "payment.succeeded";
    cr_assert_eq(store_list_events(store, tenant, &q, &l, err, sizeof err), STORE_NOT_FOUND);
}

/* Events older than this in every case here: the reaper's case deletes
 * only its own (and those of its copy on the other PostgreSQL store, or
 * left by an earlier run). */
#define OLD_EVENT_AT 1000000000000000LL /* 2001-09-09 */

/* How many of tenant's events ids[0..n) are left. */
static int events_left(const char *tenant, char (*ids)[IDS_MAX], int n)
{
    int left = 0;
    for (int i = 0; i < n; i++)
        left += event_there(tenant, ids[i]);
    return left;
}

/* Cases of the two PostgreSQL stores, which share one database, that must
 * not run at once hold the advisory lock named what, on a connection of
 * their own, until they end (NULL: the memory store, whose rows are its
 * case's alone). The reaper deletes any tenant's old events: its cases run
 * one at a time. */
static PGconn *one_at_a_time(const char *what)
{
    if (strcmp(store_name(store), "memory") == 0)
        return NULL;
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    const char *vals[] = {what};
    PGresult *res =
        PQexecParams(conn, "SELECT pg_advisory_lock(hashtext($1))", 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    PQclear(res);
    return conn;
}

static PGconn *reapers_one_at_a_time(void)
{
    return one_at_a_time("test_store: events reaper");
}

/* The reaper deletes the events older than the retention, at most a batch
 * a pass, and says how many; younger ones stay. (Old events an earlier
 * run left in the PostgreSQL database may go first: which ones a pass
 * takes is exact on the memory store alone.) */
CONTRACT(events_older_than_the_retention_are_reaped_a_batch_at_a_time)
{
    PGconn *lock = reapers_one_at_a_time();
    char tenant[96], old[3][IDS_MAX], kept[IDS_MAX], young[IDS_MAX], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev-reap");
    const int64_t cutoff = OLD_EVENT_AT + DAY_US;
    for (int i = 0; i < 5; i++) {
        char txn[64], *id = i < 3 ? old[i] : i == 3 ? kept : young;
        /* kept: just younger than the retention; young: new */
        int64_t at = i < 3 ? OLD_EVENT_AT + i : i == 3 ? cutoff + HOUR_US : now_us();
        test_unique(txn, sizeof txn, "txn");
        new_event_id(id);
        struct store_event ev = event_of(id, "payment.succeeded", at, "{}");
        struct store_payment p = payment_for(NULL, txn, "cust-ev", at);
        struct store_rows rows = {.payment = &p, .event = &ev};
        cr_assert_eq(write_in(tenant, &rows), STORE_OK);
    }
    /* a retention that ends at cutoff */
    const int64_t retention_ms = (now_us() - cutoff) / 1000;

    /* three old ones: a pass of two deletes two */
    int deleted = -1;
    cr_assert_eq(store_reap_events(store, retention_ms, 2, &deleted, err, sizeof err), STORE_OK,
                 "%s", err);
    cr_assert_eq(deleted, 2);
    int left = events_left(tenant, old, 3);
    cr_assert_geq(left, 1, "a pass of two deleted three");
    cr_assert_leq(3 - left, deleted, "%d deleted, %d said", 3 - left, deleted);
    if (!lock)
        cr_assert_eq(left, 1);
    /* passes of one until one deletes none: then none old is left */
    int total = 0;
    for (int pass = 0; left > 0 || deleted > 0; pass++) {
        cr_assert_lt(pass, 1000, "the reaper never ran out of old events");
        deleted = -1;
        cr_assert_eq(store_reap_events(store, retention_ms, 1, &deleted, err, sizeof err), STORE_OK,
                     "%s", err);
        int now_left = events_left(tenant, old, 3);
        if (left > 0)
            cr_assert_eq(deleted, 1, "an old event left, and a pass of one deleted %d", deleted);
        else
            cr_assert(deleted == 0 || deleted == 1, "a pass of one deleted %d", deleted);
        cr_assert_leq(left - now_left, deleted, "%d deleted, %d said", left - now_left, deleted);
        left = now_left;
        total += deleted;
    }
    if (!lock)
        cr_assert_eq(total, 1);
    cr_assert(event_there(tenant, kept), "an event younger than the retention was reaped");
    cr_assert(event_there(tenant, young), "a new event was reaped");
    cr_assert_eq(event_count(tenant), 2);
    /* and a pass finds nothing more */
    cr_assert_eq(store_reap_events(store, retention_ms, 100, &deleted, err, sizeof err), STORE_OK,
                 "%s", err);
    cr_assert_eq(deleted, 0);
    cr_assert_eq(event_count(tenant), 2);
    PQfinish(lock);
}

/* A reaper pass on a memory store with no event yet (its table not even
 * allocated): nothing deleted, and nothing undefined (UBSan's run). */
Test(store_mem, a_reap_with_no_events_deletes_nothing, .init = open_mem, .fini = close_store)
{
    int deleted = -1;
    char err[256] = "";
    cr_assert_eq(store_reap_events(store, 1000, 100, &deleted, err, sizeof err), STORE_OK, "%s",
                 err);
    cr_assert_eq(deleted, 0);
}

/* Completions made at the same moment (on PostgreSQL, one statement for
 * several: the group commit) each write their own event, under their own
 * fencing token: a stale one among them writes nothing. */
struct event_racer {
    pthread_barrier_t *start;
    const char *tenant;
    char key[96], txn[64], evt[IDS_MAX], body[160];
    const char *type;
    int64_t token, at;
    enum store_status st;
};

static void *race_completion(void *arg)
{
    struct event_racer *rc = arg;
    char err[256] = "";
    struct store_event ev = event_of(rc->evt, rc->type, rc->at, rc->body);
    struct store_payment p = payment_for(rc->key, rc->txn, "cust-ev", rc->at);
    p.status = strcmp(rc->type, "payment.declined") == 0 ? "declined" : "completed";
    struct store_rows rows = {.payment = &p, .event = &ev};
    struct store_response resp = {201, rc->body, strlen(rc->body), NULL};
    pthread_barrier_wait(rc->start);
    rc->st = store_complete(store, rc->tenant, rc->key, rc->token, &resp, &rows, err, sizeof err);
    return NULL;
}

/* Racer i of tenant, ready to complete a new key of its own (every fourth
 * with a stale token) once start lets it. */
static void racer_init(struct event_racer *rc, pthread_barrier_t *start, const char *tenant, int i,
                       int64_t base)
{
    memset(rc, 0, sizeof *rc);
    rc->start = start;
    rc->tenant = tenant;
    test_unique(rc->key, sizeof rc->key, "ev-race");
    test_unique(rc->txn, sizeof rc->txn, "txn");
    new_event_id(rc->evt);
    rc->type = i % 2 ? "payment.declined" : "payment.succeeded";
    rc->at = base + i;
    /* (quotes, backslashes, braces and commas: several bodies travel in
     * one array there) */
    snprintf(rc->body, sizeof rc->body,
             "{\"id\":\"%s\",\"type\":\"%s\",\"n\":%d,\"note\":\"a\\\\ \\\"b\\\" {c}, "
             "caf\xc3\xa9\"}",
             rc->evt, rc->type, i);
    struct store_claim_result a = claim_in(tenant, rc->key, LONG_MS);
    rc->token = i % 4 == 3 ? a.lease_token + 1000000 : a.lease_token;
    rc->st = STORE_ERROR;
    store_claim_result_clear(&a);
}

#define RACERS_MAX 16

/* The n racers of tenant (at most RACERS_MAX) complete at once. */
static void race_completions(struct event_racer *rc, int n, const char *tenant)
{
    pthread_t th[RACERS_MAX];
    cr_assert_leq(n, RACERS_MAX);
    pthread_barrier_t start;
    cr_assert_eq(pthread_barrier_init(&start, NULL, (unsigned)n), 0);
    int64_t base = now_us();
    for (int i = 0; i < n; i++)
        racer_init(&rc[i], &start, tenant, i, base);
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, race_completion, &rc[i]), 0);
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
}

CONTRACT(events_of_completions_made_at_once_are_each_their_own)
{
    enum { N = RACERS_MAX }; /* every fourth with a stale token */
    char tenant[96], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-ev-race");
    struct event_racer rc[N];
    race_completions(rc, N, tenant);
    size_t written = 0;
    for (int i = 0; i < N; i++) {
        struct store_payment got;
        if (i % 4 == 3) {
            cr_assert_eq(rc[i].st, STORE_LEASE_LOST, "%d: %s", i, store_status_name(rc[i].st));
            cr_assert_not(event_there(tenant, rc[i].evt), "%d: the stale completion's event", i);
            cr_assert_eq(store_get_payment(store, tenant, rc[i].txn, &got, err, sizeof err),
                         STORE_NOT_FOUND);
            continue;
        }
        cr_assert_eq(rc[i].st, STORE_OK, "%d: %s", i, store_status_name(rc[i].st));
        struct store_event want = event_of(rc[i].evt, rc[i].type, rc[i].at, rc[i].body);
        assert_event_reads_back(tenant, &want);
        cr_assert_eq(store_get_payment(store, tenant, rc[i].txn, &got, err, sizeof err), STORE_OK,
                     "%d: %s", i, err);
        store_payment_clear(&got);
        written++;
    }
    cr_assert_eq(event_count(tenant), written);
    cr_assert_eq(written, N - N / 4);
}

/* ---- webhook deliveries: one per endpoint that wants the event, leased, fenced ---- */

/* How long a case waits for a delivery (or a record) to come back - a
 * lease or a retry to run out: the bound says when to give up, never when
 * it should come. */
#define DELIVERY_WAIT_S 10
/* A lease a case waits out. */
#define SHORT_LEASE_MS 200
/* Rows one claim takes at most; claims a case makes at most to take what is due. */
#define CLAIM_BATCH 1000
#define CLAIM_PASSES 1000
/* Older than any other case's event (1971-01-01). */
#define ANCIENT_AT 31536000000000LL

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* A claim takes any case's due rows, under a lease that would keep them
 * from the case waiting for them, and the backlog counts every case's: the
 * PostgreSQL cases that claim run one at a time, as the reapers do. A case
 * that also needs the reapers' lock takes this one first. */
static PGconn *claimers_one_at_a_time(void)
{
    return one_at_a_time("test_store: webhook deliveries");
}

/* A webhook endpoint of a case. */
struct hook {
    char id[IDS_MAX], url[128], secret[IDS_MAX];
};

/* A new endpoint of tenant for events (comma-separated; NULL: every type). */
static void hook_in(const char *tenant, const char *events, struct hook *h)
{
    char err[256] = "";
    cr_assert_eq(ids_new("we_", h->id), 0);
    cr_assert_eq(ids_new("whsec_", h->secret), 0);
    /* (nothing listens there: a server that ever found a row a failed case
     * left would give up on it at once) */
    snprintf(h->url, sizeof h->url, "http://127.0.0.1:9/hooks/%s", h->id);
    struct store_endpoint e = {.endpoint_id = h->id,
                               .url = h->url,
                               .events = (char *)events,
                               .secret = h->secret,
                               .created_at_us = now_us()};
    cr_assert_eq(store_create_endpoint(store, tenant, &e, 100, err, sizeof err), STORE_OK,
                 "create endpoint: %s", err);
}

/* Deletes the endpoint, and with it its deliveries: a case ends with its
 * endpoints deleted, leaving no row for another to claim. */
static void unhook(const char *tenant, const struct hook *h)
{
    char err[256] = "";
    cr_assert_eq(store_delete_endpoint(store, tenant, h->id, err, sizeof err), STORE_OK,
                 "delete endpoint %s: %s", h->id, err);
}

/* A payment of tenant without a key, written with its event of type: the
 * event's id into evt. */
static void paid_with_event(const char *tenant, const char *type, int64_t at, const char *body,
                            char evt[IDS_MAX])
{
    char txn[64];
    test_unique(txn, sizeof txn, "txn");
    new_event_id(evt);
    struct store_event ev = event_of(evt, type, at, body);
    struct store_payment p = payment_for(NULL, txn, "cust-wh", at);
    p.status = strcmp(type, "payment.declined") == 0 ? "declined" : "completed";
    struct store_rows rows = {.payment = &p, .event = &ev};
    cr_assert_eq(write_in(tenant, &rows), STORE_OK);
}

/* The deliveries of tenant (and of other, when not NULL) a case claimed,
 * in the order claimed, one item for each time one was claimed. */
struct taken {
    const char *tenant, *other;
    struct store_delivery *items;
    size_t count, cap;
};

static void taken_clear(struct taken *t)
{
    for (size_t i = 0; i < t->count; i++)
        store_delivery_clear(&t->items[i]);
    free(t->items);
    t->items = NULL;
    t->count = t->cap = 0;
}

/* Moves the rows of t's tenants from l to t; any other case's row is left
 * to its lease (the PostgreSQL cases share the table). 0, or -1 when out
 * of memory. Asserts nothing: threads call it. */
static int taken_add(struct taken *t, struct store_delivery_list *l)
{
    for (size_t i = 0; i < l->count; i++) {
        struct store_delivery *d = &l->items[i];
        if (strcmp(d->tenant, t->tenant) != 0 && (!t->other || strcmp(d->tenant, t->other) != 0))
            continue;
        if (t->count == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 16;
            struct store_delivery *items = realloc(t->items, cap * sizeof *items);
            if (!items)
                return -1;
            t->items = items;
            t->cap = cap;
        }
        t->items[t->count++] = *d;
        memset(d, 0, sizeof *d);
    }
    return 0;
}

/* One claim c, the rows of t's tenants kept in t: how many rows it took,
 * anyone's. */
static size_t claim_deliveries_as(struct taken *t, const struct store_delivery_claim *c)
{
    char err[256] = "";
    struct store_delivery_list l = {0};
    cr_assert_eq(store_claim_deliveries(store, c, &l, err, sizeof err), STORE_OK,
                 "claim deliveries: %s", err);
    size_t n = l.count;
    cr_assert_eq(taken_add(t, &l), 0, "out of memory");
    store_delivery_list_clear(&l);
    return n;
}

/* One claim under a lease of lease_ms (claim_deliveries_as). */
static size_t claim_into(struct taken *t, int64_t lease_ms)
{
    return claim_deliveries_as(
        t, &(struct store_delivery_claim){.batch = CLAIM_BATCH, .lease_ms = lease_ms});
}

/* Claims until a claim takes nothing: everything due now. */
static void claim_all_due(struct taken *t, int64_t lease_ms)
{
    for (int pass = 0; claim_into(t, lease_ms) > 0; pass++)
        cr_assert_lt(pass, CLAIM_PASSES, "claims never ran out of due deliveries");
}

static int is_delivery(const struct store_delivery *d, const char *event_id,
                       const char *endpoint_id)
{
    return strcmp(d->event_id, event_id) == 0 && strcmp(d->endpoint_id, endpoint_id) == 0;
}

/* How many times the delivery of event_id to the endpoint was claimed. */
static int times_taken(const struct taken *t, const char *event_id, const struct hook *h)
{
    int n = 0;
    for (size_t i = 0; i < t->count; i++)
        n += is_delivery(&t->items[i], event_id, h->id);
    return n;
}

/* The first time it was claimed (t->count: never). */
static size_t first_taken(const struct taken *t, const char *event_id, const struct hook *h)
{
    size_t i = 0;
    while (i < t->count && !is_delivery(&t->items[i], event_id, h->id))
        i++;
    return i;
}

/* Claims under lease_ms until the delivery of event_id to the endpoint
 * has been claimed at index from of t or later (from = t->count: by a
 * claim made now): the index of that claim. Fails the case when it does
 * not come within DELIVERY_WAIT_S. */
static size_t claim_until(struct taken *t, size_t from, const char *event_id, const struct hook *h,
                          int64_t lease_ms)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        for (; from < t->count; from++)
            if (is_delivery(&t->items[from], event_id, h->id))
                return from;
        cr_assert_lt(seconds_since(&t0), DELIVERY_WAIT_S,
                     "the delivery of %s to %s did not come within %d s", event_id, h->id,
                     DELIVERY_WAIT_S);
        if (claim_into(t, lease_ms) == 0)
            wait_ms(10);
    }
}

/* d is the delivery of the event (body as written) to h, of tenant, with
 * the endpoint's URL and secret: attempt. */
static void assert_delivery(const struct store_delivery *d, const char *tenant,
                            const char *event_id, const char *body, const struct hook *h,
                            int attempt)
{
    cr_assert_str_eq(d->tenant, tenant);
    cr_assert_str_eq(d->event_id, event_id);
    cr_assert_str_eq(d->endpoint_id, h->id);
    cr_assert_str_eq(d->url, h->url);
    cr_assert_str_eq(d->secret, h->secret);
    cr_assert_eq(d->attempt, attempt, "%s to %s: attempt %d, want %d", event_id, h->id, d->attempt,
                 attempt);
    cr_assert_eq(d->body_len, strlen(body), "body %zu bytes, written %zu: %.*s", d->body_len,
                 strlen(body), (int)d->body_len, d->body);
    cr_assert_eq(memcmp(d->body, body, d->body_len), 0, "body %.*s", (int)d->body_len, d->body);
    cr_assert_eq(d->body[d->body_len], '\0');
}

static void finish(const struct store_delivery_result *r, size_t n)
{
    char err[256] = "";
    cr_assert_eq(store_finish_deliveries(store, r, n, err, sizeof err), STORE_OK,
                 "finish deliveries: %s", err);
}

/* An attempt's result: sent (attempts = attempt), its answer as the state
 * says. */
static struct store_delivery_result result_of(const char *tenant, const char *event_id,
                                              const struct hook *h, int attempt,
                                              enum store_delivery_state state, int64_t retry_in_ms)
{
    struct store_delivery_result r = {
        .tenant = tenant,
        .event_id = event_id,
        .endpoint_id = h->id,
        .attempt = attempt,
        .attempts = attempt,
        .state = state,
        .retry_in_ms = retry_in_ms,
        .http_status = state == STORE_DELIVERY_DELIVERED ? 200 : 500,
        .error = state == STORE_DELIVERY_DELIVERED ? NULL : "HTTP 500",
    };
    return r;
}

/* The PostgreSQL table's rows of an endpoint, of an event. */
static const char ROWS_OF_ENDPOINT[] =
    "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1";
static const char ROWS_OF_EVENT[] = "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1";

/* Every event written makes one delivery for each endpoint of its tenant
 * that wants its type - every type, or its own among others - and none for
 * another tenant's endpoints, whichever way it was written: a payment's
 * completion, a payment without a key, a refund's completion, a refund
 * without a key. A claim hands each over once, with its endpoint's URL and
 * secret and the event as written, byte for byte: attempt 1. */
CONTRACT(an_event_makes_one_delivery_for_each_endpoint_of_its_tenant_that_wants_it)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], other[96], key[96], rkey[96], txn[64], re[64], bare_re[64];
    char paid[IDS_MAX], declined[IDS_MAX], refunded[IDS_MAX], bare_refunded[IDS_MAX],
        theirs_paid[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh");
    test_unique(other, sizeof other, "tenant-wh-other");
    struct hook all, pay, ref, some, theirs;
    hook_in(tenant, NULL, &all);
    hook_in(tenant, "payment.succeeded", &pay);
    hook_in(tenant, "refund.succeeded", &ref);
    hook_in(tenant, "payment.declined,refund.succeeded", &some);
    hook_in(other, NULL, &theirs);
    const char *paid_body = "{\"id\": \"evt\",\n  \"type\":\"payment.succeeded\" , \"n\":1.50e2,"
                            "\"note\":\"caf\xc3\xa9 \\u00e9 \\\"q\\\" {c}, [d]\"}";
    const char *declined_body = "{ \"type\" : \"payment.declined\" }";
    const char *refunded_body = "{\"type\":\"refund.succeeded\",\"amount\":\"10.00\"}";
    const char *bare_refunded_body = "{\"type\":\"refund.succeeded\",\"amount\":\"2.00\"}";
    const char *theirs_body = "{\"tenant\":\"the other\"}";
    int64_t at = now_us();

    /* a payment's completion */
    test_unique(key, sizeof key, "wh-pay");
    test_unique(txn, sizeof txn, "txn");
    new_event_id(paid);
    struct store_event paid_ev = event_of(paid, "payment.succeeded", at, paid_body);
    struct store_payment p = payment_for(key, txn, "cust-wh", at);
    struct store_rows rows = {.payment = &p, .event = &paid_ev};
    struct store_claim_result a = claim_in(tenant, key, LONG_MS);
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_OK);
    /* a payment without a key (declined) */
    paid_with_event(tenant, "payment.declined", at + 1, declined_body, declined);
    /* a refund's completion, and a refund without a key */
    test_unique(rkey, sizeof rkey, "wh-refund");
    test_unique(re, sizeof re, "re");
    new_event_id(refunded);
    struct store_event refunded_ev = event_of(refunded, "refund.succeeded", at + 2, refunded_body);
    struct store_refund r = refund_of(txn, re, rkey, 1000, at + 2);
    rows = (struct store_rows){.refund = &r, .event = &refunded_ev};
    struct store_claim_result b = claim_in(tenant, rkey, LONG_MS);
    cr_assert_eq(complete_in(tenant, rkey, b.lease_token, &rows), STORE_OK);
    test_unique(bare_re, sizeof bare_re, "re");
    new_event_id(bare_refunded);
    struct store_event bare_ev =
        event_of(bare_refunded, "refund.succeeded", at + 3, bare_refunded_body);
    struct store_refund bare_r = refund_of(txn, bare_re, NULL, 200, at + 3);
    rows = (struct store_rows){.refund = &bare_r, .event = &bare_ev};
    cr_assert_eq(write_in(tenant, &rows), STORE_OK);
    /* a payment without an event makes none */
    char quiet[64];
    paid_in(tenant, quiet, sizeof quiet, "completed");
    /* the other tenant's payment */
    paid_with_event(other, "payment.succeeded", at + 4, theirs_body, theirs_paid);

    struct taken t = {.tenant = tenant, .other = other};
    claim_all_due(&t, LONG_MS);
    const struct {
        const char *tenant, *event_id, *body;
        const struct hook *h;
    } want[] = {
        {tenant, paid, paid_body, &all},
        {tenant, paid, paid_body, &pay},
        {tenant, declined, declined_body, &all},
        {tenant, declined, declined_body, &some},
        {tenant, refunded, refunded_body, &all},
        {tenant, refunded, refunded_body, &ref},
        {tenant, refunded, refunded_body, &some},
        {tenant, bare_refunded, bare_refunded_body, &all},
        {tenant, bare_refunded, bare_refunded_body, &ref},
        {tenant, bare_refunded, bare_refunded_body, &some},
        {other, theirs_paid, theirs_body, &theirs},
    };
    const size_t n = sizeof want / sizeof want[0];
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(times_taken(&t, want[i].event_id, want[i].h), 1,
                     "want %zu: the delivery of %s to %s claimed %d times", i, want[i].event_id,
                     want[i].h->id, times_taken(&t, want[i].event_id, want[i].h));
        assert_delivery(&t.items[first_taken(&t, want[i].event_id, want[i].h)], want[i].tenant,
                        want[i].event_id, want[i].body, want[i].h, 1);
    }
    cr_assert_eq(t.count, n, "%zu deliveries claimed, want %zu", t.count, n);
    taken_clear(&t);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    unhook(tenant, &all);
    unhook(tenant, &pay);
    unhook(tenant, &ref);
    unhook(tenant, &some);
    unhook(other, &theirs);
    PQfinish(lock);
}

/* Claims tenant's key until its lease has run out and the claim takes it
 * over (within DELIVERY_WAIT_S). */
static struct store_claim_result taken_over(const char *tenant, const char *key)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct store_claim_result r = claim_in(tenant, key, LONG_MS);
        if (r.outcome == CLAIM_TAKEOVER)
            return r;
        cr_assert_eq(r.outcome, CLAIM_IN_PROGRESS, "claim %s: outcome %d", key, r.outcome);
        store_claim_result_clear(&r);
        cr_assert_lt(seconds_since(&t0), DELIVERY_WAIT_S, "the lease on %s never ran out", key);
        wait_ms(20);
    }
}

/* A completion that writes nothing makes no delivery: fenced out (its lease
 * ran out and another claim took the record over), rejected (a refund over
 * what is left of its payment, with a key and without), or released. */
CONTRACT(a_completion_that_writes_nothing_makes_no_delivery)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], key[96], rkey[96], relkey[96], pay[96], txn[2][64], re[2][64];
    char fenced[IDS_MAX], over[2][IDS_MAX], released[IDS_MAX], written[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-nothing");
    struct hook all;
    hook_in(tenant, NULL, &all);
    int64_t at = now_us();

    test_unique(key, sizeof key, "wh-fenced");
    test_unique(txn[0], sizeof txn[0], "txn");
    new_event_id(fenced);
    struct store_claim_result a = claim_in(tenant, key, SHORT_LEASE_MS);
    struct store_claim_result b = taken_over(tenant, key);
    struct store_event ev = event_of(fenced, "payment.succeeded", at, "{\"run\":\"old\"}");
    struct store_payment p = payment_for(key, txn[0], "cust-wh", at);
    struct store_rows rows = {.payment = &p, .event = &ev};
    cr_assert_eq(complete_in(tenant, key, a.lease_token, &rows), STORE_LEASE_LOST);

    paid_in(tenant, pay, sizeof pay, "completed");
    test_unique(rkey, sizeof rkey, "wh-over");
    struct store_claim_result c = claim_in(tenant, rkey, LONG_MS);
    for (int i = 0; i < 2; i++) {
        test_unique(re[i], sizeof re[i], "re");
        new_event_id(over[i]);
    }
    struct store_event over_ev = event_of(over[0], "refund.succeeded", at, "{\"over\":0}");
    struct store_refund r = refund_of(pay, re[0], rkey, 10001, at);
    rows = (struct store_rows){.refund = &r, .event = &over_ev};
    cr_assert_eq(complete_in(tenant, rkey, c.lease_token, &rows), STORE_REJECTED);
    over_ev = event_of(over[1], "refund.succeeded", at, "{\"over\":1}");
    r = refund_of(pay, re[1], NULL, 10001, at);
    cr_assert_eq(write_in(tenant, &rows), STORE_REJECTED);

    char err[256] = "";
    test_unique(relkey, sizeof relkey, "wh-released");
    test_unique(txn[1], sizeof txn[1], "txn");
    new_event_id(released);
    struct store_claim_result d = claim_in(tenant, relkey, LONG_MS);
    cr_assert_eq(store_release(store, tenant, relkey, d.lease_token, err, sizeof err), STORE_OK,
                 "%s", err);
    ev = event_of(released, "payment.succeeded", at, "{\"released\":1}");
    p = payment_for(relkey, txn[1], "cust-wh", at);
    rows = (struct store_rows){.payment = &p, .event = &ev};
    cr_assert_eq(complete_in(tenant, relkey, d.lease_token, &rows), STORE_LEASE_LOST);

    /* one that writes, so that the claim below is seen to find the tenant's */
    paid_with_event(tenant, "payment.succeeded", at, "{\"written\":1}", written);
    struct taken t = {.tenant = tenant};
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(times_taken(&t, fenced, &all), 0, "the fenced-out completion made a delivery");
    cr_assert_eq(times_taken(&t, over[0], &all), 0, "the rejected refund made a delivery");
    cr_assert_eq(times_taken(&t, over[1], &all), 0, "the rejected refund made a delivery");
    cr_assert_eq(times_taken(&t, released, &all), 0, "the released claim made a delivery");
    cr_assert_eq(times_taken(&t, written, &all), 1);
    cr_assert_eq(t.count, 1, "%zu deliveries claimed, want 1", t.count);
    taken_clear(&t);
    store_claim_result_clear(&a);
    store_claim_result_clear(&b);
    store_claim_result_clear(&c);
    store_claim_result_clear(&d);
    unhook(tenant, &all);
    PQfinish(lock);
}

/* A claimed delivery is leased: no claim takes it while its lease is
 * live; once the lease has run out (its server died mid-attempt) a claim
 * takes it again, the attempt counted. */
CONTRACT(a_claimed_delivery_is_claimed_again_only_once_its_lease_ran_out)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], held[IDS_MAX], lapsing[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-lease");
    struct hook h;
    hook_in(tenant, NULL, &h);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{\"held\":1}", held);
    struct taken t = {.tenant = tenant};
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(t.count, 1);
    assert_delivery(&t.items[0], tenant, held, "{\"held\":1}", &h, 1);
    /* right after, and again: its lease is live */
    claim_all_due(&t, LONG_MS);
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(t.count, 1, "a delivery under a live lease was claimed again");

    paid_with_event(tenant, "payment.succeeded", now_us(), "{\"lapsing\":1}", lapsing);
    size_t i = claim_until(&t, t.count, lapsing, &h, SHORT_LEASE_MS);
    assert_delivery(&t.items[i], tenant, lapsing, "{\"lapsing\":1}", &h, 1);
    i = claim_until(&t, i + 1, lapsing, &h, LONG_MS);
    assert_delivery(&t.items[i], tenant, lapsing, "{\"lapsing\":1}", &h, 2);
    cr_assert_eq(times_taken(&t, held, &h), 1, "a delivery under a live lease was claimed again");
    cr_assert_eq(times_taken(&t, lapsing, &h), 2);
    taken_clear(&t);
    unhook(tenant, &h);
    PQfinish(lock);
}

/* One claim of at most batch due rows, none to the endpoints busy names
 * (claim_deliveries_as). */
static size_t claim_around(struct taken *t, int batch, const struct store_endpoint_busy *busy,
                           size_t nbusy)
{
    return claim_deliveries_as(
        t, &(struct store_delivery_claim){
               .batch = batch, .lease_ms = LONG_MS, .busy = busy, .nbusy = nbusy});
}

/* Rows of t claimed for endpoint h. */
static int taken_for(const struct taken *t, const struct hook *h)
{
    int n = 0;
    for (size_t i = 0; i < t->count; i++)
        n += strcmp(t->items[i].endpoint_id, h->id) == 0;
    return n;
}

/* A claim takes nothing of the endpoints the sender still has attempts
 * under way to, and finds the rows of others behind their backlog - even
 * when the backlog is larger than the claim: a sender whose attempts to
 * one endpoint hang keeps sending everyone else's. */
CONTRACT(a_claim_steps_over_the_endpoints_the_sender_is_busy_with)
{
    enum { BACKLOG = 5 };
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], a_evt[BACKLOG][IDS_MAX], b_evt[2][IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-busy");
    struct hook a, b;
    hook_in(tenant, NULL, &a);
    for (int i = 0; i < BACKLOG; i++)
        paid_with_event(tenant, "payment.succeeded", now_us(), "{}", a_evt[i]);
    hook_in(tenant, NULL, &b); /* after: b wants only the later events */
    for (int i = 0; i < 2; i++)
        paid_with_event(tenant, "payment.succeeded", now_us(), "{}", b_evt[i]);

    /* a busy: b's two, behind a's older five, in claims of two (other
     * cases' rows may come first: claims until b's came or none is due) */
    struct store_endpoint_busy busy_a[] = {{.tenant = tenant, .endpoint_id = a.id}};
    struct taken t = {.tenant = tenant};
    for (int pass = 0; taken_for(&t, &b) < 2 && claim_around(&t, 2, busy_a, 1) > 0; pass++)
        cr_assert_lt(pass, CLAIM_PASSES, "claims never ran out of due deliveries");
    cr_assert_eq(taken_for(&t, &a), 0, "took %d of a busy endpoint's", taken_for(&t, &a));
    cr_assert_eq(taken_for(&t, &b), 2, "took %d of the other endpoint's 2", taken_for(&t, &b));
    cr_assert_eq(times_taken(&t, b_evt[0], &b) + times_taken(&t, b_evt[1], &b), 2);

    /* b named busy (its rows are leased anyway), a not: a's oldest first */
    struct store_endpoint_busy busy_b[] = {{.tenant = tenant, .endpoint_id = b.id}};
    for (int pass = 0; taken_for(&t, &a) == 0 && claim_around(&t, 2, busy_b, 1) > 0; pass++)
        cr_assert_lt(pass, CLAIM_PASSES, "claims never ran out of due deliveries");
    cr_assert_gt(taken_for(&t, &a), 0, "took none of a's once it was not busy");
    cr_assert_eq(times_taken(&t, a_evt[0], &a), 1, "not the oldest first");

    /* nothing busy: the rest (a wants the later two events too) */
    claim_around(&t, CLAIM_BATCH, NULL, 0);
    cr_assert_eq(taken_for(&t, &a), BACKLOG + 2, "took %d of a's in all, not the %d due",
                 taken_for(&t, &a), BACKLOG + 2);
    cr_assert_eq(t.count, (size_t)BACKLOG + 4, "a delivery was claimed twice");
    taken_clear(&t);
    unhook(tenant, &a);
    unhook(tenant, &b);
    PQfinish(lock);
}

/* One claim that looks back lookback_ms (0: at every due row), nothing
 * busy (claim_deliveries_as). */
static size_t claim_back(struct taken *t, int64_t lookback_ms)
{
    return claim_deliveries_as(t, &(struct store_delivery_claim){.batch = CLAIM_BATCH,
                                                                 .lease_ms = LONG_MS,
                                                                 .lookback_ms = lookback_ms});
}

/* A claim that looks back only so far takes no delivery that came due
 * before that - a sender whose attempts to one endpoint hang does not
 * step over that endpoint's whole backlog on every claim - and takes the
 * ones that came due since; a claim that looks at every due row takes
 * the older one too. (The older delivery is made LOOKBACK_MS and more
 * before the claims: however slow the machine, it is older than they look
 * back. The newer one must be claimed within LOOKBACK_MS of its event.) */
CONTRACT(a_claim_looks_back_no_further_than_asked)
{
    enum { LOOKBACK_MS = 2000 };
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], old_evt[IDS_MAX], new_evt[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-lookback");
    struct hook h;
    hook_in(tenant, NULL, &h);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{}", old_evt);
    wait_ms(LOOKBACK_MS + 100);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{}", new_evt);

    struct taken t = {.tenant = tenant};
    for (int pass = 0; times_taken(&t, new_evt, &h) == 0 && claim_back(&t, LOOKBACK_MS) > 0; pass++)
        cr_assert_lt(pass, CLAIM_PASSES, "claims never ran out of due deliveries");
    cr_assert_eq(times_taken(&t, new_evt, &h), 1,
                 "the delivery that came due just now was not taken looking back %d ms",
                 LOOKBACK_MS);
    cr_assert_eq(times_taken(&t, old_evt, &h), 0,
                 "a delivery due for longer than the claim looked back was taken");

    for (int pass = 0; times_taken(&t, old_evt, &h) == 0 && claim_back(&t, 0) > 0; pass++)
        cr_assert_lt(pass, CLAIM_PASSES, "claims never ran out of due deliveries");
    cr_assert_eq(times_taken(&t, old_evt, &h), 1,
                 "a claim looking at every due row did not take the older delivery");
    taken_clear(&t);
    unhook(tenant, &h);
    PQfinish(lock);
}

/* An attempt's result is written only while its row still holds the
 * attempt claimed: once the lease ran out and another claim took it, the
 * first attempt's result - however late, whatever it says - changes
 * nothing. */
CONTRACT(a_result_of_an_attempt_claimed_again_since_changes_nothing)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], evt[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-fence");
    struct hook h;
    hook_in(tenant, NULL, &h);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{}", evt);
    struct taken t = {.tenant = tenant};
    size_t i = claim_until(&t, t.count, evt, &h, SHORT_LEASE_MS);
    cr_assert_eq(t.items[i].attempt, 1);
    i = claim_until(&t, i + 1, evt, &h, SHORT_LEASE_MS);
    cr_assert_eq(t.items[i].attempt, 2);
    /* the first attempt's results, late: delivered, given up, retried much
     * later (and its attempts count with it) */
    struct store_delivery_result late = result_of(tenant, evt, &h, 1, STORE_DELIVERY_DELIVERED, 0);
    finish(&late, 1);
    late = result_of(tenant, evt, &h, 1, STORE_DELIVERY_FAILED, 0);
    finish(&late, 1);
    late = result_of(tenant, evt, &h, 1, STORE_DELIVERY_RETRY, LONG_MS);
    late.attempts = 0;
    finish(&late, 1);
    /* the second attempt's lease runs out: claimed again, the third */
    i = claim_until(&t, i + 1, evt, &h, LONG_MS);
    cr_assert_eq(t.items[i].attempt, 3, "attempt %d, want 3", t.items[i].attempt);
    taken_clear(&t);
    unhook(tenant, &h);
    PQfinish(lock);
}

/* The result of the attempt the row holds: delivered or given up ends the
 * delivery (and a result for it afterwards changes nothing); a retry makes
 * it due again after retry_in_ms, counting the attempts it says were made
 * (one less for an attempt given up without being sent). A delivery left
 * alone comes back once its lease ran out: the others are seen against
 * it. */
CONTRACT(a_result_ends_its_delivery_or_makes_it_due_again)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], evt[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-result");
    struct hook delivered, failed, later, soon, unsent, alone;
    struct hook *hooks[] = {&delivered, &failed, &later, &soon, &unsent, &alone};
    for (size_t i = 0; i < sizeof hooks / sizeof hooks[0]; i++)
        hook_in(tenant, NULL, hooks[i]);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{}", evt);
    struct taken t = {.tenant = tenant};
    for (size_t i = 0; i < sizeof hooks / sizeof hooks[0]; i++) {
        size_t k = claim_until(&t, 0, evt, hooks[i], SHORT_LEASE_MS);
        cr_assert_eq(t.items[k].attempt, 1);
    }
    cr_assert_eq(t.count, 6);

    struct store_delivery_result r[] = {
        result_of(tenant, evt, &delivered, 1, STORE_DELIVERY_DELIVERED, 0),
        result_of(tenant, evt, &failed, 1, STORE_DELIVERY_FAILED, 0),
        result_of(tenant, evt, &later, 1, STORE_DELIVERY_RETRY, LONG_MS),
        result_of(tenant, evt, &soon, 1, STORE_DELIVERY_RETRY, 10),
        result_of(tenant, evt, &unsent, 1, STORE_DELIVERY_RETRY, 10),
    };
    r[1].http_status = 410;
    r[1].error = "HTTP 410";
    r[3].http_status = 0;
    r[3].error = "timeout";
    r[4].attempts = 0;
    r[4].http_status = 0;
    r[4].error = "not sent";
    finish(r, sizeof r / sizeof r[0]);
    /* the ended ones' results again, as retries due now: they are no longer
     * pending */
    struct store_delivery_result again[] = {
        result_of(tenant, evt, &delivered, 1, STORE_DELIVERY_RETRY, 0),
        result_of(tenant, evt, &failed, 1, STORE_DELIVERY_RETRY, 0),
    };
    finish(again, 2);

    size_t since = t.count;
    size_t i = claim_until(&t, since, evt, &soon, LONG_MS);
    cr_assert_eq(t.items[i].attempt, 2, "attempt %d, want 2", t.items[i].attempt);
    i = claim_until(&t, since, evt, &unsent, LONG_MS);
    cr_assert_eq(t.items[i].attempt, 1, "attempt %d after one not sent, want 1",
                 t.items[i].attempt);
    i = claim_until(&t, since, evt, &alone, LONG_MS);
    cr_assert_eq(t.items[i].attempt, 2);
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(times_taken(&t, evt, &delivered), 1, "a delivered delivery was claimed again");
    cr_assert_eq(times_taken(&t, evt, &failed), 1, "a failed delivery was claimed again");
    cr_assert_eq(times_taken(&t, evt, &later), 1, "a retry in a minute was claimed already");
    cr_assert_eq(t.count, 9, "%zu claims, want 9", t.count);
    taken_clear(&t);
    for (size_t k = 0; k < sizeof hooks / sizeof hooks[0]; k++)
        unhook(tenant, hooks[k]);
    PQfinish(lock);
}

/* Claimers racing for the same due deliveries (on PostgreSQL, transactions
 * at once; servers, in production) claim each exactly once between them. */
struct delivery_claimer {
    struct store *s;
    pthread_barrier_t *start;
    struct taken t;
    int passes;
    enum store_status st;
    char err[256];
};

static void *race_claims(void *arg)
{
    struct delivery_claimer *c = arg;
    pthread_barrier_wait(c->start);
    for (c->passes = 0; c->passes < CLAIM_PASSES; c->passes++) {
        struct store_delivery_list l = {0};
        c->st = store_claim_deliveries(
            c->s, &(struct store_delivery_claim){.batch = 3, .lease_ms = LONG_MS}, &l, c->err,
            sizeof c->err);
        if (c->st != STORE_OK)
            return NULL;
        size_t n = l.count;
        if (taken_add(&c->t, &l) != 0) {
            c->st = STORE_ERROR;
            snprintf(c->err, sizeof c->err, "out of memory");
        }
        store_delivery_list_clear(&l);
        if (c->st != STORE_OK || n == 0)
            return NULL;
    }
    return NULL;
}

CONTRACT(deliveries_claimed_at_once_are_each_claimed_once)
{
    enum { THREADS = 16, EVENTS = 50, HOOKS = 4 }; /* 200 deliveries */
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], evt[EVENTS][IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-race");
    struct hook h[HOOKS];
    for (int k = 0; k < HOOKS; k++)
        hook_in(tenant, NULL, &h[k]);
    int64_t at = now_us();
    for (int e = 0; e < EVENTS; e++)
        paid_with_event(tenant, "payment.succeeded", at + e, "{}", evt[e]);

    /* on PostgreSQL, as many connections as claimers: transactions at once */
    struct store *wide = NULL;
    if (lock) {
        char err[256] = "";
        struct store_pg_options o = pg_opened;
        o.pool_size = THREADS;
        wide = store_pg_new(&o, err, sizeof err);
        cr_assert_not_null(wide, "store_pg_new: %s", err);
    }
    struct delivery_claimer c[THREADS];
    pthread_t th[THREADS];
    pthread_barrier_t start;
    cr_assert_eq(pthread_barrier_init(&start, NULL, THREADS), 0);
    for (int i = 0; i < THREADS; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].s = wide ? wide : store;
        c[i].start = &start;
        c[i].t.tenant = tenant;
        cr_assert_eq(pthread_create(&th[i], NULL, race_claims, &c[i]), 0);
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    store_free(wide);

    int times[EVENTS][HOOKS] = {{0}};
    for (int i = 0; i < THREADS; i++) {
        cr_assert_eq(c[i].st, STORE_OK, "claimer %d: %s: %s", i, store_status_name(c[i].st),
                     c[i].err);
        cr_assert_lt(c[i].passes, CLAIM_PASSES, "claimer %d never ran out of due deliveries", i);
        for (size_t j = 0; j < c[i].t.count; j++) {
            const struct store_delivery *d = &c[i].t.items[j];
            int e = 0, k = 0;
            while (e < EVENTS && strcmp(d->event_id, evt[e]) != 0)
                e++;
            while (k < HOOKS && strcmp(d->endpoint_id, h[k].id) != 0)
                k++;
            cr_assert(e < EVENTS && k < HOOKS, "a delivery of %s to %s, not ours", d->event_id,
                      d->endpoint_id);
            times[e][k]++;
        }
        taken_clear(&c[i].t);
    }
    for (int e = 0; e < EVENTS; e++)
        for (int k = 0; k < HOOKS; k++)
            cr_assert_eq(times[e][k], 1, "the delivery of event %d to endpoint %d claimed %d times",
                         e, k, times[e][k]);
    for (int k = 0; k < HOOKS; k++)
        unhook(tenant, &h[k]);
    PQfinish(lock);
}

/* Completions made at once (on PostgreSQL, the group commit: one statement
 * for several) each make their own event's deliveries; a stale one among
 * them, none. */
CONTRACT(completions_made_at_once_each_make_their_deliveries)
{
    enum { N = RACERS_MAX }; /* every fourth with a stale token */
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96];
    test_unique(tenant, sizeof tenant, "tenant-wh-batch");
    struct hook all, declined;
    hook_in(tenant, NULL, &all);
    hook_in(tenant, "payment.declined", &declined);
    struct event_racer rc[N];
    race_completions(rc, N, tenant);
    struct taken t = {.tenant = tenant};
    claim_all_due(&t, LONG_MS);
    size_t want = 0;
    for (int i = 0; i < N; i++) {
        int stale = i % 4 == 3, is_declined = strcmp(rc[i].type, "payment.declined") == 0;
        cr_assert_eq(rc[i].st, stale ? STORE_LEASE_LOST : STORE_OK, "%d: %s", i,
                     store_status_name(rc[i].st));
        cr_assert_eq(times_taken(&t, rc[i].evt, &all), !stale, "%d: to every type's endpoint", i);
        cr_assert_eq(times_taken(&t, rc[i].evt, &declined), !stale && is_declined,
                     "%d: to the declined ones' endpoint", i);
        if (stale)
            continue;
        assert_delivery(&t.items[first_taken(&t, rc[i].evt, &all)], tenant, rc[i].evt, rc[i].body,
                        &all, 1);
        want += 1 + (size_t)is_declined;
    }
    cr_assert_eq(t.count, want, "%zu deliveries claimed, want %zu", t.count, want);
    taken_clear(&t);
    unhook(tenant, &all);
    unhook(tenant, &declined);
    PQfinish(lock);
}

/* Deleting an endpoint deletes its deliveries, due or under a lease: none
 * is claimed again; the tenant's other endpoints keep theirs. */
static int64_t backlog_pending(void);

CONTRACT(deleting_an_endpoint_deletes_its_deliveries)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], leased[IDS_MAX], due[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-delete");
    struct hook gone, kept;
    hook_in(tenant, NULL, &gone);
    hook_in(tenant, NULL, &kept);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{\"leased\":1}", leased);
    struct taken t = {.tenant = tenant};
    claim_until(&t, 0, leased, &gone, SHORT_LEASE_MS);
    claim_until(&t, 0, leased, &kept, SHORT_LEASE_MS);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{\"due\":1}", due);
    int64_t pending = backlog_pending();
    unhook(tenant, &gone);
    cr_assert_eq(backlog_pending(), pending - 2,
                 "the deleted endpoint's two deliveries are still counted pending");
    if (lock)
        cr_assert_eq(test_query_long(test_db_url(), ROWS_OF_ENDPOINT, gone.id), 0,
                     "the deleted endpoint's deliveries are still there");
    size_t since = t.count;
    claim_until(&t, since, due, &kept, LONG_MS);
    claim_until(&t, since, leased, &kept, LONG_MS);
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(times_taken(&t, due, &gone), 0, "a deleted endpoint's delivery was claimed");
    cr_assert_eq(times_taken(&t, leased, &gone), 1, "a deleted endpoint's delivery was claimed");
    cr_assert_eq(times_taken(&t, leased, &kept), 2);
    cr_assert_eq(times_taken(&t, due, &kept), 1);
    taken_clear(&t);
    unhook(tenant, &kept);
    if (lock)
        cr_assert_eq(test_query_long(test_db_url(), ROWS_OF_ENDPOINT, kept.id), 0);
    PQfinish(lock);
}

static struct store_delivery_backlog backlog(void)
{
    char err[256] = "";
    struct store_delivery_backlog b = {-1, -1};
    cr_assert_eq(store_delivery_backlog(store, &b, err, sizeof err), STORE_OK, "%s", err);
    return b;
}

static int64_t backlog_pending(void)
{
    return backlog().pending;
}

/* The backlog is base's and n more pending deliveries, the oldest of ours
 * written at oldest (0: none of ours). */
static void assert_backlog(const struct store_delivery_backlog *base, int64_t n, int64_t oldest)
{
    struct store_delivery_backlog b = backlog();
    int64_t want = base->pending && (!oldest || base->oldest_created_us < oldest)
                       ? base->oldest_created_us
                       : oldest;
    cr_assert_eq(b.pending, base->pending + n, "%lld pending, want %lld", (long long)b.pending,
                 (long long)(base->pending + n));
    cr_assert_eq(b.oldest_created_us, want, "the oldest written at %lld, want %lld",
                 (long long)b.oldest_created_us, (long long)want);
}

/* The backlog counts the deliveries pending - due, or claimed and not yet
 * delivered or given up (a retry is pending) - and tells when the oldest
 * one's event was written (0: none). On PostgreSQL it counts the whole
 * table's: the cases that could change it but this one's own wait (the
 * claimers' and the reapers' locks), so the rest stays as it was found. */
CONTRACT(the_backlog_counts_the_pending_deliveries_and_the_oldest_ones_time)
{
    PGconn *claimers = claimers_one_at_a_time();
    PGconn *reapers = reapers_one_at_a_time();
    char tenant[96], retried[IDS_MAX], ancient[IDS_MAX], failed[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-backlog");
    struct hook h;
    hook_in(tenant, NULL, &h);
    struct store_delivery_backlog base = backlog();
    if (!claimers) {
        cr_assert_eq(base.pending, 0);
        cr_assert_eq(base.oldest_created_us, 0, "none pending, the oldest at %lld",
                     (long long)base.oldest_created_us);
    } else {
        cr_assert_geq(base.pending, 0);
        cr_assert(base.pending ? base.oldest_created_us > 0 : base.oldest_created_us == 0,
                  "%lld pending, the oldest at %lld", (long long)base.pending,
                  (long long)base.oldest_created_us);
    }
    int64_t at = now_us();
    paid_with_event(tenant, "payment.succeeded", at, "{}", retried);
    assert_backlog(&base, 1, at);
    paid_with_event(tenant, "payment.succeeded", ANCIENT_AT, "{}", ancient);
    paid_with_event(tenant, "payment.declined", at + 1, "{}", failed);
    assert_backlog(&base, 3, ANCIENT_AT);
    /* claimed: still pending */
    struct taken t = {.tenant = tenant};
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(t.count, 3);
    assert_backlog(&base, 3, ANCIENT_AT);
    /* a retry stays pending; delivered and given up, no longer */
    struct store_delivery_result r =
        result_of(tenant, retried, &h, 1, STORE_DELIVERY_RETRY, LONG_MS);
    finish(&r, 1);
    assert_backlog(&base, 3, ANCIENT_AT);
    r = result_of(tenant, ancient, &h, 1, STORE_DELIVERY_DELIVERED, 0);
    finish(&r, 1);
    assert_backlog(&base, 2, at);
    r = result_of(tenant, failed, &h, 1, STORE_DELIVERY_FAILED, 0);
    finish(&r, 1);
    assert_backlog(&base, 1, at);
    taken_clear(&t);
    unhook(tenant, &h);
    PQfinish(reapers);
    PQfinish(claimers);
}

/* Reaping an event deletes its deliveries: none is claimed again; a
 * younger event's stays. */
CONTRACT(reaping_an_event_deletes_its_deliveries)
{
    PGconn *claimers = claimers_one_at_a_time();
    PGconn *reapers = reapers_one_at_a_time();
    char tenant[96], old[IDS_MAX], young[IDS_MAX], err[256] = "";
    test_unique(tenant, sizeof tenant, "tenant-wh-reap");
    struct hook h;
    hook_in(tenant, NULL, &h);
    paid_with_event(tenant, "payment.succeeded", OLD_EVENT_AT + 7, "{\"old\":1}", old);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{\"young\":1}", young);
    if (claimers)
        cr_assert_eq(test_query_long(test_db_url(), ROWS_OF_EVENT, old), 1);
    /* a retention that ends a day after the old one (as the reaper's case) */
    const int64_t retention_ms = (now_us() - (OLD_EVENT_AT + DAY_US)) / 1000;
    int deleted = 0;
    for (int pass = 0; pass == 0 || deleted == 100; pass++) {
        cr_assert_lt(pass, CLAIM_PASSES, "the reaper never ran out of old events");
        cr_assert_eq(store_reap_events(store, retention_ms, 100, &deleted, err, sizeof err),
                     STORE_OK, "%s", err);
    }
    cr_assert_not(event_there(tenant, old), "the old event was not reaped");
    cr_assert(event_there(tenant, young), "the young event was reaped");
    if (claimers) {
        cr_assert_eq(test_query_long(test_db_url(), ROWS_OF_EVENT, old), 0,
                     "the reaped event's delivery is there");
        cr_assert_eq(test_query_long(test_db_url(), ROWS_OF_EVENT, young), 1);
    }
    struct taken t = {.tenant = tenant};
    claim_until(&t, 0, young, &h, LONG_MS);
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(times_taken(&t, old, &h), 0, "the reaped event's delivery was claimed");
    cr_assert_eq(t.count, 1);
    taken_clear(&t);
    unhook(tenant, &h);
    PQfinish(reapers);
    PQfinish(claimers);
}

/* ---- PostgreSQL only: a row another server's claim holds ----------------- */

/* Defines the case for the PostgreSQL store, direct and through pgbouncer. */
#define PG_CONTRACT(name)                                                                          \
    static void name(void);                                                                        \
    Test(store_pg, name, .init = open_pg, .fini = close_store, .timeout = 30)                      \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(store_pgbouncer, name, .init = open_pgbouncer, .fini = close_store, .timeout = 30)        \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)

/* A claim in a thread of its own, taking what is due until it runs out. */
struct background_claim {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
    struct taken t;
    enum store_status st;
    char err[256];
};

static void *claim_in_background(void *arg)
{
    struct background_claim *c = arg;
    for (int pass = 0; pass < CLAIM_PASSES; pass++) {
        struct store_delivery_list l = {0};
        c->st = store_claim_deliveries(
            store, &(struct store_delivery_claim){.batch = CLAIM_BATCH, .lease_ms = LONG_MS}, &l,
            c->err, sizeof c->err);
        if (c->st != STORE_OK)
            break;
        size_t n = l.count;
        if (taken_add(&c->t, &l) != 0) {
            c->st = STORE_ERROR;
            snprintf(c->err, sizeof c->err, "out of memory");
        }
        store_delivery_list_clear(&l);
        if (c->st != STORE_OK || n == 0)
            break;
    }
    pthread_mutex_lock(&c->mu);
    c->done = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* A row another server's claim holds (its transaction still open) is
 * skipped, not waited for - the claim takes the others - and is taken
 * once that server lets go. */
PG_CONTRACT(a_claim_skips_a_row_another_claim_holds)
{
    PGconn *lock = claimers_one_at_a_time();
    char tenant[96], evt[IDS_MAX];
    test_unique(tenant, sizeof tenant, "tenant-wh-skip");
    struct hook held, free_one;
    hook_in(tenant, NULL, &held);
    hook_in(tenant, NULL, &free_one);
    paid_with_event(tenant, "payment.succeeded", now_us(), "{}", evt);

    PGconn *other = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(other), CONNECTION_OK, "%s", PQerrorMessage(other));
    PGresult *res = PQexec(other, "BEGIN");
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "%s", PQerrorMessage(other));
    PQclear(res);
    const char *vals[] = {held.id};
    res = PQexecParams(other, "SELECT 1 FROM webhook_deliveries WHERE endpoint_id = $1 FOR UPDATE",
                       1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(other));
    cr_assert_eq(PQntuples(res), 1);
    PQclear(res);

    struct background_claim c = {.mu = PTHREAD_MUTEX_INITIALIZER,
                                 .cv = PTHREAD_COND_INITIALIZER,
                                 .t = {.tenant = tenant},
                                 .st = STORE_ERROR};
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, claim_in_background, &c), 0);
    struct timespec give_up;
    clock_gettime(CLOCK_REALTIME, &give_up);
    give_up.tv_sec += DELIVERY_WAIT_S;
    pthread_mutex_lock(&c.mu);
    while (!c.done && pthread_cond_timedwait(&c.cv, &c.mu, &give_up) == 0)
        ;
    int returned = c.done;
    pthread_mutex_unlock(&c.mu);
    /* let go (a claim waiting on the row goes on), then look */
    res = PQexec(other, "ROLLBACK");
    PQclear(res);
    PQfinish(other);
    pthread_join(th, NULL);
    cr_assert(returned, "the claim waited for a row another claim held (%d s)", DELIVERY_WAIT_S);
    cr_assert_eq(c.st, STORE_OK, "%s", c.err);
    cr_assert_eq(times_taken(&c.t, evt, &held), 0, "a row another claim held was claimed");
    cr_assert_eq(times_taken(&c.t, evt, &free_one), 1);
    taken_clear(&c.t);

    struct taken t = {.tenant = tenant};
    size_t i = claim_until(&t, 0, evt, &held, LONG_MS);
    cr_assert_eq(t.items[i].attempt, 1);
    claim_all_due(&t, LONG_MS);
    cr_assert_eq(t.count, 1);
    taken_clear(&t);
    unhook(tenant, &held);
    unhook(tenant, &free_one);
    PQfinish(lock);
}

/* ---- PostgreSQL only: losing the database connection --------------------------- */

static void terminate_backends(const char *application_name)
{
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK);
    const char *vals[] = {application_name};
    PGresult *res = PQexecParams(conn,
                                 "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                 " WHERE application_name = $1",
                                 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    cr_assert_eq(strcmp(PQgetvalue(res, 0, 0), "1"), 0, "terminated %s backends",
                 PQgetvalue(res, 0, 0));
    PQclear(res);
    PQfinish(conn);
}

static long backends_named(const char *application_name)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                           application_name);
}

Test(store_pg, terminated_connection_is_replaced_before_use, .timeout = 90)
{
    char name[64], err[256], key[96];
    test_unique(name, sizeof name, "mockery-test");
    struct store_pg_options o = {
        .database_url = test_db_url(), .pool_size = 1, .application_name = name};
    struct store *s = store_pg_new(&o, err, sizeof err);
    cr_assert_not_null(s, "%s", err);
    cr_assert_eq(store_ping(s, err, sizeof err), STORE_OK);
    terminate_backends(name);
    /* Wait for the backend to be gone, as after a restart (30 s only turns
     * one that never goes into a failure). */
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long left;
    while ((left = backends_named(name)) > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= 30)
            break;
        wait_ms(10);
    }
    cr_assert_eq(left, 0, "the terminated backend is still there after 30 s");
    /* The pool notices the dead connection when it hands it out and opens a
     * new one: the caller never sees the old one fail. */
    test_unique(key, sizeof key, "lost");
    struct store_claim_result r = {0};
    cr_assert_eq(store_claim(s, T, key, FP, NULL, LONG_MS, DAY_MS, &r, err, sizeof err), STORE_OK,
                 "%s", err);
    cr_assert_eq(r.outcome, CLAIM_NEW);
    cr_assert_eq(backends_named(name), 1);
    store_claim_result_clear(&r);
    store_free(s);
}

/* Every numbered file of sql/ is recorded once, by its number; 000, the
 * record's own table, runs first on every start and is never recorded. */
Test(store_pg, migrations_are_recorded_once_each, .init = open_pg, .fini = close_store,
     .timeout = 30)
{
    cr_assert_eq(store_migrations[0].version, 0);
    cr_assert_str_eq(store_migrations[0].name, "000_schema_migrations.sql");
    char want[256] = "", have[256];
    for (size_t i = 1; i < store_migrations_count; i++) {
        size_t n = strlen(want);
        snprintf(want + n, sizeof want - n, "%s%d", i > 1 ? "," : "", store_migrations[i].version);
    }
    /* (open_pg ran them; a second store opening runs none again) */
    char err[256] = "";
    struct store_pg_options o = {.database_url = test_db_url(), .pool_size = 1};
    struct store *again = store_pg_new(&o, err, sizeof err);
    cr_assert_not_null(again, "store_pg_new: %s", err);
    store_free(again);
    test_query_text(test_db_url(),
                    "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_migrations"
                    " WHERE name LIKE $1",
                    "%.sql", have, sizeof have);
    cr_assert_str_eq(have, want);
}

Test(store_pg, unreachable_database_fails_to_open, .timeout = 30)
{
    char err[256];
    /* Nothing listens on port 1: refused at once, with libpq's reason. */
    struct store_pg_options o = {.database_url = "postgresql://nobody@127.0.0.1:1/none",
                                 .pool_size = 1};
    cr_assert_null(store_pg_new(&o, err, sizeof err));
    cr_assert_not_null(strstr(err, "could not connect"), "%s", err);
}
