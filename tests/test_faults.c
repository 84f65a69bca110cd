/* test_faults.c - failures with real processes and a real PostgreSQL: a
 * server killed mid-payment, two servers racing on one database, a
 * completion that lost its lease, PostgreSQL stopped and crashed under a
 * running server */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

static void wait_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void spawn(struct test_server *s, const char *db_url, int lease_s, int delay_ms)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    if (db_url)
        snprintf(c.database_url, sizeof c.database_url, "%s", db_url);
    c.lease_s = lease_s;
    c.processing_delay_ms = delay_ms;
    c.pool_size = 2;
    memset(s, 0, sizeof *s);
    test_server_spawn(s, &c, MOCKERY_SERVER_BIN);
}

static long payments_for_key(const char *url, const char *key)
{
    char n[32];
    test_query_text(url, "SELECT count(*) FROM payments WHERE idempotency_key = $1", key, n,
                    sizeof n);
    return strtol(n, NULL, 10);
}

/* Waits (bounded) until the key's payment is running: its record is claimed. */
static void wait_processing(const char *url, const char *key)
{
    char state[32] = "";
    for (int i = 0; i < 500; i++) {
        test_query_text(url, "SELECT state FROM idempotency_keys WHERE idempotency_key = $1", key,
                        state, sizeof state);
        if (!strcmp(state, "processing"))
            return;
        wait_ms(10);
    }
    cr_assert_fail("the payment for %s never started", key);
}

static void body_for(char *buf, size_t len, const char *customer)
{
    snprintf(buf, len, "{\"amount\":25,\"currency\":\"EUR\",\"customer_id\":\"%s\"}", customer);
}

/* POST to path (NULL: /api/v1/payments) that may get no answer at all (the
 * server may die under it). */
static int post_to(const struct test_server *s, const char *path, const char *key,
                   const char *body, struct httpc_response *r)
{
    char url[256], keyh[160];
    snprintf(url, sizeof url, "%s%s", s->base, path ? path : "/api/v1/payments");
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    return httpc_request("POST", url, headers, body, strlen(body), 30000, r);
}

static int post(const struct test_server *s, const char *key, const char *body,
                struct httpc_response *r)
{
    return post_to(s, NULL, key, body, r);
}

struct bg_post {
    const struct test_server *srv;
    const char *key;
    const char *body;
    struct httpc_response r;
    int rc;
    pthread_barrier_t *barrier;
    const char *path; /* NULL: /api/v1/payments */
};

static void *bg_post_main(void *p)
{
    struct bg_post *b = p;
    if (b->barrier)
        pthread_barrier_wait(b->barrier);
    b->rc = post_to(b->srv, b->path, b->key, b->body, &b->r);
    return NULL;
}

/* Retries on s until the answer is not 409; returns how many 409s came first. */
static int retry_path_until_settled(const struct test_server *s, const char *path,
                                    const char *key, const char *body, struct httpc_response *r)
{
    int conflicts = 0;
    for (int i = 0; i < 300; i++) {
        cr_assert_eq(post_to(s, path, key, body, r), 0, "no answer: %s", r->error);
        if (r->status != 409)
            return conflicts;
        conflicts++;
        httpc_response_free(r);
        wait_ms(100); /* a client honouring Retry-After, faster */
    }
    cr_assert_fail("still 409 after 30 s");
    return conflicts;
}

static int retry_until_settled(const struct test_server *s, const char *key, const char *body,
                               struct httpc_response *r)
{
    return retry_path_until_settled(s, NULL, key, body, r);
}

static double metric(const struct test_server *s, const char *series)
{
    char url[128];
    struct httpc_response r;
    snprintf(url, sizeof url, "%s/metrics", s->base);
    test_http("GET", url, NULL, NULL, 0, &r);
    const char *p = strstr(r.body, series);
    double v = p ? strtod(p + strlen(series) + 1, NULL) : -1;
    httpc_response_free(&r);
    return v;
}

