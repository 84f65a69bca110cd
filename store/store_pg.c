/* store_pg.c - the PostgreSQL store: a libpq connection pool and the claim /
 * complete / release protocol of DESIGN.md section 3
 *
 * Thread safety: a connection is used by one thread at a time; the pool hands
 * them out under a mutex and a condition variable. Claims and completions
 * queue for a connection, and whoever gets one runs every queued operation of
 * its kind as one statement (struct batch_op): under load PostgreSQL sees a
 * few multi-row statements and one WAL flush for many payments instead of a
 * statement and a flush each. A connection that breaks is closed and opened
 * again by the next thread that takes it; meanwhile calls return
 * STORE_UNAVAILABLE.
 */
#define _POSIX_C_SOURCE 200809L
#include "migrations.h"
#include "store.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- SQL ---------------------------------------------------------------- */

#define US_OF(col) "(extract(epoch from " col ") * 1000000)::bigint"
#define TS_OF(param) "(timestamptz 'epoch' + " param "::bigint * interval '1 microsecond')"

/* Claim: insert, or take over an expired record or a processing one whose
 * holder's lease ran out (same fingerprint only). Returns a row only when this
 * request won. Row lock waits last at most one short commit, never a payment.
 *
 * Committed without waiting for the WAL flush (synchronous_commit off for
 * this statement's transaction only): no client is told anything on the
 * strength of a claim. If PostgreSQL crashes and loses it, the request's
 * completion fails too and its client retries. If the completion commits,
 * its synchronous commit flushes the WAL up to its own record - the claim's
 * record comes before it - so every acknowledged payment survives a crash
 * with its claim. One WAL flush per payment instead of two. */
#define CLAIM_INTO                                                                                 \
    " INSERT INTO idempotency_keys AS k (tenant_id, idempotency_key, fingerprint, state,"          \
    " lease_token, locked_until, created_at, expires_at)"
#define CLAIM_ON_CONFLICT                                                                          \
    " ON CONFLICT (tenant_id, idempotency_key) DO UPDATE SET"                                      \
    " fingerprint = EXCLUDED.fingerprint, state = 'processing',"                                   \
    " lease_token = EXCLUDED.lease_token, locked_until = EXCLUDED.locked_until,"                   \
    " response_status = NULL, response_body = NULL, response_location = NULL,"                     \
    " completed_at = NULL,"                                                                        \
    " duplicate_count = CASE WHEN k.expires_at <= now() THEN 0 ELSE k.duplicate_count END,"        \
    " last_duplicate_at = CASE WHEN k.expires_at <= now() THEN NULL"                               \
    " ELSE k.last_duplicate_at END,"                                                               \
    " created_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.created_at"                       \
    " ELSE k.created_at END,"                                                                      \
    " expires_at = CASE WHEN k.expires_at <= now() THEN EXCLUDED.expires_at"                       \
    " ELSE k.expires_at END"                                                                       \
    " WHERE k.expires_at <= now()"                                                                 \
    " OR (k.state = 'processing' AND k.locked_until <= now()"                                      \
    " AND k.fingerprint = EXCLUDED.fingerprint)"

static const char SQL_CLAIM[] =
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))" CLAIM_INTO
    " SELECT $1, $2, $3, 'processing', nextval('lease_token_seq'),"
    " now() + $4::bigint * interval '1 millisecond', now(),"
    " now() + $5::bigint * interval '1 millisecond' FROM async" CLAIM_ON_CONFLICT
    " RETURNING lease_token, (xmax = 0), " US_OF("created_at");

/* Several requests' claims in one statement (arrays of tenants, keys and
 * fingerprints), inserted in key order so that two batches lock the records
 * they share in the same order. A row comes back for each claim that won. */
static const char SQL_CLAIM_BATCH[] =
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))" CLAIM_INTO
    " SELECT i.tenant, i.key, i.fp, 'processing', nextval('lease_token_seq'),"
    " now() + $4::bigint * interval '1 millisecond', now(),"
    " now() + $5::bigint * interval '1 millisecond'"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS i(tenant, key, fp), async"
    " ORDER BY i.tenant, i.key" CLAIM_ON_CONFLICT
    " RETURNING tenant_id, idempotency_key, lease_token, (xmax = 0), " US_OF("created_at");

/* What a losing claim ran into, counted as a prevented duplicate. No row:
 * the record vanished (released) or became claimable since; claim again.
 * The count is a statistic: committed without waiting for the flush. */
static const char SQL_READ[] =
    "WITH async AS (SELECT set_config('synchronous_commit', 'off', true))"
    " UPDATE idempotency_keys SET duplicate_count = duplicate_count + 1,"
    " last_duplicate_at = now() FROM async"
    " WHERE tenant_id = $1 AND idempotency_key = $2 AND expires_at > now()"
    " AND NOT (state = 'processing' AND locked_until <= now() AND fingerprint = $3)"
    " RETURNING state, fingerprint, response_status, response_body, response_location, " US_OF(
        "created_at");

/* Completion and payment row in one statement, so in one transaction with
 * one round trip: the payment is inserted only if the fenced update matched. */
static const char SQL_COMPLETE_PAYMENT[] =
    "WITH done AS (UPDATE idempotency_keys SET state = 'completed', response_status = $4,"
    " response_body = $5, response_location = $6, locked_until = NULL, completed_at = now()"
    " WHERE tenant_id = $1 AND idempotency_key = $2 AND lease_token = $3"
    " AND state = 'processing' RETURNING tenant_id)"
    " INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id,"
    " amount_minor, currency, description, status, processed_at)"
    " SELECT tenant_id, $7, $2, $8, $9, $10, $11, $12, " TS_OF("$13") " FROM done";

/* Several requests' completions in one statement, so in one transaction and
 * one WAL flush: each record is updated only under its own fencing token, a
 * payment row is inserted only for the records that matched (and only where
 * the completion carries one), and the matched keys come back. Records are
 * locked in key order, as the claims lock them, so a batch of claims and one
 * of completions never wait for each other in a circle. */
static const char SQL_COMPLETE_BATCH[] =
    "WITH i AS (SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[],"
    " $5::text[], $6::text[], $7::text[], $8::text[], $9::bigint[], $10::text[], $11::text[],"
    " $12::text[], $13::bigint[]) AS i(tenant, key, token, status, body, location, txn,"
    " customer, amount, currency, description, pstatus, processed) ORDER BY tenant, key),"
    " done AS (UPDATE idempotency_keys k SET state = 'completed', response_status = i.status,"
    " response_body = i.body, response_location = i.location, locked_until = NULL,"
    " completed_at = now() FROM i WHERE k.tenant_id = i.tenant AND k.idempotency_key = i.key"
    " AND k.lease_token = i.token AND k.state = 'processing' RETURNING i.*),"
    " paid AS (INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id,"
    " amount_minor, currency, description, status, processed_at)"
    " SELECT tenant, txn, key, customer, amount, currency, description, pstatus,"
    " " TS_OF("processed") " FROM done WHERE txn IS NOT NULL) SELECT tenant, key FROM done";

