/* watchdog.h - deadlines for reads that civetweb cannot bound
 *
 * civetweb 1.15's mg_read() returns only when it has every byte asked for
 * or when no byte came for a whole timeout: a body sent a byte a second
 * keeps one read, and its worker, for as long as the client likes. A read
 * armed here that is still going at its deadline has its socket shut for
 * reading (the worker's read then ends at once, with what it has), and the
 * reader answers 408. Thread-safe: one mutex and one thread.
 */
#ifndef MOCKERY_WATCHDOG_H
#define MOCKERY_WATCHDOG_H

#include <stdint.h>
#include <sys/queue.h>

struct watchdog;

/* One armed read; lives on the reader's stack. */
struct watch {
    int64_t deadline_us; /* CLOCK_MONOTONIC */
    int fd;              /* the connection's socket, or -1: not known (nothing to shut) */
    int fired;           /* set by the watchdog, under its mutex */
    TAILQ_ENTRY(watch) link; /* in the watchdog's armed list */
};

/* Starts the watchdog thread; NULL on failure. Every tick (50 ms) it also
 * calls tick (if not NULL) with tick_arg and the time, outside its mutex:
 * the connection table's checks (conntable.h) run there. */
struct watchdog *watchdog_new(void (*tick)(void *arg, int64_t now_us), void *tick_arg);
/* Stops the thread; watchdog_free(NULL) does nothing. */
void watchdog_free(struct watchdog *w);

/* Arms w for the read on socket fd (the connection's own, found by the
 * caller: the watchdog shuts it without looking, under its mutex) until
 * deadline_us. */
void watchdog_arm(struct watchdog *wd, struct watch *w, int fd, int64_t deadline_us);

/* Disarms w: whether its deadline had fired (the socket is shut for
 * reading: the connection must close after the answer). */
int watchdog_disarm(struct watchdog *wd, struct watch *w);

#endif
