/* test_failover.c - the primary PostgreSQL lost under load, a real failover
 * manager (pg_auto_failover: a monitor, two nodes, a synchronous standby)
 * promoting the standby, two real server processes on the two-host URL, and
 * clients that retry as docs/api.md tells them to: nothing a client was told
 * succeeded is lost, and no key is charged twice.
 *
 * The money moves at the real mockery-acquirer (its ledger in the test
 * database: the failover is of the service's PostgreSQL, not the
 * acquirer's), each charge slowed by 20 ms so that asks are in flight when
 * the primary goes: a payment charged whose completion the failover lost is
 * 503 outcome_pending, its record kept, and the retry (or the servers'
 * recovery, left on: the cluster is the test's own) completes it with the
 * one charge. The test ends on the acquirer's ledger: one charge for every
 * payment acknowledged, under the transaction id the client was given, no
 * charge of the run without its payment, and scripts/reconcile clean.
 *
 * The load is not an amount of work: the clients make new payments until
 * the main thread has seen the whole failover (payments acknowledged before
 * the kill, /health down, /health up again, and payments acknowledged after
 * that), so the kill lands mid-load on a machine of any speed. */
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

enum {
    CLIENTS = 12,
    SERVERS = 2,
    /* payments acknowledged before the kill, and again after /health is
     * back, before the load stops: the failover happens mid-load */
    ACKS_EACH_SIDE = 3 * CLIENTS,
};

static char ha_name[64], url[512], run_tag[64];
static struct test_server srv[SERVERS];
static struct test_acquirer acq;

static void down(void)
{
    test_acquirers_kill_all(); /* first: nothing below can fail before it */
    for (int i = 0; i < SERVERS; i++)
        if (srv[i].pid)
            test_server_stop(&srv[i]);
    test_ha(ha_name, "down", NULL, 0);
}

