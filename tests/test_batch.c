/* test_batch.c - the PostgreSQL store runs queued claims and completions as
 * one statement: what each request gets back must not change.
 *
 * Each test holds the pool's only connection on purpose: a claim on a record
 * the test has locked (SELECT ... FOR UPDATE from its own connection) waits in
 * PostgreSQL, the operations under test queue behind it, and the lock is let
 * go once the pool reports them all waiting. They then run as one batch. */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "store.h"
#include "store_pg.h"
#include "support.h"

#define LONG_MS (60 * 1000)
#define DAY_MS (86400 * 1000)
#define MANY 8

static const char *T = "tenant-batch";
static const char *FP = "fp-batch";
static struct store *store;

static void open_pool(int size)
{
    char err[256] = "";
    /* Operations wait in the queue for as long as a test holds the pool,
     * however slowly it gets there: not the server's 5 s before a 503. */
    struct store_pg_options o = {
        .database_url = test_db_url(), .pool_size = size, .acquire_timeout_ms = 600 * 1000};
    store = store_pg_new(&o, err, sizeof err);
    cr_assert_not_null(store, "store_pg_new: %s", err);
}

/* Seconds since *t0 (CLOCK_MONOTONIC). */
static long seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(now.tv_sec - t0->tv_sec);
}

static void pause_10ms(void)
{
    struct timespec ts = {0, 10 * 1000000L};
    nanosleep(&ts, NULL);
}

static void open_pool_of_one(void)
{
    open_pool(1);
}

static void open_pool_of_two(void)
{
    open_pool(2);
}

static void close_store(void)
{
    store_free(store);
    store = NULL;
}

static PGresult *exec_ok(PGconn *conn, const char *sql, const char *param)
{
    PGresult *res = PQexecParams(conn, sql, param ? 1 : 0, NULL, &param, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    cr_assert(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(conn));
    return res;
}

static struct store_claim_result claim_ok(const char *key)
{
    struct store_claim_result r;
    char err[256] = "";
    memset(&r, 0, sizeof r);
    cr_assert_eq(store_claim(store, T, key, FP, NULL, LONG_MS, DAY_MS, &r, err, sizeof err),
                 STORE_OK, "claim %s: %s", key, err);
    return r;
}

/* ---- the blocker: the pool's one connection, held in PostgreSQL ---------- */

struct blocker {
    PGconn *conn;
    char key[96];
    pthread_t thread;
};

static void *blocked_claim(void *arg)
{
    struct blocker *b = arg;
    struct store_claim_result r = claim_ok(b->key);
    store_claim_result_clear(&r);
    return NULL;
}

static void block_pool(struct blocker *b)
{
    test_unique(b->key, sizeof b->key, "blocker");
    struct store_claim_result r = claim_ok(b->key);
    store_claim_result_clear(&r);
    b->conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(b->conn), CONNECTION_OK);
    PQclear(exec_ok(b->conn, "BEGIN", NULL));
    char sql[160];
    snprintf(sql, sizeof sql,
             "SELECT 1 FROM idempotency_keys WHERE tenant_id = '%s' AND idempotency_key = $1"
             " FOR UPDATE",
             T);
    PQclear(exec_ok(b->conn, sql, b->key));
    cr_assert_eq(pthread_create(&b->thread, NULL, blocked_claim, b), 0);
    /* the claim is in PostgreSQL once it waits for this connection's lock
     * (30 s only turns one that never gets there into a failure) */
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(b->conn));
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (seconds_since(&t0) < 30) {
        if (test_query_long(test_db_url(),
                            "SELECT count(*) FROM pg_stat_activity"
                            " WHERE $1::int = ANY(pg_blocking_pids(pid))",
                            pid) > 0)
            return;
        pause_10ms();
    }
    cr_assert_fail("the blocking claim did not wait on the lock within 30 s");
}

static void unblock(struct blocker *b)
{
    PQclear(exec_ok(b->conn, "COMMIT", NULL));
    pthread_join(b->thread, NULL);
    PQfinish(b->conn);
}

/* Waits (30 s at most) until n operations are queued; returns how many are. */
static int queued(int n)
{
    struct store_pool_stats ps = {0};
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        store_pool_stats(store, &ps);
        if (ps.waiting >= n || seconds_since(&t0) >= 30)
            return ps.waiting;
        pause_10ms();
    }
}

/* Waits until n operations queue behind the blocker, then lets it go. */
static void release_pool_when_queued(struct blocker *b, int n)
{
    int waiting = queued(n);
    cr_assert_eq(waiting, n, "%d operations queued, wanted %d", waiting, n);
    unblock(b);
}

