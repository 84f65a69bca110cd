/* pg_batch.c - group commit for claims and completions (pg_batch.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_batch.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pg_array.h"

/* A batch still running after this long is waiting on something (a record
 * lock held outside the server, a stalled flush): the next turn of its kind
 * starts beside it, on another connection, rather than wait behind it. */
#define BATCH_STALL_MS 200

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

/* With b->pool->mu held: when the next batch of this kind may start - now if none
 * is running, else once every running one has stalled. */
static void turn_at(const struct pg_batcher *b, int kind, struct timespec *at)
{
    *at = (struct timespec){0, 0};
    const struct pg_batch_run *r;
    LIST_FOREACH(r, &b->running[kind], link)
        if (clock_before(at, &r->start))
            *at = r->start;
    if (LIST_EMPTY(&b->running[kind]))
        return;
    clock_add_ms(at, BATCH_STALL_MS);
}

/* The pool's wake hook (mu held, a connection free): the oldest queued
 * claim and completion, when their kind may start a batch now. */
static void wake_oldest(void *arg)
{
    struct pg_batcher *b = arg;
    for (int k = 0; k < PG_BATCH_KINDS; k++) {
        struct pg_batch_op *oldest = TAILQ_FIRST(&b->queue[k]);
        if (!oldest)
            continue;
        struct timespec turn;
        turn_at(b, k, &turn);
        if (LIST_EMPTY(&b->running[k]) || clock_passed(&turn))
            pthread_cond_signal(&oldest->cv);
    }
}

void pg_batcher_init(struct pg_batcher *b, struct pg_pool *pool, struct pg_handoff *handoff)
{
    memset(b, 0, sizeof *b);
    b->pool = pool;
    b->handoff = handoff;
    b->replan_at = REPLAN_FIRST;
    for (int k = 0; k < PG_BATCH_KINDS; k++) {
        TAILQ_INIT(&b->queue[k]);
        LIST_INIT(&b->running[k]);
    }
    pthread_mutex_lock(&pool->mu);
    pool->wake = wake_oldest;
    pool->wake_arg = b;
    pthread_mutex_unlock(&pool->mu);
}

/* ---- batches ------------------------------------------------------------ */

/* Parameter col of every operation as one array. */
static const char *array_of(struct pg_array *a, struct pg_batch_op *const *ops, int n, int col)
{
    for (int i = 0; i < n; i++)
        pg_array_add(a, col < ops[i]->nvals ? ops[i]->vals[col] : NULL);
    return pg_array_end(a);
}

static int same_key(const struct pg_batch_op *a, const struct pg_batch_op *b)
{
    return strcmp(a->vals[0], b->vals[0]) == 0 && strcmp(a->vals[1], b->vals[1]) == 0;
}

/* With b->pool->mu held: queue operations, oldest first. */
static void queue_push(struct pg_batcher *b, struct pg_batch_op *op)
{
    TAILQ_INSERT_TAIL(&b->queue[op->kind], op, link);
    b->queued++;
}

static void queue_remove(struct pg_batcher *b, struct pg_batch_op *op)
{
    TAILQ_REMOVE(&b->queue[op->kind], op, link);
    b->queued--;
}

/* With b->pool->mu held: unlinks up to BATCH_MAX queued operations of one kind,
 * oldest first, at most one per (tenant, key) - a statement may touch a row
 * once - and none for a key a running batch holds (a batch started beside a
 * stalled one must not stall on the same record), and for claims only those
 * with the first one's lease and TTL. */
