/* test_peer_socket.c - finding a connection's socket by its two ends, and
 * never walking every descriptor for a connection whose peer is gone.
 *
 * A client that connects and resets at once, over its address's limit, made
 * the server walk /proc/self/fd (a getpeername and a getsockname per
 * descriptor) for each such connection: 4x the CPU of a normal one. The walk
 * is observed here by counting opendir() calls: this executable defines
 * opendir(), which the server's code, linked in statically, then calls, and
 * which forwards to the C library's. */
#define _GNU_SOURCE /* RTLD_NEXT */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "peer_socket.h"

static atomic_int opendirs;

DIR *opendir(const char *name)
{
    static DIR *(*real)(const char *);
    if (!real) {
        /* (POSIX's way to take a function from dlsym(), which ISO C frowns on) */
        void *sym = dlsym(RTLD_NEXT, "opendir");
        memcpy(&real, &sym, sizeof real);
    }
    atomic_fetch_add(&opendirs, 1);
    return real(name);
}

struct pair {
    int listener, client, server;
    int client_port, server_port;
};

static int port_of(int fd, int peer)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    cr_assert_eq(peer ? getpeername(fd, (struct sockaddr *)&a, &len)
                      : getsockname(fd, (struct sockaddr *)&a, &len),
                 0);
    return ntohs(a.sin_port);
}

/* A loopback connection: its client end and the accepted server end. */
static void connect_pair(struct pair *p)
{
    p->listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(p->listener, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(listen(p->listener, 4), 0);
    p->server_port = port_of(p->listener, 0);
    a.sin_port = htons((uint16_t)p->server_port);
    p->client = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_eq(connect(p->client, (struct sockaddr *)&a, sizeof a), 0);
    p->server = accept(p->listener, NULL, NULL);
    cr_assert_geq(p->server, 0);
    p->client_port = port_of(p->client, 0);
}

Test(peer_socket, a_live_connection_is_found_by_its_hint_or_by_the_walk)
{
    struct pair p;
    connect_pair(&p);
    atomic_store(&opendirs, 0);
    cr_assert_eq(peer_socket_find(p.server, "127.0.0.1", p.client_port, p.server_port), p.server);
    cr_assert_eq(atomic_load(&opendirs), 0, "the right hint needs no walk");
    /* no hint (civetweb's layout unknown), or another connection's: the walk */
    cr_assert_eq(peer_socket_find(-1, "127.0.0.1", p.client_port, p.server_port), p.server);
    cr_assert_eq(atomic_load(&opendirs), 1);
    cr_assert_eq(peer_socket_find(p.client, "127.0.0.1", p.client_port, p.server_port), p.server);
    cr_assert_eq(atomic_load(&opendirs), 2);
}

Test(peer_socket, a_connection_whose_peer_reset_costs_no_walk)
{
    struct pair p;
    connect_pair(&p);
    /* connect, then RST: a close with SO_LINGER 0 */
    struct linger now = {.l_onoff = 1, .l_linger = 0};
    cr_assert_eq(setsockopt(p.client, SOL_SOCKET, SO_LINGER, &now, sizeof now), 0);
    close(p.client);
    /* The reset has arrived when the server's end reports it (the event,
     * not a time: the 30 s bound only turns "never" into a failure). */
    struct pollfd pf = {.fd = p.server, .events = POLLIN};
    cr_assert_gt(poll(&pf, 1, 30000), 0, "the reset never arrived");
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    cr_assert_neq(getpeername(p.server, (struct sockaddr *)&peer, &len), 0);
    cr_assert_eq(errno, ENOTCONN);
    atomic_store(&opendirs, 0);
    cr_assert_eq(peer_socket_find(p.server, "127.0.0.1", p.client_port, p.server_port), -1);
    cr_assert_eq(atomic_load(&opendirs), 0,
                 "every descriptor was walked for a connection whose peer is gone");
}