/* ---- operations run on threads ------------------------------------------ */

struct op {
    char key[96];
    int64_t token;
    char txn[64];
    pthread_t thread;
    enum store_status st;
    struct store_claim_result claim;
    char err[256];
    _Atomic int finished;
};

static void *claim_thread(void *arg)
{
    struct op *o = arg;
    o->st =
        store_claim(store, T, o->key, FP, NULL, LONG_MS, DAY_MS, &o->claim, o->err, sizeof o->err);
    o->finished = 1;
    return NULL;
}

/* a cached answer with the characters an array literal must escape */
static void body_of(const char *key, char *out, size_t len)
{
    int n = snprintf(out, len, "{\"key\":\"%s\",\"quote\":\"\\\"\",\"backslash\":\"\\\\\"}", key);
    cr_assert(n > 0 && (size_t)n < len);
}

static void *complete_thread(void *arg)
{
    struct op *o = arg;
    char body[256];
    body_of(o->key, body, sizeof body);
    struct store_response resp = {201, body, strlen(body), "/api/v1/payments/x"};
    struct store_payment p = {.transaction_id = o->txn,
                              .idempotency_key = o->key,
                              .customer_id = "cust-batch",
                              .amount_minor = 700,
                              .currency = "JPY",
                              .description = NULL,
                              .status = "completed",
                              .processed_at_us = 1700000000000000LL};
    struct store_rows rows = {.payment = &p};
    o->st = store_complete(store, T, o->key, o->token, &resp, &rows, o->err, sizeof o->err);
    return NULL;
}

static long payments_for(const char *key)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM payments WHERE tenant_id = 'tenant-batch'"
                           " AND idempotency_key = $1",
                           key);
}

/* n claimed keys, each with its own transaction id */
static void claimed(struct op *ops, int n, const char *prefix)
{
    for (int i = 0; i < n; i++) {
        test_unique(ops[i].key, sizeof ops[i].key, prefix);
        snprintf(ops[i].txn, sizeof ops[i].txn, "txn_%s", ops[i].key);
        struct store_claim_result r = claim_ok(ops[i].key);
        cr_assert_eq(r.outcome, CLAIM_NEW);
        ops[i].token = r.lease_token;
        store_claim_result_clear(&r);
    }
}

/* Runs fn for each op on its own thread, all queued behind the blocker and
 * released together; returns the pool's counters after. */
static struct store_pool_stats run_queued(struct op *ops, int n, void *(*fn)(void *))
{
    struct blocker b;
    block_pool(&b);
    for (int i = 0; i < n; i++)
        cr_assert_eq(pthread_create(&ops[i].thread, NULL, fn, &ops[i]), 0);
    release_pool_when_queued(&b, n);
    for (int i = 0; i < n; i++)
        pthread_join(ops[i].thread, NULL);
    struct store_pool_stats ps = {0};
    store_pool_stats(store, &ps);
    return ps;
}

/* Three claimed ops completed in one batch by fn, the middle one's row
 * (txn) taken first by taken_sql: the batch fails as a whole, each runs
 * alone, and only the middle one fails - its record left processing, no
 * row of its own (rows_for counts them by key). */
static void one_fails_alone(struct op *ops, void *(*fn)(void *), long (*rows_for)(const char *),
                            const char *taken_sql)
{
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK);
    PQclear(exec_ok(conn, taken_sql, ops[1].txn));
    PQfinish(conn);
    struct store_pool_stats ps = run_queued(ops, 3, fn);
    cr_assert_eq(ps.complete_batches, 1);
    cr_assert_eq(ps.batches_split, 1);
    cr_assert_eq(ops[0].st, STORE_OK, "%s", ops[0].err);
    cr_assert_eq(ops[2].st, STORE_OK, "%s", ops[2].err);
    cr_assert_eq(ops[1].st, STORE_ERROR, "%s", ops[1].err);
    cr_assert_eq(rows_for(ops[0].key), 1);
    cr_assert_eq(rows_for(ops[2].key), 1);
    cr_assert_eq(rows_for(ops[1].key), 0);
    char state[32];
    test_query_text(test_db_url(),
                    "SELECT state FROM idempotency_keys WHERE tenant_id = 'tenant-batch'"
                    " AND idempotency_key = $1",
                    ops[1].key, state, sizeof state);
    cr_assert_str_eq(state, "processing", "its completion committed without its row");
}

