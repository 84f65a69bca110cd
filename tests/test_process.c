/* test_process.c - the mockery-server executable: flags, exit codes, and
 * what it prints */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "acquirer_proc.h"
#include "support.h"

extern char **environ;

static void run_server(char *const args[], struct test_run *r)
{
    test_run_program(MOCKERY_SERVER_BIN, args, environ, r);
}

static void expect_one_json_line(const char *text, const char *needle)
{
    const char *nl = strchr(text, '\n');
    cr_assert_not_null(nl, "no line: %s", text);
    cr_assert_eq(nl[1], '\0', "more than one line: %s", text);
    cJSON *o = cJSON_ParseWithLength(text, (size_t)(nl - text));
    cr_assert_not_null(o, "not JSON: %s", text);
    cr_assert_not_null(strstr(text, needle), "%s does not name %s", text, needle);
    cJSON_Delete(o);
}

Test(process, bad_flags_exit_2_with_one_json_line)
{
    char *const cases[][3] = {
        {"mockery-server", "--threads=zero", NULL},
        {"mockery-server", "--no-such-flag", NULL},
        {"mockery-server", "--store=oracle", NULL},
        {"mockery-server", "--port=70000", NULL},
    };
    const char *names[] = {"--threads", "--no-such-flag", "--store", "--port"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct test_run r;
        run_server(cases[i], &r);
        cr_assert_eq(r.code, 2, "%s: exit %d", cases[i][1], r.code);
        expect_one_json_line(r.err, names[i]);
    }
}

Test(process, bad_environment_exits_2)
{
    setenv("MOCKERY_POOL_SIZE", "-3", 1);
    char *const args[] = {"mockery-server", NULL};
    struct test_run r;
    run_server(args, &r);
    cr_assert_eq(r.code, 2);
    expect_one_json_line(r.err, "MOCKERY_POOL_SIZE");
}