static int take_batch(struct pg_batcher *b, int kind, struct pg_batch_op **batch)
{
    int n = 0;
    for (struct pg_batch_op *op = TAILQ_FIRST(&b->queue[kind]), *next; op && n < BATCH_MAX;
         op = next) {
        next = TAILQ_NEXT(op, link);
        int fits = 1;
        for (int i = 0; fits && i < n; i++)
            fits = !same_key(batch[i], op);
        const struct pg_batch_run *r;
        LIST_FOREACH(r, &b->running[kind], link)
            for (int i = 0; fits && i < r->n; i++)
                fits = !same_key(r->ops[i], op);
        if (fits && n && kind == PG_BATCH_CLAIM)
            fits = strcmp(op->vals[3], batch[0]->vals[3]) == 0 &&
                   strcmp(op->vals[4], batch[0]->vals[4]) == 0;
        if (fits) {
            queue_remove(b, op);
            op->taken = 1;
            batch[n++] = op;
        }
    }
    if (n) {
        b->batches[kind]++;
        b->batched[kind] += (unsigned long long)n;
        unsigned long long completed =
            b->batched[PG_BATCH_COMPLETE] + b->batched[PG_BATCH_COMPLETE_CHARGE];
        if (kind != PG_BATCH_CLAIM && completed >= b->replan_at && b->replan_at <= REPLAN_LAST) {
            pg_pool_replan(b->pool);
            b->replan_at *= 4;
        }
    }
    return n;
}

/* Each kind's statements (pg_sql.c): for one operation, for several, and
 * how many parameters an operation has. A completion with fewer (no
 * payment row) has a statement of its own for one: "complete". */
static const struct {
    const char *one, *many;
    int ncols;
} BATCH_STATEMENTS[PG_BATCH_KINDS] = {
    [PG_BATCH_CLAIM] = {"claim", "claim_batch", 7},
    [PG_BATCH_COMPLETE] = {"complete_payment", "complete_batch", PG_BATCH_PAYMENT_VALS},
    [PG_BATCH_COMPLETE_CHARGE] = {"complete_charge", "complete_charge_batch", PG_BATCH_CHARGE_VALS},
};

/* A payment's completion: the lease its deliveries get ($19), in text,
 * decided as it is sent (pg_handoff.h). */
struct handoff_lease {
    int64_t began_us;
    char ms[24];
};

static void handoff_lease(struct pg_batcher *b, struct handoff_lease *l)
{
    l->began_us = clock_mono_us();
    snprintf(l->ms, sizeof l->ms, "%" PRId64, pg_handoff_lease(b->handoff, l->began_us));
}

/* The deliveries among a payment's completion's rows (HANDED_OFF) handed
 * off, each with its event's body from the operations. */
static void hand_off(struct pg_batcher *b, const PGresult *res, struct pg_batch_op **ops, int n,
                     const struct handoff_lease *l)
{
    const char *event_ids[BATCH_MAX], *bodies[BATCH_MAX];
    for (int i = 0; i < n; i++) {
        event_ids[i] = ops[i]->vals[14];
        bodies[i] = ops[i]->vals[17];
    }
    pg_handoff_push(b->handoff, res, event_ids, bodies, n, l->began_us);
}

/* Whether row r of a completion's rows is op's completed record. */
static int row_of(const PGresult *res, int r, const struct pg_batch_op *op)
{
    return !PQgetisnull(res, r, 1) && strcmp(PQgetvalue(res, r, 0), op->vals[0]) == 0 &&
           strcmp(PQgetvalue(res, r, 1), op->vals[1]) == 0;
}