Test(faults, server_killed_mid_payment_is_taken_over_once, .timeout = 120)
{
    struct test_server a, b;
    char key[96], cust[64], body[160];
    test_unique(key, sizeof key, "kill");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    spawn(&a, NULL, 2, 2500);
    spawn(&b, NULL, 30, 0);

    struct bg_post first = {&a, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    test_server_kill(&a); /* mid-payment: nothing stored */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(payments_for_key(test_db_url(), key), 0);

    /* Retries on the other server: 409 while the dead holder's lease (2 s)
     * lasts, then one takes the key over and runs the payment. */
    struct httpc_response r;
    int conflicts = retry_until_settled(&b, key, body, &r);
    cr_assert_gt(conflicts, 0, "a retry ran before the lease ended");
    cr_assert_eq(r.status, 201, "%s", r.body);
    httpc_response_free(&r);
    cr_assert_eq(metric(&b, "mockery_idempotency_outcomes_total{outcome=\"takeover\"}"), 1);
    cr_assert_eq(post(&b, key, body, &r), 0);
    cr_assert_eq(r.status, 200);
    httpc_response_free(&r);
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    test_server_stop(&b);
}

Test(faults, two_servers_one_database_concurrent_duplicates, .timeout = 120)
{
    enum { N = 32 };
    struct test_server s[2];
    char key[96], cust[64], body[160];
    test_unique(key, sizeof key, "two");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    spawn(&s[0], NULL, 30, 300);
    spawn(&s[1], NULL, 30, 300);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N);
    struct bg_post p[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        p[i] = (struct bg_post){&s[i % 2], key, body, {0}, 0, &barrier, NULL};
        pthread_create(&t[i], NULL, bg_post_main, &p[i]);
    }
    int created = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(p[i].rc, 0, "%s", p[i].r.error);
        long st = p[i].r.status;
        cr_assert(st == 201 || st == 409 || st == 200, "status %ld: %s", st, p[i].r.body);
        created += st == 201;
        httpc_response_free(&p[i].r);
    }
    cr_assert_eq(created, 1);
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    pthread_barrier_destroy(&barrier);
    test_server_stop(&s[0]);
    test_server_stop(&s[1]);
}

static long refunds_of(const char *payment, const char *what)
{
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT %s FROM refunds WHERE transaction_id = $1", what);
    return test_query_long(test_db_url(), sql, payment);
}

Test(faults, two_servers_concurrent_refunds_never_exceed_the_payment, .timeout = 120)
{
    enum { N = 25 }; /* 20 refunds of 10% each, and 5 more: 10 fit */
    struct test_server s[2];
    char payment[64], path[128], keys[N][96];
    spawn(&s[0], NULL, 30, 50);
    spawn(&s[1], NULL, 30, 50);
    test_pay(&s[0], "100", payment, sizeof payment);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N);
    struct bg_post p[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        test_unique(keys[i], sizeof keys[i], "refund");
        p[i] = (struct bg_post){&s[i % 2], keys[i], "{\"amount\":10}", {0}, 0, &barrier, path};
        pthread_create(&t[i], NULL, bg_post_main, &p[i]);
    }
    int created = 0, refused = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(p[i].rc, 0, "%s", p[i].r.error);
        long st = p[i].r.status;
        cr_assert(st == 201 || st == 422, "status %ld: %s", st, p[i].r.body);
        if (st == 422)
            cr_assert(strstr(p[i].r.body, "refund_exceeds_payment"), "%s", p[i].r.body);
        created += st == 201;
        refused += st == 422;
        httpc_response_free(&p[i].r);
    }
    pthread_barrier_destroy(&barrier);
    cr_assert_eq(created, 10, "%d refunds of 10%% succeeded", created);
    cr_assert_eq(refused, N - 10);
    cr_assert_eq(refunds_of(payment, "count(*)"), 10);
    cr_assert_eq(refunds_of(payment, "sum(amount_minor)"), 10000);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT amount_refunded_minor FROM payments"
                                 " WHERE transaction_id = $1",
                                 payment),
                 10000);
    test_server_stop(&s[0]);
    test_server_stop(&s[1]);
}