Test(process, help_lists_every_flag)
{
    char *const args[] = {"mockery-server", "--help", NULL};
    struct test_run r;
    run_server(args, &r);
    cr_assert_eq(r.code, 0);
    const char *flags[] = {"--port",
                           "--database-url",
                           "--store",
                           "--threads",
                           "--pool-size",
                           "--idempotency-ttl",
                           "--lease",
                           "--processing-delay-ms",
                           "--require-key",
                           "--api-keys",
                           "--log-level",
                           "--db-wait",
                           "--reaper-interval-ms",
                           "--reaper-batch",
                           "--unnamed-statements"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        cr_assert_not_null(strstr(r.out, flags[i]), "--help does not mention %s", flags[i]);
}

Test(process, unreachable_database_fails_start_up_with_a_json_line)
{
    /* Port 1 on loopback: nothing listens, the connection is refused at once. */
    char *const args[] = {"mockery-server",
                          "--database-url",
                          "postgresql://nobody:secret-pw@127.0.0.1:1/none?connect_timeout=2",
                          "--port",
                          "0",
                          "--db-wait",
                          "0",
                          NULL};
    struct test_run r;
    run_server(args, &r);
    cr_assert_eq(r.code, 1);
    cr_assert_not_null(strstr(r.err, "could not connect"), "%s", r.err);
    cr_assert_null(strstr(r.err, "secret-pw"), "the password was logged: %s", r.err);
    for (const char *line = r.err; *line;) {
        const char *nl = strchr(line, '\n');
        cr_assert_not_null(nl);
        cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
        cr_assert_not_null(o, "not a JSON line: %.*s", (int)(nl - line), line);
        cJSON_Delete(o);
        line = nl + 1;
    }
}

/* ---- SIGTERM: stop accepting, finish what is in flight, exit 0 ------------------ */

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <time.h>

static struct test_server srv;

struct inflight {
    const char *key;
    const char *body;
    struct test_response r;
};

static void *post_in_flight(void *p)
{
    struct inflight *f = p;
    test_post_payment(&srv, f->key, f->body, &f->r);
    return NULL;
}

/* The state of key's record ("" when there is none). With lock set, in the
 * transaction the caller opened: the row stays locked for it when there is
 * one, so a completion of the record waits until that transaction ends. */
static const char *record_state(PGconn *conn, const char *key, int lock, char *buf, size_t len)
{
    const char *vals[] = {key};
    PGresult *res = PQexecParams(
        conn,
        lock ? "SELECT state FROM idempotency_keys WHERE idempotency_key = $1 FOR UPDATE"
             : "SELECT state FROM idempotency_keys WHERE idempotency_key = $1",
        1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    snprintf(buf, len, "%s", PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return buf;
}

/* Seconds since *t0 (CLOCK_MONOTONIC). */
static long seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(now.tv_sec - t0->tv_sec);
}

static void pause_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A connection to srv kept alive after one answer (GET /health), idle. */
static int open_kept_alive(void)
{
    int fd = test_server_connect(&srv);
    const char req[] = "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    test_send_all(fd, req, sizeof req - 1);
    /* the whole answer: its head, then Content-Length bytes of body */
    char buf[4096];
    size_t n = 0;
    const char *end = NULL, *cl = NULL;
    while (!end || n < (size_t)(end + 4 - buf) + (size_t)atol(cl + 15)) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        cr_assert_eq(poll(&p, 1, 30000), 1, "no answer to GET /health within 30 s");
        ssize_t got = recv(fd, buf + n, sizeof buf - n - 1, 0);
        cr_assert_gt(got, 0, "the connection ended before its answer");
        n += (size_t)got;
        buf[n] = '\0';
        end = strstr(buf, "\r\n\r\n");
        cl = strstr(buf, "Content-Length: ");
        cr_assert(!end || cl, "no Content-Length: %s", buf);
    }
    cr_assert_not_null(strstr(buf, " 200 "), "%s", buf);
    cr_assert_null(strstr(buf, "Connection: close"), "not kept alive: %s", buf);
    return fd;
}

/* A payment in flight when the SIGTERM lands is answered and stored, and a
 * connection kept alive and idle is closed by the server meanwhile: its
 * client goes elsewhere without waiting for the last request. */
Test(process, sigterm_finishes_requests_in_flight, .timeout = 180)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    c.processing_delay_ms = 1500;
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, MOCKERY_SERVER_BIN);
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK);

    /* A payment in flight, held there: once its key is claimed the test
     * locks the record, so the request's completion waits in PostgreSQL for
     * as long as the test holds the lock - the SIGTERM lands while it runs
     * however slow the machine. The lock can only be taken while the record
     * is processing (1.5 s, the processor's time): a poll that misses that
     * finds it completed, and the test tries again with a new payment. */
    char key[96], cust[64], body[256], state[32] = "";
    struct inflight f;
    pthread_t t;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        cr_assert_lt(seconds_since(&t0), 60, "no payment was caught processing within 60 s");
        test_unique(key, sizeof key, "term");
        test_unique(cust, sizeof cust, "cust");
        snprintf(body, sizeof body, "{\"amount\":5,\"currency\":\"USD\",\"customer_id\":\"%s\"}",
                 cust);
        f = (struct inflight){key, body, {0}};
        pthread_create(&t, NULL, post_in_flight, &f);
        for (;;) {
            test_exec_ok(conn, "BEGIN");
            record_state(conn, key, 1, state, sizeof state);
            if (strcmp(state, "") != 0)
                break;
            test_exec_ok(conn, "ROLLBACK");
            cr_assert_lt(seconds_since(&t0), 60, "the payment's key was not claimed within 60 s");
            pause_ms(10);
        }
        if (strcmp(state, "processing") == 0)
            break; /* locked, still processing: the request is in flight */
        test_exec_ok(conn, "ROLLBACK");
        pthread_join(t, NULL);
        cr_assert_eq(f.r.status, 201, "%s", f.r.body);
        test_response_free(&f.r);
    }

    /* SIGTERM now, while it runs; then the lock goes, once the server has
     * begun to stop and closed the idle connection. The answer still comes,
     * and is stored. */
    int idle = open_kept_alive();
    cr_assert_eq(kill(srv.pid, SIGTERM), 0);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (!test_log_has(srv.log_path, "stopping: finishing requests in flight")) {
        cr_assert_lt(seconds_since(&t0), 30, "the server did not begin to stop within 30 s");
        pause_ms(10);
    }
    /* (civetweb would close it after 5 s idle anyway: what shows that the
     * stop closed it is the server's line) */
    while (!test_log_has(srv.log_path, "stopping: closed idle connections")) {
        cr_assert_lt(seconds_since(&t0), 30,
                     "the idle connection was not closed within 30 s of the SIGTERM");
        pause_ms(10);
    }
    struct pollfd p = {.fd = idle, .events = POLLIN};
    char byte;
    cr_assert_eq(poll(&p, 1, 30000), 1, "the idle connection did not end");
    cr_assert_leq(recv(idle, &byte, 1, 0), 0, "the idle connection got bytes, not its end");
    close(idle);
    cr_assert_str_eq(record_state(conn, key, 0, state, sizeof state), "processing",
                     "the request finished before the SIGTERM");
    test_exec_ok(conn, "COMMIT");
    test_server_stop(&srv); /* (SIGTERM again, harmless) asserts exit code 0 */
    pthread_join(t, NULL);
    cr_assert_eq(f.r.status, 201, "in-flight request answered %ld: %s", f.r.status, f.r.body);
    cr_assert_str_eq(record_state(conn, key, 0, state, sizeof state), "completed");
    const char *vals[] = {key};
    PGresult *res = PQexecParams(conn, "SELECT count(*) FROM payments WHERE idempotency_key = $1",
                                 1, NULL, vals, NULL, NULL, 0);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "1");
    PQclear(res);
    PQfinish(conn);
    test_response_free(&f.r);
}

