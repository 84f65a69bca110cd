/* pg_pool.h - a pool of libpq connections (internal to store/)
 *
 * A fixed number of slots, each a connection opened on first use and again
 * after it broke, with every statement of pg_sql.h prepared on it (and
 * prepared again, planned afresh, whenever pg_pool_replan() is called) -
 * or none, when the pool sends its statements unnamed (behind pgbouncer).
 *
 * Locking contract:
 * - mu guards the free stack (free_idx, nfree) and waiting. By agreement it
 *   also guards the batcher's queues (pg_batch.h): a freed connection and an
 *   operation waiting for one are seen under the same lock, so a wake-up
 *   decided with mu held cannot be missed.
 * - A slot belongs to the thread that took it (pg_pool_acquire(), or
 *   pg_pool_take_locked() + pg_pool_ready()) until pg_pool_release():
 *   conns[idx] and conn_gen[idx] are used without the lock, by that thread
 *   alone. No libpq call runs with mu held.
 * - Whenever a slot is freed or taken while others remain free, the pool
 *   calls wake(wake_arg) with mu held, so that the batcher can signal its
 *   oldest waiters; wake must not block or take a lock.
 * - plan_gen is atomic: moved on by anyone, compared when a slot is made
 *   ready.
 */
#ifndef MOCKERY_PG_POOL_H
#define MOCKERY_PG_POOL_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "store_pg.h"

struct pg_pool {
    char *url;
    char connect_timeout[16];
    char application_name[64];
    int acquire_timeout_ms;
    int unnamed; /* statements sent unnamed, never prepared (store_pg_options) */
    void (*notice)(void *arg, const char *message);
    void *notice_arg;

    pthread_mutex_t mu;
    pthread_cond_t cv; /* pg_pool_acquire()'s waiters */
    PGconn **conns;    /* NULL: not connected (yet, or since it broke) */
    int *free_idx;     /* stack of free slots (mu) */
    int nfree;         /* (mu) */
    int size;
    int waiting;             /* threads in pg_pool_acquire() (mu) */
    void (*wake)(void *arg); /* see the contract above; may be NULL */
    void *wake_arg;
    atomic_uint plan_gen; /* statements are prepared again when it moves on */
    unsigned *conn_gen;   /* the plan_gen each slot was prepared under */
};

/* Sets the pool up from opts (nothing connects yet); -1 with err on failure
 * (then pg_pool_destroy() it all the same). */
int pg_pool_init(struct pg_pool *p, const struct store_pg_options *opts, char *err, size_t errlen);
void pg_pool_destroy(struct pg_pool *p);

/* Takes a slot, waiting up to acquire_timeout_ms, and makes it ready.
 * Returns its index, or -1 with err set (none free in time, or no
 * database). */
int pg_pool_acquire(struct pg_pool *p, char *err, size_t errlen);
/* Gives a slot back; a connection that broke, or was left in a transaction,
 * is closed so that its next user reconnects. */
void pg_pool_release(struct pg_pool *p, int idx);

/* With mu held: takes a free slot (index, or -1 when none is), to be made
 * ready with pg_pool_ready() once mu is released. */
int pg_pool_take_locked(struct pg_pool *p);
/* Makes a taken slot's connection usable (connecting and preparing it if
 * needed). Returns idx, or -1 with err set and the slot given back. */
int pg_pool_ready(struct pg_pool *p, int idx, char *err, size_t errlen);
/* With mu held: passes a wake-up on while a slot is free. */
void pg_pool_wake_locked(struct pg_pool *p);

/* Every connection prepares its statements again before its next use. */
void pg_pool_replan(struct pg_pool *p);

/* Sends the statement named stmt (pg_sql.h) on a taken slot: prepared, or
 * with its text (unnamed) when the pool runs unnamed statements. The
 * result as libpq gave it. */
PGresult *pg_pool_send(struct pg_pool *p, int idx, const char *stmt, int n,
                       const char *const *vals);

/* pg_pool_send(), checking for the one result status expected. On failure
 * returns NULL with *st and err set. */
PGresult *pg_pool_exec(struct pg_pool *p, int idx, const char *stmt, int n, const char *const *vals,
                       ExecStatusType want, enum store_status *st, char *err, size_t errlen);

/* pg_pool_exec() of one statement on a connection taken and given back
 * here; STORE_UNAVAILABLE when none could be taken. */
PGresult *pg_pool_exec_one(struct pg_pool *p, const char *stmt, int n, const char *const *vals,
                           ExecStatusType want, enum store_status *st, char *err, size_t errlen);

/* A connection outside the pool (the migration's), with the pool's notice
 * handler; NULL with err set. */
PGconn *pg_pool_connect_alone(struct pg_pool *p, const char *application_name, char *err,
                              size_t errlen);

/* One place maps SQLSTATE (and a dead connection) to a store status. */
enum store_status pg_status_of(PGconn *conn, const PGresult *res);
/* "prefix: the first line of msg" into err. */
void pg_first_line(char *err, size_t errlen, const char *prefix, const char *msg);
/* A value of a result as a malloc'd string (NULL for SQL NULL) or a number (0). */
char *pg_dup_value(const PGresult *res, int row, int col);
int64_t pg_int_value(const PGresult *res, int row, int col);

#endif
