/* self_connect.c - connections of the server's own to its listening port
 * (self_connect.h) */
#define _POSIX_C_SOURCE 200809L
#include "self_connect.h"

#include <arpa/inet.h>
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
    struct sockaddr_in to;
    int done; /* atomic */
};

static void *wake_main(void *arg)
{
    struct stop_waker *w = arg;
    while (!__atomic_load_n(&w->done, __ATOMIC_ACQUIRE)) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0) {
            (void)connect(fd, (const struct sockaddr *)&w->to, sizeof w->to);
            close(fd);
        }
        clock_sleep_ms(WAKE_EVERY_MS);
    }
    return NULL;
}

struct stop_waker *stop_waker_start(const struct sockaddr_in *to)
{
    struct stop_waker *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->to = *to;
    if (pthread_create(&w->thread, NULL, wake_main, w) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void stop_waker_end(struct stop_waker *w)
{
    if (!w)
        return;
    __atomic_store_n(&w->done, 1, __ATOMIC_RELEASE);
    pthread_join(w->thread, NULL);
    free(w);
}
