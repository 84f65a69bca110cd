/* peer_socket.h - this process's socket of one TCP connection, found by its
 * two ends
 *
 * civetweb 1.15 hands callbacks no socket; the connection limit and table
 * (edge.c) need the one of a connection they know by its addresses, found
 * once when it opens (the watchdog is then given it). Reentrant.
 */
#ifndef MOCKERY_PEER_SOCKET_H
#define MOCKERY_PEER_SOCKET_H

/* The descriptor of the open TCP socket from remote_addr:remote_port to our
 * local_port, or -1. hint (or -1) is tried first: two system calls when it
 * is right, or -1 at once when it is a socket on local_port whose peer is
 * gone (nothing to shut then); a walk over every descriptor only when the
 * hint is -1 or another live connection's. The caller must know the
 * connection is open (its own, or one held by a read it is watching), so
 * the descriptor is its. */
int peer_socket_find(int hint, const char *remote_addr, int remote_port, int local_port);

#endif