/* What one client saw. */
struct client {
    int id;
    int keys;                 /* keys started, each answered 201/200/402 in the end */
    char (*txn)[64];          /* [keys]: the transaction each key was acknowledged with */
    long *status;             /* [keys]: its final answer's status */
    int cap;
    int unavailable, pending, conflicts, dropped, internal, gateway, replays_after_error;
    int after_pending;       /* keys answered after a 503 outcome_pending */
    double last_unavailable; /* when its last 503 or dropped connection came */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static double kill_at;      /* (mu) 0 until the primary is killed */
static double recovered_at; /* (mu) 0 until /health answered 200 after the kill */
static int acked_before_kill, acked_after_recovery; /* (mu) */
static int stop_load;       /* (mu) set: finish the key in hand, start no other */

static int counters(int *before, int *after)
{
    pthread_mutex_lock(&mu);
    *before = acked_before_kill;
    *after = acked_after_recovery;
    int stop = stop_load;
    pthread_mutex_unlock(&mu);
    return stop;
}

/* One key to its final answer (201 or 402, or 200 replaying a 201), retrying
 * through the failover as the README and docs/api.md say, with the same key
 * and body, on the other server each time: 503 (store_unavailable, or
 * outcome_pending: the acquirer may have charged) and 409 after their
 * Retry-After, 500, 502 and a dropped connection after 100 ms. */
static void pay_one(struct client *c, const char *body, int k)
{
    char key[128], u[128], keyh[200];
    snprintf(key, sizeof key, "%s-%d-%d", run_tag, c->id, k);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
    const char *headers[] = {"Content-Type: application/json", keyh, NULL};
    int erred = 0, was_pending = 0;
    /* Not a measure of speed: a key that no server answers for this long
     * after the failover has ended is a server that stopped serving. */
    for (int attempt = 0;; attempt++) {
        pthread_mutex_lock(&mu);
        double since = recovered_at;
        pthread_mutex_unlock(&mu);
        cr_assert(since == 0 || test_now_s() < since + 120,
                  "key %s has no final answer 120 s after /health came back", key);
        /* spread over both servers, as a load balancer would */
        snprintf(u, sizeof u, "%s/api/v1/payments", srv[(c->id + attempt) % SERVERS].base);
        struct httpc_response r;
        int rc = httpc_request("POST", u, headers, body, strlen(body), 10000, &r);
        long st = rc == 0 ? r.status : 0;
        if (st == 201 || st == 200 || st == 402) {
            cJSON *o = cJSON_Parse(r.body);
            cJSON *t = cJSON_GetObjectItem(o, "transaction_id");
            cr_assert(cJSON_IsString(t), "%s", r.body);
            snprintf(c->txn[k], sizeof c->txn[k], "%s", t->valuestring);
            c->status[k] = st;
            cJSON_Delete(o);
            c->replays_after_error += st == 200 && erred;
            c->after_pending += was_pending;
            httpc_response_free(&r);
            break;
        }
        cr_assert(rc != 0 || st == 503 || st == 409 || st == 500 || st == 502,
                  "key %s: unexpected %ld %s", key, st, r.body);
        int pending = st == 503 && strstr(r.body, "\"outcome_pending\"") != NULL;
        c->dropped += rc != 0;
        c->pending += pending;
        c->unavailable += st == 503 && !pending;
        c->conflicts += st == 409;
        c->internal += st == 500;
        c->gateway += st == 502;
        if (rc != 0 || st == 503)
            c->last_unavailable = test_now_s();
        erred |= st != 409;
        was_pending |= pending;
        long wait = rc == 0 && atol(r.retry_after) > 0 ? atol(r.retry_after) * 1000 : 100;
        httpc_response_free(&r);
        test_sleep_ms(wait);
    }
    pthread_mutex_lock(&mu);
    if (kill_at == 0)
        acked_before_kill++;
    else if (recovered_at != 0)
        acked_after_recovery++;
    pthread_mutex_unlock(&mu);
}

static void *client_main(void *p)
{
    struct client *c = p;
    char body[160];
    snprintf(body, sizeof body, "{\"amount\":12.34,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             run_tag);
    int before, after;
    while (!counters(&before, &after)) {
        if (c->keys == c->cap) {
            c->cap = c->cap ? 2 * c->cap : 64;
            c->txn = realloc(c->txn, (size_t)c->cap * sizeof *c->txn);
            c->status = realloc(c->status, (size_t)c->cap * sizeof *c->status);
            cr_assert(c->txn && c->status);
        }
        pay_one(c, body, c->keys++);
    }
    return NULL;
}

/* Polls until done() holds, failing with what after limit_s seconds: the
 * bound says when to give up on an event, never when it should happen. */
static void wait_for(int (*done)(void), double limit_s, const char *what)
{
    double give_up = test_now_s() + limit_s;
    while (!done()) {
        cr_assert_lt(test_now_s(), give_up, "%s: not within %.0f s", what, limit_s);
        test_sleep_ms(50);
    }
}

static int enough_before(void)
{
    int before, after;
    counters(&before, &after);
    return before >= ACKS_EACH_SIDE;
}

static int enough_after(void)
{
    int before, after;
    counters(&before, &after);
    return after >= ACKS_EACH_SIDE;
}

/* GET /health of server i: its status, and the body into out. */
static long health(int i, char *out, size_t len)
{
    char u[160];
    snprintf(u, sizeof u, "%s/health", srv[i].base);
    struct httpc_response h;
    long st = httpc_request("GET", u, NULL, NULL, 0, 10000, &h) == 0 ? h.status : 0;
    snprintf(out, len, "%s", st ? h.body : "(no answer)");
    httpc_response_free(&h);
    return st;
}

Test(failover, the_primary_lost_under_load_loses_no_acknowledged_payment, .fini = down,
     .timeout = 660)
{
    test_unique(ha_name, sizeof ha_name, "ha");
    test_unique(run_tag, sizeof run_tag, "fo");
    test_ha(ha_name, "up", url, sizeof url);
    cr_assert(strstr(url, "target_session_attrs=read-write"), "%s", url);
    /* the acquirer, its ledger in a database of its own beside the test
     * database (not on the cluster that fails over; and no other test's
     * charges in what is reconciled): each charge of this run 20 ms long,
     * so that the kill finds asks in flight */
    char since[64], slow[128], ledger[600], env_url[640];
    test_acquirer_database(test_db_url(), "failover_acquirer", ledger, sizeof ledger);
    test_query_text(ledger, "SELECT now()::text WHERE $1 = $1", "x", since, sizeof since);
    snprintf(slow, sizeof slow, "latency:prefix=%s:ms=20", run_tag);
    snprintf(env_url, sizeof env_url, "MOCKERY_ACQUIRER_DATABASE_URL=%s", ledger);
    char *env[] = {env_url, "PATH=/usr/bin:/bin", NULL};
    const char *const faults[] = {"--fault", slow, NULL};
    memset(&acq, 0, sizeof acq);
    test_acquirer_start_env(&acq, faults, 1, 0, env);
    struct config cfg;
    test_config(&cfg, STORE_KIND_POSTGRES);
    snprintf(cfg.database_url, sizeof cfg.database_url, "%s", url);
    cfg.pool_size = 4;
    cfg.lease_s = 3; /* a claim whose holder lost its database is free again soon */
    snprintf(cfg.acquirer_url, sizeof cfg.acquirer_url, "%s", acq.base);
    cfg.acquirer_timeout_ms = 1000; /* below the lease, as the server requires */
    /* recovery stays on (every second): the cluster is this test's alone */
    for (int i = 0; i < SERVERS; i++)
        test_server_spawn(&srv[i], &cfg, MOCKERY_SERVER_BIN);

    static struct client c[CLIENTS];
    pthread_t t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].id = i;
        pthread_create(&t[i], NULL, client_main, &c[i]);
    }
    /* mid-load: payments are being acknowledged, and the clients go on */
    wait_for(enough_before, 120, "payments acknowledged before the kill");
    char killed_port[32];
    pthread_mutex_lock(&mu);
    kill_at = test_now_s();
    pthread_mutex_unlock(&mu);
    test_ha(ha_name, "failover", killed_port, sizeof killed_port);