static const char SQL_COMPLETE[] =
    "UPDATE idempotency_keys SET state = 'completed', response_status = $4,"
    " response_body = $5, response_location = $6, locked_until = NULL, completed_at = now()"
    " WHERE tenant_id = $1 AND idempotency_key = $2 AND lease_token = $3"
    " AND state = 'processing'";

static const char SQL_RELEASE[] =
    "DELETE FROM idempotency_keys WHERE tenant_id = $1 AND idempotency_key = $2"
    " AND lease_token = $3 AND state = 'processing'";

static const char SQL_INSERT_PAYMENT[] =
    "INSERT INTO payments (tenant_id, transaction_id, idempotency_key, customer_id,"
    " amount_minor, currency, description, status, processed_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, " TS_OF("$9") ")";

#define PAYMENT_COLS                                                                               \
    "transaction_id, idempotency_key, customer_id, amount_minor, currency, description,"           \
    " status, " US_OF("processed_at") ", amount_refunded_minor"

static const char SQL_GET_PAYMENT[] =
    "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1 AND transaction_id = $2";

static const char SQL_CURSOR[] =
    "SELECT processed_at::text FROM payments WHERE tenant_id = $1 AND transaction_id = $2";

/* $3/$4: the cursor's (processed_at, transaction_id), or ('infinity', '') */
static const char SQL_LIST[] = "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1"
                               " AND (processed_at, transaction_id) < ($2::timestamptz, $3)"
                               " ORDER BY processed_at DESC, transaction_id DESC LIMIT $4";

static const char SQL_LIST_CUSTOMER[] =
    "SELECT " PAYMENT_COLS " FROM payments WHERE tenant_id = $1 AND customer_id = $5"
    " AND (processed_at, transaction_id) < ($2::timestamptz, $3)"
    " ORDER BY processed_at DESC, transaction_id DESC LIMIT $4";

/* A refund's share of its payment, taken under the payment row's lock:
 * refunds of one payment queue on it, and each sees the sum the previous
 * one committed (READ COMMITTED re-evaluates the condition on the newest
 * version after the wait). No row: the refund does not fit. */
static const char SQL_REFUND_APPLY[] =
    "UPDATE payments SET amount_refunded_minor = amount_refunded_minor + $3"
    " WHERE tenant_id = $1 AND transaction_id = $2 AND status = 'completed'"
    " AND amount_refunded_minor + $3::bigint <= amount_minor";

static const char SQL_INSERT_REFUND[] =
    "INSERT INTO refunds (tenant_id, refund_id, transaction_id, idempotency_key, amount_minor,"
    " currency, reason, status, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, " TS_OF("$9") ")";

#define REFUND_COLS                                                                                \
    "refund_id, transaction_id, idempotency_key, amount_minor, currency, reason, status, "         \
    US_OF("created_at")

static const char SQL_GET_REFUND[] =
    "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND refund_id = $2";

static const char SQL_REFUND_CURSOR[] = "SELECT created_at::text FROM refunds"
                                        " WHERE tenant_id = $1 AND refund_id = $2"
                                        " AND transaction_id = $3";

/* $3/$4: the cursor's (created_at, refund_id), or ('infinity', '') */
static const char SQL_LIST_REFUNDS[] =
    "SELECT " REFUND_COLS " FROM refunds WHERE tenant_id = $1 AND transaction_id = $2"
    " AND (created_at, refund_id) < ($3::timestamptz, $4)"
    " ORDER BY created_at DESC, refund_id DESC LIMIT $5";

/* Bounded work per pass; SKIP LOCKED lets several servers reap together. */
static const char SQL_REAP[] =
    "DELETE FROM idempotency_keys WHERE (tenant_id, idempotency_key) IN"
    " (SELECT tenant_id, idempotency_key FROM idempotency_keys WHERE expires_at <= now()"
    " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)";

static const char SQL_PING[] = "SELECT 1";

static const char SQL_MIGRATE_LOCK[] = "SELECT pg_advisory_xact_lock(7243117001)";
static const char SQL_MIGRATE_HAS[] = "SELECT 1 FROM schema_migrations WHERE version = $1";
static const char SQL_MIGRATE_RECORD[] =
    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";

struct prepared {
    const char *name;
    const char *sql;
    int nparams;
};

static const struct prepared PREPARED[] = {
    {"claim", SQL_CLAIM, 5},
    {"claim_batch", SQL_CLAIM_BATCH, 5},
    {"complete_batch", SQL_COMPLETE_BATCH, 13},
    {"read", SQL_READ, 3},
    {"complete_payment", SQL_COMPLETE_PAYMENT, 13},
    {"complete", SQL_COMPLETE, 6},
    {"release", SQL_RELEASE, 3},
    {"insert_payment", SQL_INSERT_PAYMENT, 9},
    {"get_payment", SQL_GET_PAYMENT, 2},
    {"cursor", SQL_CURSOR, 2},
    {"list", SQL_LIST, 4},
    {"list_customer", SQL_LIST_CUSTOMER, 5},
    {"refund_apply", SQL_REFUND_APPLY, 3},
    {"insert_refund", SQL_INSERT_REFUND, 9},
    {"get_refund", SQL_GET_REFUND, 2},
    {"refund_cursor", SQL_REFUND_CURSOR, 3},
    {"list_refunds", SQL_LIST_REFUNDS, 5},
    {"reap", SQL_REAP, 1},
    {"ping", SQL_PING, 0},
};

/* ---- pool --------------------------------------------------------------- */

enum { BATCH_CLAIM, BATCH_COMPLETE, BATCH_KINDS };
#define BATCH_MAX 32
/* A batch still running after this long is waiting on something (a record
 * lock held outside the server, a stalled flush): the next turn of its kind
 * starts beside it, on another connection, rather than wait behind it. */
#define BATCH_STALL_MS 200

/* A batch that is running, on its leader's stack. */
struct batch_run {
    struct timespec start;
    struct batch_op **ops;
    int n;
    struct batch_run *next;
};

/* One request's claim or completion, queued for its turn. One statement of
 * claims and one of completions run at a time (group commit): the thread
 * whose turn it is, with a free connection, takes every queued operation of
 * its kind (up to BATCH_MAX, one per key) and runs them as one statement; the
 * others sleep on their own condition variable until theirs is done. Under
 * light load a batch is one operation and the single-row statement runs.
 * While a statement runs, the next requests gather behind it: the busier the
 * server, the more each statement (and each WAL flush) carries. Measured on 2
 * cores (bench/): more than one statement of a kind at a time made smaller
 * batches and less throughput. The exception is a stalled batch
 * (BATCH_STALL_MS). The other connections serve reads, lists and the
 * reaper. */
struct batch_op {
    struct batch_op *prev, *next; /* in its kind's queue */
    pthread_cond_t cv;
    int kind;
    int taken; /* in a batch that is running: wait for it, whatever the deadline */
    int done;
    const char *vals[13]; /* the single-row statement's parameters */
    int nvals;            /* claim 5; completion 6, or 13 with a payment */
    /* results */
    enum store_status st;
    int matched; /* claim: won (a row came back); completion: the fenced update matched */
    int inserted;
    int64_t lease_token, created_at_us;
    char *err;
    size_t errlen;
};

