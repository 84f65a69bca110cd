/* acquirer_proc.h - the real mockery-acquirer (MOCKERY_ACQUIRER_BIN) as a
 * child process of a test: started on a free port of 127.0.0.1 against the
 * test database, waited for by its "listening" line and GET /health, and
 * stopped by its pid */
#ifndef MOCKERY_TEST_ACQUIRER_PROC_H
#define MOCKERY_TEST_ACQUIRER_PROC_H

#include <stddef.h>
#include <sys/types.h>

struct test_acquirer {
    pid_t pid;
    int port;
    char base[64]; /* "http://127.0.0.1:PORT" */
    char log[160];
};

/* Starts it on port a->port (set it: a restart on the same port, which
 * must be free; 0: any free port) with these flags (NULL-terminated; may be NULL) and
 * --database-url the test database's when with_url, in environment envp;
 * rules: the fault rules it must say it has. Fails the test on error. */
void test_acquirer_start_env(struct test_acquirer *a, const char *const *flags, int rules,
                             int with_url, char *const *envp);
/* The same with the database's URL, in this process's environment. */
void test_acquirer_start(struct test_acquirer *a, const char *const *flags, int rules);
/* SIGTERM; it must exit 0 and say "stopping". */
void test_acquirer_stop(struct test_acquirer *a);
/* SIGUSR1: the answers it holds now (the hold fault) go at once. */
void test_acquirer_release_holds(const struct test_acquirer *a);
/* SIGKILL: no goodbye. */
void test_acquirer_kill(struct test_acquirer *a);
/* A suite's teardown: SIGKILL every acquirer a failed test left running. */
void test_acquirers_kill_all(void);

/* A child the suite's teardown kills if the test ends first (by pid), and
 * one it no longer needs to. */
void test_acquirer_remember(pid_t pid);
void test_acquirer_forget(pid_t pid);

/* A database of its own for an acquirer's ledger, on the cluster of
 * cluster_url, made when missing: its URL into out. A test that reconciles
 * its ledger with its own service's database keeps other tests' charges
 * out of the check. */
void test_acquirer_database(const char *cluster_url, const char *name, char *out, size_t len);

/* scripts/reconcile over [since, until) (until NULL: now) between the
 * service's database and the acquirer's (the same URL when both sets of
 * tables are in one): its exit status, its report in out. */
int test_reconcile(const char *service_db, const char *acquirer_db, const char *since,
                   const char *until, char *out, size_t len);
/* The invariant over everything since `since`, as an operator checks it:
 * no charge at the acquirer without its payment here, no payment without
 * its charge, no refund without the acquirer's (charges of records still
 * processing are listed as awaiting, not faults). Fails the test if not. */
void test_expect_reconciled(const char *service_db, const char *acquirer_db, const char *since);

/* A file's text into buf (empty when it cannot be read). */
void test_read_text(const char *path, char *buf, size_t len);
/* The same, of the file's last len - 1 bytes. */
void test_read_tail(const char *path, char *buf, size_t len);

#endif
