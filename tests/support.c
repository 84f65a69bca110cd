/* support.c - test helpers */
#define _GNU_SOURCE /* pipe2 */
#include "support.h"

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <curl/curl.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

const char *test_db_url(void)
{
    const char *url = getenv("MOCKERY_TEST_DATABASE_URL");
    if (!url || !*url)
        cr_assert_fail("MOCKERY_TEST_DATABASE_URL is not set: run the tests with "
                       "scripts/dev test, which starts a PostgreSQL for them");
    return url;
}

const char *test_pgbouncer_url(void)
{
    const char *url = getenv("MOCKERY_TEST_PGBOUNCER_URL");
    if (!url || !*url)
        cr_assert_fail("MOCKERY_TEST_PGBOUNCER_URL is not set: run the tests with "
                       "scripts/dev test, which starts pgbouncer in front of their PostgreSQL");
    return url;
}

void test_query_text(const char *url, const char *sql, const char *param, char *out, size_t len)
{
    PGconn *conn = PQconnectdb(url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    const char *vals[] = {param};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    snprintf(out, len, "%s", PQntuples(res) ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    PQfinish(conn);
}

long test_query_long(const char *url, const char *sql, const char *param)
{
    char v[64];
    test_query_text(url, sql, param, v, sizeof v);
    return strtol(v, NULL, 10);
}

void test_unique(char *buf, size_t len, const char *prefix)
{
    static unsigned counter; /* a test's threads may ask at once */
    unsigned char r[4];
    RAND_bytes(r, sizeof r);
    snprintf(buf, len, "%s-%d-%u-%02x%02x%02x%02x", prefix, (int)getpid(),
             __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED), r[0], r[1], r[2], r[3]);
}

void test_config(struct config *c, enum store_kind kind)
{
    config_defaults(c);
    c->store = kind;
    c->port = 0;
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->threads = 48;
    c->pool_size = 4;
    c->db_wait_s = 0;
    c->log_level = LOG_ERROR;
    /* No webhook dispatchers unless a test asks for them: every server's
     * dispatchers deliver every tenant's events, and a test's server with
     * private addresses refused would fail another test's deliveries to
     * its receiver on 127.0.0.1. */
    c->webhook_dispatchers = 0;
    if (kind == STORE_KIND_POSTGRES)
        snprintf(c->database_url, sizeof c->database_url, "%s", test_db_url());
}

/* Servers this test process started and has not stopped: a failed assertion
 * skips test_server_stop(), so they are killed when the process exits. */
static pid_t children[16];

static void kill_children(void)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
        }
}

static void remember_child(pid_t pid)
{
    static int registered;
    if (!registered++)
        atexit(kill_children);
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
}

static void forget_child(pid_t pid)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] == pid)
            children[i] = 0;
}

/* Starts bin with flags for c; its stderr goes to a
 * file, from which the port is read off the "listening" line. */