/* ---- the walkthrough ------------------------------------------------------------ */

/* The text of the demo's scenario that starts with "\n<from>" (up to the
 * next one, or the end) into buf. */
static void scenario(const char *out, const char *from, const char *to, char *buf, size_t len)
{
    const char *a = strstr(out, from);
    cr_assert_not_null(a, "demo output lacks '%s':\n%s", from + 1, out);
    const char *b = to ? strstr(a, to) : NULL;
    size_t n = b ? (size_t)(b - a) : strlen(a);
    snprintf(buf, len, "%.*s", (int)n, a);
}

/* Each of the n lines was printed by the demo. */
static void expect_seen(const char *out, const char *const *seen, size_t n)
{
    for (size_t i = 0; i < n; i++)
        cr_assert_not_null(strstr(out, seen[i]), "demo output lacks '%s':\n%s", seen[i], out);
}

/* Every "POST retry, same key" line of a scenario whose first request's
 * answer was lost is an answer a retry may get, and there is one. Which
 * one depends on when the retry came - on the machine's speed: while the
 * first request still ran (409, come back in 1 s), after it (its answer,
 * replayed), or before it even claimed the key (the retry is the one that
 * runs: 201). What must not vary is what the demo then checks: one charge. */
static void retries_are_answers(const char *text)
{
    int retries = 0;
    for (const char *line = text; (line = strstr(line, "POST retry, same key"));) {
        size_t n = strcspn(line, "\n");
        char one[512];
        snprintf(one, sizeof one, "%.*s", (int)n, line);
        line += n;
        retries++;
        const char *arrow = strstr(one, "-> ");
        cr_assert_not_null(arrow, "%s", one);
        int ok = (strstr(arrow, "-> 409  error idempotency_key_in_use  Retry-After: 1") == arrow) ||
                 (strncmp(arrow, "-> 200 ", 7) == 0 && strstr(arrow, "X-Idempotent-Replay: true")) ||
                 (strncmp(arrow, "-> 201 ", 7) == 0 && !strstr(arrow, "X-Idempotent-Replay"));
        cr_assert(ok, "not an answer to a retry: '%s' in:\n%s", one, text);
    }
    cr_assert_gt(retries, 0, "no retry in:\n%s", text);
}

