/* test_pgbouncer.c - three real server processes on one pgbouncer in
 * transaction pooling mode (5 server connections for their 3 x 4), with
 * unnamed statements: every key one payment, every 201 a row, every replay
 * the same bytes from whichever server answers it
 *
 * The money moves at the real mockery-acquirer (its ledger in the test
 * database, directly, not through pgbouncer), each charge of the test's
 * customer slowed by 100 ms so that duplicates overlap the first: every key
 * answered 201 is one charge there under its transaction id, no charge of
 * the test's customer is without its payment, and scripts/reconcile is
 * clean. The servers' recovery is off: on the shared test database it
 * would take over other tests' records. */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "acquirer_proc.h"
#include "support.h"

enum { SERVERS = 3, BURSTS = 20, BURST = 20, KEYS = 1000, KEY_THREADS = 16 };

static struct test_server srv[SERVERS];
static struct test_acquirer acq;
static char run_tag[64], since[64];

static void start_three(void)
{
    test_unique(run_tag, sizeof run_tag, "pgb");
    test_query_text(test_db_url(), "SELECT now()::text WHERE $1 = $1", "x", since, sizeof since);
    /* each charge of this test's customer 100 ms long: duplicates overlap
     * the first. (The acquirer's default --threads once was 32: three
     * servers' kept connections for 16 clients outnumbered its workers, and
     * an ask left in its accept queue ended in 503 outcome_pending here -
     * docs/acquirer.md.) */
    char slow[128];
    snprintf(slow, sizeof slow, "latency:prefix=%s:ms=100", run_tag);
    const char *const faults[] = {"--fault", slow, NULL};
    memset(&acq, 0, sizeof acq);
    test_acquirer_start(&acq, faults, 1);
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    snprintf(c.database_url, sizeof c.database_url, "%s", test_pgbouncer_url());
    c.unnamed_statements = 1;
    c.pool_size = 4;
    snprintf(c.acquirer_url, sizeof c.acquirer_url, "%s", acq.base);
    /* only a bound on an acquirer that never answers (below the lease) */
    c.acquirer_timeout_ms = 20000;
    /* no recovery: it would take over any record left processing in the
     * test database, another test's too */
    c.recovery_interval_ms = 86400000;
    for (int i = 0; i < SERVERS; i++) {
        memset(&srv[i], 0, sizeof srv[i]);
        test_server_spawn(&srv[i], &c, MOCKERY_SERVER_BIN);
    }
}

static void stop_servers(void)
{
    for (int i = 0; i < SERVERS; i++)
        if (srv[i].pid)
            test_server_stop(&srv[i]);
}

/* A failed test's acquirer killed first (nothing below can fail before
 * it); a passed test has stopped both already. */
static void stop_three(void)
{
    test_acquirers_kill_all();
    stop_servers();
}

/* The ledger's end of a test: the servers stopped, then every charge and
 * payment since the test began reconciled both ways, and the acquirer
 * stopped. */
static void finish_on_the_ledger(void)
{
    stop_servers();
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
}

/* The charges at the acquirer whose reference is txn, on an open
 * connection to its ledger (their status, when one, into status). */
static long charges_for(PGconn *ledger, const char *txn, char *status, size_t len)
{
    const char *ref[] = {txn};
    PGresult *res = PQexecParams(ledger,
                                 "SELECT count(*), coalesce(min(status), '') FROM acquirer_charges"
                                 " WHERE reference = $1",
                                 1, NULL, ref, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(ledger));
    long n = atol(PQgetvalue(res, 0, 0));
    snprintf(status, len, "%s", PQgetvalue(res, 0, 1));
    PQclear(res);
    return n;
}

static PGconn *ledger_open(void)
{
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    return conn;
}

/* Charges at the acquirer for this test's customer. */
static long customer_charges(void)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM acquirer_charges WHERE customer_id = $1", run_tag);
}

/* The transaction id of an answer's body into out ("" when it has none:
 * the ledger's checks then fail on it). */
static void txn_of(const char *body, char *out, size_t len)
{
    cJSON *o = cJSON_Parse(body);
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(o, "transaction_id");
    snprintf(out, len, "%s", cJSON_IsString(t) ? t->valuestring : "");
    cJSON_Delete(o);
}

static void body_for(char *buf, size_t len, int n)
{
    snprintf(buf, len, "{\"amount\":%d.25,\"currency\":\"EUR\",\"customer_id\":\"%s\"}", n + 1,
             run_tag);
}

static int post(const struct test_server *s, const char *key, const char *body,
                struct httpc_response *r)
{
    char url[128], keyh[160];
    snprintf(url, sizeof url, "%s/api/v1/payments", s->base);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    return httpc_request("POST", url, headers, body, strlen(body), 30000, r);
}

struct dup {
    const char *key, *body;
    int server;
    pthread_barrier_t *barrier;
    struct httpc_response r;
    int rc;
};

static void *dup_main(void *p)
{
    struct dup *d = p;
    pthread_barrier_wait(d->barrier);
    d->rc = post(&srv[d->server], d->key, d->body, &d->r);
    return NULL;
}

static long payments_for_key(const char *key)
{
    return test_query_long(test_db_url(), "SELECT count(*) FROM payments WHERE idempotency_key = $1",
                           key);
}

/* The answer a key settles on: retried on server s past any 409, until the
 * first request's completion is in (30 s only turns one that never comes
 * into a failure). */
