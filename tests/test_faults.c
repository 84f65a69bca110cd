/* test_faults.c - failures with real processes and a real PostgreSQL: a
 * server killed mid-payment, two servers racing on one database, a
 * completion that lost its lease, PostgreSQL stopped and crashed under a
 * running server
 *
 * The money moves at the real mockery-acquirer (tests/acquirer_proc.h):
 * every server here asks it, and every test ends on its ledger as well as
 * on our tables - exactly one charge for each payment key answered 201 or
 * 402, one refund there for each refund key answered 201 and never more
 * than the charge, and scripts/reconcile clean. A test on the test database
 * keeps the acquirer's ledger there too; a test with a PostgreSQL cluster
 * of its own keeps it on the test database's PostgreSQL, in a database of
 * its own (the cluster's outage is the service's, not the acquirer's, and
 * no other test's charges are in its reconciliation).
 *
 * Every server has recovery off: a recovering server takes over any record
 * left processing in its database, and Criterion runs these tests in
 * parallel on the shared test database, whose other tests' records
 * (test_outcomes') must stay as they are. */
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

#include "acquirer_proc.h"
#include "support.h"

extern char **environ;

/* A failed test leaves no acquirer running (test servers are killed when
 * the test's process exits). */
static void teardown(void)
{
    test_acquirers_kill_all();
}

TestSuite(faults, .fini = teardown);

/* Recovery's pass: never (see the top). */
#define RECOVERY_OFF_MS 86400000

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

/* A server of the real binary on db_url (NULL: the test database) asking
 * acquirer a (NULL: the in-process simulator, with its asynchronous
 * claims), each ask bounded by timeout_ms (below the lease of lease_s),
 * with pool_size connections and recovery off. */
static void spawn_pool(struct test_server *s, const char *db_url, const struct test_acquirer *a,
                       int lease_s, int timeout_ms, int pool_size)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    if (db_url)
        snprintf(c.database_url, sizeof c.database_url, "%s", db_url);
    if (a) {
        snprintf(c.acquirer_url, sizeof c.acquirer_url, "%s", a->base);
        c.acquirer_timeout_ms = timeout_ms;
    }
    c.recovery_interval_ms = RECOVERY_OFF_MS;
    c.lease_s = lease_s;
    c.pool_size = pool_size;
    memset(s, 0, sizeof *s);
    test_server_spawn(s, &c, MOCKERY_SERVER_BIN);
}