Test(faults, server_killed_mid_refund_refunds_once_after_the_lease, .timeout = 120)
{
    struct test_server a, b;
    char payment[64], path[128], key[96];
    const char *body = "{\"amount\":40,\"reason\":\"duplicate\"}";
    spawn(&a, NULL, 2, 2500);
    spawn(&b, NULL, 30, 0);
    test_pay(&b, "100", payment, sizeof payment);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    test_unique(key, sizeof key, "refund-kill");

    struct bg_post first = {&a, key, body, {0}, 0, NULL, path};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    test_server_kill(&a); /* mid-refund: nothing stored */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 0);

    /* 409 while the dead holder's lease (2 s) lasts, then one refund */
    struct httpc_response r;
    int conflicts = retry_path_until_settled(&b, path, key, body, &r);
    cr_assert_gt(conflicts, 0, "a retry ran before the lease ended");
    cr_assert_eq(r.status, 201, "%s", r.body);
    httpc_response_free(&r);
    cr_assert_eq(post_to(&b, path, key, body, &r), 0);
    cr_assert_eq(r.status, 200);
    httpc_response_free(&r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 1);
    cr_assert_eq(refunds_of(payment, "sum(amount_minor)"), 4000);
    test_server_stop(&b);
}

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A refund's completion waits for the payment row's lock (here held by a
 * psql-like session; in real life by another refund of the same payment).
 * It takes that lock before its key's record, so a duplicate with the same
 * key is answered 409 at once instead of queueing behind the lock. */
Test(faults, a_duplicate_refund_never_waits_on_the_payment_row_lock, .timeout = 120)
{
    struct test_server s;
    char payment[64], path[128], key[96];
    const char *body = "{\"amount\":5}";
    spawn(&s, NULL, 30, 0);
    test_pay(&s, "100", payment, sizeof payment);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    test_unique(key, sizeof key, "refund-lock");

    PGconn *locker = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(locker), CONNECTION_OK);
    PQclear(PQexec(locker, "BEGIN"));
    const char *vals[] = {payment};
    PGresult *res = PQexecParams(locker,
                                 "SELECT 1 FROM payments WHERE transaction_id = $1 FOR UPDATE", 1,
                                 NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQntuples(res), 1, "%s", PQerrorMessage(locker));
    PQclear(res);

    struct bg_post first = {&s, key, body, {0}, 0, NULL, path};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    wait_ms(300); /* the refund has run and waits in its completion */

    struct httpc_response r;
    double t0 = seconds_now();
    cr_assert_eq(post_to(&s, path, key, body, &r), 0, "%s", r.error);
    double waited = seconds_now() - t0;
    cr_assert_eq(r.status, 409, "%s", r.body);
    cr_assert(strstr(r.body, "idempotency_key_in_use"), "%s", r.body);
    cr_assert_lt(waited, 1.0, "the duplicate waited %.2f s", waited);
    httpc_response_free(&r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 0);

    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    pthread_join(t, NULL);
    cr_assert_eq(first.rc, 0, "%s", first.r.error);
    cr_assert_eq(first.r.status, 201, "%s", first.r.body);
    httpc_response_free(&first.r);
    cr_assert_eq(post_to(&s, path, key, body, &r), 0);
    cr_assert_eq(r.status, 200, "%s", r.body);
    httpc_response_free(&r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 1);
    test_server_stop(&s);
}

