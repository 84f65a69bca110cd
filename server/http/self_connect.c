/* self_connect.c - connections of the server's own to its listening port
 * (self_connect.h) */
#define _POSIX_C_SOURCE 200809L
#include "self_connect.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "clock.h"

int self_address(const char *host, int port, struct sockaddr_in *to)
{
    if (!host[0] || strcmp(host, "0.0.0.0") == 0)
        host = "127.0.0.1";
    memset(to, 0, sizeof *to);
    to->sin_family = AF_INET;
    to->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &to->sin_addr) == 1 ? 0 : -1;
}

struct stop_waker {
    pthread_t thread;
    void (*tick)(void *arg);
    void *arg;
    struct sockaddr_in to;
    int knocking; /* atomic: enum knocking below */
    int done;     /* atomic */
};

enum knocking {
    KNOCK_NOT,     /* not asked to */
    KNOCK_ASKED,   /* stop_waker_knock(): from the next tick on */
    KNOCK_YES,     /* every tick */
    KNOCK_REFUSED, /* the port refused: the accept loop has closed it */
};

/* One connection to w->to, given WAKE_EVERY_MS to be made: whether the
 * port still listens (a refusal: the accept loop has closed it). */
static int knock(const struct stop_waker *w)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return 1;
    int listening = 1;
    if (connect(fd, (const struct sockaddr *)&w->to, sizeof w->to) != 0) {
        if (errno == EINPROGRESS) {
            /* a full backlog drops the SYN: never wait for its retries */
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t len = sizeof err;
            if (poll(&p, 1, WAKE_EVERY_MS) == 1 &&
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNREFUSED)
                listening = 0;
        } else if (errno == ECONNREFUSED) {
            listening = 0;
        }
    }
    close(fd);
    return listening;
}

static void *wake_main(void *arg)
{
    struct stop_waker *w = arg;
    for (;;) {
        clock_sleep_ms(WAKE_EVERY_MS);
        if (__atomic_load_n(&w->done, __ATOMIC_ACQUIRE))
            break;
        w->tick(w->arg);
        int k = __atomic_load_n(&w->knocking, __ATOMIC_ACQUIRE);
        /* a quantum's wait before the first knock: mg_stop() raises the
         * flag at once, and a connection accepted before it is one civetweb
         * may queue and never close */
        if (k == KNOCK_ASKED)
            __atomic_store_n(&w->knocking, KNOCK_YES, __ATOMIC_RELAXED);
        else if (k == KNOCK_YES && !knock(w))
            __atomic_store_n(&w->knocking, KNOCK_REFUSED, __ATOMIC_RELAXED);
    }
    return NULL;
}

struct stop_waker *stop_waker_start(void (*tick)(void *arg), void *arg)
{
    struct stop_waker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->tick = tick;
    w->arg = arg;
    if (pthread_create(&w->thread, NULL, wake_main, w) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void stop_waker_knock(struct stop_waker *w, const struct sockaddr_in *to)
{
    if (!w)
        return;
    w->to = *to; /* read by the thread only after the store below */
    __atomic_store_n(&w->knocking, KNOCK_ASKED, __ATOMIC_RELEASE);
}

void stop_waker_end(struct stop_waker *w)
{
    if (!w)
        return;
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    pthread_join(w->thread, NULL);
    free(w);
}