static void spawn(struct test_server *s, const char *db_url, const struct test_acquirer *a,
                  int lease_s, int timeout_ms)
{
    spawn_pool(s, db_url, a, lease_s, timeout_ms, 2);
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

/* The time now by the database at url: a reconciliation's start. */
static void db_now(const char *url, char *out, size_t len)
{
    test_query_text(url, "SELECT now()::text WHERE $1 = $1", "x", out, len);
}

static void no_notice(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* Runs one statement on url in a connection of its own (its notices, such
 * as DROP ... IF EXISTS skipping, unprinted). */
static void exec_on(const char *url, const char *sql)
{
    PGconn *conn = PQconnectdb(url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    PQsetNoticeProcessor(conn, no_notice, NULL);
    PGresult *res = PQexec(conn, sql);
    cr_assert(PQresultStatus(res) == PGRES_COMMAND_OK || PQresultStatus(res) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    PQfinish(conn);
}

/* A string member of an answer's JSON body. */
static void json_text(const char *body, const char *name, char *out, size_t len)
{
    cJSON *o = cJSON_Parse(body);
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, name) : NULL;
    cr_assert(cJSON_IsString(v), "no string %s in %s", name, body);
    snprintf(out, len, "%s", v->valuestring);
    cJSON_Delete(o);
}

/* ---- the acquirer's ledger ------------------------------------------------ */

/* Charges at the acquirer (its ledger in acquirer_db) under transaction txn. */
static long charges_for(const char *acquirer_db, const char *txn)
{
    return test_query_long(acquirer_db,
                           "SELECT count(*) FROM acquirer_charges WHERE reference = $1", txn);
}

/* The acquirer's charges of customer (each test's customers are its own): a
 * second charge under another transaction would show here. */
static long customer_charges(const char *acquirer_db, const char *customer)
{
    return test_query_long(
        acquirer_db, "SELECT count(*) FROM acquirer_charges WHERE customer_id = $1", customer);
}

/* No event of the tenant of op_id (the payment or refund in table whose
 * column is op_id) in service_db without its payment or refund: an event
 * is written with its operation's rows, never alone (a few of any such
 * named). The tenant's only: the shared test database also holds the
 * store contract's events, made up under tenants of their own. */
static void expect_no_event_alone(const char *service_db, const char *table, const char *column,
                                  const char *op_id)
{
    char sql[1024], alone[512] = "";
    snprintf(sql, sizeof sql,
             "SELECT coalesce(string_agg(event_id, ' '), '') FROM (SELECT e.event_id"
             " FROM events e WHERE e.tenant_id = (SELECT tenant_id FROM %s WHERE %s = $1)"
             " AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.tenant_id = e.tenant_id"
             " AND p.transaction_id = 'txn_' || substr(e.event_id, 5))"
             " AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.tenant_id = e.tenant_id"
             " AND r.refund_id = 're_' || substr(e.event_id, 5)) LIMIT 5) a",
             table, column);
    test_query_text(service_db, sql, op_id, alone, sizeof alone);
    cr_assert_str_empty(alone, "events without their payment or refund: %s", alone);
}

/* Exactly one event of type for the payment or refund whose id is op_id
 * (txn_... or re_...) in service_db: evt_ and the same characters, in the
 * operation's tenant (table: payments or refunds, column: its id). */
static void expect_one_event(const char *service_db, const char *table, const char *column,
                             const char *op_id, const char *type)
{
    char sql[512], types[256] = "";
    snprintf(sql, sizeof sql,
             "SELECT coalesce(string_agg(e.type, ' '), '') FROM %s o JOIN events e"
             " ON e.tenant_id = o.tenant_id"
             " AND e.event_id = 'evt_' || substr(o.%s, strpos(o.%s, '_') + 1)"
             " WHERE o.%s = $1",
             table, column, column, column);
    test_query_text(service_db, sql, op_id, types, sizeof types);
    cr_assert_str_eq(types, type, "the events of %s (want exactly one %s): '%s'", op_id, type,
                     types);
    expect_no_event_alone(service_db, table, column, op_id);
}

/* The invariant for a payment key answered 201 or 402 with transaction txn:
 * exactly one charge at the acquirer, under txn, of that outcome, and the
 * payment here (service_db) names it and has exactly one event. */
static void expect_one_charge(const char *service_db, const char *acquirer_db, const char *txn,
                              const char *status)
{
    char st[16] = "", id[64] = "", here[64] = "";
    cr_assert_eq(charges_for(acquirer_db, txn), 1, "charges at the acquirer for %s", txn);
    test_query_text(acquirer_db, "SELECT status FROM acquirer_charges WHERE reference = $1", txn,
                    st, sizeof st);
    cr_assert_str_eq(st, status, "the charge of %s", txn);
    test_query_text(acquirer_db, "SELECT charge_id FROM acquirer_charges WHERE reference = $1", txn,
                    id, sizeof id);
    test_query_text(service_db, "SELECT charge_id FROM payments WHERE transaction_id = $1", txn,
                    here, sizeof here);
    cr_assert_str_eq(here, id, "payment %s names the acquirer's charge", txn);
    expect_one_event(service_db, "payments", "transaction_id", txn,
                     strcmp(status, "declined") == 0 ? "payment.declined" : "payment.succeeded");
}

/* Waits until the acquirer (its ledger in acquirer_db) has charged customer:
 * with a hold fault, the charge is recorded and its answer is being held. */
static void wait_charged(const char *acquirer_db, const char *customer)
{
    wait_query(acquirer_db, "SELECT count(*) FROM acquirer_charges WHERE customer_id = $1",
               customer, 30, "the acquirer's charge");
}

/* The invariant for a refund key answered 201 (the test database): exactly
 * one refund at the acquirer under our refund's id, the one ours names, of
 * its amount; and exactly one event of it here. */
static void expect_one_refund(const char *key)
{
    char rid[64] = "";
    test_query_text(test_db_url(), "SELECT refund_id FROM refunds WHERE idempotency_key = $1", key,
                    rid, sizeof rid);
    cr_assert(rid[0], "no refund here for key %s", key);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM acquirer_refunds WHERE reference = $1", rid),
                 1, "refunds at the acquirer for %s (key %s)", rid, key);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM refunds r JOIN acquirer_refunds a"
                                 " ON a.reference = r.refund_id WHERE r.refund_id = $1"
                                 " AND a.refund_id = r.acquirer_refund_id"
                                 " AND a.amount_minor = r.amount_minor",
                                 rid),
                 1, "refund %s names the acquirer's, of its amount", rid);
    expect_one_event(test_db_url(), "refunds", "refund_id", rid, "refund.succeeded");
}

/* The acquirer's refunds of payment txn's charge (the test database). */
static long acquirer_refunds_of(const char *txn)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM acquirer_refunds a JOIN payments p"
                           " ON p.charge_id = a.charge_id WHERE p.transaction_id = $1",
                           txn);
}

/* The acquirer's refunds of payment txn's charge (the test database): n of
 * them, adding up to sum_minor - what is refunded here - and no more than
 * the charge. */
static void expect_acquirer_refunds(const char *txn, long n, long sum_minor)
{
    cr_assert_eq(acquirer_refunds_of(txn), n, "refunds at the acquirer of %s", txn);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT coalesce(sum(a.amount_minor), 0) FROM acquirer_refunds a"
                                 " JOIN payments p ON p.charge_id = a.charge_id"
                                 " WHERE p.transaction_id = $1",
                                 txn),
                 sum_minor, "refunded at the acquirer of %s", txn);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM acquirer_charges c JOIN payments p"
                                 " ON p.charge_id = c.charge_id WHERE p.transaction_id = $1"
                                 " AND c.amount_refunded_minor = p.amount_refunded_minor"
                                 " AND c.amount_refunded_minor <= c.amount_minor",
                                 txn),
                 1, "the charge of %s: refunded as here, no more than charged", txn);
}

/* A cluster test's acquirer database, on the test database's PostgreSQL
 * (its process's own: two such tests run at once); dropped by
 * drop_cluster, even on failure. */
static char acquirer_db[64];