Test(process, demo_walkthrough_reports_zero_double_charges, .timeout = 120)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES); /* no processing delay: slow customers instead */
    c.webhook_allow_private = 1;          /* the demo's webhook endpoint is on 127.0.0.1 */
    c.webhook_dispatchers = 2;
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, MOCKERY_SERVER_BIN);
    char *const args[] = {"mockery-demo", "--url", srv.base, NULL};
    struct test_run r;
    test_run_program(MOCKERY_DEMO_BIN, args, environ, &r);
    test_server_stop(&srv);
    cr_assert_eq(r.code, 0, "demo failed:\n%s%s", r.out, r.err);
    /* Each scenario showed what it should. (The first answers that are lost
     * take the slow customers' 1.5 s against the demo's 500 ms: certain.) */
    const char *seen[] = {"POST (client gives up early)       -> no answer",
                          "the charge behind the replay, made once: yes",
                          "X-Idempotent-Replay: true", "three keys, 3 charges", "201 created: 1",
                          "one charge: yes", "the same decline, replayed: yes",
                          "POST refund 30.00 (client gives up) -> no answer",
                          "one refunded, one refused (refund_exceeds_payment): yes",
                          "amount_refunded 60.00 of 80.00", "7 payments for 7 keys",
                          /* 7 payments (one declined) and 2 refunds, at its webhook endpoint */
                          "  9 events of this run, 9 received (", "\ndouble charges: 0\n"};
    expect_seen(r.out, seen, sizeof seen / sizeof seen[0]);
    /* the retries after a lost answer: the payment's and the refund's */
    char text[8192];
    scenario(r.out, "\n1. ", "\n2. ", text, sizeof text);
    retries_are_answers(text);
    scenario(r.out, "\n5. ", "\nCounting", text, sizeof text);
    retries_are_answers(text);
}

/* The walkthrough as `scripts/dev demo` runs it: the money moving at the
 * real mockery-acquirer, which holds its answer to the cust-held customers
 * 6 s after charging, past the server's 5 s. Step 6 is the window closed:
 * 503 outcome_pending with the transaction id, the key kept (422 for
 * another amount), the retry's payment the same transaction - and one
 * charge for each of the demo's payments in the acquirer's own ledger. */
Test(process, demo_walkthrough_through_the_acquirer_shows_the_window_closed, .timeout = 180,
     .fini = test_acquirers_kill_all)
{
    static const char *const faults[] = {"--fault", "hold:prefix=cust-held:ms=6000", NULL};
    struct test_acquirer a = {0};
    test_acquirer_start(&a, faults, 1);
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    snprintf(c.acquirer_url, sizeof c.acquirer_url, "%s", a.base);
    c.acquirer_timeout_ms = 5000;
    c.webhook_allow_private = 1;
    c.webhook_dispatchers = 2;
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, MOCKERY_SERVER_BIN);
    char *const args[] = {"mockery-demo", "--url", srv.base, "--acquirer-url", a.base, NULL};
    struct test_run r;
    test_run_program(MOCKERY_DEMO_BIN, args, environ, &r);
    test_server_stop(&srv);
    test_acquirer_stop(&a);
    cr_assert_eq(r.code, 0, "demo failed:\n%s%s", r.out, r.err);
    const char *seen[] = {"one refunded, one refused (refund_exceeds_payment): yes",
                          "error outcome_pending  Retry-After: 1",
                          "POST another amount, same key      -> 422  error idempotency_key_reused",
                          "one charge at the acquirer, the payment's: yes",
                          "8 payments for 8 keys",
                          "8 charges at the acquirer for 8 payments",
                          "  10 events of this run, 10 received (",
                          "\ndouble charges: 0\n"};
    expect_seen(r.out, seen, sizeof seen / sizeof seen[0]);
    char text[8192], txn[64] = "";
    scenario(r.out, "\n6. ", "\nCounting", text, sizeof text);
    const char *first = strstr(text, "-> 503  transaction ");
    cr_assert_not_null(first, "%s", text);
    snprintf(txn, sizeof txn, "%.28s", first + strlen("-> 503  transaction "));
    /* the last retry is the payment, with the transaction the 503 named */
    const char *last = NULL;
    for (const char *p = text; (p = strstr(p, "POST retry, same key")); p++)
        last = p;
    cr_assert_not_null(last, "%s", text);
    cr_assert(strstr(last, "-> 201  transaction ") || strstr(last, "-> 200  transaction "), "%s",
              text);
    cr_assert_not_null(strstr(last, txn), "the retry's payment is %s:\n%s", txn, text);
}

