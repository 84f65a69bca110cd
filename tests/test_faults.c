/* test_faults.c - failures with real processes and a real PostgreSQL: a
 * server killed mid-payment, two servers racing on one database, a
 * completion that lost its lease, PostgreSQL stopped and crashed under a
 * running server */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
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

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
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

/* Polls sql (a count, with one text parameter) on url until it is above
 * zero, failing with what after limit_s seconds: the bound says when to give
 * up on an event, never when it should happen. */
static void wait_query(const char *url, const char *sql, const char *param, double limit_s,
                       const char *what)
{
    double give_up = seconds_now() + limit_s;
    while (test_query_long(url, sql, param) == 0) {
        cr_assert_lt(seconds_now(), give_up, "%s: not within %.0f s", what, limit_s);
        wait_ms(20);
    }
}

/* Waits until the key's payment is running: its record is claimed. */
static void wait_processing(const char *url, const char *key)
{
    wait_query(url,
               "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
               " AND state = 'processing'",
               key, 30, "the payment never started");
}

/* Waits until the database's own clock says the key's holder has lost its
 * lease (the record still processing): from then on, a claim takes it over.
 * limit_s must be more than the lease. */
static void wait_lease_ended(const char *url, const char *key, double limit_s)
{
    wait_query(url,
               "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
               " AND state = 'processing' AND locked_until <= now()",
               key, limit_s, "the holder's lease never ended");
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

/* A bg_post that says when it has been answered. */
struct watched_post {
    struct bg_post post;
    atomic_int answered; /* set once post.rc and post.r are final */
};

static void *watched_post_main(void *p)
{
    struct watched_post *w = p;
    bg_post_main(&w->post);
    atomic_store(&w->answered, 1);
    return NULL;
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

/* A request's metrics are counted after its answer is sent: the series is
 * polled until it reaches want (or more), and its value returned. */
static double metric_reaching(const struct test_server *s, const char *series, double want)
{
    double give_up = seconds_now() + 30, v;
    while ((v = metric(s, series)) < want) {
        cr_assert_lt(seconds_now(), give_up, "%s is %.0f, not %.0f, after 30 s", series, v, want);
        wait_ms(20);
    }
    return v;
}

/* The kill tests' holder: a lease long enough that a retry is answered well
 * inside it (a kill, a query and one request), and a payment that never ends
 * before the kill comes. Its end is waited for in the database, not timed. */
enum { DEAD_LEASE_S = 10, DEAD_DELAY_MS = 120000 };

/* A retry on s while the dead holder's lease lasts (DEAD_LEASE_S from its
 * claim, the record's created_at) is refused 409: the key is in use. */
static void retry_during_lease(const struct test_server *s, const char *path, const char *key,
                               const char *body)
{
    struct httpc_response r;
    cr_assert_eq(post_to(s, path, key, body, &r), 0, "no answer: %s", r.error);
    /* Asked after the answer: if the lease still lasts now, it lasted when
     * the retry claimed the key. */
    char sql[192];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
             " AND created_at + interval '%d seconds' > now()",
             DEAD_LEASE_S);
    cr_assert(test_query_long(test_db_url(), sql, key),
              "the %d s lease ended before one retry was answered (%ld)", DEAD_LEASE_S, r.status);
    cr_assert_eq(r.status, 409, "taken over while the lease lasted: %s", r.body);
    cr_assert(strstr(r.body, "idempotency_key_in_use"), "%s", r.body);
    httpc_response_free(&r);
}

/* The dead holder's record: processing, its lease DEAD_LEASE_S from its
 * claim (what retry_during_lease() relies on). */
static void expect_dead_holder_lease(const char *key)
{
    char sql[192];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
             " AND state = 'processing' AND locked_until = created_at + interval '%d seconds'",
             DEAD_LEASE_S);
    cr_assert_eq(test_query_long(test_db_url(), sql, key), 1);
}