/* Starts acquirer a with these flags (NULL-terminated, may be NULL; rules:
 * its fault rules), its ledger in a database of its own on the test
 * database's PostgreSQL: its URL into url. Not the test's cluster, whose
 * outage must be the service's alone; not the test database, whose other
 * tests' charges would be orphans in this test's reconciliation. */
static void start_acquirer_apart(struct test_acquirer *a, const char *const *flags, int rules,
                                 char *url, size_t len)
{
    snprintf(acquirer_db, sizeof acquirer_db, "faults_acquirer_%d", (int)getpid());
    test_acquirer_database(test_db_url(), acquirer_db, url, len);
    const char *argv[16];
    int n = 0;
    argv[n++] = "--database-url";
    argv[n++] = url;
    for (int i = 0; flags && flags[i]; i++) {
        cr_assert_lt(n, 15);
        argv[n++] = flags[i];
    }
    argv[n] = NULL;
    memset(a, 0, sizeof *a);
    test_acquirer_start_env(a, argv, rules, 0, environ);
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
 * inside it (a kill, a query and one request), and an ask in flight when the
 * kill comes. The acquirer (DEAD_FAULTS) charges a cust-hold customer, or
 * refunds its charge, and holds the answer 10 s, past the holder's bound
 * on an ask: the holder is never told of it, and would answer 503
 * outcome_pending only after DEAD_TIMEOUT_MS - the kill comes as soon as
 * the acquirer has recorded it, so 9 s is no race. The lease's end is
 * waited for in the database, not timed. */
enum { DEAD_LEASE_S = 10, DEAD_TIMEOUT_MS = 9000 };
static const char *const DEAD_FAULTS[] = {"--fault", "hold:prefix=cust-hold:ms=10000", NULL};

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

/* A payment of amount EUR by a customer of its own (prefix cust_prefix)
 * through s, its key posted until it is answered 201: a 503
 * outcome_pending (the acquirer's answer held past the server's bound) is
 * asked again with the same key, and answered the one charge. Its
 * transaction into txn. */
static void pay_settled(const struct test_server *s, const char *cust_prefix, const char *amount,
                        char *txn, size_t len)
{
    char key[96], cust[64], body[192];
    struct httpc_response r;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, cust_prefix);
    snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             amount, cust);
    double give_up = seconds_now() + 30;
    for (;;) {
        cr_assert_eq(post(s, key, body, &r), 0, "%s", r.error);
        if (r.status == 201)
            break;
        cr_assert(r.status == 409 || (r.status == 503 && strstr(r.body, "outcome_pending")),
                  "payment %s: %ld %s", key, r.status, r.body);
        cr_assert_lt(seconds_now(), give_up, "payment %s: not answered 201 within 30 s", key);
        httpc_response_free(&r);
        wait_ms(50);
    }
    json_text(r.body, "transaction_id", txn, len);
    httpc_response_free(&r);
}

Test(faults, server_killed_mid_payment_is_taken_over_once, .timeout = 120)
{
    struct test_acquirer acq = {0};
    struct test_server a, b;
    char key[96], cust[64], body[160], since[64], txn[64];
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, DEAD_FAULTS, 1);
    test_unique(key, sizeof key, "kill");
    test_unique(cust, sizeof cust, "cust-hold");
    body_for(body, sizeof body, cust);
    spawn(&a, NULL, &acq, DEAD_LEASE_S, DEAD_TIMEOUT_MS);
    spawn(&b, NULL, &acq, 30, 5000);

    struct bg_post first = {&a, key, body, {0}, 0, NULL, NULL};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    expect_dead_holder_lease(key);
    /* the acquirer has charged, and holds its answer: the ask is in flight */
    wait_charged(test_db_url(), cust);
    test_server_kill(&a); /* mid-payment: charged there, nothing stored here */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(payments_for_key(test_db_url(), key), 0);

    /* A retry on the other server: 409 while the dead holder's lease lasts.
     * Once the database says it has ended, the next retry takes the key
     * over and asks the acquirer again, under the record's key downstream:
     * answered the charge the dead server's ask made. */
    retry_during_lease(&b, NULL, key, body);
    wait_lease_ended(test_db_url(), key, DEAD_LEASE_S + 30);
    struct httpc_response r;
    cr_assert_eq(post(&b, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "%s", r.body);
    json_text(r.body, "transaction_id", txn, sizeof txn);
    httpc_response_free(&r);
    const char *takeovers = "mockery_idempotency_outcomes_total{outcome=\"takeover\"}";
    cr_assert_eq(metric_reaching(&b, takeovers, 1), 1);
    cr_assert_eq(post(&b, key, body, &r), 0);
    cr_assert_eq(r.status, 200);
    httpc_response_free(&r);
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    expect_one_charge(test_db_url(), test_db_url(), txn, "succeeded");
    cr_assert_eq(customer_charges(test_db_url(), cust), 1, "the customer was charged once");
    test_server_stop(&b);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
}