struct store_pg {
    struct store base;
    char *url;
    char connect_timeout[16];
    char application_name[64];
    int acquire_timeout_ms;
    void (*notice)(void *arg, const char *message);
    void *notice_arg;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    PGconn **conns; /* NULL: not connected (yet, or since it broke) */
    int *free_idx;  /* stack of free slots */
    int nfree;
    int size;
    int waiting;
    /* claims and completions waiting for a connection, oldest first */
    struct batch_op *head[BATCH_KINDS], *tail[BATCH_KINDS];
    unsigned long long batches[BATCH_KINDS], batched[BATCH_KINDS];
    int queued;                             /* operations in those queues */
    struct batch_run *running[BATCH_KINDS]; /* batches of each kind running now */
    unsigned long long split;
    /* Statements are prepared again on each connection whenever plan_gen
     * moves on (take_batch, as completions pass replan_at); conn_gen says
     * what each was prepared under. */
    atomic_uint plan_gen;
    unsigned *conn_gen;
    unsigned long long replan_at; /* completions that move plan_gen on next */
};

/* PostgreSQL keeps a prepared statement's generic plan, made at its sixth
 * run, until the statistics of a table it reads change. A new database has
 * none until autoanalyze comes (up to a minute later), and on a table that
 * small - under about 70 pages, a thousand records - the cheapest plan for
 * the batched completion is a sequential scan of idempotency_keys, which it
 * then keeps while the table grows: every batch read the whole table, and
 * throughput fell about fivefold within 25 s of load on an empty database.
 * So the statements are prepared again (and planned afresh at the tables'
 * new size) each time this server's completions pass 2,048, then four times
 * as many, up to about two million: a plan made on a table too small for an
 * index is never kept past a fourfold growth, and the plans made past 2,048
 * records are index scans. Once statistics exist, PostgreSQL replans by
 * itself. */
#define REPLAN_FIRST 2048ULL
#define REPLAN_LAST (1ULL << 21)

static void notice_cb(void *arg, const char *message)
{
    struct store_pg *pg = arg;
    if (pg->notice) {
        char buf[1024];
        snprintf(buf, sizeof buf, "%s", message);
        size_t n = strlen(buf);
        while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
            buf[--n] = '\0';
        pg->notice(pg->notice_arg, buf);
    }
}

static void first_line(char *err, size_t errlen, const char *prefix, const char *msg)
{
    snprintf(err, errlen, "%s: %s", prefix, msg ? msg : "unknown error");
    char *nl = strchr(err, '\n');
    if (nl)
        *nl = '\0';
}

/* One place maps SQLSTATE (and a dead connection) to a store status. */
static enum store_status status_of(PGconn *conn, const PGresult *res)
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
    for (size_t i = 0; i < sizeof PREPARED / sizeof PREPARED[0]; i++) {
        PGresult *res =
            PQprepare(conn, PREPARED[i].name, PREPARED[i].sql, PREPARED[i].nparams, NULL);
        int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            first_line(err, errlen, "could not prepare statements", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            return -1;
    }
    return 0;
}

/* Prepares a connection's statements again if plan_gen has moved on since
 * they were. If that fails the connection is closed, to be opened (and
 * prepared) again by its next user. */
static void replan(struct store_pg *pg, int idx)
{
    unsigned gen = atomic_load(&pg->plan_gen);
    if (pg->conn_gen[idx] == gen)
        return;
    char err[256];
    PGresult *res = PQexec(pg->conns[idx], "DEALLOCATE ALL");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    PQclear(res);
    if (!ok || prepare_all(pg->conns[idx], err, sizeof err) != 0) {
        PQfinish(pg->conns[idx]);
        pg->conns[idx] = NULL;
        return;
    }
    pg->conn_gen[idx] = gen;
}

