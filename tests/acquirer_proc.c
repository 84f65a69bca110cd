/* acquirer_proc.c - the real mockery-acquirer as a child process of a test
 * (acquirer_proc.h) */
#define _POSIX_C_SOURCE 200809L
#include "acquirer_proc.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

extern char **environ;

/* Acquirers this test started and has not stopped: a failed assertion
 * skips test_acquirer_stop(), so the fixture kills them by their pid. */
static pid_t children[8];

void test_acquirer_remember(pid_t pid)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] == 0) {
            children[i] = pid;
            return;
        }
    cr_assert_fail("more than %zu acquirers in one test", sizeof children / sizeof children[0]);
}

void test_acquirer_forget(pid_t pid)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] == pid)
            children[i] = 0;
}

void test_read_text(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, len - 1, f) : 0;
    buf[n] = '\0';
    if (f)
        fclose(f);
}

void test_read_tail(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    if (f && fseek(f, 0, SEEK_END) == 0) {
        long size = ftell(f);
        if (size > (long)len - 1)
            fseek(f, size - (long)(len - 1), SEEK_SET);
        else
            rewind(f);
        n = fread(buf, 1, len - 1, f);
    }
    buf[n] = '\0';
    if (f)
        fclose(f);
}

/* Starts mockery-acquirer on a free port of 127.0.0.1 with these flags
 * (NULL-terminated; may be NULL), --database-url the test database's when
 * with_url, in environment envp; returns when its "listening" line is in
 * its log and GET /health answers 200. rules: the fault rules it must say
 * it has. */
void test_acquirer_start_env(struct test_acquirer *a, const char *const *flags, int rules,
                             int with_url, char *const *envp)
{
    static unsigned spawned;
    int want = a->port; /* 0: any */
    memset(a, 0, sizeof *a);
    for (int attempt = 0; attempt < (want ? 1 : 8); attempt++) {
        char port[16];
        const char *argv[48];
        int n = 0;
        a->port = want ? want : test_free_port();
        snprintf(port, sizeof port, "%d", a->port);
        argv[n++] = MOCKERY_ACQUIRER_BIN;
        if (with_url) {
            argv[n++] = "--database-url";
            argv[n++] = test_db_url();
        }
        argv[n++] = "--port";
        argv[n++] = port;
        argv[n++] = "--listen-host";
        argv[n++] = "127.0.0.1";
        /* a worker for each connection the test's servers may keep to it
         * (docs/acquirer.md), fewer than the default's 512 */
        argv[n++] = "--threads";
        argv[n++] = "256";
        argv[n++] = "--pool-size";
        argv[n++] = "8";
        for (int i = 0; flags && flags[i]; i++) {
            cr_assert_lt(n, 46);
            argv[n++] = flags[i];
        }
        argv[n] = NULL;

        snprintf(a->log, sizeof a->log, "/tmp/mockery-test-acquirer.%d.%u.%u.log", (int)getpid(),
                 (unsigned)time(NULL), ++spawned);
        int fd = open(a->log, O_CREAT | O_EXCL | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
        cr_assert_geq(fd, 0, "could not create %s: %s", a->log, strerror(errno));
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_adddup2(&fa, fd, 1);
        posix_spawn_file_actions_adddup2(&fa, fd, 2);
        int rc = posix_spawn(&a->pid, MOCKERY_ACQUIRER_BIN, &fa, NULL, (char *const *)argv, envp);
        posix_spawn_file_actions_destroy(&fa);
        close(fd);
        cr_assert_eq(rc, 0, "could not start %s: %s", MOCKERY_ACQUIRER_BIN, strerror(rc));
        test_acquirer_remember(a->pid);

        /* Wait (bounded) for the "listening" line, or for the process to
         * end: with "cannot listen", the port was taken meanwhile. */
        char want[96], text[8192];
        snprintf(want, sizeof want, "mockery-acquirer: listening on 127.0.0.1:%d (%d fault rule",
                 a->port, rules);
        int exited = 0;
        for (int tries = 0; tries < 600 && !exited; tries++) {
            test_read_text(a->log, text, sizeof text);
            if (strstr(text, want)) {
                snprintf(a->base, sizeof a->base, "http://127.0.0.1:%d", a->port);
                char url[128];
                struct test_response r;
                snprintf(url, sizeof url, "%s/health", a->base);
                test_http("GET", url, NULL, NULL, 0, &r);
                cr_assert_eq(r.status, 200, "GET /health: %ld %s", r.status, r.body);
                cr_assert_str_eq(r.body, "{\"status\":\"ok\"}");
                test_response_free(&r);
                return;
            }
            int status;
            if (waitpid(a->pid, &status, WNOHANG) == a->pid) {
                test_acquirer_forget(a->pid);
                exited = 1;
                test_read_text(a->log, text, sizeof text);
                cr_assert_not_null(strstr(text, "cannot listen"),
                                   "%s exited at start-up (status %d): %s", MOCKERY_ACQUIRER_BIN,
                                   status, text);
                unlink(a->log);
            } else {
                test_sleep_ms(50);
            }
        }
        cr_assert(exited, "%s did not start listening within 30 s (see %s)", MOCKERY_ACQUIRER_BIN,
                  a->log);
    }
    cr_assert_fail("no port could be listened on in 8 tries");
}

void test_acquirer_start(struct test_acquirer *a, const char *const *flags, int rules)
{
    test_acquirer_start_env(a, flags, rules, 1, environ);
}

/* SIGTERM by its pid; it must exit 0 (a held answer ends first). */
void test_acquirer_stop(struct test_acquirer *a)
{
    int status = 0;
    cr_assert_eq(kill(a->pid, SIGTERM), 0);
    cr_assert_eq(waitpid(a->pid, &status, 0), a->pid);
    test_acquirer_forget(a->pid);
    char text[8192];
    test_read_tail(a->log, text, sizeof text); /* its last lines: how it stopped */
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "mockery-acquirer did not exit 0 on SIGTERM (status %d, log %s): %s", status, a->log,
              text);
    cr_assert_not_null(strstr(text, "mockery-acquirer: stopping"), "%s", text);
    unlink(a->log);
    a->pid = 0;
}