Test(faults, two_servers_one_database_concurrent_duplicates, .timeout = 120)
{
    enum { N = 32 };
    /* each charge takes 300 ms at the acquirer: duplicates arrive meanwhile */
    static const char *const faults[] = {"--fault", "latency:prefix=cust-lat:ms=300", NULL};
    struct test_acquirer acq = {0};
    struct test_server s[2];
    char key[96], cust[64], body[160], since[64], txn[64] = "";
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, faults, 1);
    test_unique(key, sizeof key, "two");
    test_unique(cust, sizeof cust, "cust-lat");
    body_for(body, sizeof body, cust);
    spawn(&s[0], NULL, &acq, 30, 5000);
    spawn(&s[1], NULL, &acq, 30, 5000);
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
        if (st == 201)
            json_text(p[i].r.body, "transaction_id", txn, sizeof txn);
        httpc_response_free(&p[i].r);
    }
    cr_assert_eq(created, 1);
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    pthread_barrier_destroy(&barrier);
    expect_one_charge(test_db_url(), test_db_url(), txn, "succeeded");
    cr_assert_eq(customer_charges(test_db_url(), cust), 1, "the customer was charged once");
    test_server_stop(&s[0]);
    test_server_stop(&s[1]);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
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
    /* each refund takes 50 ms at the acquirer: all of them overlap there */
    static const char *const faults[] = {"--fault", "latency:prefix=cust-race:ms=50", NULL};
    struct test_acquirer acq = {0};
    struct test_server s[2];
    char payment[64], path[128], keys[N][96], since[64];
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, faults, 1);
    spawn(&s[0], NULL, &acq, 30, 5000);
    spawn(&s[1], NULL, &acq, 30, 5000);
    pay_settled(&s[0], "cust-race", "100", payment, sizeof payment);
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
    int created = 0, refused = 0, answered[N];
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(p[i].rc, 0, "%s", p[i].r.error);
        long st = p[i].r.status;
        cr_assert(st == 201 || st == 422, "status %ld: %s", st, p[i].r.body);
        if (st == 422)
            cr_assert(strstr(p[i].r.body, "refund_exceeds_payment"), "%s", p[i].r.body);
        created += st == 201;
        refused += st == 422;
        answered[i] = (int)st;
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
    /* At the acquirer: the one charge, one refund for each key answered 201
     * and none for the others - ten, no more than the charge. */
    expect_one_charge(test_db_url(), test_db_url(), payment, "succeeded");
    for (int i = 0; i < N; i++)
        if (answered[i] == 201)
            expect_one_refund(keys[i]);
    expect_acquirer_refunds(payment, 10, 10000);
    test_server_stop(&s[0]);
    test_server_stop(&s[1]);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
}

Test(faults, server_killed_mid_refund_refunds_once_after_the_lease, .timeout = 120)
{
    struct test_acquirer acq = {0};
    struct test_server a, b;
    char payment[64], path[128], key[96], since[64];
    const char *body = "{\"amount\":40,\"reason\":\"duplicate\"}";
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, DEAD_FAULTS, 1);
    spawn(&a, NULL, &acq, DEAD_LEASE_S, DEAD_TIMEOUT_MS);
    /* B's asks are bounded at 1 s: the payment's own charge, held too (the
     * hold is by customer, and a refund's customer is its charge's), is
     * 503 outcome_pending there, and its retry is answered the charge */
    spawn(&b, NULL, &acq, 30, 1000);
    pay_settled(&b, "cust-hold", "100", payment, sizeof payment);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    test_unique(key, sizeof key, "refund-kill");

    struct bg_post first = {&a, key, body, {0}, 0, NULL, path};
    pthread_t t;
    pthread_create(&t, NULL, bg_post_main, &first);
    wait_processing(test_db_url(), key);
    expect_dead_holder_lease(key);
    /* the acquirer has refunded, and holds its answer: the ask is in flight */
    wait_query(test_db_url(),
               "SELECT count(*) FROM acquirer_refunds a JOIN payments p"
               " ON p.charge_id = a.charge_id WHERE p.transaction_id = $1",
               payment, 30, "the acquirer's refund");
    test_server_kill(&a); /* mid-refund: refunded there, nothing stored here */
    pthread_join(t, NULL);
    cr_assert_neq(first.rc, 0, "the killed server answered: %ld", first.r.status);
    httpc_response_free(&first.r);
    cr_assert_eq(refunds_of(payment, "count(*)"), 0);

    /* 409 while the dead holder's lease lasts; once the database says it
     * has ended, one refund: the retry asks again under the record's key
     * downstream and is answered the refund the dead server's ask made */
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
    expect_one_charge(test_db_url(), test_db_url(), payment, "succeeded");
    expect_one_refund(key);
    expect_acquirer_refunds(payment, 1, 4000);
    test_server_stop(&b);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
}

/* A refund's completion waits for the payment row's lock (here held by a
 * psql-like session; in real life by another refund of the same payment).
 * It takes that lock before its key's record, so a duplicate with the same
 * key is answered 409 at once instead of queueing behind the lock. */
Test(faults, a_duplicate_refund_never_waits_on_the_payment_row_lock, .timeout = 120)
{
    struct test_acquirer acq = {0};
    struct test_server s;
    char payment[64], path[128], key[96], since[64];
    const char *body = "{\"amount\":5}";
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, NULL, 0);
    spawn(&s, NULL, &acq, 30, 5000);
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
    cr_assert_eq(acquirer_refunds_of(payment), 1, "the refund made at the acquirer, not here");

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
    expect_one_charge(test_db_url(), test_db_url(), payment, "succeeded");
    expect_one_refund(key);
    expect_acquirer_refunds(payment, 1, 500);
    test_server_stop(&s);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
}