Test(faults, server_killed_mid_payment_is_taken_over_once, .timeout = 120)
{
    struct test_server a, b;
    char key[96], cust[64], body[160];
    test_unique(key, sizeof key, "kill");
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    spawn(&a, NULL, DEAD_LEASE_S, DEAD_DELAY_MS);
    spawn(&b, NULL, 30, 0);

    struct bg_post first = {&a, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    expect_dead_holder_lease(key);
    test_server_kill(&a); /* mid-payment: nothing stored */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(payments_for_key(test_db_url(), key), 0);

    /* A retry on the other server: 409 while the dead holder's lease lasts.
     * Once the database says it has ended, the next retry takes the key
     * over and runs the payment. */
    retry_during_lease(&b, NULL, key, body);
    wait_lease_ended(test_db_url(), key, DEAD_LEASE_S + 30);
    struct httpc_response r;
    cr_assert_eq(post(&b, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "%s", r.body);
    httpc_response_free(&r);
    const char *takeovers = "mockery_idempotency_outcomes_total{outcome=\"takeover\"}";
    cr_assert_eq(metric_reaching(&b, takeovers, 1), 1);
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
    spawn(&a, NULL, DEAD_LEASE_S, DEAD_DELAY_MS);
    spawn(&b, NULL, 30, 0);
    test_pay(&b, "100", payment, sizeof payment);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    test_unique(key, sizeof key, "refund-kill");

    struct bg_post first = {&a, key, body, {0}, 0, NULL, path};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    expect_dead_holder_lease(key);
    test_server_kill(&a); /* mid-refund: nothing stored */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 0);

    /* 409 while the dead holder's lease lasts; once the database says it
     * has ended, one refund */
    retry_during_lease(&b, path, key, body);
    wait_lease_ended(test_db_url(), key, DEAD_LEASE_S + 30);
    struct httpc_response r;
    cr_assert_eq(post_to(&b, path, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "%s", r.body);
    httpc_response_free(&r);
    cr_assert_eq(post_to(&b, path, key, body, &r), 0);
    cr_assert_eq(r.status, 200);
    httpc_response_free(&r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 1);
    cr_assert_eq(refunds_of(payment, "sum(amount_minor)"), 4000);
    test_server_stop(&b);
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
    /* The refund has run and its completion waits for our lock: one of the
     * server's sessions is blocked by ours (other tests' servers share the
     * database, so by ours and no other). */
    char locker_pid[16];
    snprintf(locker_pid, sizeof locker_pid, "%d", PQbackendPID(locker));
    wait_query(test_db_url(),
               "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mockery-server'"
               " AND wait_event_type = 'Lock' AND $1::int = ANY(pg_blocking_pids(pid))",
               locker_pid, 30, "the refund's completion never waited for the row lock");

    /* Queued behind the lock, the duplicate would wait until the COMMIT
     * below, that is until its client gave up (30 s): 10 s is no race. */
    struct httpc_response r;
    double t0 = seconds_now();
    cr_assert_eq(post_to(&s, path, key, body, &r), 0, "%s", r.error);
    double waited = seconds_now() - t0;
    cr_assert_eq(r.status, 409, "%s", r.body);
    cr_assert(strstr(r.body, "idempotency_key_in_use"), "%s", r.body);
    cr_assert_lt(waited, 10.0, "the duplicate waited %.2f s", waited);
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
    /* A's lease ends long before its payment: 1 s against 10 s. */
    spawn(&a, NULL, 1, 10000);
    spawn(&b, NULL, 30, 10000);

    struct bg_post slow = {&a, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &slow);
    wait_processing(test_db_url(), key);
    /* B takes the key over as soon as the database says A's lease has run
     * out - 9 s before A's payment ends - and runs it too. */
    wait_lease_ended(test_db_url(), key, 30);
    struct httpc_response r;
    cr_assert_eq(post(&b, key, body, &r), 0, "%s", r.error);
    pthread_join(t, NULL);

    /* A finished with a stale token (usually while B's payment still ran;
     * the verdict is the same if B had finished): its completion was
     * refused and its payment rolled back; it told its client to retry. */
    cr_assert_eq(slow.rc, 0, "%s", slow.r.error);
    cr_assert_eq(slow.r.status, 409, "A answered %ld (had B not taken over within 9 s?): %s",
                 slow.r.status, slow.r.body);
    const char *lost = "mockery_idempotency_outcomes_total{outcome=\"lease_lost\"}";
    cr_assert_eq(metric_reaching(&a, lost, 1), 1);
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
        /* 503 while the pool reconnects; 30 s is for a server that never does */
        double give_up = seconds_now() + 30;
        while (post(&s, keys[i], body, &r) != 0 || r.status == 503) {
            cr_assert_lt(seconds_now(), give_up, "%s: no answer but 503 for 30 s: %s", keys[i],
                         r.error);
            httpc_response_free(&r);
            wait_ms(100);
        }
        cr_assert_eq(r.status, 200, "%s", r.body);
        cr_assert_str_eq(r.body, bodies[i]);
        httpc_response_free(&r);
    }
    test_server_stop(&s);
}

/* The same under load: many clients at once, so completions commit in
 * batches, and the crash lands while batches are in flight. Every payment a
 * client was told about survives; none exists twice.
 *
 * The load is not an amount of work (a fast machine would finish it before
 * the crash came): the clients make new payments until the main thread has
 * seen payments acknowledged and completions sharing statements before the
 * crash, and payments acknowledged after the restart. */
enum { CRASH_CLIENTS = 12, CRASH_ACKED_BEFORE = 300, CRASH_ACKED_AFTER = 3 * CRASH_CLIENTS };

struct crash_load {
    pthread_mutex_t mu;
    int stop;         /* (mu) set: finish the payment in hand, start no other */
    int restarted;    /* (mu) set once PostgreSQL is back after the crash */
    int acked_before; /* (mu) acknowledged before the restart */
    int acked_after;  /* (mu) asked for and acknowledged after the restart */
};

struct crash_client {
    const struct test_server *srv;
    const char *body;
    struct crash_load *load;
    char (*keys)[96]; /* [acked]: the keys answered 201 */
    int acked, cap;
};

static void *crash_client_main(void *p)
{
    struct crash_client *c = p;
    for (;;) {
        pthread_mutex_lock(&c->load->mu);
        int stop = c->load->stop, after = c->load->restarted;
        pthread_mutex_unlock(&c->load->mu);
        if (stop)
            break;
        char key[96];
        test_unique(key, sizeof key, "load");
        struct httpc_response r;
        int ok = post(c->srv, key, c->body, &r) == 0 && r.status == 201;
        httpc_response_free(&r);
        if (!ok) { /* PostgreSQL is away: a client honouring Retry-After, faster */
            wait_ms(100);
            continue;
        }
        if (c->acked == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 256;
            c->keys = realloc(c->keys, (size_t)c->cap * sizeof *c->keys);
            if (!c->keys)
                abort();
        }
        snprintf(c->keys[c->acked++], sizeof c->keys[0], "%s", key);
        pthread_mutex_lock(&c->load->mu);
        if (after)
            c->load->acked_after++;
        else
            c->load->acked_before++;
        pthread_mutex_unlock(&c->load->mu);
    }
    return NULL;
}

static int acked_so_far(struct crash_load *l, int after)
{
    pthread_mutex_lock(&l->mu);
    int n = after ? l->acked_after : l->acked_before;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* Completions have shared statements: more completed than statements ran. */
static int completions_batched(const struct test_server *s)
{
    double batches = metric(s, "mockery_store_batches_total{kind=\"complete\"}");
    double batched = metric(s, "mockery_store_batched_total{kind=\"complete\"}");
    return batched > batches;
}

Test(faults, batched_payments_survive_a_postgres_crash_under_load, .fini = drop_cluster,
     .timeout = 240)
{
    char url[256], cust[64], body[160];
    snprintf(cluster, sizeof cluster, "fault-load-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    struct test_server s;
    spawn(&s, url, 30, 0);
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);

    static struct crash_client clients[CRASH_CLIENTS];
    static struct crash_load load = {.mu = PTHREAD_MUTEX_INITIALIZER};
    pthread_t t[CRASH_CLIENTS];
    for (int i = 0; i < CRASH_CLIENTS; i++) {
        clients[i] = (struct crash_client){.srv = &s, .body = body, .load = &load};
        pthread_create(&t[i], NULL, crash_client_main, &clients[i]);
    }
    /* Mid-load, completions sharing statements: the crash comes now, and
     * the clients go on through it. */
    double give_up = seconds_now() + 60;
    while (acked_so_far(&load, 0) < CRASH_ACKED_BEFORE || !completions_batched(&s)) {
        cr_assert_lt(seconds_now(), give_up,
                     "not %d payments acknowledged and completions batched within 60 s (%d)",
                     CRASH_ACKED_BEFORE, acked_so_far(&load, 0));
        wait_ms(20);
    }
    test_cluster(cluster, "crash", NULL, 0);
    test_cluster(cluster, "up", NULL, 0); /* crash recovery */
    pthread_mutex_lock(&load.mu);
    load.restarted = 1;
    pthread_mutex_unlock(&load.mu);
    /* The same load is served again; then it stops. */
    give_up = seconds_now() + 60;
    while (acked_so_far(&load, 1) < CRASH_ACKED_AFTER) {
        cr_assert_lt(seconds_now(), give_up,
                     "not %d payments acknowledged within 60 s of the restart (%d)",
                     CRASH_ACKED_AFTER, acked_so_far(&load, 1));
        wait_ms(20);
    }
    pthread_mutex_lock(&load.mu);
    load.stop = 1;
    pthread_mutex_unlock(&load.mu);
    for (int i = 0; i < CRASH_CLIENTS; i++)
        pthread_join(t[i], NULL);

    /* Every acknowledged key has its payment: one query, all the keys. */
    size_t cap = 16, len = 0;
    int total = 0;
    for (int i = 0; i < CRASH_CLIENTS; i++)
        cap += (size_t)clients[i].acked * (sizeof clients[i].keys[0] + 3);
    char *keys = malloc(cap);
    cr_assert_not_null(keys);
    keys[len++] = '{';
    for (int i = 0; i < CRASH_CLIENTS; i++) {
        for (int k = 0; k < clients[i].acked; k++)
            len += (size_t)snprintf(keys + len, cap - len, "%s\"%s\"", total++ ? "," : "",
                                    clients[i].keys[k]);
        free(clients[i].keys);
    }
    snprintf(keys + len, cap - len, "}");
    cr_assert_geq(total, CRASH_ACKED_BEFORE + CRASH_ACKED_AFTER);
    PGconn *conn = PQconnectdb(url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    const char *vals[] = {keys};
    PGresult *res = PQexecParams(conn,
                                 "SELECT count(*), coalesce(min(k), '') FROM unnest($1::text[]) k"
                                 " WHERE NOT EXISTS (SELECT 1 FROM payments p"
                                 " WHERE p.idempotency_key = k)",
                                 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "0",
                     "%s of %d acknowledged payments lost, %s among them", PQgetvalue(res, 0, 0),
                     total, PQgetvalue(res, 0, 1));
    PQclear(res);
    PQfinish(conn);
    free(keys);
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

/* Names the synchronous standbys ("": none) and waits until a new session
 * has the setting: pg_reload_conf() only signals the postmaster, which
 * rereads the file and passes the signal on in its own time. */
static void set_standbys(const char *url, const char *names)
{
    char sql[128];
    if (*names)
        snprintf(sql, sizeof sql, "ALTER SYSTEM SET synchronous_standby_names = '%s'", names);
    else
        snprintf(sql, sizeof sql, "ALTER SYSTEM RESET synchronous_standby_names");
    exec_on(url, sql);
    exec_on(url, "SELECT pg_reload_conf()");
    wait_query(url, "SELECT count(*) WHERE current_setting('synchronous_standby_names') = $1",
               names, 30, "the reloaded synchronous_standby_names never took effect");
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
    body_for(body, sizeof body, cust);
    set_standbys(url, "nobody");

    /* A commit waits for the standby only once the checkpointer too has
     * reread the setting (it tells every session whether one is named), a
     * moment after the sessions: a payment answered without waiting came
     * before that, and the next one, with a key of its own, is tried. */
    const char *waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                          " AND application_name = $1";
    static struct watched_post w;
    struct bg_post *first = &w.post;
    pthread_t t;
    double give_up = seconds_now() + 30;
    for (;;) {
        test_unique(key, sizeof key, "unknown-commit");
        *first = (struct bg_post){&s, key, body, {0}, 0, NULL, NULL};
        atomic_store(&w.answered, 0);
        pthread_create(&t, NULL, watched_post_main, &w);
        long waited = 0;
        while (!(waited = test_query_long(url, waiting, "mockery-server")) &&
               !atomic_load(&w.answered)) {
            cr_assert_lt(seconds_now(), give_up, "the completion never waited for the standby");
            wait_ms(20);
        }
        if (waited)
            break;
        pthread_join(t, NULL);
        cr_assert_eq(first->rc, 0, "%s", first->r.error);
        cr_assert_eq(first->r.status, 201, "%s", first->r.body);
        httpc_response_free(&first->r);
        cr_assert_lt(seconds_now(), give_up, "the completion never waited for the standby");
    }
    test_query_long(url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE wait_event = 'SyncRep' AND application_name = $1",
                    "mockery-server");
    pthread_join(t, NULL);
    cr_assert_eq(first->rc, 0, "%s", first->r.error);
    cr_assert_eq(first->r.status, 503, "%s", first->r.body);
    cr_assert(strstr(first->r.body, "store_unavailable"), "%s", first->r.body);
    httpc_response_free(&first->r);
    cr_assert_eq(payments_for_key(url, key), 1, "the cut commit happened all the same");

    set_standbys(url, "");
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