static void settled(int s, const char *key, const char *body, struct httpc_response *r)
{
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        cr_assert_eq(post(&srv[s], key, body, r), 0, "%s", r->error);
        if (r->status != 409)
            return;
        httpc_response_free(r);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - t0.tv_sec >= 30)
            break;
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("%s still 409 after 30 s", key);
}

Test(pgbouncer, concurrent_duplicates_on_three_servers_make_one_payment_each,
     .init = start_three, .fini = stop_three, .timeout = 180)
{
    PGconn *ledger = ledger_open();
    for (int b = 0; b < BURSTS; b++) {
        char key[96], body[160];
        snprintf(key, sizeof key, "%s-burst-%d", run_tag, b);
        body_for(body, sizeof body, b);
        pthread_barrier_t barrier;
        pthread_barrier_init(&barrier, NULL, BURST);
        struct dup d[BURST];
        pthread_t t[BURST];
        for (int i = 0; i < BURST; i++) {
            d[i] = (struct dup){key, body, (b + i) % SERVERS, &barrier, {0}, 0};
            pthread_create(&t[i], NULL, dup_main, &d[i]);
        }
        int created = 0;
        char first[2048] = "";
        for (int i = 0; i < BURST; i++) {
            pthread_join(t[i], NULL);
            cr_assert_eq(d[i].rc, 0, "no answer: %s", d[i].r.error);
            long st = d[i].r.status;
            cr_assert(st == 201 || st == 200 || st == 409, "burst %d: %ld %s", b, st, d[i].r.body);
            if (st == 201) {
                created++;
                snprintf(first, sizeof first, "%s", d[i].r.body);
            }
            httpc_response_free(&d[i].r);
        }
        pthread_barrier_destroy(&barrier);
        cr_assert_eq(created, 1, "burst %d: %d payments created", b, created);
        cr_assert_eq(payments_for_key(key), 1, "burst %d", b);
        /* one charge at the acquirer, under the transaction the 201 named */
        char txn[64], status[16];
        txn_of(first, txn, sizeof txn);
        cr_assert_eq(charges_for(ledger, txn, status, sizeof status), 1,
                     "burst %d (%s): charges at the acquirer", b, txn);
        cr_assert_str_eq(status, "succeeded", "burst %d", b);
        /* the replay, from every server: the 201's bytes */
        for (int s = 0; s < SERVERS; s++) {
            struct httpc_response r;
            settled(s, key, body, &r);
            cr_assert_eq(r.status, 200, "%s", r.body);
            cr_assert_str_eq(r.replayed, "true");
            cr_assert_str_eq(r.body, first, "server %d replays other bytes", s);
            httpc_response_free(&r);
        }
    }
    PQfinish(ledger);
    cr_assert_eq(customer_charges(), BURSTS, "charges at the acquirer for %d keys", BURSTS);
    finish_on_the_ledger();
}

struct keys {
    int from, to;
    int created, failed;
    char (*txn)[64]; /* [KEYS]: each key's transaction id, when 201 */
    char first_failure[512];
};

static void *keys_main(void *p)
{
    struct keys *k = p;
    for (int n = k->from; n < k->to; n++) {
        char key[96], body[160];
        struct httpc_response r;
        snprintf(key, sizeof key, "%s-key-%d", run_tag, n);
        body_for(body, sizeof body, n);
        if (post(&srv[n % SERVERS], key, body, &r) == 0 && r.status == 201) {
            k->created++;
            txn_of(r.body, k->txn[n], sizeof k->txn[n]);
        } else if (k->failed++ == 0) {
            snprintf(k->first_failure, sizeof k->first_failure, "%s: %ld %s", key, r.status,
                     r.status ? r.body : r.error);
        }
        httpc_response_free(&r);
    }
    return NULL;
}

Test(pgbouncer, a_thousand_keys_on_three_servers_are_a_thousand_rows, .init = start_three,
     .fini = stop_three, .timeout = 180)
{
    pthread_t t[KEY_THREADS];
    struct keys k[KEY_THREADS];
    static char txn[KEYS][64];
    for (int i = 0; i < KEY_THREADS; i++) {
        k[i] = (struct keys){i * KEYS / KEY_THREADS, (i + 1) * KEYS / KEY_THREADS, 0, 0, txn, ""};
        pthread_create(&t[i], NULL, keys_main, &k[i]);
    }
    int created = 0, failed = 0;
    const char *failure = "";
    for (int i = 0; i < KEY_THREADS; i++) {
        pthread_join(t[i], NULL);
        created += k[i].created;
        failed += k[i].failed;
        if (k[i].failed && !failure[0])
            failure = k[i].first_failure;
    }
    cr_assert_eq(failed, 0, "%d requests were not 201 (the first: %s)", failed, failure);
    cr_assert_eq(created, KEYS);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM payments WHERE customer_id = $1", run_tag),
                 KEYS);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(DISTINCT idempotency_key) FROM payments"
                                 " WHERE customer_id = $1",
                                 run_tag),
                 KEYS);
    /* each key answered 201 one charge at the acquirer, under its
     * transaction id; none other for this customer */
    PGconn *ledger = ledger_open();
    for (int n = 0; n < KEYS; n++) {
        char status[16];
        cr_assert_eq(charges_for(ledger, txn[n], status, sizeof status), 1,
                     "key %s-key-%d (%s): charges at the acquirer", run_tag, n, txn[n]);
        cr_assert_str_eq(status, "succeeded", "key %s-key-%d", run_tag, n);
    }
    PQfinish(ledger);
    cr_assert_eq(customer_charges(), KEYS, "charges at the acquirer for %d keys", KEYS);
    finish_on_the_ledger();
}