Test(faults, completion_after_lost_lease_is_rolled_back, .timeout = 120)
{
    struct test_server a, b;
    char key[96], cust[64], body[160], txn[64];
    test_unique(key, sizeof key, "fence");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    spawn(&a, NULL, 1, 2500); /* its lease ends long before its payment */
    spawn(&b, NULL, 30, 2500);

    struct bg_post slow = {&a, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &slow);
    wait_processing(test_db_url(), key);
    /* B takes the key over once A's lease has run out, and runs it too. */
    struct httpc_response r;
    retry_until_settled(&b, key, body, &r);
    pthread_join(t, NULL);

    /* A finished first, with a stale token: its completion was refused and
     * its payment rolled back; it told its client to retry. */
    cr_assert_eq(slow.rc, 0, "%s", slow.r.error);
    cr_assert_eq(slow.r.status, 409, "A answered %ld: %s", slow.r.status, slow.r.body);
    cr_assert_eq(metric(&a, "mockery_idempotency_outcomes_total{outcome=\"lease_lost\"}"), 1);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cJSON *o = cJSON_Parse(r.body);
    snprintf(txn, sizeof txn, "%s", cJSON_GetObjectItem(o, "transaction_id")->valuestring);
    cJSON_Delete(o);
    httpc_response_free(&r);
    httpc_response_free(&slow.r);
    char stored[64];
    test_query_text(test_db_url(), "SELECT transaction_id FROM payments WHERE idempotency_key = $1",
                    key, stored, sizeof stored);
    cr_assert_str_eq(stored, txn, "the charge that exists is B's");
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    test_server_stop(&a);
    test_server_stop(&b);
}

static void expect_health(const struct test_server *s, long status, const char *database)
{
    char url[128], want[64];
    struct httpc_response r;
    snprintf(url, sizeof url, "%s/health", s->base);
    test_http("GET", url, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, status, "%s", r.body);
    snprintf(want, sizeof want, "\"database\":\"%s\"", database);
    cr_assert_not_null(strstr(r.body, want), "%s", r.body);
    httpc_response_free(&r);
}

static char cluster[64]; /* this test's own PostgreSQL, removed even on failure */

static void drop_cluster(void)
{
    if (cluster[0])
        test_cluster(cluster, "down", NULL, 0);
}