static PGconn *pg_connect(struct store_pg *pg, char *err, size_t errlen)
{
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {pg->url, pg->connect_timeout, pg->application_name, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn) {
        snprintf(err, errlen, "could not connect: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        first_line(err, errlen, "could not connect", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    PQsetNoticeProcessor(conn, notice_cb, pg);
    if (prepare_all(conn, err, errlen) != 0) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

static void deadline_in(struct timespec *deadline, int ms)
{
    clock_gettime(CLOCK_REALTIME, deadline);
    deadline->tv_sec += ms / 1000;
    deadline->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (deadline->tv_nsec >= 1000000000L) {
        deadline->tv_sec++;
        deadline->tv_nsec -= 1000000000L;
    }
}

static int deadline_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return now.tv_sec > deadline->tv_sec ||
           (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec);
}

/* With pg->mu held: when the next batch of this kind may start - now if none
 * is running, else once every running one has stalled. */
static void turn_at(const struct store_pg *pg, int kind, struct timespec *at)
{
    *at = (struct timespec){0, 0};
    for (const struct batch_run *r = pg->running[kind]; r; r = r->next)
        if (r->start.tv_sec > at->tv_sec ||
            (r->start.tv_sec == at->tv_sec && r->start.tv_nsec > at->tv_nsec))
            *at = r->start;
    if (!pg->running[kind])
        return;
    at->tv_nsec += (long)BATCH_STALL_MS * 1000000L;
    while (at->tv_nsec >= 1000000000L) {
        at->tv_sec++;
        at->tv_nsec -= 1000000000L;
    }
}

/* With pg->mu held: while a connection is free, wake whoever can use it -
 * the oldest queued claim and completion, and a thread in pool_acquire.
 * A wake-up that finds nothing to do is harmless; a missed one would leave a
 * request waiting beside a free connection. */
static void wake_next(struct store_pg *pg)
{
    if (pg->nfree == 0)
        return;
    for (int k = 0; k < BATCH_KINDS; k++) {
        if (!pg->head[k])
            continue;
        struct timespec turn;
        turn_at(pg, k, &turn);
        if (!pg->running[k] || deadline_passed(&turn))
            pthread_cond_signal(&pg->head[k]->cv);
    }
    if (pg->waiting)
        pthread_cond_signal(&pg->cv);
}

/* Puts a slot back on the free stack (pg->mu held). */
static void slot_free(struct store_pg *pg, int idx)
{
    pg->free_idx[pg->nfree++] = idx;
    wake_next(pg);
}

/* Makes the taken slot's connection usable, connecting it if needed. On
 * failure the slot is given back and -1 returned with err set. */
static int pool_ready(struct store_pg *pg, int idx, char *err, size_t errlen)
{
    /* An idle connection has nothing to read: if its socket is readable,
     * the server said goodbye (restart, terminated backend) or closed it.
     * Notice that now, without a round trip, rather than fail the caller's
     * statement on it. */
    PGconn *conn = pg->conns[idx];
    struct pollfd pfd = {.fd = conn ? PQsocket(conn) : -1, .events = POLLIN};
    if (conn && (PQstatus(conn) != CONNECTION_OK || pfd.fd < 0 || poll(&pfd, 1, 0) != 0)) {
        PQfinish(conn);
        pg->conns[idx] = NULL;
    }
    if (pg->conns[idx])
        replan(pg, idx);
    if (!pg->conns[idx]) {
        pg->conn_gen[idx] = atomic_load(&pg->plan_gen);
        pg->conns[idx] = pg_connect(pg, err, errlen);
        if (!pg->conns[idx]) {
            pthread_mutex_lock(&pg->mu);
            slot_free(pg, idx);
            pthread_mutex_unlock(&pg->mu);
            return -1;
        }
    }
    return idx;
}

/* Takes a connection slot, connecting it if needed. Returns the slot index,
 * or -1 with err set (pool exhausted past the timeout, or no database). */
static int pool_acquire(struct store_pg *pg, char *err, size_t errlen)
{
    struct timespec deadline;
    deadline_in(&deadline, pg->acquire_timeout_ms);

    pthread_mutex_lock(&pg->mu);
    pg->waiting++;
    while (pg->nfree == 0) {
        int rc = pthread_cond_timedwait(&pg->cv, &pg->mu, &deadline);
        if (rc == ETIMEDOUT && pg->nfree == 0 && deadline_passed(&deadline)) {
            pg->waiting--;
            pthread_mutex_unlock(&pg->mu);
            snprintf(err, errlen, "no database connection free within %d ms",
                     pg->acquire_timeout_ms);
            return -1;
        }
    }
    pg->waiting--;
    int idx = pg->free_idx[--pg->nfree];
    wake_next(pg);
    pthread_mutex_unlock(&pg->mu);
    return pool_ready(pg, idx, err, errlen);
}

/* Gives the slot back; a connection that is no longer usable is closed so
 * that the next user reconnects. */
static void pool_release(struct store_pg *pg, int idx)
{
    PGconn *conn = pg->conns[idx];
    if (conn && (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE)) {
        PQfinish(conn);
        pg->conns[idx] = NULL;
    }
    pthread_mutex_lock(&pg->mu);
    slot_free(pg, idx);
    pthread_mutex_unlock(&pg->mu);
}

/* Runs a prepared statement and checks for the one expected result status.
 * On failure returns NULL with *st and err set (the result is cleared). */
static PGresult *run(struct store_pg *pg, int idx, const char *stmt, int n, const char *const *vals,
                     ExecStatusType want, enum store_status *st, char *err, size_t errlen)
{
    PGconn *conn = pg->conns[idx];
    PGresult *res = PQexecPrepared(conn, stmt, n, vals, NULL, NULL, 0);
    if (PQresultStatus(res) == want)
        return res;
    *st = status_of(conn, res);
    first_line(err, errlen, stmt, PQerrorMessage(conn));
    PQclear(res);
    return NULL;
}

static char *dup_value(const PGresult *res, int row, int col)
{
    if (PQgetisnull(res, row, col))
        return NULL;
    return strdup(PQgetvalue(res, row, col));
}

static int64_t int_value(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* ---- batches ------------------------------------------------------------ */

/* A PostgreSQL array literal, built up element by element. */
struct array_text {
    char *p;
    size_t len, cap;
    int failed;
};

static void array_put(struct array_text *a, const char *text, size_t n)
{
    if (a->failed)
        return;
    if (a->len + n + 1 > a->cap) {
        size_t cap = a->cap ? a->cap : 256;
        while (a->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(a->p, cap);
        if (!p) {
            a->failed = 1;
            return;
        }
        a->p = p;
        a->cap = cap;
    }
    memcpy(a->p + a->len, text, n);
    a->len += n;
    a->p[a->len] = '\0';
}

/* Parameter col of every operation as one array: {"a","b\"c",NULL}. */
static void array_of(struct array_text *a, struct batch_op *const *ops, int n, int col)
{
    array_put(a, "{", 1);
    for (int i = 0; i < n; i++) {
        const char *v = col < ops[i]->nvals ? ops[i]->vals[col] : NULL;
        if (i)
            array_put(a, ",", 1);
        if (!v) {
            array_put(a, "NULL", 4);
            continue;
        }
        array_put(a, "\"", 1);
        for (const char *q = v; *q; q++) {
            size_t run = strcspn(q, "\"\\");
            array_put(a, q, run);
            q += run;
            if (!*q)
                break;
            array_put(a, "\\", 1);
            array_put(a, q, 1);
        }
        array_put(a, "\"", 1);
    }
    array_put(a, "}", 1);
}

static int same_key(const struct batch_op *a, const struct batch_op *b)
{
    return strcmp(a->vals[0], b->vals[0]) == 0 && strcmp(a->vals[1], b->vals[1]) == 0;
}

/* With pg->mu held: queue operations, oldest first. */
static void queue_push(struct store_pg *pg, struct batch_op *op)
{
    op->next = NULL;
    op->prev = pg->tail[op->kind];
    if (op->prev)
        op->prev->next = op;
    else
        pg->head[op->kind] = op;
    pg->tail[op->kind] = op;
    pg->queued++;
}

static void queue_remove(struct store_pg *pg, struct batch_op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        pg->head[op->kind] = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        pg->tail[op->kind] = op->prev;
    pg->queued--;
}

/* With pg->mu held: unlinks up to BATCH_MAX queued operations of one kind,
 * oldest first, at most one per (tenant, key) - a statement may touch a row
 * once - and none for a key a running batch holds (a batch started beside a
 * stalled one must not stall on the same record), and for claims only those
 * with the first one's lease and TTL. */
static int take_batch(struct store_pg *pg, int kind, struct batch_op **batch)
{
    int n = 0;
    for (struct batch_op *op = pg->head[kind], *next; op && n < BATCH_MAX; op = next) {
        next = op->next;
        int fits = 1;
        for (int i = 0; fits && i < n; i++)
            fits = !same_key(batch[i], op);
        for (const struct batch_run *r = pg->running[kind]; fits && r; r = r->next)
            for (int i = 0; fits && i < r->n; i++)
                fits = !same_key(r->ops[i], op);
        if (fits && n && kind == BATCH_CLAIM)
            fits = strcmp(op->vals[3], batch[0]->vals[3]) == 0 &&
                   strcmp(op->vals[4], batch[0]->vals[4]) == 0;
        if (fits) {
            queue_remove(pg, op);
            op->taken = 1;
            batch[n++] = op;
        }
    }
    if (n) {
        pg->batches[kind]++;
        pg->batched[kind] += (unsigned long long)n;
        if (kind == BATCH_COMPLETE && pg->batched[kind] >= pg->replan_at &&
            pg->replan_at <= REPLAN_LAST) {
            atomic_fetch_add(&pg->plan_gen, 1);
            pg->replan_at *= 4;
        }
    }
    return n;
}

/* One operation with the single-row statement. */
static void run_one(struct store_pg *pg, int idx, struct batch_op *op)
{
    if (op->kind == BATCH_CLAIM) {
        PGresult *res =
            run(pg, idx, "claim", 5, op->vals, PGRES_TUPLES_OK, &op->st, op->err, op->errlen);
        if (!res)
            return;
        op->matched = PQntuples(res) == 1;
        if (op->matched) {
            op->lease_token = int_value(res, 0, 0);
            op->inserted = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
            op->created_at_us = int_value(res, 0, 2);
        }
        PQclear(res);
        return;
    }
    const char *stmt = op->nvals == 13 ? "complete_payment" : "complete";
    PGresult *res =
        run(pg, idx, stmt, op->nvals, op->vals, PGRES_COMMAND_OK, &op->st, op->err, op->errlen);
    if (res) {
        op->matched = strcmp(PQcmdTuples(res), "1") == 0;
        PQclear(res);
    }
}

/* Several operations in one statement. If it fails while the connection
 * stays usable (a lock wait that ended in a deadlock, one operation's bad
 * row), nothing of it committed: each operation runs alone instead, so one
 * cannot fail the others. */
static void run_many(struct store_pg *pg, int idx, struct batch_op **ops, int n)
{
    PGconn *conn = pg->conns[idx];
    int kind = ops[0]->kind;
    int ncols = kind == BATCH_CLAIM ? 3 : 13;
    struct array_text arrays[13] = {{0}};
    const char *vals[13];
    int failed = 0;
    for (int c = 0; c < ncols; c++) {
        array_of(&arrays[c], ops, n, c);
        vals[c] = arrays[c].p;
        failed |= arrays[c].failed;
    }
    if (kind == BATCH_CLAIM) {
        vals[3] = ops[0]->vals[3];
        vals[4] = ops[0]->vals[4];
        ncols = 5;
    }
    PGresult *res = NULL;
    if (!failed)
        res = PQexecPrepared(conn, kind == BATCH_CLAIM ? "claim_batch" : "complete_batch", ncols,
                             vals, NULL, NULL, 0);
    for (int c = 0; c < 13; c++)
        free(arrays[c].p);

    if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
        for (int r = 0; r < PQntuples(res); r++) {
            for (int i = 0; i < n; i++) {
                struct batch_op *op = ops[i];
                if (op->matched || strcmp(PQgetvalue(res, r, 0), op->vals[0]) != 0 ||
                    strcmp(PQgetvalue(res, r, 1), op->vals[1]) != 0)
                    continue;
                op->matched = 1;
                if (kind == BATCH_CLAIM) {
                    op->lease_token = int_value(res, r, 2);
                    op->inserted = strcmp(PQgetvalue(res, r, 3), "t") == 0;
                    op->created_at_us = int_value(res, r, 4);
                }
                break;
            }
        }
        PQclear(res);
        return;
    }
    if (!failed && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        PQclear(res);
        pthread_mutex_lock(&pg->mu);
        pg->split++;
        pthread_mutex_unlock(&pg->mu);
        for (int i = 0; i < n; i++)
            run_one(pg, idx, ops[i]);
        return;
    }
    for (int i = 0; i < n; i++) {
        ops[i]->st = failed ? STORE_ERROR : status_of(conn, res);
        first_line(ops[i]->err, ops[i]->errlen, kind == BATCH_CLAIM ? "claim" : "complete",
                   failed ? "out of memory" : PQerrorMessage(conn));
    }
    PQclear(res);
}

/* Queues op and returns when it has run, in a batch this thread led or in
 * another thread's. op->st says how it went. */
static void batch_submit(struct store_pg *pg, struct batch_op *op)
{
    struct timespec deadline;
    deadline_in(&deadline, pg->acquire_timeout_ms);
    pthread_cond_init(&op->cv, NULL);
    op->st = STORE_OK;

    pthread_mutex_lock(&pg->mu);
    queue_push(pg, op);

    while (!op->done) {
        struct timespec turn;
        turn_at(pg, op->kind, &turn);
        struct batch_op *batch[BATCH_MAX];
        int n = 0;
        if (!op->taken && pg->nfree > 0 && (!pg->running[op->kind] || deadline_passed(&turn)))
            n = take_batch(pg, op->kind, batch);
        /* n == 0 with a turn due: every queued key is held by a stalled batch;
         * wait for one to end */
        int held = !op->taken && pg->running[op->kind] && deadline_passed(&turn) && n == 0;
        if (n) {
            struct batch_run run = {.ops = batch, .n = n, .next = pg->running[op->kind]};
            clock_gettime(CLOCK_REALTIME, &run.start);
            pg->running[op->kind] = &run;
            int idx = pg->free_idx[--pg->nfree];
            wake_next(pg);
            if (pg->head[op->kind]) /* left behind: its turn is timed from now */
                pthread_cond_signal(&pg->head[op->kind]->cv);
            pthread_mutex_unlock(&pg->mu);

            char err[256];
            if (pool_ready(pg, idx, err, sizeof err) < 0) {
                for (int i = 0; i < n; i++) {
                    batch[i]->st = STORE_UNAVAILABLE;
                    snprintf(batch[i]->err, batch[i]->errlen, "%s", err);
                }
            } else {
                if (n == 1)
                    run_one(pg, idx, batch[0]);
                else
                    run_many(pg, idx, batch, n);
                pool_release(pg, idx);
            }

            pthread_mutex_lock(&pg->mu);
            struct batch_run **link = &pg->running[op->kind];
            while (*link != &run)
                link = &(*link)->next;
            *link = run.next;
            /* with a stalled batch still running, the oldest waiter's turn
             * now comes sooner than it was told */
            if (pg->running[op->kind] && pg->head[op->kind])
                pthread_cond_signal(&pg->head[op->kind]->cv);
            for (int i = 0; i < n; i++) {
                batch[i]->done = 1;
                if (batch[i] != op)
                    pthread_cond_signal(&batch[i]->cv);
            }
            continue;
        }
        if (op->taken) {
            pthread_cond_wait(&op->cv, &pg->mu);
            continue;
        }
        /* the oldest waiter also wakes when the running batch would count
         * as stalled */
        const struct timespec *until = &deadline;
        if (pg->head[op->kind] == op && pg->running[op->kind] && !held &&
            (turn.tv_sec < deadline.tv_sec ||
             (turn.tv_sec == deadline.tv_sec && turn.tv_nsec < deadline.tv_nsec)))
            until = &turn;
        int rc = pthread_cond_timedwait(&op->cv, &pg->mu, until);
        if (rc == ETIMEDOUT && !op->taken && deadline_passed(&deadline)) {
            queue_remove(pg, op);
            op->st = STORE_UNAVAILABLE;
            snprintf(op->err, op->errlen, "no database connection free for this %s within %d ms",
                     op->kind == BATCH_CLAIM ? "claim" : "completion", pg->acquire_timeout_ms);
            break;
        }
    }
    /* a wake-up meant for whoever leads next may have landed here */
    wake_next(pg);
    pthread_mutex_unlock(&pg->mu);
    pthread_cond_destroy(&op->cv);
}

/* ---- operations --------------------------------------------------------- */

/* Reads the record a losing claim ran into. *retry is set when the record
 * vanished or became claimable in between (the claim should run again). */
static enum store_status read_existing(struct store_pg *pg, int idx, const char *tenant,
                                       const char *key, const char *fingerprint,
                                       struct store_claim_result *out, int *retry, char *err,
                                       size_t errlen)
{
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, key, fingerprint};
    PGresult *res = run(pg, idx, "read", 3, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        return st;
    *retry = 0;
    if (PQntuples(res) == 0) {
        *retry = 1;
        goto out;
    }
    int completed = strcmp(PQgetvalue(res, 0, 0), "completed") == 0;
    int same = strcmp(PQgetvalue(res, 0, 1), fingerprint) == 0;
    int64_t created = int_value(res, 0, 5);
    if (!same) {
        *out = (struct store_claim_result){.outcome = CLAIM_MISMATCH, .created_at_us = created};
    } else if (!completed) {
        *out = (struct store_claim_result){.outcome = CLAIM_IN_PROGRESS, .created_at_us = created};
    } else {
        struct store_claim_result r = {.outcome = CLAIM_COMPLETED,
                                       .response_status = (int)int_value(res, 0, 2),
                                       .created_at_us = created};
        r.response_body = dup_value(res, 0, 3);
        r.response_body_len = r.response_body ? strlen(r.response_body) : 0;
        r.response_location = dup_value(res, 0, 4);
        if (!r.response_body || (!PQgetisnull(res, 0, 4) && !r.response_location)) {
            store_claim_result_clear(&r);
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
            goto out;
        }
        *out = r;
    }
out:
    PQclear(res);
    return st;
}

static enum store_status pg_claim(struct store *s, const char *tenant, const char *key,
                                  const char *fingerprint, int64_t lease_ms, int64_t ttl_ms,
                                  struct store_claim_result *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char lease[24], ttl[24];
    snprintf(lease, sizeof lease, "%" PRId64, lease_ms);
    snprintf(ttl, sizeof ttl, "%" PRId64, ttl_ms);

    /* A record can vanish (released) or become claimable between the claim
     * and the read of what it ran into; a few rounds settle it. */
    for (int attempt = 0; attempt < 5; attempt++) {
        struct batch_op op = {.kind = BATCH_CLAIM,
                              .vals = {tenant, key, fingerprint, lease, ttl},
                              .nvals = 5,
                              .err = err,
                              .errlen = errlen};
        batch_submit(pg, &op);
        if (op.st != STORE_OK)
            return op.st;
        if (op.matched) {
            *out = (struct store_claim_result){.outcome = op.inserted ? CLAIM_NEW : CLAIM_TAKEOVER,
                                               .lease_token = op.lease_token,
                                               .created_at_us = op.created_at_us};
            return STORE_OK;
        }
        int retry = 0;
        int idx = pool_acquire(pg, err, errlen);
        if (idx < 0)
            return STORE_UNAVAILABLE;
        st = read_existing(pg, idx, tenant, key, fingerprint, out, &retry, err, errlen);
        pool_release(pg, idx);
        if (st != STORE_OK || !retry)
            return st;
    }
    snprintf(err, errlen, "claim did not settle after 5 attempts");
    return STORE_UNAVAILABLE;
}

static enum store_status write_refund(struct store_pg *pg, const char *tenant, const char *key,
                                      int64_t lease_token, const struct store_response *resp,
                                      const struct store_refund *rf, char *err, size_t errlen);

static enum store_status pg_complete(struct store *s, const char *tenant, const char *key,
                                     int64_t lease_token, const struct store_response *resp,
                                     const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const struct store_payment *p = rows ? rows->payment : NULL;
    if (rows && rows->refund) {
        if (p) {
            snprintf(err, errlen, "a completion carries a payment or a refund, not both");
            return STORE_ERROR;
        }
        return write_refund(pg, tenant, key, lease_token, resp, rows->refund, err, errlen);
    }
    char token[24], status[16], amount[24], processed[24];
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    snprintf(status, sizeof status, "%d", resp->status);
    char *body = strndup(resp->body, resp->body_len);
    if (!body) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    struct batch_op op = {.kind = BATCH_COMPLETE,
                          .vals = {tenant, key, token, status, body, resp->location},
                          .nvals = 6,
                          .err = err,
                          .errlen = errlen};
    if (p) {
        snprintf(amount, sizeof amount, "%" PRId64, p->amount_minor);
        snprintf(processed, sizeof processed, "%" PRId64, p->processed_at_us);
        op.vals[6] = p->transaction_id;
        op.vals[7] = p->customer_id;
        op.vals[8] = amount;
        op.vals[9] = p->currency;
        op.vals[10] = p->description;
        op.vals[11] = p->status;
        op.vals[12] = processed;
        op.nvals = 13;
    }
    batch_submit(pg, &op);
    st = op.st;
    if (st == STORE_OK && !op.matched) {
        snprintf(err, errlen, "lease lost on key");
        st = STORE_LEASE_LOST;
    }
    free(body);
    return st;
}

static enum store_status pg_release(struct store *s, const char *tenant, const char *key,
                                    int64_t lease_token, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char token[24];
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    const char *vals[] = {tenant, key, token};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "release", 3, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        if (strcmp(PQcmdTuples(res), "1") != 0) {
            snprintf(err, errlen, "lease lost on key");
            st = STORE_LEASE_LOST;
        }
        PQclear(res);
    }
    pool_release(pg, idx);
    return st;
}

/* Runs one statement of a transaction: 1 when it changed a row, 0 when it
 * changed none, -1 on failure (*st and err set). */
static int tx_step(struct store_pg *pg, int idx, const char *stmt, int n, const char *const *vals,
                   enum store_status *st, char *err, size_t errlen)
{
    PGresult *res = run(pg, idx, stmt, n, vals, PGRES_COMMAND_OK, st, err, errlen);
    if (!res)
        return -1;
    int changed = strcmp(PQcmdTuples(res), "0") != 0;
    PQclear(res);
    return changed;
}

static int tx_exec(struct store_pg *pg, int idx, const char *sql, enum store_status *st, char *err,
                   size_t errlen)
{
    PGconn *conn = pg->conns[idx];
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) {
        *st = status_of(conn, res);
        first_line(err, errlen, sql, PQerrorMessage(conn));
    }
    PQclear(res);
    return ok ? 0 : -1;
}

/* A refund in one transaction: its share of the payment first (the row
 * lock that orders refunds of one payment), then - with a key - the fenced
 * completion of its record, then the refund row. Locking the payment before
 * the record means a duplicate's claim on the record never waits while this
 * refund waits for another refund of the same payment. */
static enum store_status write_refund(struct store_pg *pg, const char *tenant, const char *key,
                                      int64_t lease_token, const struct store_response *resp,
                                      const struct store_refund *rf, char *err, size_t errlen)
{
    enum store_status st = STORE_OK;
    char amount[24], created[24], token[24], status[16];
    snprintf(amount, sizeof amount, "%" PRId64, rf->amount_minor);
    snprintf(created, sizeof created, "%" PRId64, rf->created_at_us);
    snprintf(token, sizeof token, "%" PRId64, lease_token);
    snprintf(status, sizeof status, "%d", resp ? resp->status : 0);
    char *body = key ? strndup(resp->body, resp->body_len) : NULL;
    if (key && !body) {
        snprintf(err, errlen, "out of memory");
        return STORE_ERROR;
    }
    const char *apply[] = {tenant, rf->transaction_id, amount};
    const char *done[] = {tenant, key, token, status, body, key ? resp->location : NULL};
    const char *row[] = {tenant,       rf->refund_id, rf->transaction_id, rf->idempotency_key,
                         amount,       rf->currency,  rf->reason,         rf->status,
                         created};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0) {
        free(body);
        return STORE_UNAVAILABLE;
    }
    int rc = tx_exec(pg, idx, "BEGIN", &st, err, errlen);
    if (rc == 0) {
        rc = tx_step(pg, idx, "refund_apply", 3, apply, &st, err, errlen);
        if (rc == 0) {
            snprintf(err, errlen, "refund does not fit its payment");
            st = STORE_REJECTED;
        }
    }
    if (rc == 1 && key) {
        rc = tx_step(pg, idx, "complete", 6, done, &st, err, errlen);
        if (rc == 0) {
            snprintf(err, errlen, "lease lost on key");
            st = STORE_LEASE_LOST;
        }
    }
    if (rc == 1)
        rc = tx_step(pg, idx, "insert_refund", 9, row, &st, err, errlen) < 0 ? -1 : 1;
    if (rc == 1)
        rc = tx_exec(pg, idx, "COMMIT", &st, err, errlen) == 0 ? 1 : -1;
    else if (PQtransactionStatus(pg->conns[idx]) != PQTRANS_IDLE)
        PQclear(PQexec(pg->conns[idx], "ROLLBACK"));
    pool_release(pg, idx);
    free(body);
    return st;
}

