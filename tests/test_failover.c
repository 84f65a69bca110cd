/* test_failover.c - the primary PostgreSQL lost under load, a real failover
 * manager (pg_auto_failover: a monitor, two nodes, a synchronous standby)
 * promoting the standby, two real server processes on the two-host URL, and
 * clients that retry as the README tells them to: nothing a client was told
 * succeeded is lost, and no key is charged twice */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

enum { CLIENTS = 12, KEYS_EACH = 40, SERVERS = 2 };

static char ha_name[64], url[512], run_tag[64];
static struct test_server srv[SERVERS];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void down(void)
{
    for (int i = 0; i < SERVERS; i++)
        if (srv[i].pid)
            test_server_stop(&srv[i]);
    test_ha(ha_name, "down", NULL, 0);
}

/* What one client saw. */
struct client {
    int id;
    char txn[KEYS_EACH][64]; /* the transaction each key was acknowledged with */
    int unavailable, conflicts, dropped, internal, replays_after_error;
    double last_unavailable; /* when its last 503 or dropped connection came */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static double kill_at; /* (mu) 0 until the primary is killed */
static int keys_done;  /* (mu) */

static void *client_main(void *p)
{
    struct client *c = p;
    char body[160];
    snprintf(body, sizeof body, "{\"amount\":12.34,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             run_tag);
    for (int k = 0; k < KEYS_EACH; k++) {
        char key[128], u[128], keyh[200];
        snprintf(key, sizeof key, "%s-%d-%d", run_tag, c->id, k);
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
        const char *headers[] = {"Content-Type: application/json", keyh, NULL};
        int erred = 0;
        double deadline = now_s() + 120;
        for (int attempt = 0;; attempt++) {
            cr_assert_lt(now_s(), deadline, "key %s has no final answer after 120 s", key);
            /* spread over both servers, as a load balancer would */
            snprintf(u, sizeof u, "%s/api/v1/payments", srv[(c->id + attempt) % SERVERS].base);
            struct httpc_response r;
            int rc = httpc_request("POST", u, headers, body, strlen(body), 10000, &r);
            long st = rc == 0 ? r.status : 0;
            if (st == 201 || st == 200) {
                cJSON *o = cJSON_Parse(r.body);
                cJSON *t = cJSON_GetObjectItem(o, "transaction_id");
                cr_assert(cJSON_IsString(t), "%s", r.body);
                snprintf(c->txn[k], sizeof c->txn[k], "%s", t->valuestring);
                cJSON_Delete(o);
                c->replays_after_error += st == 200 && erred;
                httpc_response_free(&r);
                break;
            }
            cr_assert(rc != 0 || st == 503 || st == 409 || st == 500,
                      "key %s: unexpected %ld %s", key, st, r.body);
            c->dropped += rc != 0;
            c->unavailable += st == 503;
            c->conflicts += st == 409;
            c->internal += st == 500;
            if (rc != 0 || st == 503)
                c->last_unavailable = now_s();
            erred |= st != 409;
            httpc_response_free(&r);
            sleep_ms(st == 409 ? 250 : 100);
        }
        pthread_mutex_lock(&mu);
        keys_done++;
        pthread_mutex_unlock(&mu);
    }
    return NULL;
}

Test(failover, the_primary_lost_under_load_loses_no_acknowledged_payment, .fini = down,
     .timeout = 300)
{
    test_unique(ha_name, sizeof ha_name, "ha");
    test_unique(run_tag, sizeof run_tag, "fo");
    test_ha(ha_name, "up", url, sizeof url);
    cr_assert(strstr(url, "target_session_attrs=read-write"), "%s", url);
    struct config cfg;
    test_config(&cfg, STORE_KIND_POSTGRES);
    snprintf(cfg.database_url, sizeof cfg.database_url, "%s", url);
    cfg.pool_size = 4;
    cfg.lease_s = 3; /* a claim whose holder lost its database is free again soon */
    cfg.processing_delay_ms = 20;
    for (int i = 0; i < SERVERS; i++)
        test_server_spawn(&srv[i], &cfg, MOCKERY_SERVER_BIN);

    static struct client c[CLIENTS];
    pthread_t t[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].id = i;
        pthread_create(&t[i], NULL, client_main, &c[i]);
    }
    /* mid-load: a third of the keys answered */
    for (int i = 0; i < 600; i++) {
        pthread_mutex_lock(&mu);
        int done = keys_done;
        pthread_mutex_unlock(&mu);
        if (done >= CLIENTS * KEYS_EACH / 3)
            break;
        sleep_ms(50);
    }
    char killed_port[32];
    pthread_mutex_lock(&mu);
    kill_at = now_s();
    pthread_mutex_unlock(&mu);
    test_ha(ha_name, "failover", killed_port, sizeof killed_port);
    /* while there is no primary, /health says so */
    char health[160];
    snprintf(health, sizeof health, "%s/health", srv[0].base);
    long seen = 0;
    for (int i = 0; i < 100 && seen != 503; i++) {
        struct httpc_response h;
        seen = httpc_request("GET", health, NULL, NULL, 0, 10000, &h) == 0 ? h.status : 0;
        if (seen == 503)
            cr_assert(strstr(h.body, "\"database\":\"down\""), "%s", h.body);
        httpc_response_free(&h);
        sleep_ms(100);
    }
    cr_assert_eq(seen, 503, "/health never said the database was down");
    for (int i = 0; i < CLIENTS; i++)
        pthread_join(t[i], NULL);
    struct httpc_response h;
    cr_assert_eq(httpc_request("GET", health, NULL, NULL, 0, 10000, &h), 0);
    cr_assert_eq(h.status, 200, "after the failover: %s", h.body);
    httpc_response_free(&h);

    /* From the new primary: every acknowledged payment once, with the id the
     * client was given; no other payment; no record left processing. */
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
        cr_assert_str_eq(PQgetvalue(res, i, 2), c[client].txn[k],
                         "key %s: the client was told %s, the database holds %s", key,
                         c[client].txn[k], PQgetvalue(res, i, 2));
        found++;
    }
    cr_assert_eq(found, CLIENTS * KEYS_EACH, "%d acknowledged payments, %d in the database",
                 CLIENTS * KEYS_EACH, found);
    PQclear(res);
    res = PQexecParams(conn,
                       "SELECT count(*) FROM idempotency_keys WHERE state = 'processing'"
                       " AND idempotency_key LIKE $1 || '-%'",
                       1, NULL, vals, NULL, NULL, 0);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "0", "records left processing");
    PQclear(res);
    PQfinish(conn);

    int unavailable = 0, conflicts = 0, dropped = 0, internal = 0, unknown = 0;
    double last = 0;
    for (int i = 0; i < CLIENTS; i++) {
        unavailable += c[i].unavailable;
        conflicts += c[i].conflicts;
        dropped += c[i].dropped;
        internal += c[i].internal;
        unknown += c[i].replays_after_error;
        if (c[i].last_unavailable > last)
            last = c[i].last_unavailable;
    }
    cr_assert_gt(last, kill_at, "no request ever found the database gone: was it killed?");
    fprintf(stderr,
            "failover: %d payments, each acknowledged once; without a primary for %.1f s (the kill "
            "to the last 503); 503 store_unavailable %d, 409 %d, 500 %d, dropped %d; keys whose "
            "retry after an error was a replay (the first answer lost, the payment not): %d\n",
            found, last - kill_at, unavailable, conflicts, internal, dropped, unknown);
}