Test(batch, queued_claims_run_as_one_statement_and_each_wins_its_key, .init = open_pool_of_one,
     .fini = close_store, .timeout = 60)
{
    struct op ops[MANY];
    memset(ops, 0, sizeof ops);
    for (int i = 0; i < MANY; i++)
        test_unique(ops[i].key, sizeof ops[i].key, "many");
    /* what an array literal must quote or escape, and its word for null */
    strcat(ops[0].key, "\"\\,{} NULL");
    strcat(ops[1].key, "NULL");
    struct store_pool_stats ps = run_queued(ops, MANY, claim_thread);
    /* the set-up claim, the blocker, then all of them at once */
    cr_assert_eq(ps.claim_batches, 3);
    cr_assert_eq(ps.claims_batched, 2 + MANY);
    cr_assert_eq(ps.batches_split, 0);
    for (int i = 0; i < MANY; i++) {
        cr_assert_eq(ops[i].st, STORE_OK, "%s", ops[i].err);
        cr_assert_eq(ops[i].claim.outcome, CLAIM_NEW);
        for (int j = 0; j < i; j++) {
            cr_assert_neq(ops[i].claim.lease_token, ops[j].claim.lease_token);
            cr_assert_str_neq(ops[i].claim.downstream_key, ops[j].claim.downstream_key);
        }
        cr_assert_gt(ops[i].claim.created_at_us, 0);
        /* each record's own downstream key, through the batch's arrays */
        char dk[80];
        test_query_text(test_db_url(),
                        "SELECT downstream_key FROM idempotency_keys WHERE tenant_id ="
                        " 'tenant-batch' AND idempotency_key = $1",
                        ops[i].key, dk, sizeof dk);
        cr_assert_eq(strlen(ops[i].claim.downstream_key), 27, "%s", ops[i].claim.downstream_key);
        cr_assert_str_eq(dk, ops[i].claim.downstream_key);
        cr_assert_eq(test_query_long(test_db_url(),
                                     "SELECT lease_token FROM idempotency_keys WHERE tenant_id ="
                                     " 'tenant-batch' AND idempotency_key = $1",
                                     ops[i].key),
                     ops[i].claim.lease_token);
        store_claim_result_clear(&ops[i].claim);
    }
}

Test(batch, one_key_twice_in_the_queue_has_one_winner, .init = open_pool_of_one,
     .fini = close_store, .timeout = 60)
{
    struct op ops[3];
    memset(ops, 0, sizeof ops);
    test_unique(ops[0].key, sizeof ops[0].key, "twice");
    strcpy(ops[1].key, ops[0].key);
    test_unique(ops[2].key, sizeof ops[2].key, "other");
    struct store_pool_stats ps = run_queued(ops, 3, claim_thread);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(ops[i].st, STORE_OK, "%s", ops[i].err);
    enum claim_outcome a = ops[0].claim.outcome, c = ops[1].claim.outcome;
    cr_assert((a == CLAIM_NEW && c == CLAIM_IN_PROGRESS) ||
                  (a == CLAIM_IN_PROGRESS && c == CLAIM_NEW),
              "outcomes %d and %d", a, c);
    cr_assert_eq(ops[2].claim.outcome, CLAIM_NEW);
    /* a statement touches a key once: the second claim of it goes in a batch of its own */
    cr_assert_eq(ps.claim_batches, 4);
    cr_assert_eq(ps.batches_split, 0);
    for (int i = 0; i < 3; i++)
        store_claim_result_clear(&ops[i].claim);
}

Test(batch, completions_in_one_statement_are_each_fenced_by_their_own_token,
     .init = open_pool_of_one, .fini = close_store, .timeout = 60)
{
    struct op ops[4];
    memset(ops, 0, sizeof ops);
    claimed(ops, 4, "fenced");
    ops[2].token += 1000; /* this one lost its lease */
    struct store_pool_stats ps = run_queued(ops, 4, complete_thread);
    cr_assert_eq(ps.complete_batches, 1);
    cr_assert_eq(ps.completes_batched, 4);
    cr_assert_eq(ps.batches_split, 0);
    for (int i = 0; i < 4; i++) {
        if (i == 2) {
            cr_assert_eq(ops[i].st, STORE_LEASE_LOST, "%s", ops[i].err);
            cr_assert_eq(payments_for(ops[i].key), 0);
            continue;
        }
        cr_assert_eq(ops[i].st, STORE_OK, "%s", ops[i].err);
        cr_assert_eq(payments_for(ops[i].key), 1);
        /* the cached answer is byte for byte the one given, quotes and all */
        struct store_claim_result r = claim_ok(ops[i].key);
        cr_assert_eq(r.outcome, CLAIM_COMPLETED);
        char want[256];
        body_of(ops[i].key, want, sizeof want);
        cr_assert_str_eq(r.response_body, want);
        store_claim_result_clear(&r);
    }
    char state[32];
    test_query_text(test_db_url(),
                    "SELECT state FROM idempotency_keys WHERE tenant_id = 'tenant-batch'"
                    " AND idempotency_key = $1",
                    ops[2].key, state, sizeof state);
    cr_assert_str_eq(state, "processing");
}

