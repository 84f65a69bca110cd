/* conntable.h - every open connection, what its worker is doing with it
 * since when, the deadline of its answers, and shedding when few workers
 * are free
 *
 * civetweb 1.15 gives an open connection a worker thread until it closes,
 * and new connections wait in one first-come queue for a free worker. Two
 * client addresses of idle connections (64 each) held all 128 workers, and a
 * well-behaved client waited in the queue until an attacker's timeout (5 s,
 * 10 s) freed one. The table knows, for each connection, whether its worker
 * waits on the client - for a request (idle keep-alive, headers still
 * arriving), for a body, for the client to take an answer - or works for it.
 * When fewer than `reserve` workers are free it sheds, oldest first, the
 * connections whose worker has waited on the client for a while (see
 * CONNTABLE_SHED_MIN_MS): their socket is shut, the worker's read or write ends
 * at once, and it takes the next connection. A connection whose request is
 * being worked on (the store, the replay cache) is never shed.
 *
 * Answers have a deadline too: a connection whose answers the client has not
 * taken in full for CONNTABLE_DRAIN_MS is shut whatever the pressure (civetweb
 * bounds each write's wait for a byte, not a client that takes a byte now
 * and then).
 *
 * Thread-safe: one mutex; a connection's state is changed by its worker and
 * read by whoever sheds.
 */
#ifndef MOCKERY_CONNTABLE_H
#define MOCKERY_CONNTABLE_H

#include <stddef.h>
#include <stdint.h>

/* A connection whose worker has waited this long on its client - for a
 * request, a body, or an answer to be taken - may be shed; one with bytes
 * of a request unread in its socket is not (its worker will get to them).
 * An honest client's request is there when a worker takes its connection
 * (it waited in the queue), or follows its last answer at once: shedding
 * after 250 ms cut a well-behaved payment on the ThreadSanitizer build,
 * whose worker had not yet read a request that was there. */
#define CONNTABLE_SHED_MIN_MS 1000
/* Answers not all taken by the client for this long end the connection. */
#define CONNTABLE_DRAIN_MS 10000

enum conn_state {
    CONN_WAITING, /* for a request: idle, or its headers still arriving */
    CONN_WORKING, /* on a request: never shed */
    CONN_READING, /* a request's body */
    CONN_WRITING, /* an answer */
};

/* One open connection; lives in the table from conntable_enter() to
 * conntable_leave(). The fields below the mutex line are the caller's. */
struct conn_slot {
    int fd;                  /* its socket, or -1: not known (never shut) */
    enum conn_state state;   /* under the table's mutex */
    int64_t since_us;        /* when state began (CLOCK_MONOTONIC) */
    int64_t backlog_us;      /* since when its answers have not all been taken ... */
    int backlogged;          /* ... once an answer has been written */
    int shut;                /* shut by the table: its worker ends the connection */
    int shut_wr;             /* ... for writing too (else its reader may still answer) */
    uint64_t written;        /* bytes of answers written on it */
    uint64_t written_before; /* ... before the answer being written */
    int in_use;
    int passed_over; /* during one check: not to be shed */
    /* the caller's own */
    int counted; /* counted per address (connlimit) */
    int refused; /* refused for its address: answered 429 and shut */
};

struct conntable;

/* A table of `slots` connections (civetweb's worker count: no more can be
 * open at once), shedding when fewer than `reserve` slots are free; NULL on
 * allocation failure. */
struct conntable *conntable_new(int slots, int reserve);
void conntable_free(struct conntable *t);

/* A new connection (fd: its socket, or -1), waiting for its first request
 * since now_us; NULL when the table is full (then it is not tracked). */
struct conn_slot *conntable_enter(struct conntable *t, int fd, int64_t now_us);

/* The connection has closed; s (may be NULL) is free again. */
void conntable_leave(struct conntable *t, struct conn_slot *s);

/* The connection's worker now does state (not CONN_WRITING: see below).
 * Returns -1 when the table has shut the connection (the worker must end
 * it: a request that arrived just as its idle connection was shed is not
 * worked on, its client sees the connection close and asks again), else 0.
 * s may be NULL (not tracked): 0. */
int conntable_set(struct conntable *t, struct conn_slot *s, enum conn_state state, int64_t now_us);

/* The worker begins writing an answer of len bytes. The client has kept up
 * when it has acknowledged everything written before the previous answer
 * (one answer may be in flight); since it last kept up, s->backlog_us.
 * Returns -1 (write nothing; end the connection) when that was
 * CONNTABLE_DRAIN_MS ago (the socket is then shut) or the table has shut
 * it for writing, else 0. A write still going at that deadline is shut. */
int conntable_write_begin(struct conntable *t, struct conn_slot *s, int64_t now_us, size_t len);

/* Counts of what the table has done, from the start. */
struct conntable_counts {
    unsigned long long shed;    /* under pressure */
    unsigned long long drained; /* answers not taken by their deadline */
};

/* The checks of one moment, from any thread (on every new connection, and
 * every tick): shuts writes past their deadline, then, when fewer than
 * reserve slots are free, the oldest connections waiting on their client
 * until reserve are free (or none is old enough). Returns how many it
 * shut. */
int conntable_check(struct conntable *t, int64_t now_us);

void conntable_counts(struct conntable *t, struct conntable_counts *out);

/* The server is stopping: shuts for reading every connection whose worker
 * waits for a request - with served_only, only those that have been
 * answered before (idle kept-alive connections: a new one gets its answer,
 * 503 shutting_down, while civetweb still answers). civetweb 1.15 leaves
 * the worker of an idle connection in a 2 s poll of its socket before it
 * looks at its stop flag; shut, it reads the end at once and closes the
 * connection, and the client asks again on a new one (RFC 9112 lets either
 * side close an idle connection). Returns how many it shut. */
int conntable_shut_idle(struct conntable *t, int served_only);

/* Connections open now (slots in use). */
int conntable_open(struct conntable *t);

#endif
