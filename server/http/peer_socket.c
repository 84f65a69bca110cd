/* peer_socket.c - a TCP connection's socket among this process's descriptors */
#define _POSIX_C_SOURCE 200809L
#include "peer_socket.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* The port and printed address of a socket address; -1 if not IP. */
static int describe(const struct sockaddr_storage *sa, char *addr, size_t len)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, addr, (socklen_t)len);
        return ntohs(in->sin_port);
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, addr, (socklen_t)len);
        return ntohs(in6->sin6_port);
    }
    return -1;
}

/* Whether fd is the TCP socket from remote_addr:remote_port to local_port. */
static int is_the_socket(int fd, const char *remote_addr, int remote_port, int local_port)
{
    struct sockaddr_storage peer, local;
    socklen_t plen = sizeof peer, llen = sizeof local;
    char paddr[64], laddr[64];
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) != 0 ||
        getsockname(fd, (struct sockaddr *)&local, &llen) != 0)
        return 0;
    return describe(&peer, paddr, sizeof paddr) == remote_port &&
           describe(&local, laddr, sizeof laddr) == local_port && strcmp(paddr, remote_addr) == 0;
}

/* Whether fd is a TCP socket on local_port whose peer is gone (it reset or
 * closed): getpeername() says ENOTCONN. */
static int peer_gone_on_port(int fd, int local_port)
{
    struct sockaddr_storage peer, local;
    socklen_t plen = sizeof peer, llen = sizeof local;
    char laddr[64];
    if (getpeername(fd, (struct sockaddr *)&peer, &plen) == 0 || errno != ENOTCONN)
        return 0;
    return getsockname(fd, (struct sockaddr *)&local, &llen) == 0 &&
           describe(&local, laddr, sizeof laddr) == local_port;
}

int peer_socket_find(int hint, const char *remote_addr, int remote_port, int local_port)
{
    if (hint >= 0 && is_the_socket(hint, remote_addr, remote_port, local_port))
        return hint;
    /* The hint is the connection's socket, but its peer has already gone (a
     * connect then RST): nothing is left to shut, and no other descriptor
     * can be it. Walking every descriptor here cost 4x the CPU of a normal
     * connection, on a path any client can take. */
    if (hint >= 0 && peer_gone_on_port(hint, local_port))
        return -1;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int found = -1;
    struct dirent *e;
    while (found < 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9')
            continue;
        int fd = atoi(e->d_name);
        if (fd != dirfd(d) && is_the_socket(fd, remote_addr, remote_port, local_port))
            found = fd;
    }
    closedir(d);
    return found;
}