/* A completion that lost its lease. With an acquirer the server refuses a
 * lease no longer than its bound on an ask, so what outlasts the lease is a
 * stall between the answer and the completion: here A's one database
 * connection is held by another request's claim, waiting for a record lock
 * held by a psql-like session (docs/design.md: record locks from outside).
 * A's ask is held at the acquirer until that is so (FENCE_HOLD_MS, against
 * a few queries); its answer - the charge - comes back within A's bound
 * (1.5 s to spare) and waits for the connection while A's lease runs out,
 * 1.6 s later: B takes the key over, asks the acquirer again under the
 * record's key downstream and is answered the same charge; the lock is let
 * go then, about 2 s into the 5 s a completion waits for a connection, and
 * A's completion comes with a stale token. */
enum { FENCE_LEASE_S = 6, FENCE_TIMEOUT_MS = 5900, FENCE_HOLD_MS = 4400 };

Test(faults, completion_after_lost_lease_is_rolled_back, .timeout = 120)
{
    static const char *const faults[] = {"--fault", "hold:prefix=cust-fence:ms=4400", NULL};
    struct test_acquirer acq = {0};
    struct test_server a, b;
    char key[96], cust[64], body[160], txn[64], since[64];
    char other[96], other_cust[64], other_body[160];
    db_now(test_db_url(), since, sizeof since);
    test_acquirer_start(&acq, faults, 1);
    test_unique(key, sizeof key, "fence");
    test_unique(cust, sizeof cust, "cust-fence");
    body_for(body, sizeof body, cust);
    spawn_pool(&a, NULL, &acq, FENCE_LEASE_S, FENCE_TIMEOUT_MS, 1); /* one connection */
    spawn(&b, NULL, &acq, 30, 5000);

    /* Another payment, completed on B (so A has no answer of it in memory),
     * its record locked by our session: A's claim of a retry of it waits
     * for our lock, holding A's connection. */
    struct httpc_response r;
    test_unique(other, sizeof other, "fence-other");
    test_unique(other_cust, sizeof other_cust, "cust");
    body_for(other_body, sizeof other_body, other_cust);
    cr_assert_eq(post(&b, other, other_body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "%s", r.body);
    httpc_response_free(&r);
    PGconn *locker = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(locker), CONNECTION_OK);
    PQclear(PQexec(locker, "BEGIN"));
    const char *vals[] = {other};
    PGresult *res = PQexecParams(locker,
                                 "SELECT 1 FROM idempotency_keys WHERE idempotency_key = $1"
                                 " FOR UPDATE",
                                 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQntuples(res), 1, "%s", PQerrorMessage(locker));
    PQclear(res);
    char locker_pid[16];
    snprintf(locker_pid, sizeof locker_pid, "%d", PQbackendPID(locker));

    static struct watched_post w;
    struct bg_post *slow = &w.post;
    *slow = (struct bg_post){&a, key, body, {0}, 0, NULL, NULL};
    atomic_store(&w.answered, 0);
    pthread_t t, t2;
    pthread_create(&t, NULL, watched_post_main, &w);
    wait_processing(test_db_url(), key);
    wait_charged(test_db_url(), cust); /* A's ask is out: charged there, its answer held */
    struct bg_post held = {&a, other, other_body, {0}, 0, NULL, NULL};
    pthread_create(&t2, NULL, bg_post_main, &held);
    /* one of A's sessions - its only one - is blocked by ours (other tests'
     * servers share the database, so by ours and no other) */
    wait_query(test_db_url(),
               "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'mockery-server'"
               " AND wait_event_type = 'Lock' AND $1::int = ANY(pg_blocking_pids(pid))",
               locker_pid, 30, "A's claim of the other key never waited for our lock");
    cr_assert(!atomic_load(&w.answered),
              "A was answered before its connection was held (its answer held %d ms)",
              FENCE_HOLD_MS);

    /* B takes the key over as soon as the database says A's lease has run
     * out - A's completion still waiting for the connection - and is
     * answered the charge A's ask made. Then A's connection is let go. */
    wait_lease_ended(test_db_url(), key, 30);
    cr_assert_eq(post(&b, key, body, &r), 0, "%s", r.error);
    PQclear(PQexec(locker, "COMMIT"));
    PQfinish(locker);
    pthread_join(t, NULL);
    pthread_join(t2, NULL);
    cr_assert_eq(held.rc, 0, "%s", held.r.error);
    cr_assert_eq(held.r.status, 200, "the other key's retry: %s", held.r.body);
    httpc_response_free(&held.r);

    /* A finished with a stale token: its completion was refused and its
     * payment rolled back; it told its client to retry. */
    cr_assert_eq(slow->rc, 0, "%s", slow->r.error);
    cr_assert_eq(slow->r.status, 409,
                 "A answered %ld (did its completion wait more than 5 s for the connection?): %s",
                 slow->r.status, slow->r.body);
    const char *lost = "mockery_idempotency_outcomes_total{outcome=\"lease_lost\"}";
    cr_assert_eq(metric_reaching(&a, lost, 1), 1);
    cr_assert_eq(r.status, 201, "%s", r.body);
    json_text(r.body, "transaction_id", txn, sizeof txn);
    httpc_response_free(&r);
    httpc_response_free(&slow->r);
    char stored[64];
    test_query_text(test_db_url(), "SELECT transaction_id FROM payments WHERE idempotency_key = $1",
                    key, stored, sizeof stored);
    cr_assert_str_eq(stored, txn, "the charge that exists is B's");
    cr_assert_eq(payments_for_key(test_db_url(), key), 1);
    /* At the acquirer: asked twice under one key downstream, charged once. */
    expect_one_charge(test_db_url(), test_db_url(), txn, "succeeded");
    cr_assert_eq(customer_charges(test_db_url(), cust), 1, "the customer was charged once");
    test_server_stop(&a);
    test_server_stop(&b);
    test_expect_reconciled(test_db_url(), test_db_url(), since);
    test_acquirer_stop(&acq);
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
    test_acquirers_kill_all(); /* before its database goes */
    if (acquirer_db[0]) {
        char sql[160];
        snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", acquirer_db);
        exec_on(test_db_url(), sql);
    }
    if (cluster[0])
        test_cluster(cluster, "down", NULL, 0);
}