/* One operation with the single-row statement. */
static void run_one(struct pg_batcher *b, int idx, struct pg_batch_op *op)
{
    if (op->kind == PG_BATCH_CLAIM) {
        PGresult *res = pg_pool_exec(b->pool, idx, BATCH_STATEMENTS[op->kind].one, op->nvals,
                                     op->vals, PGRES_TUPLES_OK, &op->st, op->err, op->errlen);
        if (!res)
            return;
        op->matched = PQntuples(res) == 1;
        if (op->matched) {
            op->lease_token = pg_int_value(res, 0, 0);
            op->inserted = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
            op->created_at_us = pg_int_value(res, 0, 2);
            snprintf(op->downstream_key, sizeof op->downstream_key, "%s", PQgetvalue(res, 0, 3));
        }
        PQclear(res);
        return;
    }
    if (op->kind == PG_BATCH_COMPLETE && op->nvals == PG_BATCH_PAYMENT_VALS) {
        /* rows: the record's, when it matched, and its handed-off deliveries */
        struct handoff_lease l;
        handoff_lease(b, &l);
        const char *vals[PG_BATCH_PAYMENT_VALS + 1];
        memcpy(vals, op->vals, sizeof op->vals[0] * PG_BATCH_PAYMENT_VALS);
        vals[PG_BATCH_PAYMENT_VALS] = l.ms;
        PGresult *res = pg_pool_exec(b->pool, idx, "complete_payment", PG_BATCH_PAYMENT_VALS + 1,
                                     vals, PGRES_TUPLES_OK, &op->st, op->err, op->errlen);
        if (!res)
            return;
        for (int r = 0; r < PQntuples(res) && !op->matched; r++)
            op->matched = row_of(res, r, op);
        hand_off(b, res, &op, 1, &l);
        PQclear(res);
        return;
    }
    const char *stmt =
        op->nvals < BATCH_STATEMENTS[op->kind].ncols ? "complete" : BATCH_STATEMENTS[op->kind].one;
    PGresult *res = pg_pool_exec(b->pool, idx, stmt, op->nvals, op->vals, PGRES_COMMAND_OK, &op->st,
                                 op->err, op->errlen);
    if (res) {
        op->matched = strcmp(PQcmdTuples(res), "1") == 0;
        PQclear(res);
    }
}

/* Several operations in one statement. If it fails while the connection
 * stays usable (a lock wait that ended in a deadlock, one operation's bad
 * row), nothing of it committed: each operation runs alone instead, so one
 * cannot fail the others. */
static void run_many(struct pg_batcher *b, int idx, struct pg_batch_op **ops, int n)
{
    PGconn *conn = b->pool->conns[idx];
    int kind = ops[0]->kind;
    /* claims: arrays of tenants, keys, fingerprints, downstream keys and
     * requests, one lease and TTL (take_batch groups claims by them);
     * completions: an array of each parameter */
    int ncols = BATCH_STATEMENTS[kind].ncols;
    struct pg_array arrays[PG_BATCH_VALS] = {{0}};
    const char *vals[PG_BATCH_VALS + 1];
    int nparams = ncols, failed = 0;
    struct handoff_lease l;
    if (kind == PG_BATCH_COMPLETE) {
        handoff_lease(b, &l);
        vals[nparams++] = l.ms;
    }
    for (int c = 0; c < ncols; c++) {
        if (kind == PG_BATCH_CLAIM && (c == 3 || c == 4)) {
            vals[c] = ops[0]->vals[c];
            continue;
        }
        vals[c] = array_of(&arrays[c], ops, n, c);
        failed |= !vals[c];
    }
    PGresult *res = NULL;
    if (!failed)
        res = pg_pool_send(b->pool, idx, BATCH_STATEMENTS[kind].many, nparams, vals);
    for (int c = 0; c < PG_BATCH_VALS; c++)
        pg_array_free(&arrays[c]);

    if (res && PQresultStatus(res) == PGRES_TUPLES_OK) {
        for (int r = 0; r < PQntuples(res); r++) {
            for (int i = 0; i < n; i++) {
                struct pg_batch_op *op = ops[i];
                if (op->matched || !row_of(res, r, op))
                    continue;
                op->matched = 1;
                if (kind == PG_BATCH_CLAIM) {
                    op->lease_token = pg_int_value(res, r, 2);
                    op->inserted = strcmp(PQgetvalue(res, r, 3), "t") == 0;
                    op->created_at_us = pg_int_value(res, r, 4);
                    snprintf(op->downstream_key, sizeof op->downstream_key, "%s",
                             PQgetvalue(res, r, 5));
                }
                break;
            }
        }
        if (kind == PG_BATCH_COMPLETE)
            hand_off(b, res, ops, n, &l);
        PQclear(res);
        return;
    }
    if (!failed && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) == PQTRANS_IDLE) {
        PQclear(res);
        pthread_mutex_lock(&b->pool->mu);
        b->split++;
        pthread_mutex_unlock(&b->pool->mu);
        for (int i = 0; i < n; i++)
            run_one(b, idx, ops[i]);
        return;
    }
    for (int i = 0; i < n; i++) {
        ops[i]->st = failed ? STORE_ERROR : pg_status_of(conn, res);
        pg_first_line(ops[i]->err, ops[i]->errlen, BATCH_STATEMENTS[kind].many,
                      failed ? "out of memory" : PQerrorMessage(conn));
    }
    PQclear(res);
}