void test_server_spawn(struct test_server *s, const struct config *c, const char *bin)
{
    char nums[32][16];
    char *argv[72];
    int n = 0, k = 0;
    argv[n++] = (char *)bin;
#define STR(name, value) (argv[n++] = (name), argv[n++] = (char *)(value))
#define NUM(name, value) (snprintf(nums[k], sizeof nums[k], "%d", (value)), STR(name, nums[k]), k++)
    NUM("--port", c->port); /* 0 (test_config): any free port */
    STR("--store", c->store == STORE_KIND_MEMORY ? "memory" : "postgres");
    NUM("--threads", c->threads);
    NUM("--pool-size", c->pool_size);
    NUM("--lease", c->lease_s);
    NUM("--idempotency-ttl", c->idempotency_ttl_s);
    NUM("--processing-delay-ms", c->processing_delay_ms);
    STR("--require-key", c->require_key ? "true" : "false");
    STR("--log-level", "info");
    STR("--db-wait", "0");
    NUM("--reaper-interval-ms", c->reaper_interval_ms);
    NUM("--max-client-connections", c->max_client_connections);
    NUM("--rate-limit", c->rate_limit);
    NUM("--unauthenticated-rate-limit", c->unauthenticated_rate_limit);
    STR("--unnamed-statements", c->unnamed_statements ? "true" : "false");
    STR("--webhook-allow-private", c->webhook_allow_private ? "true" : "false");
    NUM("--webhook-max-endpoints", c->webhook_max_endpoints);
    NUM("--webhook-timeout-ms", c->webhook_timeout_ms);
    NUM("--webhook-max-attempts", c->webhook_max_attempts);
    NUM("--webhook-backoff-ms", c->webhook_backoff_ms);
    NUM("--webhook-dispatchers", c->webhook_dispatchers);
    if (c->database_url[0])
        STR("--database-url", c->database_url);
    if (c->acquirer_url[0]) {
        STR("--acquirer-url", c->acquirer_url);
        NUM("--acquirer-timeout-ms", c->acquirer_timeout_ms);
        NUM("--recovery-interval-ms", c->recovery_interval_ms);
        NUM("--recovery-batch", c->recovery_batch);
    }
    if (c->api_keys[0])
        STR("--api-keys", c->api_keys);
#undef STR
#undef NUM
    argv[n] = NULL;

    /* One log per server: two servers started within the same second by
     * one test (failover starts two) once shared a file, and the second
     * could read the first's "listening" line and talk to the wrong
     * server. A counter per test process, and O_EXCL to prove it. */
    static _Atomic unsigned spawned;
    snprintf(s->log_path, sizeof s->log_path, "/tmp/mockery-test-server.%d.%u.%u.log",
             (int)getpid(), (unsigned)time(NULL), ++spawned);
    int fd = open(s->log_path, O_CREAT | O_EXCL | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "could not create %s: %s", s->log_path, strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 1);
    posix_spawn_file_actions_adddup2(&fa, fd, 2);
    pid_t pid;
    cr_assert_eq(posix_spawn(&pid, bin, &fa, NULL, argv, environ), 0, "could not start %s", bin);
    posix_spawn_file_actions_destroy(&fa);
    close(fd);
    s->pid = pid;
    remember_child(pid);

    /* Wait (bounded) for the "listening" line. */
    for (int tries = 0; tries < 600; tries++) {
        FILE *f = fopen(s->log_path, "r");
        char line[4096];
        while (f && fgets(line, sizeof line, f)) {
            const char *p = strstr(line, "\"msg\":\"listening\"");
            const char *port = p ? strstr(line, "\"port\":") : NULL;
            if (port) {
                fclose(f);
                snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", atoi(port + 7));
                return;
            }
        }
        if (f)
            fclose(f);
        int status;
        cr_assert_eq(waitpid(pid, &status, WNOHANG), 0, "%s exited at start-up (see %s)", bin,
                     s->log_path);
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_fail("%s did not start listening within 30 s (see %s)", bin, s->log_path);
}

void test_server_start(struct test_server *s, const struct config *c)
{
    const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
    if (bin && *bin) {
        memset(s, 0, sizeof *s);
        test_server_spawn(s, c, bin);
        return;
    }
    test_server_start_with_store(s, c, NULL);
}

void test_server_start_with_store(struct test_server *s, const struct config *c,
                                  struct store *store)
{
    char err[512] = "";
    memset(s, 0, sizeof *s);
    s->log = log_new(stderr, c->log_level);
    cr_assert_not_null(s->log);
    s->app = app_start(c, s->log, store, err, sizeof err);
    cr_assert_not_null(s->app, "server did not start: %s", err);
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->app->port);
}

void test_server_stop(struct test_server *s)
{
    if (s->pid > 0) {
        /* Only the child this test started, by its pid. */
        int status = 0;
        kill(s->pid, SIGTERM);
        waitpid(s->pid, &status, 0);
        forget_child(s->pid);
        int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        if (clean && !s->keep_log)
            unlink(s->log_path);
        cr_assert(clean, "the server did not exit cleanly on SIGTERM (status %d, log %s)", status,
                  s->log_path);
    } else {
        app_stop(s->app);
        log_free(s->log);
    }
    memset(s, 0, sizeof *s);
}