static enum store_status pg_write_rows(struct store *s, const char *tenant,
                                       const struct store_rows *rows, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const struct store_payment *p = rows->payment;
    if (rows->refund && p) {
        snprintf(err, errlen, "rows carry a payment or a refund, not both");
        return STORE_ERROR;
    }
    if (rows->refund)
        return write_refund(pg, tenant, NULL, 0, NULL, rows->refund, err, errlen);
    if (!p)
        return STORE_OK;
    char amount[24], processed[24];
    snprintf(amount, sizeof amount, "%" PRId64, p->amount_minor);
    snprintf(processed, sizeof processed, "%" PRId64, p->processed_at_us);
    const char *vals[] = {tenant,   p->transaction_id, p->idempotency_key, p->customer_id,
                          amount,   p->currency,       p->description,     p->status,
                          processed};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "insert_payment", 9, vals, PGRES_COMMAND_OK, &st, err, errlen);
    PQclear(res);
    pool_release(pg, idx);
    return st;
}

/* Fills p from row of a PAYMENT_COLS result; returns -1 on allocation failure. */
static int payment_from_row(const PGresult *res, int row, struct store_payment *p)
{
    memset(p, 0, sizeof *p);
    p->transaction_id = dup_value(res, row, 0);
    p->idempotency_key = dup_value(res, row, 1);
    p->customer_id = dup_value(res, row, 2);
    p->amount_minor = int_value(res, row, 3);
    snprintf(p->currency, sizeof p->currency, "%s", PQgetvalue(res, row, 4));
    p->description = dup_value(res, row, 5);
    p->status = dup_value(res, row, 6);
    p->processed_at_us = int_value(res, row, 7);
    p->amount_refunded_minor = int_value(res, row, 8);
    if (!p->transaction_id || !p->customer_id || !p->status ||
        (!PQgetisnull(res, row, 1) && !p->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !p->description)) {
        store_payment_clear(p);
        return -1;
    }
    return 0;
}