Test(batch, one_failing_completion_does_not_fail_the_others, .init = open_pool_of_one,
     .fini = close_store, .timeout = 60)
{
    struct op ops[3];
    memset(ops, 0, sizeof ops);
    claimed(ops, 3, "fallback");
    /* the middle one's transaction id is taken already: its insert violates
     * the primary key, which fails the whole statement */
    one_fails_alone(ops, complete_thread, payments_for,
                    "INSERT INTO payments (tenant_id, transaction_id, customer_id, amount_minor,"
                    " currency, status, processed_at) VALUES ('tenant-batch', $1, 'c', 1, 'EUR',"
                    " 'completed', now())");
}

/* ---- the acquirer's completions, with their charge rows ----------------- */

/* A charge for o (its txn field holds the charge id), declined for odd
 * amounts; the merchant has what an array literal must escape. */
static void *complete_charge_thread(void *arg)
{
    struct op *o = arg;
    char body[256];
    body_of(o->key, body, sizeof body);
    struct store_response resp = {o->token % 2 ? 402 : 201, body, strlen(body), NULL};
    int declined = o->token % 2 != 0;
    struct store_charge c = {.charge_id = o->txn,
                             .merchant = "merchant \"quoted\" \\ {NULL}",
                             .customer_id = "cust-batch",
                             .amount_minor = o->token,
                             .currency = "EUR",
                             .status = declined ? "declined" : "succeeded",
                             .decline_code = declined ? "card_declined" : NULL,
                             .reference = o->key,
                             .idempotency_key = o->key,
                             .created_at_us = 1700000000000001LL};
    struct store_rows rows = {.charge = &c};
    o->st = store_complete(store, T, o->key, o->token, &resp, &rows, o->err, sizeof o->err);
    return NULL;
}

static long charges_for(const char *key)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM acquirer_charges WHERE idempotency_key = $1", key);
}

Test(batch, charge_completions_in_one_statement_write_each_row_under_its_own_token,
     .init = open_pool_of_one, .fini = close_store, .timeout = 60)
{
    struct op ops[4];
    memset(ops, 0, sizeof ops);
    claimed(ops, 4, "charged");
    for (int i = 0; i < 4; i++)
        snprintf(ops[i].txn, sizeof ops[i].txn, "ch_%.56s", ops[i].key);
    ops[1].token += 1000; /* this one lost its lease */
    int64_t amount[4];
    for (int i = 0; i < 4; i++)
        amount[i] = ops[i].token;
    struct store_pool_stats ps = run_queued(ops, 4, complete_charge_thread);
    cr_assert_eq(ps.complete_batches, 1);
    cr_assert_eq(ps.completes_batched, 4);
    cr_assert_eq(ps.batches_split, 0);
    cr_assert_eq(ops[1].st, STORE_LEASE_LOST, "%s", ops[1].err);
    cr_assert_eq(charges_for(ops[1].key), 0, "a fenced-out completion wrote its charge");
    for (int i = 0; i < 4; i++) {
        if (i == 1)
            continue;
        cr_assert_eq(ops[i].st, STORE_OK, "%s", ops[i].err);
        cr_assert_eq(charges_for(ops[i].key), 1);
        /* the row as given, field by field, through the batch's arrays */
        struct store_charge got;
        char err[256] = "";
        cr_assert_eq(store_get_charge(store, ops[i].txn, &got, err, sizeof err), STORE_OK, "%s",
                     err);
        int declined = amount[i] % 2 != 0;
        cr_assert_str_eq(got.merchant, "merchant \"quoted\" \\ {NULL}");
        cr_assert_str_eq(got.customer_id, "cust-batch");
        cr_assert_eq(got.amount_minor, amount[i]);
        cr_assert_str_eq(got.currency, "EUR");
        cr_assert_str_eq(got.status, declined ? "declined" : "succeeded");
        if (declined)
            cr_assert_str_eq(got.decline_code, "card_declined");
        else
            cr_assert_null(got.decline_code);
        cr_assert_str_eq(got.reference, ops[i].key);
        cr_assert_str_eq(got.idempotency_key, ops[i].key);
        cr_assert_eq(got.created_at_us, 1700000000000001LL);
        store_charge_clear(&got);
        struct store_claim_result r = claim_ok(ops[i].key);
        cr_assert_eq(r.outcome, CLAIM_COMPLETED);
        cr_assert_eq(r.response_status, declined ? 402 : 201);
        store_claim_result_clear(&r);
    }
}