void test_acquirer_release_holds(const struct test_acquirer *a)
{
    cr_assert_eq(kill(a->pid, SIGUSR1), 0);
}

void test_acquirer_kill(struct test_acquirer *a)
{
    cr_assert_eq(kill(a->pid, SIGKILL), 0);
    cr_assert_eq(waitpid(a->pid, NULL, 0), a->pid);
    test_acquirer_forget(a->pid);
    unlink(a->log);
    a->pid = 0;
}

void test_acquirers_kill_all(void)
{
    for (size_t i = 0; i < sizeof children / sizeof children[0]; i++)
        if (children[i] > 0) {
            kill(children[i], SIGKILL);
            waitpid(children[i], NULL, 0);
            children[i] = 0;
        }
}

int test_reconcile(const char *service_db, const char *acquirer_db, const char *since,
                   const char *until, char *out, size_t len)
{
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "%s/scripts/reconcile --service-db '%s' --acquirer-db '%s' --since '%s'%s%s%s 2>&1",
             MOCKERY_SOURCE_DIR, service_db, acquirer_db, since, until ? " --until '" : "",
             until ? until : "", until ? "'" : "");
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f, "could not run %s", cmd);
    size_t n = fread(out, 1, len - 1, f);
    out[n] = '\0';
    int st = pclose(f);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

void test_expect_reconciled(const char *service_db, const char *acquirer_db, const char *since)
{
    char report[16384];
    int st = test_reconcile(service_db, acquirer_db, since, NULL, report, sizeof report);
    cr_assert_eq(st, 0, "scripts/reconcile exited %d:\n%s", st, report);
    cr_assert_not_null(strstr(report, "faults: 0\n"), "%s", report);
}

void test_acquirer_database(const char *cluster_url, const char *name, char *out, size_t len)
{
    PGconn *conn = PQconnectdb(cluster_url);
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    const char *vals[] = {name};
    PGresult *res = PQexecParams(conn, "SELECT 1 FROM pg_database WHERE datname = $1", 1, NULL,
                                 vals, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQerrorMessage(conn));
    int missing = PQntuples(res) == 0;
    PQclear(res);
    if (missing) {
        char sql[160];
        snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", name);
        res = PQexec(conn, sql);
        cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "%s: %s", sql, PQerrorMessage(conn));
        PQclear(res);
    }
    PQfinish(conn);
    const char *slash = strrchr(cluster_url, '/');
    cr_assert_not_null(slash, "no database in %s", cluster_url);
    snprintf(out, len, "%.*s/%s", (int)(slash - cluster_url), cluster_url, name);
}