static enum store_status pg_get_payment(struct store *s, const char *tenant,
                                        const char *transaction_id, struct store_payment *out,
                                        char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, transaction_id};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "get_payment", 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such payment");
            st = STORE_NOT_FOUND;
        } else if (payment_from_row(res, 0, out) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    pool_release(pg, idx);
    return st;
}

static enum store_status pg_list_payments(struct store *s, const char *tenant,
                                          const struct store_list_query *q, struct store_list *out,
                                          char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    struct store_list list = {0};
    PGresult *res = NULL;
    char *cursor_ts = NULL;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", q->limit + 1);

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    if (q->starting_after) {
        const char *cv[] = {tenant, q->starting_after};
        res = run(pg, idx, "cursor", 2, cv, PGRES_TUPLES_OK, &st, err, errlen);
        if (!res)
            goto out;
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such payment for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor_ts = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (!cursor_ts)
            goto oom;
    }
    const char *vals[] = {tenant, cursor_ts ? cursor_ts : "infinity",
                          cursor_ts ? q->starting_after : "", limit, q->customer_id};
    const char *stmt = q->customer_id ? "list_customer" : "list";
    res = run(pg, idx, stmt, q->customer_id ? 5 : 4, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        goto out;
    int rows = PQntuples(res);
    int take = rows > q->limit ? q->limit : rows;
    list.has_more = rows > q->limit;
    list.items = calloc(take ? (size_t)take : 1, sizeof *list.items);
    if (!list.items)
        goto oom;
    for (; list.count < (size_t)take; list.count++)
        if (payment_from_row(res, (int)list.count, &list.items[list.count]) != 0)
            goto oom;
    *out = list;
    list = (struct store_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    PQclear(res);
    pool_release(pg, idx);
    store_list_clear(&list);
    free(cursor_ts);
    return st;
}

/* Fills r from row of a REFUND_COLS result; returns -1 on allocation failure. */
static int refund_from_row(const PGresult *res, int row, struct store_refund *r)
{
    memset(r, 0, sizeof *r);
    r->refund_id = dup_value(res, row, 0);
    r->transaction_id = dup_value(res, row, 1);
    r->idempotency_key = dup_value(res, row, 2);
    r->amount_minor = int_value(res, row, 3);
    snprintf(r->currency, sizeof r->currency, "%s", PQgetvalue(res, row, 4));
    r->reason = dup_value(res, row, 5);
    r->status = dup_value(res, row, 6);
    r->created_at_us = int_value(res, row, 7);
    if (!r->refund_id || !r->transaction_id || !r->status ||
        (!PQgetisnull(res, row, 2) && !r->idempotency_key) ||
        (!PQgetisnull(res, row, 5) && !r->reason)) {
        store_refund_clear(r);
        return -1;
    }
    return 0;
}

static enum store_status pg_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                       struct store_refund *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    const char *vals[] = {tenant, refund_id};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "get_refund", 2, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (res) {
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such refund");
            st = STORE_NOT_FOUND;
        } else if (refund_from_row(res, 0, out) != 0) {
            snprintf(err, errlen, "out of memory");
            st = STORE_ERROR;
        }
        PQclear(res);
    }
    pool_release(pg, idx);
    return st;
}