/* PostgreSQL goes away (stop or crash) under a running server, then returns.
 * The acquirer's ledger is elsewhere: it stays up, and is never asked
 * during the outage (each claim fails first). */
static void database_outage(const char *how)
{
    char url[256], key[96], cust[64], body[160], acq_url[256], since[64], txn[2][64];
    const char *name = cluster;
    snprintf(cluster, sizeof cluster, "fault-%s-%d", how, (int)getpid());
    test_cluster(name, "up", url, sizeof url);
    db_now(url, since, sizeof since);
    struct test_acquirer acq;
    start_acquirer_apart(&acq, NULL, 0, acq_url, sizeof acq_url);
    struct test_server s;
    spawn(&s, url, &acq, 30, 5000);
    test_unique(cust, sizeof cust, "cust");
    body_for(body, sizeof body, cust);
    struct httpc_response r;
    test_unique(key, sizeof key, "before");
    cr_assert_eq(post(&s, key, body, &r), 0);
    cr_assert_eq(r.status, 201);
    json_text(r.body, "transaction_id", txn[0], sizeof txn[0]);
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
    cr_assert_eq(customer_charges(acq_url, cust), 1, "the acquirer was asked during the outage");

    /* PostgreSQL is back: the server recovers by itself, the retry succeeds. */
    test_cluster(name, "up", NULL, 0);
    cr_assert_eq(post(&s, key, body, &r), 0, "%s", r.error);
    cr_assert_eq(r.status, 201, "after recovery: %s", r.body);
    json_text(r.body, "transaction_id", txn[1], sizeof txn[1]);
    httpc_response_free(&r);
    expect_health(&s, 200, "up");
    cr_assert_eq(payments_for_key(url, key), 1);
    /* At the acquirer: one charge for each key answered 201, none other. */
    for (int i = 0; i < 2; i++)
        expect_one_charge(url, acq_url, txn[i], "succeeded");
    cr_assert_eq(customer_charges(acq_url, cust), 2);
    test_server_stop(&s);
    test_expect_reconciled(url, acq_url, since);
    test_acquirer_stop(&acq);
}

Test(faults, postgres_stopped_then_started, .fini = drop_cluster, .timeout = 120)
{
    database_outage("pause");
}

Test(faults, postgres_crashed_then_recovered, .fini = drop_cluster, .timeout = 120)
{
    database_outage("crash");
}

/* A crash right after many payments were acknowledged must lose none of
 * them: each completion's flush carries its claim (docs/design.md: one WAL
 * flush per payment; the claims here, which keep their request for the
 * acquirer, wait for their own flush too). The acquirer's ledger, on
 * another PostgreSQL, holds one charge for each. */
/* through_acquirer 0: the in-process simulator, whose claims commit
 * without waiting for their flush (the completion's flush carries them). */