/* Queues op and returns when it has run, in a batch this thread led or in
 * another thread's. op->st says how it went. */
void pg_batch_submit(struct pg_batcher *b, struct pg_batch_op *op)
{
    struct timespec deadline;
    clock_deadline_in(&deadline, b->pool->acquire_timeout_ms);
    pthread_cond_init(&op->cv, NULL);
    op->st = STORE_OK;

    pthread_mutex_lock(&b->pool->mu);
    queue_push(b, op);

    while (!op->done) {
        struct timespec turn;
        turn_at(b, op->kind, &turn);
        struct pg_batch_op *batch[BATCH_MAX];
        int n = 0;
        if (!op->taken && b->pool->nfree > 0 &&
            (LIST_EMPTY(&b->running[op->kind]) || clock_passed(&turn)))
            n = take_batch(b, op->kind, batch);
        /* n == 0 with a turn due: every queued key is held by a stalled batch;
         * wait for one to end */
        int held =
            !op->taken && !LIST_EMPTY(&b->running[op->kind]) && clock_passed(&turn) && n == 0;
        if (n) {
            struct pg_batch_run run = {.ops = batch, .n = n};
            clock_deadline_in(&run.start, 0); /* now */
            LIST_INSERT_HEAD(&b->running[op->kind], &run, link);
            int idx = pg_pool_take_locked(b->pool);
            if (!TAILQ_EMPTY(&b->queue[op->kind])) /* left behind: its turn is timed from now */
                pthread_cond_signal(&TAILQ_FIRST(&b->queue[op->kind])->cv);
            pthread_mutex_unlock(&b->pool->mu);

            char err[256];
            if (pg_pool_ready(b->pool, idx, err, sizeof err) < 0) {
                for (int i = 0; i < n; i++) {
                    batch[i]->st = STORE_UNAVAILABLE;
                    snprintf(batch[i]->err, batch[i]->errlen, "%s", err);
                }
            } else {
                if (n == 1)
                    run_one(b, idx, batch[0]);
                else
                    run_many(b, idx, batch, n);
                pg_pool_release(b->pool, idx);
            }

            pthread_mutex_lock(&b->pool->mu);
            LIST_REMOVE(&run, link);
            /* with a stalled batch still running, the oldest waiter's turn
             * now comes sooner than it was told */
            if (!LIST_EMPTY(&b->running[op->kind]) && !TAILQ_EMPTY(&b->queue[op->kind]))
                pthread_cond_signal(&TAILQ_FIRST(&b->queue[op->kind])->cv);
            for (int i = 0; i < n; i++) {
                batch[i]->done = 1;
                if (batch[i] != op)
                    pthread_cond_signal(&batch[i]->cv);
            }
            continue;
        }
        if (op->taken) {
            pthread_cond_wait(&op->cv, &b->pool->mu);
            continue;
        }
        /* the oldest waiter also wakes when the running batch would count
         * as stalled */
        const struct timespec *until = &deadline;
        if (TAILQ_FIRST(&b->queue[op->kind]) == op && !LIST_EMPTY(&b->running[op->kind]) && !held &&
            clock_before(&turn, &deadline))
            until = &turn;
        int rc = pthread_cond_timedwait(&op->cv, &b->pool->mu, until);
        if (rc == ETIMEDOUT && !op->taken && clock_passed(&deadline)) {
            queue_remove(b, op);
            op->st = STORE_UNAVAILABLE;
            snprintf(op->err, op->errlen, "no database connection free for this %s within %d ms",
                     op->kind == PG_BATCH_CLAIM ? "claim" : "completion",
                     b->pool->acquire_timeout_ms);
            break;
        }
    }
    /* a wake-up meant for whoever leads next may have landed here */
    pg_pool_wake_locked(b->pool);
    pthread_mutex_unlock(&b->pool->mu);
    pthread_cond_destroy(&op->cv);
}