/* ---- the log: one JSON object per line ------------------------------------------ */

/* The first line with this msg, key and outcome (workers write their lines
 * in the order they finish, not the order requests came in). */
static cJSON *find_line(const char *log, const char *msg, const char *key, const char *outcome)
{
    for (const char *line = log; *line;) {
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)(nl - line));
        cr_assert_not_null(o, "not a JSON line: %.*s", (int)(nl - line), line);
        cJSON *m = cJSON_GetObjectItem(o, "msg"), *k = cJSON_GetObjectItem(o, "key");
        cJSON *oc = cJSON_GetObjectItem(o, "outcome");
        if (cJSON_IsString(m) && !strcmp(m->valuestring, msg) && cJSON_IsString(k) &&
            !strcmp(k->valuestring, key) && cJSON_IsString(oc) && !strcmp(oc->valuestring, outcome))
            return o;
        cJSON_Delete(o);
        line = nl + 1;
    }
    return NULL;
}

Test(process, logs_requests_and_prevented_duplicates, .timeout = 60)
{
    struct config c;
    test_config(&c, STORE_KIND_MEMORY);
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, MOCKERY_SERVER_BIN);
    srv.keep_log = 1;
    char key[96], body[160], path[128];
    test_unique(key, sizeof key, "log");
    snprintf(body, sizeof body,
             "{\"amount\":7.5,\"currency\":\"USD\",\"customer_id\":\"cust-log\"}");
    struct test_response r;
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201);
    test_response_free(&r);
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 200);
    test_response_free(&r);

    /* Stopped first: every line of every request is written by then. */
    snprintf(path, sizeof path, "%s", srv.log_path);
    test_server_stop(&srv);
    char log[65536];
    test_read_text(path, log, sizeof log);
    unlink(path);

    cJSON *access = find_line(log, "request", key, "new");
    cr_assert_not_null(access, "no access line for %s:\n%s", key, log);
    const char *want[][2] = {{"method", "POST"},
                             {"path", "/api/v1/payments"},
                             {"outcome", "new"},
                             {"customer", "cust-log"},
                             {"level", "info"}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        cJSON *v = cJSON_GetObjectItem(access, want[i][0]);
        cr_assert(cJSON_IsString(v) && !strcmp(v->valuestring, want[i][1]), "%s", want[i][0]);
    }
    cr_assert_eq(cJSON_GetObjectItem(access, "status")->valueint, 201);
    cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(access, "duration_ms")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(access, "time")));
    cJSON_Delete(access);

    cJSON *dup = find_line(log, "duplicate prevented", key, "replay");
    cr_assert_not_null(dup, "no duplicate event:\n%s", log);
    cr_assert_str_eq(cJSON_GetObjectItem(dup, "outcome")->valuestring, "replay");
    cr_assert_str_eq(cJSON_GetObjectItem(dup, "customer")->valuestring, "cust-log");
    cr_assert_float_eq(cJSON_GetObjectItem(dup, "amount")->valuedouble, 7.5, 1e-9);
    cr_assert_eq(strlen(cJSON_GetObjectItem(dup, "original_time")->valuestring), 27);
    cJSON_Delete(dup);
}