void test_server_kill(struct test_server *s)
{
    cr_assert_gt(s->pid, 0, "only a spawned server can be killed");
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    forget_child(s->pid);
    unlink(s->log_path);
    memset(s, 0, sizeof *s);
}

/* scripts/dev WHAT NAME ACTION, its first line of output into out. */
static void dev_command(const char *what, const char *name, const char *action, char *line,
                        size_t len)
{
    char script[512];
    snprintf(script, sizeof script, "%s/scripts/dev", MOCKERY_SOURCE_DIR);
    char *const argv[] = {"bash", script, (char *)what, (char *)name, (char *)action, NULL};
    int out[2];
    cr_assert_eq(pipe2(out, O_CLOEXEC), 0); /* children get only the dup2 copy */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    pid_t pid;
    cr_assert_eq(posix_spawnp(&pid, "bash", &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    char buf[512];
    size_t n = 0;
    ssize_t got;
    while (n + 1 < sizeof buf && (got = read(out[0], buf + n, sizeof buf - n - 1)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
    close(out[0]);
    int status;
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "scripts/dev %s %s %s failed", what,
              name, action);
    if (line) {
        buf[strcspn(buf, "\n")] = '\0';
        snprintf(line, len, "%s", buf);
    }
}

void test_cluster(const char *name, const char *action, char *url, size_t len)
{
    dev_command("cluster", name, action, url, len);
}

void test_ha(const char *name, const char *action, char *out, size_t len)
{
    dev_command("ha", name, action, out, len);
}

void test_http(const char *method, const char *url, const char *const *headers, const char *body,
               size_t body_len, struct test_response *out)
{
    int rc = httpc_request(method, url, headers, body, body_len, 30000, out);
    cr_assert_eq(rc, 0, "%s %s: %s", method, url, out->error);
}

void test_post_json(const struct test_server *s, const char *path, const char *key,
                    const char *json, struct test_response *out)
{
    char url[256], keyh[600];
    snprintf(url, sizeof url, "%s%s", s->base, path);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key ? key : "");
    const char *headers[] = {"Content-Type: application/json", key ? keyh : NULL, NULL};
    test_http("POST", url, headers, json, strlen(json), out);
}

void test_post_payment(const struct test_server *s, const char *key, const char *json,
                       struct test_response *out)
{
    test_post_json(s, "/api/v1/payments", key, json, out);
}

void test_pay(const struct test_server *s, const char *amount, char *txn, size_t len)
{
    char key[96], cust[64], body[192];
    struct test_response r;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust");
    snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             amount, cust);
    test_post_payment(s, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    if (txn) {
        cJSON *o = test_json(&r);
        snprintf(txn, len, "%s", test_json_str(o, "transaction_id"));
        cJSON_Delete(o);
    }
    test_response_free(&r);
}

cJSON *test_json(const struct test_response *r)
{
    cJSON *o = cJSON_Parse(r->body);
    cr_assert_not_null(o, "not JSON: %s", r->body);
    return o;
}

const char *test_json_str(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert(cJSON_IsString(v), "no string %s", name);
    return v->valuestring;
}

void test_expect_error(const struct test_response *r, long status, const char *code,
                       const char *param)
{
    cr_assert_eq(r->status, status, "status %ld, want %ld: %s", r->status, status, r->body);
    cr_assert(strncmp(r->content_type, "application/json", 16) == 0);
    cJSON *o = test_json(r);
    cJSON *e = cJSON_GetObjectItem(o, "error");
    cr_assert_not_null(e, "no error object: %s", r->body);
    cr_assert_str_eq(test_json_str(e, "code"), code);
    cr_assert(strlen(test_json_str(e, "type")) > 0);
    cr_assert(strlen(test_json_str(e, "message")) > 0);
    if (param)
        cr_assert_str_eq(test_json_str(e, "param"), param);
    cJSON_Delete(o);
}

char *test_scrape(const struct test_server *s)
{
    char u[128];
    struct test_response r;
    snprintf(u, sizeof u, "%s/metrics", s->base);
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(strncmp(r.content_type, "text/plain; version=0.0.4", 25), 0, "%s", r.content_type);
    char *text = r.body;
    r.body = NULL;
    test_response_free(&r);
    return text;
}

double test_metric(const char *exposition, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = exposition; *line;) {
        if (strncmp(line, series, n) == 0 && line[n] == ' ')
            return strtod(line + n + 1, NULL);
        const char *nl = strchr(line, '\n');
        if (!nl)
            break;
        line = nl + 1;
    }
    return -1;
}

void test_response_free(struct test_response *r)
{
    httpc_response_free(r);
}

void test_send_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0)
            return;
        p += n;
        len -= (size_t)n;
    }
}