    /* while there is no primary, /health says so; then, once the standby is
     * promoted, it says the database is up again */
    char body[200];
    long seen = 0;
    double give_up = test_now_s() + 60;
    while ((seen = health(0, body, sizeof body)) != 503) {
        cr_assert_lt(test_now_s(), give_up, "/health never said the database was down: %ld %s",
                     seen, body);
        test_sleep_ms(100);
    }
    cr_assert(strstr(body, "\"database\":\"down\""), "%s", body);
    give_up = test_now_s() + 300;
    while ((seen = health(0, body, sizeof body)) != 200) {
        cr_assert_lt(test_now_s(), give_up, "after the failover: %ld %s", seen, body);
        test_sleep_ms(250);
    }
    pthread_mutex_lock(&mu);
    recovered_at = test_now_s();
    pthread_mutex_unlock(&mu);
    /* the new primary takes payments under the same load */
    wait_for(enough_after, 120, "payments acknowledged after /health came back");
    pthread_mutex_lock(&mu);
    stop_load = 1;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(t[i], NULL);
    cr_assert_eq(health(0, body, sizeof body), 200, "after the failover: %s", body);
    cr_assert_eq(health(1, body, sizeof body), 200, "after the failover: %s", body);
    /* what the servers' recovery has left to finish (a record that asked
     * the acquirer, left processing): nothing, within 120 s */
    test_wait_count(url,
                    "SELECT count(*) FROM idempotency_keys WHERE request IS NOT NULL"
                    " AND state = 'processing' AND $1 = $1",
                    "x", 0, 120, "records waiting for recovery");