static enum store_status pg_list_refunds(struct store *s, const char *tenant,
                                         const struct store_refund_query *q,
                                         struct store_refund_list *out, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    struct store_refund_list list = {0};
    PGresult *res = NULL;
    char *cursor_ts = NULL;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", q->limit + 1);

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    if (q->starting_after) {
        const char *cv[] = {tenant, q->starting_after, q->transaction_id};
        res = run(pg, idx, "refund_cursor", 3, cv, PGRES_TUPLES_OK, &st, err, errlen);
        if (!res)
            goto out;
        if (PQntuples(res) == 0) {
            snprintf(err, errlen, "no such refund for cursor");
            st = STORE_NOT_FOUND;
            goto out;
        }
        cursor_ts = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
        res = NULL;
        if (!cursor_ts)
            goto oom;
    }
    const char *vals[] = {tenant, q->transaction_id, cursor_ts ? cursor_ts : "infinity",
                          cursor_ts ? q->starting_after : "", limit};
    res = run(pg, idx, "list_refunds", 5, vals, PGRES_TUPLES_OK, &st, err, errlen);
    if (!res)
        goto out;
    int rows = PQntuples(res);
    int take = rows > q->limit ? q->limit : rows;
    list.has_more = rows > q->limit;
    list.items = calloc(take ? (size_t)take : 1, sizeof *list.items);
    if (!list.items)
        goto oom;
    for (; list.count < (size_t)take; list.count++)
        if (refund_from_row(res, (int)list.count, &list.items[list.count]) != 0)
            goto oom;
    *out = list;
    list = (struct store_refund_list){0};
    goto out;
oom:
    snprintf(err, errlen, "out of memory");
    st = STORE_ERROR;
out:
    PQclear(res);
    pool_release(pg, idx);
    store_refund_list_clear(&list);
    free(cursor_ts);
    return st;
}

