/* pg_pool.c - a pool of libpq connections, each prepared with the store's
 * statements (pg_pool.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_pool.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pg_sql.h"

static void notice_cb(void *arg, const char *message)
{
    struct pg_pool *p = arg;
    if (p->notice) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", message);
        size_t n = strlen(buf);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            buf[--n] = '\0';
        p->notice(p->notice_arg, buf);
    }
}

void pg_first_line(char *err, size_t errlen, const char *prefix, const char *msg)
{
    snprintf(err, errlen, "%s: %s", prefix, msg ? msg : "unknown error");
    char *nl = strchr(err, '\n');
    if (nl)
        *nl = '\0';
}

/* One place maps SQLSTATE (and a dead connection) to a store status. */
enum store_status pg_status_of(PGconn *conn, const PGresult *res)
{
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return STORE_UNAVAILABLE;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!state)
        return STORE_UNAVAILABLE;
    if (strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
        strncmp(state, "57P", 3) == 0 || strcmp(state, "40001") == 0 ||
        strcmp(state, "40P01") == 0 || strcmp(state, "55P03") == 0)
        return STORE_UNAVAILABLE;
    return STORE_ERROR;
}

static int prepare_all(PGconn *conn, char *err, size_t errlen)
{
    for (size_t i = 0; i < PG_PREPARED_COUNT; i++) {
        PGresult *res =
            PQprepare(conn, PG_PREPARED[i].name, PG_PREPARED[i].sql, PG_PREPARED[i].nparams, NULL);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            pg_first_line(err, errlen, "could not prepare statements", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            return -1;
    }
    return 0;
}

/* Prepares a connection's statements again if plan_gen has moved on since
 * they were. If that fails the connection is closed, to be opened (and
 * prepared) again by its next user. */
static void replan(struct pg_pool *p, int idx)
{
    unsigned gen = atomic_load(&p->plan_gen);
    if (p->conn_gen[idx] == gen || p->unnamed)
        return;
    char err[256];
    PGresult *res = PQexec(p->conns[idx], "DEALLOCATE ALL");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok || prepare_all(p->conns[idx], err, sizeof err) != 0) {
        PQfinish(p->conns[idx]);
        p->conns[idx] = NULL;
        return;
    }
    p->conn_gen[idx] = gen;
}