    /* From the new primary: every acknowledged payment once, with the id the
     * client was given; no other payment; no record left processing. */
    int acked = 0;
    for (int i = 0; i < CLIENTS; i++)
        acked += c[i].keys;
    PGconn *conn = PQconnectdb(url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    PGresult *res = PQexec(conn, "SELECT inet_server_port()::text");
    cr_assert_str_neq(PQgetvalue(res, 0, 0), killed_port, "still on the killed primary");
    PQclear(res);
    const char *vals[] = {run_tag};
    res = PQexecParams(conn,
                       "SELECT idempotency_key, count(*), min(transaction_id) FROM payments"
                       " WHERE customer_id = $1 GROUP BY 1",
                       1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    int rows = PQntuples(res), found = 0;
    for (int i = 0; i < rows; i++) {
        const char *key = PQgetvalue(res, i, 0);
        cr_assert_str_eq(PQgetvalue(res, i, 1), "1", "key %s has %s payments", key,
                         PQgetvalue(res, i, 1));
        int client, k;
        cr_assert_eq(sscanf(key + strlen(run_tag), "-%d-%d", &client, &k), 2, "%s", key);
        cr_assert(client >= 0 && client < CLIENTS && k >= 0 && k < c[client].keys,
                  "key %s was never acknowledged, yet it has a payment", key);
        cr_assert_str_eq(PQgetvalue(res, i, 2), c[client].txn[k],
                         "key %s: the client was told %s, the database holds %s", key,
                         c[client].txn[k], PQgetvalue(res, i, 2));
        found++;
    }
    cr_assert_eq(found, acked, "%d acknowledged payments, %d in the database", acked, found);
    PQclear(res);
    res = PQexecParams(conn,
                       "SELECT count(*) FROM idempotency_keys WHERE state = 'processing'"
                       " AND idempotency_key LIKE $1 || '-%'",
                       1, NULL, vals, NULL, NULL, 0);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "0", "records left processing");
    PQclear(res);
    PQfinish(conn);

    /* The acquirer's ledger: every payment acknowledged (201, its 200
     * replay, or 402) is one charge there under the transaction id the
     * client was given, of that outcome; and no charge of this run's
     * customer is without its payment. */
    conn = PQconnectdb(ledger);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    for (int i = 0; i < CLIENTS; i++)
        for (int k = 0; k < c[i].keys; k++) {
            const char *ref[] = {c[i].txn[k]};
            res = PQexecParams(conn,
                               "SELECT count(*), coalesce(min(status), '') FROM acquirer_charges"
                               " WHERE reference = $1",
                               1, NULL, ref, NULL, NULL, 0);
            cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
            cr_assert_str_eq(PQgetvalue(res, 0, 0), "1",
                             "key %s-%d-%d (%s): %s charges at the acquirer", run_tag, i, k,
                             c[i].txn[k], PQgetvalue(res, 0, 0));
            cr_assert_str_eq(PQgetvalue(res, 0, 1),
                             c[i].status[k] == 402 ? "declined" : "succeeded",
                             "key %s-%d-%d answered %ld", run_tag, i, k, c[i].status[k]);
            PQclear(res);
        }
    res = PQexecParams(conn, "SELECT count(*) FROM acquirer_charges WHERE customer_id = $1", 1,
                       NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    cr_assert_eq(atoi(PQgetvalue(res, 0, 0)), acked,
                 "%s charges at the acquirer for %d acknowledged payments", PQgetvalue(res, 0, 0),
                 acked);
    PQclear(res);
    PQfinish(conn);
    for (int i = 0; i < SERVERS; i++)
        test_server_stop(&srv[i]);
    /* both ways, as an operator checks it: no charge without its payment
     * here, no payment without its charge */
    test_expect_reconciled(url, ledger, since);
    test_acquirer_stop(&acq);

    int unavailable = 0, pending = 0, conflicts = 0, dropped = 0, internal = 0, gateway = 0,
        unknown = 0, after_pending = 0;
    double last = 0;
    for (int i = 0; i < CLIENTS; i++) {
        unavailable += c[i].unavailable;
        pending += c[i].pending;
        conflicts += c[i].conflicts;
        dropped += c[i].dropped;
        internal += c[i].internal;
        gateway += c[i].gateway;
        unknown += c[i].replays_after_error;
        after_pending += c[i].after_pending;
        if (c[i].last_unavailable > last)
            last = c[i].last_unavailable;
        free(c[i].txn);
        free(c[i].status);
    }
    cr_assert_gt(last, kill_at, "no request ever found the database gone: was it killed?");
    cr_assert_geq(acked_before_kill, ACKS_EACH_SIDE);
    cr_assert_geq(acked_after_recovery, ACKS_EACH_SIDE);
    fprintf(stderr,
            "failover: %d payments, each acknowledged once (%d before the kill, %d after /health "
            "came back %.1f s after it), each one charge at the acquirer; without a primary for "
            "%.1f s (the kill to the last 503); 503 store_unavailable %d, 503 outcome_pending %d "
            "(%d keys answered after one), 409 %d, 500 %d, 502 %d, dropped %d; keys whose retry "
            "after an error was a replay (the first answer lost, the payment not): %d\n",
            found, acked_before_kill, acked_after_recovery, recovered_at - kill_at, last - kill_at,
            unavailable, pending, after_pending, conflicts, internal, gateway, dropped, unknown);
}
