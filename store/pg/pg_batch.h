/* pg_batch.h - group commit: claims and completions queued for a connection
 * and run many to a statement (internal to store/)
 *
 * Locking: the queues and counters below are guarded by the pool's mu
 * (pg_pool.h says why); an operation's fields are written by its own
 * thread before it is queued and by the batch's leader while it runs, and
 * read by their owner once done is set under mu.
 */
#ifndef MOCKERY_PG_BATCH_H
#define MOCKERY_PG_BATCH_H

#include <pthread.h>
#include <sys/queue.h>
#include <stdint.h>
#include <time.h>

#include "pg_handoff.h"
#include "pg_pool.h"
#include "store.h"

/* Claims; completions (with a payment row or none); the acquirer's
 * completions with their charge row. */
enum { PG_BATCH_CLAIM, PG_BATCH_COMPLETE, PG_BATCH_COMPLETE_CHARGE, PG_BATCH_KINDS };
#define BATCH_MAX 32

/* A batch that is running, on its leader's stack. */
struct pg_batch_run {
    struct timespec start;
    struct pg_batch_op **ops;
    int n;
    LIST_ENTRY(pg_batch_run) link; /* in its kind's running list */
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
/* The parameters of a completion with its payment row and event
 * (complete_payment), and with its charge row (complete_charge); the most
 * an operation has. */
#define PG_BATCH_PAYMENT_VALS 18
#define PG_BATCH_CHARGE_VALS 16
#define PG_BATCH_VALS 18

struct pg_batch_op {
    TAILQ_ENTRY(pg_batch_op) link; /* in its kind's queue */
    pthread_cond_t cv;
    int kind;
    int taken; /* in a batch that is running: wait for it, whatever the deadline */
    int done;
    const char *vals[PG_BATCH_VALS]; /* the single-row statement's parameters */
    int nvals; /* claim 7; completion 6, or with a payment or a charge (above) */
    /* results */
    enum store_status st;
    int matched; /* claim: won (a row came back); completion: the fenced update matched */
    int inserted;
    int64_t lease_token, created_at_us;
    char downstream_key[65]; /* claim: the record's, when it won */
    char *err;
    size_t errlen;
};

struct pg_batcher {
    struct pg_pool *pool;
    /* where a payment's completion hands its deliveries off (pg_handoff.h):
     * the statement's one more parameter, $19, is the lease it gives them */
    struct pg_handoff *handoff;
    /* claims and completions waiting for a connection, oldest first (mu) */
    TAILQ_HEAD(, pg_batch_op) queue[PG_BATCH_KINDS];
    unsigned long long batches[PG_BATCH_KINDS], batched[PG_BATCH_KINDS];
    int queued;                                   /* operations in those queues */
    LIST_HEAD(, pg_batch_run) running[PG_BATCH_KINDS]; /* batches of each kind running now */
    unsigned long long split;     /* batches that failed as a whole and ran one by one */
    unsigned long long replan_at; /* completions that call pg_pool_replan() next */
};

/* Sets b up over pool, and hooks its wake-ups into the pool's. */
void pg_batcher_init(struct pg_batcher *b, struct pg_pool *pool, struct pg_handoff *handoff);

/* Queues op (kind, vals, nvals, err set) and returns when it has run, in a
 * batch this thread led or in another thread's: op->st says how it went. */
void pg_batch_submit(struct pg_batcher *b, struct pg_batch_op *op);

#endif