static void acknowledged_survive(int through_acquirer)
{
    enum { N = 200 };
    char url[256], cust[64], acq_url[256], since[64];
    snprintf(cluster, sizeof cluster, "fault-ack-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    db_now(url, since, sizeof since);
    struct test_acquirer acq;
    if (through_acquirer)
        start_acquirer_apart(&acq, NULL, 0, acq_url, sizeof acq_url);
    struct test_server s;
    spawn(&s, url, through_acquirer ? &acq : NULL, 30, 5000);
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
    if (!through_acquirer) {
        test_server_stop(&s);
        return;
    }
    /* At the acquirer: one charge under each acknowledged payment's
     * transaction, and none other for the customer. */
    char txns[N * 40 + 8];
    size_t len = 0;
    txns[len++] = '{';
    for (int i = 0; i < N; i++) {
        char txn[64];
        json_text(bodies[i], "transaction_id", txn, sizeof txn);
        len += (size_t)snprintf(txns + len, sizeof txns - len, "%s%s", i ? "," : "", txn);
    }
    snprintf(txns + len, sizeof txns - len, "}");
    cr_assert_eq(test_query_long(acq_url,
                                 "SELECT count(*) FROM unnest($1::text[]) t WHERE (SELECT count(*)"
                                 " FROM acquirer_charges c WHERE c.reference = t) <> 1",
                                 txns),
                 0, "acknowledged payments without exactly one charge at the acquirer");
    cr_assert_eq(customer_charges(acq_url, cust), N);
    test_server_stop(&s);
    test_expect_reconciled(url, acq_url, since);
    test_acquirer_stop(&acq);
}

Test(faults, acknowledged_payments_survive_a_postgres_crash, .fini = drop_cluster, .timeout = 120)
{
    acknowledged_survive(1);
}

Test(faults, acknowledged_payments_of_the_simulator_survive_a_postgres_crash, .fini = drop_cluster,
     .timeout = 120)
{
    acknowledged_survive(0);
}

/* The same under load: many clients at once, so completions commit in
 * batches, and the crash lands while batches are in flight. Every payment a
 * client was told about survives; none exists twice; and at the acquirer,
 * whose ledger is on another PostgreSQL and stays up, each has exactly one
 * charge and no charge is without its payment.
 *
 * The load is not an amount of work (a fast machine would finish it before
 * the crash came): the clients make new payments until the main thread has
 * seen payments acknowledged and completions sharing statements before the
 * crash, and payments acknowledged after the restart.
 *
 * Each client posts a payment's key until it is answered, as the README
 * says: a payment whose completion the crash cut after the acquirer charged
 * is 503 outcome_pending, and only the same key asks again for that charge
 * (a new key would charge the customer again). The lease is short
 * (CRASH_LEASE_S) so that a record whose holder could not end its lease in
 * the crash is taken over soon. */
enum { CRASH_CLIENTS = 12, CRASH_ACKED_BEFORE = 300, CRASH_ACKED_AFTER = 3 * CRASH_CLIENTS };
enum { CRASH_LEASE_S = 5, CRASH_KEY_GIVE_UP_S = 60 };

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
    char (*keys)[96]; /* [acked]: the keys answered 201 (or, that answer lost, 200) */
    int acked, cap;
    int unsettled; /* keys not answered so within CRASH_KEY_GIVE_UP_S */
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
        double give_up = seconds_now() + CRASH_KEY_GIVE_UP_S;
        int ok;
        for (;;) {
            struct httpc_response r;
            ok = post(c->srv, key, c->body, &r) == 0 && (r.status == 201 || r.status == 200);
            httpc_response_free(&r);
            if (ok || seconds_now() > give_up)
                break;
            /* PostgreSQL is away, or the outcome is pending: the same key
             * again, a client honouring Retry-After, faster */
            wait_ms(100);
        }
        if (!ok) {
            c->unsettled++;
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

static void batched_survive(int through_acquirer)
{
    char url[256], cust[64], body[160], acq_url[256], since[64];
    snprintf(cluster, sizeof cluster, "fault-load-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    db_now(url, since, sizeof since);
    struct test_acquirer acq;
    if (through_acquirer)
        start_acquirer_apart(&acq, NULL, 0, acq_url, sizeof acq_url);
    struct test_server s;
    spawn(&s, url, through_acquirer ? &acq : NULL, CRASH_LEASE_S, 4000);
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
    int total = 0, unsettled = 0;
    for (int i = 0; i < CRASH_CLIENTS; i++) {
        cap += (size_t)clients[i].acked * (sizeof clients[i].keys[0] + 3);
        unsettled += clients[i].unsettled;
    }
    cr_assert_eq(unsettled, 0, "%d payments not answered 201 within %d s of retries", unsettled,
                 CRASH_KEY_GIVE_UP_S);
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

    cr_assert_eq(test_query_long(url, "SELECT count(*) FROM payments WHERE customer_id = $1", cust),
                 total, "payments here but for the acknowledged ones");
    if (!through_acquirer) {
        test_server_stop(&s);
        return;
    }
    /* At the acquirer: a charge for each payment here - as many as the
     * payments the clients were told of, each under its payment's
     * transaction - and none other for the customer. */
    cr_assert_eq(customer_charges(acq_url, cust), total, "charges at the acquirer, %d payments",
                 total);
    size_t txns_len = (size_t)total * 40 + 16;
    char *txns = malloc(txns_len);
    cr_assert_not_null(txns);
    test_query_text(url,
                    "SELECT array_agg(transaction_id)::text FROM payments WHERE customer_id = $1",
                    cust, txns, txns_len);
    cr_assert_eq(test_query_long(acq_url,
                                 "SELECT count(*) FROM unnest($1::text[]) t WHERE (SELECT count(*)"
                                 " FROM acquirer_charges c WHERE c.reference = t) <> 1",
                                 txns),
                 0, "payments without exactly one charge at the acquirer");
    free(txns);
    test_server_stop(&s);
    test_expect_reconciled(url, acq_url, since);
    test_acquirer_stop(&acq);
}

Test(faults, batched_payments_survive_a_postgres_crash_under_load, .fini = drop_cluster,
     .timeout = 240)
{
    batched_survive(1);
}

Test(faults, batched_payments_of_the_simulator_survive_a_postgres_crash_under_load,
     .fini = drop_cluster, .timeout = 240)
{
    batched_survive(0);
}

/* Whether a commit on url now waits for a synchronous standby: a probe, in
 * a session of its own with synchronous_commit on, commits a transaction
 * that has an id and wrote WAL (a transactional logical message: no table
 * needed). Waiting in SyncRep says yes (the probe is then ended);
 * its answer says no. A commit waits only once the checkpointer too has
 * reread synchronous_standby_names (it tells every session whether one is
 * named), a moment after the sessions have it. */
static int commits_wait_for_standby(const char *url)
{
    const char *const keys[] = {"dbname", "options", NULL};
    const char *const vals[] = {url, "-c synchronous_commit=on", NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(conn));
    cr_assert(PQsendQuery(conn, "SELECT pg_logical_emit_message(true, 'mockery-test', 'probe')"),
              "%s", PQerrorMessage(conn));
    double give_up = seconds_now() + 30;
    for (;;) {
        cr_assert(PQconsumeInput(conn), "%s", PQerrorMessage(conn));
        if (!PQisBusy(conn)) {
            PGresult *res;
            while ((res = PQgetResult(conn)) != NULL) {
                cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
                PQclear(res);
            }
            PQfinish(conn);
            return 0;
        }
        if (test_query_long(url,
                            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int"
                            " AND wait_event = 'SyncRep'",
                            pid)) {
            test_query_long(url, "SELECT count(*) FROM pg_terminate_backend($1::int)", pid);
            PQfinish(conn);
            return 1;
        }
        cr_assert_lt(seconds_now(), give_up, "the probe's commit neither ended nor waited");
        wait_ms(20);
    }
}

/* Names the synchronous standbys ("": none) and waits until commits obey:
 * pg_reload_conf() only signals the postmaster, which rereads the file and
 * passes the signal on in its own time. */
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
    double give_up = seconds_now() + 30;
    while (commits_wait_for_standby(url) != (*names != '\0')) {
        cr_assert_lt(seconds_now(), give_up, "commits did not obey '%s' within 30 s", names);
        wait_ms(20);
    }
}

/* The commit test's server: its ask's answer held at the acquirer (a
 * cust-hold customer, COMMIT_FAULTS) until the test lets it go, inside the
 * ask's bound and the lease. */
enum { COMMIT_LEASE_S = 90, COMMIT_TIMEOUT_MS = 80000 };
static const char *const COMMIT_FAULTS[] = {"--fault", "hold:prefix=cust-hold:ms=85000", NULL};

/* The completion's COMMIT with an unknown outcome: it committed locally and
 * waits for a synchronous standby (one that never answers here), and its
 * connection is cut - as when a primary is lost between the completion's
 * send and its reply. The client is answered 503 and not told the payment
 * failed - with the money moved at the acquirer, 503 outcome_pending and
 * the record never released (the server's abandon, fenced on a processing
 * record, leaves the completed one alone); the retry replays the one
 * payment, charged once.
 *
 * The claim, which keeps its request for the acquirer, commits waiting for
 * the flush, so for a standby too: the standby is named only once it has
 * committed - the acquirer has charged and holds its answer until the test
 * lets it go, once the standby is named - so that only the completion
 * waits. The acquirer's ledger is on another PostgreSQL, whose commits
 * wait for no standby. */
Test(faults, a_completion_whose_commit_outcome_is_unknown_is_charged_once, .fini = drop_cluster,
     .timeout = 120)
{
    char url[256], key[96], cust[64], body[160], acq_url[256], since[64], pending_txn[64];
    snprintf(cluster, sizeof cluster, "fault-commit-%d", (int)getpid());
    test_cluster(cluster, "up", url, sizeof url);
    db_now(url, since, sizeof since);
    struct test_acquirer acq;
    start_acquirer_apart(&acq, COMMIT_FAULTS, 1, acq_url, sizeof acq_url);
    struct test_server s;
    spawn(&s, url, &acq, COMMIT_LEASE_S, COMMIT_TIMEOUT_MS);
    test_unique(cust, sizeof cust, "cust-hold");
    body_for(body, sizeof body, cust);

    static struct watched_post w;
    struct bg_post *first = &w.post;
    pthread_t t;
    test_unique(key, sizeof key, "unknown-commit");
    *first = (struct bg_post){&s, key, body, {0}, 0, NULL, NULL};
    atomic_store(&w.answered, 0);
    pthread_create(&t, NULL, watched_post_main, &w);
    wait_charged(acq_url, cust); /* claimed, asked: the answer is held */
    set_standbys(url, "nobody");
    cr_assert(!atomic_load(&w.answered), "answered before the acquirer's answer was let go");
    const char *waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                          " AND application_name = $1";
    double give_up = seconds_now() + 30;
    /* let go again on every look: the charge is seen committed a moment
     * before its hold begins, and a release before that ends nothing */
    while (test_acquirer_release_holds(&acq), !test_query_long(url, waiting, "mockery-server")) {
        cr_assert(!atomic_load(&w.answered), "the completion did not wait for the standby");
        cr_assert_lt(seconds_now(), give_up, "the completion never waited for the standby");
        wait_ms(20);
    }
    test_query_long(url,
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE wait_event = 'SyncRep' AND application_name = $1",
                    "mockery-server");
    pthread_join(t, NULL);
    cr_assert_eq(first->rc, 0, "%s", first->r.error);
    cr_assert_eq(first->r.status, 503, "%s", first->r.body);
    cr_assert(strstr(first->r.body, "outcome_pending"), "%s", first->r.body);
    json_text(first->r.body, "transaction_id", pending_txn, sizeof pending_txn);
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
    cr_assert_str_eq(txn, pending_txn, "the transaction the 503 named");
    expect_one_charge(url, acq_url, txn, "succeeded");
    cr_assert_eq(customer_charges(acq_url, cust), 1, "the customer was charged once");
    test_server_stop(&s);
    test_expect_reconciled(url, acq_url, since);
    test_acquirer_stop(&acq);
}
