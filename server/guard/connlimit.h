/* connlimit.h - open connections counted per client address, so that one
 * address cannot hold every worker thread
 *
 * civetweb 1.15 gives each open connection a worker for as long as it is
 * open, and has no limit per address: a few hundred idle or slow
 * connections from one client held every worker. The server counts each
 * address's connections as workers take them; one over the limit is
 * answered 429 and shut down at once (connlimit_shed), before civetweb
 * waits for its request. Thread-safe (one mutex).
 */
#ifndef MOCKERY_CONNLIMIT_H
#define MOCKERY_CONNLIMIT_H

struct connlimit;

/* A counter allowing max connections per address (0: no limit); NULL on
 * allocation failure. */
struct connlimit *connlimit_new(int max);
void connlimit_free(struct connlimit *c);

/* Counts a new connection from addr: 0, or -1 when addr already has max
 * (then nothing is counted). -1 also when out of memory. When few workers
 * are free, the caller passes shared > 0, the connections the addresses
 * share: when other addresses hold connections too, addr is then also
 * refused at its fair share of them, shared divided by the addresses
 * holding connections (addr among them), at least one. Two addresses of idle connections held every
 * worker under a fixed limit of 64; under this, none holds more than its share while others wait,
 * and the queue of their refused connections drains at once. */
int connlimit_enter(struct connlimit *c, const char *addr, int shared);

/* The connection counted by connlimit_enter() has closed. */
void connlimit_leave(struct connlimit *c, const char *addr);

/* Connections refused so far. */
unsigned long long connlimit_refused(const struct connlimit *c);

/* Answers the connection on socket fd (the caller's own, already found:
 * the worker's current connection) with response (a whole HTTP answer) and
 * shuts it down both ways, so that the worker's read of its request ends at
 * once. */
void connlimit_shed(int fd, const char *response);

#endif
