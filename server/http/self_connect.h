/* self_connect.h - connections of the server's own to its listening port:
 * the layout probe's at start-up (edge.c), and the stop's thread, which
 * wakes what civetweb leaves asleep
 *
 * civetweb 1.15's accept loop polls the listening sockets 2 s at a time
 * (its SOCKET_TIMEOUT_QUANTUM) and looks at its stop flag only between two
 * polls, so mg_stop() waited up to 2 s - every SIGTERM, and every stop of
 * a test's server. A connection made once the flag is up ends the poll at
 * once. mg_stop() sets the flag and then waits, so once asked to
 * (stop_waker_knock, just before mg_stop) the thread connects every
 * WAKE_EVERY_MS, beginning one quantum later, until the port refuses (the
 * loop has closed it). Each connect is given WAKE_EVERY_MS: a backlog that
 * drops it costs no SYN retries. A connection accepted before the flag is
 * up closes before it sends a byte (civetweb logs nothing for it); should
 * a worker take it from civetweb's queue only after the flag, civetweb
 * leaves its socket open until the process ends. For IPv4 listeners only
 * (IPv6 and named hosts: the accept loop's stop takes up to 2 s, as
 * before).
 *
 * A worker polling an idle kept-alive connection looks at the flag every
 * 2 s too. So from the start of the stop until stop_waker_end, every
 * WAKE_EVERY_MS, the thread calls the caller's tick, which ends those
 * connections (edge.c: conntable_shut_idle).
 */
#ifndef MOCKERY_SELF_CONNECT_H
#define MOCKERY_SELF_CONNECT_H

#include <netinet/in.h>

/* How often the stop's thread connects. */
#define WAKE_EVERY_MS 10

/* The address that reaches a listener on host:port from this machine into
 * *to (an empty host, or 0.0.0.0: 127.0.0.1). 0, or -1 for an IPv6 or
 * named host (no connection of our own is made to those). */
int self_address(const char *host, int port, struct sockaddr_in *to);

struct stop_waker;

/* Starts calling tick(arg) every WAKE_EVERY_MS; NULL when no thread could
 * start (the stop then takes up to 2 s, as before). */
struct stop_waker *stop_waker_start(void (*tick)(void *arg), void *arg);

/* From one quantum on, connects to *to after each tick too, until the port
 * refuses. w may be NULL. */
void stop_waker_knock(struct stop_waker *w, const struct sockaddr_in *to);

/* Ends the ticks and connections and frees w (may be NULL). */
void stop_waker_end(struct stop_waker *w);

#endif
