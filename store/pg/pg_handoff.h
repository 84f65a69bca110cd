/* pg_handoff.h - deliveries handed from a payment's completion to this
 * server's dispatchers in memory (internal to store/pg)
 *
 * A payment's completion writes its event's deliveries in the same
 * statement (pg_sql.c, FAN_OUT). When this server's dispatchers are
 * claiming (one claimed within HANDOFF_LIVE_MS) and fewer than
 * HANDOFF_MAX deliveries wait here, the completion leases them to this
 * server at once - their first attempt counted, not due for the lease -
 * and they come back with their endpoints, to wait here with the event's
 * bytes. The next claim takes them from here instead of from the table:
 * no claim statement, and no read of the event, for a delivery whose
 * first attempt answers 2xx. Its result is written as a claimed one's is
 * (store_finish_deliveries, fenced by attempt 1).
 *
 * The lease is the dispatchers' claim lease plus HANDOFF_WAIT_MS, counted
 * from before the statement was sent. A claim takes a delivery from here
 * only within HANDOFF_WAIT_MS of that, as its last act - after any
 * statement of its own - and the dispatcher begins it at once: so every
 * delivery taken from here is begun with at least a claim's lease left,
 * and none is sent by two servers at once. A delivery not taken in time
 * (its endpoint busy with the dispatcher's attempts, or no claim came)
 * expires: a claim puts its row back in the table (the next one, or the
 * one after when a read comes first; a claim puts back 64 at most), due
 * now and its attempt uncounted (the finish statement, fenced by attempt
 * 1), for any server's claim - and then reads no rows itself, so that
 * a step still runs two statements at most (its results and its claim).
 * Should the put-back fail, the row waits out its lease. A server that
 * stops puts back what waits here; one that dies loses nothing either:
 * the rows wait out the lease, as a server killed mid-attempt leaves
 * them, and are then claimed from the table.
 *
 * While completions hand deliveries off, the table is read by one claim
 * every HANDOFF_READ_EVERY_MS (as often as an idle dispatcher looks), and
 * by every claim while the last read came back full; a read due while
 * deliveries wait here takes up to half the claim, and a read due after a
 * claim that put expired ones back comes before more are put back. So
 * retries, refunds' deliveries, put-backs and other servers' expired
 * leases are still claimed while hand-offs keep coming, and while they
 * keep expiring.
 */
#ifndef MOCKERY_PG_HANDOFF_H
#define MOCKERY_PG_HANDOFF_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* Deliveries waiting here at most; a completion with more waiting writes
 * its deliveries due now instead, for any server's claim. */
#define HANDOFF_MAX 1024
/* How long a delivery may wait here before it is begun. */
#define HANDOFF_WAIT_MS 1000
/* A completion hands off only while a dispatcher claimed this recently. */
#define HANDOFF_LIVE_MS 1000
/* A claim that found deliveries here reads the table at most this often. */
#define HANDOFF_READ_EVERY_MS 200
/* Under load - the last claim that took some was this recent - a claim
 * that would take fewer than it may waits until the oldest has waited
 * this long for more to come: fuller claims, and fewer steps and
 * statements per delivery, for at most this much latency. Otherwise a
 * delivery is taken at once. */
#define HANDOFF_LINGER_MS 25

struct pg_handoff_item;

struct pg_handoff {
    pthread_mutex_t mu;
    pthread_cond_t more;                 /* deliveries were handed off */
    struct pg_handoff_item *head, *tail; /* oldest first */
    size_t count;
    int64_t lease_ms;   /* the last claim's lease; 0: no claim yet */
    int64_t claimed_us; /* when the last claim began (monotonic) */
    int64_t read_us;    /* when a claim last read the table */
    int read_full;      /* and it got all it asked for */
    int put_back_last;  /* the last claim put expired ones back, and read nothing */
    int64_t pushed_us;  /* when the last completion that handed some off began */
    int64_t took_us;    /* when the last claim that took some began */
    unsigned long long taken, expired;
    void (*wake)(void *arg); /* called when deliveries wait where none did; may be NULL */
    void *wake_arg;
};

void pg_handoff_init(struct pg_handoff *h, void (*wake)(void *), void *wake_arg);
/* Frees the deliveries still waiting (their rows wait out their lease). */
void pg_handoff_free(struct pg_handoff *h);

/* The lease a completion beginning at now_us gives its deliveries (ms),
 * or 0: written due now, not handed off. */
int64_t pg_handoff_lease(struct pg_handoff *h, int64_t now_us);

/* After a completion that began at began_us: the rows of res (HANDED_OFF
 * in pg_sql.c) that are deliveries wait here, each with the body of its
 * event, found among the n event_ids. Out of memory, a delivery is left
 * to its lease. Wakes a dispatcher. */
void pg_handoff_push(struct pg_handoff *h, const PGresult *res, const char *const *event_ids,
                     const char *const *bodies, int n, int64_t began_us);

/* A claim's one statement at now_us (above): whether it reads the table
 * (the last read came back full, or was HANDOFF_READ_EVERY_MS ago, or
 * nothing waits here and nothing was handed off since; never when
 * can_read is 0), or puts back what waited past its deadline - up to max
 * of those into out, *nlate of them (owned by the caller now: their rows
 * to be put back), and then it reads nothing. While an endpoint hangs,
 * the hand-offs to it expire at every step, so when a read is due, a
 * claim after one that put some back reads, and those wait for the next
 * claim: put-backs alone would otherwise take every claim, and the table
 * would never be read. *waiting: how many wait here within their
 * deadline. */
int pg_handoff_begin_claim(struct pg_handoff *h, int64_t now_us, int can_read,
                           struct store_delivery *out, size_t max, size_t *nlate, size_t *waiting);

/* A claim read the table at now_us; full: it got all it asked for. */
void pg_handoff_read_done(struct pg_handoff *h, int64_t now_us, int full);

/* A claim's last act: up to max deliveries waiting here into out (owned
 * by the caller now, to be begun at once), none to c's busy endpoints and
 * none past its deadline. Under load, fewer than max only once the oldest
 * waited HANDOFF_LINGER_MS. Notes the claim (its lease, and that a
 * dispatcher is claiming). */
size_t pg_handoff_take(struct pg_handoff *h, const struct store_delivery_claim *c, size_t max,
                       struct store_delivery *out);

/* Up to max of the deliveries waiting here, whatever their deadline, into
 * out (a stopping server's, to be put back). */
size_t pg_handoff_drain(struct pg_handoff *h, struct store_delivery *out, size_t max);

#endif