static enum store_status pg_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    char n[16];
    snprintf(n, sizeof n, "%d", batch);
    const char *vals[] = {n};

    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "reap", 1, vals, PGRES_COMMAND_OK, &st, err, errlen);
    if (res) {
        *deleted = atoi(PQcmdTuples(res));
        PQclear(res);
    }
    pool_release(pg, idx);
    return st;
}

static enum store_status pg_ping(struct store *s, char *err, size_t errlen)
{
    struct store_pg *pg = (struct store_pg *)s;
    enum store_status st = STORE_OK;
    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        return STORE_UNAVAILABLE;
    PGresult *res = run(pg, idx, "ping", 0, NULL, PGRES_TUPLES_OK, &st, err, errlen);
    PQclear(res);
    pool_release(pg, idx);
    return st;
}

static void pg_pool_stats(struct store *s, struct store_pool_stats *out)
{
    struct store_pg *pg = (struct store_pg *)s;
    pthread_mutex_lock(&pg->mu);
    out->size = pg->size;
    out->in_use = pg->size - pg->nfree;
    out->waiting = pg->waiting + pg->queued;
    out->claim_batches = pg->batches[BATCH_CLAIM];
    out->claims_batched = pg->batched[BATCH_CLAIM];
    out->complete_batches = pg->batches[BATCH_COMPLETE];
    out->completes_batched = pg->batched[BATCH_COMPLETE];
    out->batches_split = pg->split;
    pthread_mutex_unlock(&pg->mu);
}

static void pg_free(struct store *s)
{
    struct store_pg *pg = (struct store_pg *)s;
    for (int i = 0; pg->conns && i < pg->size; i++)
        if (pg->conns[i])
            PQfinish(pg->conns[i]);
    free(pg->conns);
    free(pg->free_idx);
    free(pg->conn_gen);
    free(pg->url);
    pthread_cond_destroy(&pg->cv);
    pthread_mutex_destroy(&pg->mu);
    free(pg);
}

/* ---- migrations --------------------------------------------------------- */

static int exec_ok(PGconn *conn, const char *sql, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == want;
    if (!ok)
        first_line(err, errlen, "migration failed", PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

/* Applies the embedded migrations in one transaction under an advisory
 * lock, so servers starting together apply each exactly once. Version 0
 * (sql/000_schema_migrations.sql) is the record's own table: run every
 * time, before anything reads the record, and never recorded. */
static int migrate(PGconn *conn, char *err, size_t errlen)
{
    if (!exec_ok(conn, "BEGIN", PGRES_COMMAND_OK, err, errlen))
        return -1;
    if (!exec_ok(conn, SQL_MIGRATE_LOCK, PGRES_TUPLES_OK, err, errlen))
        goto fail;
    for (size_t i = 0; i < store_migrations_count; i++) {
        const struct store_migration *m = &store_migrations[i];
        if (m->version == 0) {
            if (!exec_ok(conn, m->sql, PGRES_COMMAND_OK, err, errlen))
                goto fail;
            continue;
        }
        char version[16];
        snprintf(version, sizeof version, "%d", m->version);
        const char *vals[] = {version, m->name};
        PGresult *res = PQexecParams(conn, SQL_MIGRATE_HAS, 1, NULL, vals, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        int applied = ok && PQntuples(res) == 1;
        if (!ok)
            first_line(err, errlen, "migration failed", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            goto fail;
        if (applied)
            continue;
        if (!exec_ok(conn, m->sql, PGRES_COMMAND_OK, err, errlen)) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, " (in %s)", m->name);
            goto fail;
        }
        res = PQexecParams(conn, SQL_MIGRATE_RECORD, 2, NULL, vals, NULL, NULL, 0);
        ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            first_line(err, errlen, "migration failed", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            goto fail;
    }
    if (!exec_ok(conn, "COMMIT", PGRES_COMMAND_OK, err, errlen))
        return -1;
    return 0;
fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}

static const struct store_ops pg_ops = {
    .name = "postgres",
    .claim = pg_claim,
    .complete = pg_complete,
    .release = pg_release,
    .write_rows = pg_write_rows,
    .get_payment = pg_get_payment,
    .list_payments = pg_list_payments,
    .get_refund = pg_get_refund,
    .list_refunds = pg_list_refunds,
    .reap = pg_reap,
    .ping = pg_ping,
    .pool_stats = pg_pool_stats,
    .free = pg_free,
};

struct store *store_pg_new(const struct store_pg_options *opts, char *err, size_t errlen)
{
    struct store_pg *pg = calloc(1, sizeof *pg);
    PGconn *conn = NULL;
    if (!pg) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pg->base.ops = &pg_ops;
    pg->size = opts->pool_size > 0 ? opts->pool_size : 1;
    pg->acquire_timeout_ms = opts->acquire_timeout_ms > 0 ? opts->acquire_timeout_ms : 5000;
    snprintf(pg->connect_timeout, sizeof pg->connect_timeout, "%d",
             opts->connect_timeout_s > 0 ? opts->connect_timeout_s : 5);
    snprintf(pg->application_name, sizeof pg->application_name, "%s",
             opts->application_name ? opts->application_name : "mockery-server");
    pg->notice = opts->notice;
    pg->notice_arg = opts->notice_arg;
    pthread_mutex_init(&pg->mu, NULL);
    pthread_cond_init(&pg->cv, NULL);
    pg->url = strdup(opts->database_url ? opts->database_url : "");
    pg->conns = calloc((size_t)pg->size, sizeof *pg->conns);
    pg->free_idx = calloc((size_t)pg->size, sizeof *pg->free_idx);
    pg->conn_gen = calloc((size_t)pg->size, sizeof *pg->conn_gen);
    pg->replan_at = REPLAN_FIRST;
    if (!pg->url || !pg->conns || !pg->free_idx || !pg->conn_gen) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = pg->size - 1; i >= 0; i--)
        pg->free_idx[pg->nfree++] = i;

    /* Migrate on a connection of its own, before the statements are
     * prepared against the tables. */
    const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
    const char *vals[] = {pg->url, pg->connect_timeout, "mockery-migrate", NULL};
    conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        first_line(err, errlen, "could not connect", conn ? PQerrorMessage(conn) : NULL);
        goto fail;
    }
    PQsetNoticeProcessor(conn, notice_cb, pg);
    if (migrate(conn, err, errlen) != 0)
        goto fail;
    PQfinish(conn);
    conn = NULL;

    /* Open one pooled connection now so that a bad URL fails at start-up. */
    int idx = pool_acquire(pg, err, errlen);
    if (idx < 0)
        goto fail;
    pool_release(pg, idx);
    return &pg->base;
fail:
    if (conn)
        PQfinish(conn);
    pg_free(&pg->base);
    return NULL;
}