/* PostgreSQL goes away (stop or crash) under a running server, then returns. */
static void database_outage(const char *how)
{
    char url[256], key[96], cust[64], body[160];
    const char *name = cluster;
    snprintf(cluster, sizeof cluster, "fault-%s-%d", how, (int)getpid());
    test_cluster(name, "up", url, sizeof url);
    struct test_server s;
    spawn(&s, url, 30, 0);
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    struct httpc_response r;
    test_unique(key, sizeof key, "before");
    cr_assert_eq(post(&s, key, body, &r), 0);
    cr_assert_eq(r.status, 201);
    httpc_response_free(&r);
    expect_health(&s, 200, "up");

    test_cluster(name, how, NULL, 0);
    /* A completed key still replays: this server remembers the answer. */
    char done_key[96];
    snprintf(done_key, sizeof done_key, "%s", key);
    cr_assert_eq(post(&s, done_key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "replay during the outage: %s", r.body);
    cr_assert_str_eq(r.replay, "true");
    httpc_response_free(&r);
    test_unique(key, sizeof key, "during");
    for (int i = 0; i < 2; i++) { /* the retry too: nothing was cached */
        cr_assert_eq(post(&s, key, body, &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 503, "%s", r.body);
        cr_assert_not_null(strstr(r.body, "\"code\":\"store_unavailable\""), "%s", r.body);
        cr_assert_str_eq(r.retry_after, "1");
        httpc_response_free(&r);
    }
    expect_health(&s, 503, "down");

    /* PostgreSQL is back: the server recovers by itself, the retry succeeds. */
    test_cluster(name, "up", NULL, 0);
    cr_assert_eq(post(&s, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "after recovery: %s", r.body);
    httpc_response_free(&r);
    expect_health(&s, 200, "up");
    cr_assert_eq(payments_for_key(url, key), 1);
    test_server_stop(&s);
}

Test(faults, postgres_stopped_then_started, .fini = drop_cluster, .timeout = 120)
{
    database_outage("pause");
}

Test(faults, postgres_crashed_then_recovered, .fini = drop_cluster, .timeout = 120)
{
    database_outage("crash");
}

/* Claims commit without waiting for the WAL flush: a crash right after many
 * payments were acknowledged must still lose none of them. */
Test(faults, acknowledged_payments_survive_a_postgres_crash, .fini = drop_cluster, .timeout = 120)
{
    enum { N = 200 };
    char url[256], cust[64];
    snprintf(cluster, sizeof cluster, "fault-ack-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    struct test_server s;
    spawn(&s, url, 30, 0);
    test_unique(cust, sizeof cust, "cust");
    char body[160], keys[N][96], bodies[N][1024];
    body_for(body, sizeof body, cust);
    /* Acknowledged payments, then the crash the moment the last answer came. */
    for (int i = 0; i < N; i++) {
        struct httpc_response r;
        test_unique(keys[i], sizeof keys[i], "ack");
        cr_assert_eq(post(&s, keys[i], body, &r), 0, "%s", r.error);
        cr_assert_eq(r.status, 201, "%s", r.body);
        snprintf(bodies[i], sizeof bodies[i], "%s", r.body);
        httpc_response_free(&r);
    }
    test_cluster(cluster, "crash", NULL, 0);
    test_cluster(cluster, "up", NULL, 0); /* crash recovery */
    /* Every acknowledged payment is there, once, and its key replays the
     * answer the client got. */
    char n[32];
    test_query_text(url, "SELECT count(*) FROM payments WHERE customer_id = $1", cust, n, sizeof n);
    cr_assert_eq(strtol(n, NULL, 10), N, "%s of %d acknowledged payments survived", n, N);
    for (int i = 0; i < N; i += 20) {
        struct httpc_response r;
        int rc = -1;
        for (int tries = 0; tries < 50 && rc != 0; tries++) {
            rc = post(&s, keys[i], body, &r);
            if (rc != 0 || r.status == 503) { /* the pool reconnecting */
                httpc_response_free(&r);
                rc = -1;
                wait_ms(100);
            }
        }
        cr_assert_eq(r.status, 200, "%s", r.body);
        cr_assert_str_eq(r.body, bodies[i]);
        httpc_response_free(&r);
    }
    test_server_stop(&s);
}

/* The same under load: many clients at once, so completions commit in
 * batches, and the crash lands while batches are in flight. Every payment a
 * client was told about survives; none exists twice. */
enum { CRASH_CLIENTS = 12, CRASH_PER_CLIENT = 400 };

struct crash_client {
    const struct test_server *srv;
    const char *body;
    int *stop;
    int *acked_total;
    pthread_mutex_t *mu;
    char keys[CRASH_PER_CLIENT][96];
    int acked;
};

static void *crash_client_main(void *p)
{
    struct crash_client *c = p;
    for (int i = 0; i < CRASH_PER_CLIENT; i++) {
        pthread_mutex_lock(c->mu);
        int stop = *c->stop;
        pthread_mutex_unlock(c->mu);
        if (stop)
            break;
        char key[96];
        test_unique(key, sizeof key, "load");
        struct httpc_response r;
        if (post(c->srv, key, c->body, &r) == 0 && r.status == 201) {
            snprintf(c->keys[c->acked++], sizeof c->keys[0], "%s", key);
            pthread_mutex_lock(c->mu);
            (*c->acked_total)++;
            pthread_mutex_unlock(c->mu);
        }
        httpc_response_free(&r);
    }
    return NULL;
}

Test(faults, batched_payments_survive_a_postgres_crash_under_load, .fini = drop_cluster,
     .timeout = 180)
{
    char url[256], cust[64], body[160];
    snprintf(cluster, sizeof cluster, "fault-load-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    struct test_server s;
    spawn(&s, url, 30, 0);
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);

    static struct crash_client clients[CRASH_CLIENTS];
    pthread_t t[CRASH_CLIENTS];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    int stop = 0, acked = 0;
    for (int i = 0; i < CRASH_CLIENTS; i++) {
        clients[i] = (struct crash_client){
            .srv = &s, .body = body, .stop = &stop, .acked_total = &acked, .mu = &mu};
        pthread_create(&t[i], NULL, crash_client_main, &clients[i]);
    }
    int enough = 0;
    for (int i = 0; i < 6000 && !enough; i++) {
        pthread_mutex_lock(&mu);
        enough = acked >= 300;
        pthread_mutex_unlock(&mu);
        if (!enough)
            wait_ms(10);
    }
    cr_assert(enough, "300 payments not acknowledged within a minute");
    /* completions were sharing statements when the crash came */
    double batches = metric(&s, "mockery_store_batches_total{kind=\"complete\"}");
    double batched = metric(&s, "mockery_store_batched_total{kind=\"complete\"}");
    cr_assert_gt(batched, batches, "%.0f completions in %.0f statements", batched, batches);
    test_cluster(cluster, "crash", NULL, 0);
    pthread_mutex_lock(&mu);
    stop = 1;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < CRASH_CLIENTS; i++)
        pthread_join(t[i], NULL);
    test_cluster(cluster, "up", NULL, 0); /* crash recovery */

    int total = 0;
    for (int i = 0; i < CRASH_CLIENTS; i++) {
        for (int k = 0; k < clients[i].acked; k++)
            cr_assert_eq(payments_for_key(url, clients[i].keys[k]), 1,
                         "acknowledged payment %s lost", clients[i].keys[k]);
        total += clients[i].acked;
    }
    cr_assert_geq(total, 300);
    char twice[32];
    test_query_text(url,
                    "SELECT count(*) FROM (SELECT idempotency_key FROM payments"
                    " WHERE customer_id = $1 GROUP BY 1 HAVING count(*) > 1) d",
                    cust, twice, sizeof twice);
    cr_assert_str_eq(twice, "0");
    test_server_stop(&s);
}

/* Runs one statement on url in a connection of its own. */
static void exec_on(const char *url, const char *sql)
{
    PGconn *conn = PQconnectdb(url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    PGresult *res = PQexec(conn, sql);
    cr_assert(PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    PQfinish(conn);
}

/* The completion's COMMIT with an unknown outcome: it committed locally and
 * waits for a synchronous standby (one that never answers here), and its
 * connection is cut - as when a primary is lost between the completion's
 * send and its reply. The client is answered 503 and not told the payment
 * failed; the server's release, fenced on a processing record, leaves the
 * completed one alone; the retry replays the one payment. */
Test(faults, a_completion_whose_commit_outcome_is_unknown_is_charged_once, .fini = drop_cluster,
     .timeout = 120)
{
    char url[256], key[96], cust[64], body[160];
    snprintf(cluster, sizeof cluster, "fault-commit-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    struct test_server s;
    spawn(&s, url, 2, 0);
    test_unique(cust, sizeof cust, "cust");
    test_unique(key, sizeof key, "unknown-commit");
    body_for(body, sizeof body, cust);
    exec_on(url, "ALTER SYSTEM SET synchronous_standby_names = 'nobody'");
    exec_on(url, "SELECT pg_reload_conf()");

    struct bg_post first = {&s, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    const char *waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                          " AND application_name = $1";
    int i = 0;
    while (test_query_long(url, waiting, "mockery-server") == 0 && i++ < 200)
        wait_ms(25);
    cr_assert_lt(i, 200, "the completion never waited for the standby");
    test_query_long(url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE wait_event = 'SyncRep' AND application_name = $1",
                    "mockery-server");
    pthread_join(t, NULL);
    cr_assert_eq(first.rc, 0, "%s", first.r.error);
    cr_assert_eq(first.r.status, 503, "%s", first.r.body);
    cr_assert(strstr(first.r.body, "store_unavailable"), "%s", first.r.body);
    httpc_response_free(&first.r);
    cr_assert_eq(payments_for_key(url, key), 1, "the cut commit happened all the same");

    exec_on(url, "ALTER SYSTEM RESET synchronous_standby_names");
    exec_on(url, "SELECT pg_reload_conf()");
    struct httpc_response r;
    cr_assert_eq(post(&s, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 200, "the retry: %s", r.body);
    cr_assert_str_eq(r.replayed, "true");
    char txn[64];
    test_query_text(url, "SELECT transaction_id FROM payments WHERE idempotency_key = $1", key,
                    txn, sizeof txn);
    cr_assert(strstr(r.body, txn), "the replay is the stored payment: %s", r.body);
    httpc_response_free(&r);
    cr_assert_eq(payments_for_key(url, key), 1);
    test_server_stop(&s);
}