Test(batch, one_failing_charge_completion_does_not_fail_the_others, .init = open_pool_of_one,
     .fini = close_store, .timeout = 60)
{
    struct op ops[3];
    memset(ops, 0, sizeof ops);
    claimed(ops, 3, "chfallback");
    for (int i = 0; i < 3; i++)
        snprintf(ops[i].txn, sizeof ops[i].txn, "ch_%.56s", ops[i].key);
    /* the middle one's charge id is taken: the whole statement fails */
    one_fails_alone(ops, complete_charge_thread, charges_for,
                    "INSERT INTO acquirer_charges (charge_id, merchant, customer_id, amount_minor,"
                    " currency, status, reference, idempotency_key, created_at)"
                    " VALUES ($1, 'm', 'c', 1, 'EUR', 'succeeded', 'r', $1, now())");
}

/* Waits (30 s at most: only "never" fails) until o has finished. */
static int finishes(const struct op *o)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!o->finished && seconds_since(&t0) < 30)
        pause_10ms();
    return o->finished;
}


Test(batch, a_claim_stuck_on_a_lock_does_not_hold_up_other_keys, .init = open_pool_of_two,
     .fini = close_store, .timeout = 120)
{
    /* the blocker's claim waits on a lock held outside the server, holding
     * the claim turn; another key's claim gets a turn of its own on the free
     * connection (once the stuck batch counts as stalled) and is answered
     * while the lock is still held - behind the stuck one it would wait for
     * as long as the lock is */
    struct blocker b;
    block_pool(&b);
    struct op o;
    memset(&o, 0, sizeof o);
    test_unique(o.key, sizeof o.key, "beside");
    cr_assert_eq(pthread_create(&o.thread, NULL, claim_thread, &o), 0);
    cr_assert(finishes(&o), "the claim waited behind the stuck one");
    pthread_join(o.thread, NULL);
    cr_assert_eq(o.st, STORE_OK, "%s", o.err);
    cr_assert_eq(o.claim.outcome, CLAIM_NEW);
    store_claim_result_clear(&o.claim);
    unblock(&b);
}

Test(batch, claims_queued_beside_a_stuck_key_do_not_join_it, .init = open_pool_of_two,
     .fini = close_store, .timeout = 120)
{
    /* a retry of the stuck key is queued (its record is locked: it waits),
     * then another key's claim comes; the turn that starts beside the stuck
     * batch takes the other key only */
    struct blocker b;
    block_pool(&b);
    struct op ops[2];
    memset(ops, 0, sizeof ops);
    strcpy(ops[0].key, b.key);
    test_unique(ops[1].key, sizeof ops[1].key, "innocent");
    cr_assert_eq(pthread_create(&ops[0].thread, NULL, claim_thread, &ops[0]), 0);
    cr_assert_eq(queued(1), 1, "the stuck key's retry was not queued");
    cr_assert_eq(pthread_create(&ops[1].thread, NULL, claim_thread, &ops[1]), 0);
    /* answered while the record is still locked */
    cr_assert(finishes(&ops[1]), "the other key's claim waited with the stuck one");
    pthread_join(ops[1].thread, NULL);
    cr_assert_eq(ops[1].st, STORE_OK, "%s", ops[1].err);
    cr_assert_eq(ops[1].claim.outcome, CLAIM_NEW);
    struct store_pool_stats ps = {0};
    store_pool_stats(store, &ps);
    cr_assert_eq(ps.waiting, 1, "the stuck key's retry waits, queued");
    cr_assert_not(ops[0].finished);
    unblock(&b);
    pthread_join(ops[0].thread, NULL);
    cr_assert_eq(ops[0].st, STORE_OK, "%s", ops[0].err);
    cr_assert_eq(ops[0].claim.outcome, CLAIM_IN_PROGRESS);
    for (int i = 0; i < 2; i++)
        store_claim_result_clear(&ops[i].claim);
}
