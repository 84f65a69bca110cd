/* test_pgbouncer.c - three real server processes on one pgbouncer in
 * transaction pooling mode (5 server connections for their 3 x 4), with
 * unnamed statements: every key one payment, every 201 a row, every replay
 * the same bytes from whichever server answers it */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

enum { SERVERS = 3, BURSTS = 20, BURST = 20, KEYS = 1000, KEY_THREADS = 16 };

static struct test_server srv[SERVERS];
static char run_tag[64];

static void start_three(void)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    snprintf(c.database_url, sizeof c.database_url, "%s", test_pgbouncer_url());
    c.unnamed_statements = 1;
    c.pool_size = 4;
    c.processing_delay_ms = 100; /* duplicates overlap the first */
    for (int i = 0; i < SERVERS; i++) {
        memset(&srv[i], 0, sizeof srv[i]);
        test_server_spawn(&srv[i], &c, MOCKERY_SERVER_BIN);
    }
    test_unique(run_tag, sizeof run_tag, "pgb");
}

static void stop_three(void)
{
    for (int i = 0; i < SERVERS; i++)
        test_server_stop(&srv[i]);
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
}

struct keys {
    int from, to;
    int created, failed;
};

static void *keys_main(void *p)
{
    struct keys *k = p;
    for (int n = k->from; n < k->to; n++) {
        char key[96], body[160];
        struct httpc_response r;
        snprintf(key, sizeof key, "%s-key-%d", run_tag, n);
        body_for(body, sizeof body, n);
        if (post(&srv[n % SERVERS], key, body, &r) == 0 && r.status == 201)
            k->created++;
        else
            k->failed++;
        httpc_response_free(&r);
    }
    return NULL;
}

Test(pgbouncer, a_thousand_keys_on_three_servers_are_a_thousand_rows, .init = start_three,
     .fini = stop_three, .timeout = 180)
{
    pthread_t t[KEY_THREADS];
    struct keys k[KEY_THREADS];
    for (int i = 0; i < KEY_THREADS; i++) {
        k[i] = (struct keys){i * KEYS / KEY_THREADS, (i + 1) * KEYS / KEY_THREADS, 0, 0};
        pthread_create(&t[i], NULL, keys_main, &k[i]);
    }
    int created = 0, failed = 0;
    for (int i = 0; i < KEY_THREADS; i++) {
        pthread_join(t[i], NULL);
        created += k[i].created;
        failed += k[i].failed;
    }
    cr_assert_eq(failed, 0, "%d requests were not 201", failed);
    cr_assert_eq(created, KEYS);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM payments WHERE customer_id = $1", run_tag),
                 KEYS);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(DISTINCT idempotency_key) FROM payments"
                                 " WHERE customer_id = $1",
                                 run_tag),
                 KEYS);
}