int test_server_connect(const struct test_server *s)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)atoi(strrchr(s->base, ':') + 1))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(connect(fd, (struct sockaddr *)&a, sizeof a), 0, "connect to %s", s->base);
    return fd;
}

/* (test_acquirer_start meets a port taken between this check and its
 * bind by trying another: the acquirer takes no port 0.) */
double test_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

void test_sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int test_free_port(void)
{
    static unsigned seed;
    if (!seed)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int tries = 0; tries < 200; tries++) {
        int p = 20000 + (int)(rand_r(&seed) % 12000);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_geq(fd, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ok = bind(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            return p;
    }
    cr_assert_fail("no free port in 20000-32000");
    return 0;
}

static void read_all(int fd, char *buf, size_t len)
{
    size_t n = 0;
    ssize_t got;
    while (n + 1 < len && (got = read(fd, buf + n, len - n - 1)) > 0)
        n += (size_t)got;
    buf[n] = '\0';
}

/* Its stdout goes to a file, read once it has exited, and its stderr
 * through a pipe read to the end: a program that fills one while this reads
 * the other cannot stall. */
void test_run_program(const char *path, char *const args[], char *const envp[], struct test_run *r)
{
    char out_path[128];
    static unsigned runs;
    snprintf(out_path, sizeof out_path, "/tmp/mockery-test-run.%d.%u.out", (int)getpid(), ++runs);
    int out = open(out_path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
    cr_assert_geq(out, 0, "could not open %s", out_path);
    int err[2];
    cr_assert_eq(pipe2(err, O_CLOEXEC), 0); /* the child gets only the dup2 copies */
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out, 1);
    posix_spawn_file_actions_adddup2(&fa, err[1], 2);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, NULL, args, envp);
    posix_spawn_file_actions_destroy(&fa);
    cr_assert_eq(rc, 0, "could not start %s", path);
    close(err[1]);
    read_all(err[0], r->err, sizeof r->err);
    close(err[0]);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFEXITED(status), "%s did not exit by itself (status %d)", path, status);
    r->code = WEXITSTATUS(status);
    lseek(out, 0, SEEK_SET);
    read_all(out, r->out, sizeof r->out);
    close(out);
    unlink(out_path);
}

static double monotonic_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void pause_50ms(void)
{
    struct timespec ts = {0, 50 * 1000000L};
    nanosleep(&ts, NULL);
}

void test_wait_text(const char *url, const char *sql, const char *param, char *out, size_t len,
                    double limit_s, const char *what)
{
    double give_up = monotonic_s() + limit_s;
    for (;;) {
        test_query_text(url, sql, param, out, len);
        if (out[0])
            return;
        if (monotonic_s() > give_up)
            cr_assert_fail("%s: not within %.0f s", what, limit_s);
        pause_50ms();
    }
}

void test_wait_count(const char *url, const char *sql, const char *param, long want, double limit_s,
                     const char *what)
{
    double give_up = monotonic_s() + limit_s;
    long got;
    while ((got = test_query_long(url, sql, param)) != want) {
        if (monotonic_s() > give_up)
            cr_assert_fail("%s: %ld, not %ld, after %.0f s", what, got, want, limit_s);
        pause_50ms();
    }
}

int test_log_has(const char *path, const char *text)
{
    char line[4096];
    int found = 0;
    FILE *f = fopen(path, "r");
    while (f && !found && fgets(line, sizeof line, f))
        found = strstr(line, text) != NULL;
    if (f)
        fclose(f);
    return found;
}

void test_exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
}