static PGconn *connect_pooled(struct pg_pool *p, char *err, size_t errlen)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {p->url, p->connect_timeout, p->application_name, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        snprintf(err, errlen, "could not connect: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        pg_first_line(err, errlen, "could not connect", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, notice_cb, p);
    if (!p->unnamed && prepare_all(conn, err, errlen) != 0) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* Puts a slot back on the free stack (p->mu held). */
static void slot_free(struct pg_pool *p, int idx)
{
    p->free_idx[p->nfree++] = idx;
    pg_pool_wake_locked(p);
}

/* Makes the taken slot's connection usable, connecting it if needed. On
 * failure the slot is given back and -1 returned with err set. */
int pg_pool_ready(struct pg_pool *p, int idx, char *err, size_t errlen)
{
    /* An idle connection has nothing to read: if its socket is readable,
     * the server said goodbye (restart, terminated backend) or closed it.
     * Notice that now, without a round trip, rather than fail the caller's
     * statement on it. */
    PGconn *conn = p->conns[idx];
    struct pollfd pfd = {.fd = conn ? PQsocket(conn) : -1, .events = POLLIN};
    if (conn && (PQstatus(conn) != CONNECTION_OK || pfd.fd < 0 || poll(&pfd, 1, 0) != 0)) {
        PQfinish(conn);
        p->conns[idx] = NULL;
    }
    if (p->conns[idx])
        replan(p, idx);
    if (!p->conns[idx]) {
        p->conn_gen[idx] = atomic_load(&p->plan_gen);
        p->conns[idx] = connect_pooled(p, err, errlen);
        if (!p->conns[idx]) {
            pthread_mutex_lock(&p->mu);
            slot_free(p, idx);
            pthread_mutex_unlock(&p->mu);
            return -1;
        }
    }
    return idx;
}

/* Takes a connection slot, connecting it if needed. Returns the slot index,
 * or -1 with err set (pool exhausted past the timeout, or no database). */
int pg_pool_acquire(struct pg_pool *p, char *err, size_t errlen)
{
    struct timespec deadline;
    clock_deadline_in(&deadline, p->acquire_timeout_ms);

    pthread_mutex_lock(&p->mu);
    p->waiting++;
    while (p->nfree == 0) {
        int rc = pthread_cond_timedwait(&p->cv, &p->mu, &deadline);
        if (rc == ETIMEDOUT && p->nfree == 0 && clock_passed(&deadline)) {
            p->waiting--;
            pthread_mutex_unlock(&p->mu);
            snprintf(err, errlen, "no database connection free within %d ms",
                     p->acquire_timeout_ms);
            return -1;
        }
    }
    p->waiting--;
    int idx = pg_pool_take_locked(p);
    pthread_mutex_unlock(&p->mu);
    return pg_pool_ready(p, idx, err, errlen);
}

/* Gives the slot back; a connection that is no longer usable is closed so
 * that the next user reconnects. */
void pg_pool_release(struct pg_pool *p, int idx)
{
    PGconn *conn = p->conns[idx];
    if (conn && (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)) {
        PQfinish(conn);
        p->conns[idx] = NULL;
    }
    pthread_mutex_lock(&p->mu);
    slot_free(p, idx);
    pthread_mutex_unlock(&p->mu);
}

PGresult *pg_pool_send(struct pg_pool *p, int idx, const char *stmt, int n, const char *const *vals)
{
    PGconn *conn = p->conns[idx];
    if (!p->unnamed)
        return PQexecPrepared(conn, stmt, n, vals, NULL, NULL, 0);
    for (size_t i = 0; i < PG_PREPARED_COUNT; i++)
        if (strcmp(PG_PREPARED[i].name, stmt) == 0)
            return PQexecParams(conn, PG_PREPARED[i].sql, n, NULL, vals, NULL, NULL, 0);
    return NULL; /* a name not in pg_sql.c: a bug, failed as a fatal error */
}

/* Runs a prepared statement and checks for the one expected result status.
 * On failure returns NULL with *st and err set (the result is cleared). */
PGresult *pg_pool_exec(struct pg_pool *p, int idx, const char *stmt, int n, const char *const *vals,
                       ExecStatusType want, enum store_status *st, char *err, size_t errlen)
{
    PGconn *conn = p->conns[idx];
    PGresult *res = pg_pool_send(p, idx, stmt, n, vals);
    if (PQresultStatus(res) == want)
        return res;
    *st = pg_status_of(conn, res);
    pg_first_line(err, errlen, stmt, PQerrorMessage(conn));
    PQclear(res);
    return NULL;
}

PGresult *pg_pool_exec_one(struct pg_pool *p, const char *stmt, int n, const char *const *vals,
                           ExecStatusType want, enum store_status *st, char *err, size_t errlen)
{
    int idx = pg_pool_acquire(p, err, errlen);
    if (idx < 0) {
        *st = STORE_UNAVAILABLE;
        return NULL;
    }
    PGresult *res = pg_pool_exec(p, idx, stmt, n, vals, want, st, err, errlen);
    pg_pool_release(p, idx);
    return res;
}

char *pg_dup_value(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return strdup(PQgetvalue(res, row, col));
}

int64_t pg_int_value(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* With mu held: while a connection is free, wake whoever can use it - the
 * batcher's oldest waiters (through wake) and a thread in pg_pool_acquire.
 * A wake-up that finds nothing to do is harmless; a missed one would leave a
 * request waiting beside a free connection. */
void pg_pool_wake_locked(struct pg_pool *p)
{
    if (p->nfree == 0)
        return;
    if (p->wake)
        p->wake(p->wake_arg);
    if (p->waiting)
        pthread_cond_signal(&p->cv);
}

int pg_pool_take_locked(struct pg_pool *p)
{
    if (p->nfree == 0)
        return -1;
    int idx = p->free_idx[--p->nfree];
    pg_pool_wake_locked(p);
    return idx;
}

void pg_pool_replan(struct pg_pool *p)
{
    atomic_fetch_add(&p->plan_gen, 1);
}

int pg_pool_init(struct pg_pool *p, const struct store_pg_options *opts, char *err, size_t errlen)
{
    memset(p, 0, sizeof *p);
    p->size = opts->pool_size > 0 ? opts->pool_size : 1;
    p->acquire_timeout_ms = opts->acquire_timeout_ms > 0 ? opts->acquire_timeout_ms : 5000;
    snprintf(p->connect_timeout, sizeof p->connect_timeout, "%d",
             opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 5);
    snprintf(p->application_name, sizeof p->application_name, "%s",
             opts->application_name ? opts->application_name : "mockery-server");
    p->unnamed = opts->unnamed_statements;
    p->notice = opts->notice;
    p->notice_arg = opts->notice_arg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->url = strdup(opts->database_url ? opts->database_url : "");
    p->conns = calloc((size_t)p->size, sizeof *p->conns);
    p->free_idx = calloc((size_t)p->size, sizeof *p->free_idx);
    p->conn_gen = calloc((size_t)p->size, sizeof *p->conn_gen);
    if (!p->url || !p->conns || !p->free_idx || !p->conn_gen) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = p->size - 1; i >= 0; i--)
        p->free_idx[p->nfree++] = i;
    return 0;
}

void pg_pool_destroy(struct pg_pool *p)
{
    for (int i = 0; p->conns && i < p->size; i++)
        if (p->conns[i])
            PQfinish(p->conns[i]);
    free(p->conns);
    free(p->free_idx);
    free(p->conn_gen);
    free(p->url);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
}

PGconn *pg_pool_connect_alone(struct pg_pool *p, const char *application_name, char *err,
                              size_t errlen)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {p->url, p->connect_timeout, application_name, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        pg_first_line(err, errlen, "could not connect", conn ? PQerrorMessage(conn) : NULL);
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, notice_cb, p);
    return conn;
}
