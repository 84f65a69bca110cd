/* support.h - test helpers: the test database, unique names, an in-process
 * server on 127.0.0.1, and a libcurl client
 */
#ifndef MOCKERY_TEST_SUPPORT_H
#define MOCKERY_TEST_SUPPORT_H

#include <stddef.h>

#include "app.h"
#include "config.h"
#include "httpc.h"

/* The test database URL from MOCKERY_TEST_DATABASE_URL; fails the test
 * (never skips it) when it is not set. */
const char *test_db_url(void);

/* The test database through pgbouncer in transaction pooling mode, from
 * MOCKERY_TEST_PGBOUNCER_URL; fails the test (never skips it) when unset. */
const char *test_pgbouncer_url(void);

/* The first value of a query with one text parameter, run on url in a
 * connection of its own ("" when there is no row); fails the test on error. */
void test_query_text(const char *url, const char *sql, const char *param, char *out, size_t len);
/* The same, as a number (a count). */
long test_query_long(const char *url, const char *sql, const char *param);

/* Polls a query as test_query_text does, every 50 ms, until its first
 * value is not empty (copied to out), failing the test with what after
 * limit_s seconds: the bound says when to give up on an event, never when
 * it should happen. */
void test_wait_text(const char *url, const char *sql, const char *param, char *out, size_t len,
                    double limit_s, const char *what);
/* The same until the value, a count, is want. */
void test_wait_count(const char *url, const char *sql, const char *param, long want, double limit_s,
                     const char *what);

/* A name no other test, process or run shares: prefix + pid + counter + random. */
void test_unique(char *buf, size_t len, const char *prefix);

/* Seconds on the monotonic clock (for bounds on waits), and a sleep. */
double test_now_s(void);
void test_sleep_ms(long ms);

/* A port of 127.0.0.1 in 20000-32000 - below the kernel's range for the
 * client ends of connections, so none of those can hold it - free now. */
int test_free_port(void);

/* A program run to its end (it must exit by itself): its exit status and
 * the first 8 KiB of its stdout and stderr. */
struct test_run {
    int code;
    char out[8192];
    char err[8192];
};
void test_run_program(const char *path, char *const args[], char *const envp[], struct test_run *r);

/* A server for one test, on a free port, reached at 127.0.0.1. In-process
 * by default; with MOCKERY_TEST_SERVER_BIN set, that executable is started
 * as a child process instead (the ThreadSanitizer run uses this: Criterion
 * cannot run under TSan itself). */
struct test_server {
    struct app *app;
    struct logger *log;
    int pid; /* the child, when spawned */
    char log_path[128];
    int keep_log;  /* set: test_server_stop() leaves the log file (the test reads it) */
    char base[64]; /* "http://127.0.0.1:PORT" */
};

/* Defaults for a test server with the given store. */
void test_config(struct config *c, enum store_kind kind);
/* Starts it (fails the test on error); the configuration must be one the
 * flags can express when a binary is spawned. */
void test_server_start(struct test_server *s, const struct config *c);
/* Starts the executable bin as a child process with flags for c (memset s
 * first); test_server_stop() sends it SIGTERM and expects exit code 0. */
void test_server_spawn(struct test_server *s, const struct config *c, const char *bin);
/* Starts an in-process server over this store (owned by the server). */
void test_server_start_with_store(struct test_server *s, const struct config *c,
                                  struct store *store);
void test_server_stop(struct test_server *s);
/* SIGKILL for a spawned server: no draining, no goodbye. */
void test_server_kill(struct test_server *s);

/* scripts/dev cluster NAME ACTION (up, pause, crash, down): a PostgreSQL of
 * the test's own. url (may be NULL) receives what `up` prints. Fails the test
 * if the command fails. */
void test_cluster(const char *name, const char *action, char *url, size_t len);

/* scripts/dev ha NAME ACTION (up, failover, state, down): a pg_auto_failover
 * formation of the test's own. out (may be NULL) receives the first line it
 * prints (up: the servers' URL; failover: the killed primary's port). */
void test_ha(const char *name, const char *action, char *out, size_t len);

/* Sends all of buf on a raw socket; stops quietly when the server closes on
 * us mid-way (that is an answer too). */
void test_send_all(int fd, const void *buf, size_t len);

/* A raw TCP connection to s from 127.0.0.1 (fails the test if none). */
int test_server_connect(const struct test_server *s);

/* Whether the log file at path has a line containing text yet (0 while it
 * cannot be read). */
int test_log_has(const char *path, const char *text);

struct pg_conn; /* libpq's PGconn */
/* PQexec of a statement that returns no rows; fails the test otherwise. */
void test_exec_ok(struct pg_conn *conn, const char *sql);

/* A response: status, body, and the API's headers (see httpc.h). */
#define test_response httpc_response

/* Sends one request. headers: NULL-terminated "Name: value" strings. body may
 * be NULL. Fails the test if no HTTP answer came back. */
void test_http(const char *method, const char *url, const char *const *headers, const char *body,
               size_t body_len, struct test_response *out);
/* POST a JSON body to /api/v1/payments with this key (NULL: no header). */
void test_post_payment(const struct test_server *s, const char *key, const char *json,
                       struct test_response *out);
/* A new payment of amount EUR through s, with a key and customer of its own;
 * fails the test unless 201. Its transaction id into txn (may be NULL). */
void test_pay(const struct test_server *s, const char *amount, char *txn, size_t len);
/* POST a JSON body to a path (e.g. "/api/v1/payments/txn_1/refunds") with
 * this key (NULL: no header). */
void test_post_json(const struct test_server *s, const char *path, const char *key,
                    const char *json, struct test_response *out);
void test_response_free(struct test_response *r);

/* GET /metrics of s: the exposition text (free it); fails the test unless 200. */
char *test_scrape(const struct test_server *s);
/* The value of one series ("name{labels}" exactly) in an exposition, or -1
 * if absent. */
double test_metric(const char *exposition, const char *series);

struct cJSON;
/* The response body as JSON (fails the test when it is not); cJSON_Delete it. */
struct cJSON *test_json(const struct test_response *r);
/* The string member name of o (fails the test when there is none). */
const char *test_json_str(const struct cJSON *o, const char *name);
/* Asserts the error shape with this status and code (and param, if not NULL). */
void test_expect_error(const struct test_response *r, long status, const char *code,
                       const char *param);

#endif
