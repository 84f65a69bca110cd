/* self_connect.h - connections of the server's own to its listening port:
 * the layout probe's at start-up (edge.c), and the wake-ups of civetweb's
 * accept loop at the stop
 *
 * civetweb 1.15's accept loop polls the listening sockets 2 s at a time
 * (its SOCKET_TIMEOUT_QUANTUM) and looks at its stop flag only between two
 * polls, so mg_stop() waited up to 2 s - every SIGTERM, and every stop of
 * a test's server. A connection made once the flag is up ends the poll at
 * once. mg_stop() sets the flag and then waits, so a thread connects every
 * WAKE_EVERY_MS, beginning one quantum after mg_stop() was called, until
 * it returns or the port refuses (the loop has closed it). Each connect is
 * given WAKE_EVERY_MS: a backlog that drops it costs no SYN retries. A
 * connection accepted before the flag is up closes before it sends a byte
 * (civetweb logs nothing for it); should a worker take it from civetweb's
 * queue only after the flag, civetweb leaves its socket open until the
 * process ends. For IPv4 listeners only (IPv6 and named hosts: the stop
 * takes up to 2 s, as before). Workers reading a kept-alive connection
 * that stays idle still look at the flag every 2 s: a client holding one
 * open still delays the stop by up to that.
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

/* Starts connecting to *to every WAKE_EVERY_MS; NULL when no thread could
 * start (the stop then takes up to 2 s, as before). */
struct stop_waker *stop_waker_start(const struct sockaddr_in *to);

/* Ends the connections and frees w (may be NULL). */
void stop_waker_end(struct stop_waker *w);

#endif
