/* test_start.c - requests that arrive while the server starts are answered
 * as they would be a minute later, never 404.
 *
 * civetweb opens the port, starts its workers and only then did the server
 * register its routes: a request that came in between was answered 404
 * route_not_found, a final answer, and a client following docs/api.md drops
 * a payment on a 404. Here clients keep connecting to the port before the
 * real mockery-server process is started, so their requests are the first
 * ones it accepts; each must get the answer of a running server. */
#define _GNU_SOURCE /* sched_setaffinity */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "support.h"

enum {
    CLIENTS = 16,
    ROUNDS = 16,
};

static atomic_int port, refused, stop;

struct client {
    int id, round;
    int status;
    char body[512];
};

/* Connects until the port is open (refusals counted), sends one request and
 * reads its answer until the server closes the connection. */
static void *client_main(void *arg)
{
    struct client *c = arg;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atomic_load(&port))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = -1;
    double give_up = test_now_s() + 60;
    while (!atomic_load(&stop) && test_now_s() < give_up) {
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0)
            break;
        if (errno == ECONNREFUSED)
            atomic_fetch_add(&refused, 1);
        if (fd >= 0)
            close(fd);
        fd = -1;
        struct timespec ts = {0, 200 * 1000L};
        nanosleep(&ts, NULL);
    }
    if (fd < 0)
        return NULL; /* status stays 0: the assertion names it */
    char req[512];
    if (c->id % 2)
        snprintf(req, sizeof req,
                 "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    else {
        char body[160];
        int n = snprintf(body, sizeof body,
                         "{\"amount\":1.00,\"currency\":\"EUR\",\"customer_id\":\"cust-start-%d\"}",
                         c->id);
        snprintf(req, sizeof req,
                 "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                 "Content-Type: application/json\r\nIdempotency-Key: start-%d-%d-%d\r\n"
                 "Content-Length: %d\r\n\r\n%s",
                 (int)getpid(), c->round, c->id, n, body);
    }
    size_t len = strlen(req), sent = 0;
    while (sent < len) {
        ssize_t k = send(fd, req + sent, len - sent, MSG_NOSIGNAL);
        if (k <= 0)
            break;
        sent += (size_t)k;
    }
    char buf[4096];
    size_t n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (n + 1 < sizeof buf && poll(&p, 1, 30000) > 0) {
        ssize_t got = recv(fd, buf + n, sizeof buf - n - 1, 0);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    close(fd);
    sscanf(buf, "HTTP/1.1 %d", &c->status);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(c->body, sizeof c->body, "%.500s", b ? b + 4 : buf);
    return NULL;
}

Test(start, requests_during_start_up_get_a_running_servers_answer, .timeout = 300)
{
    /* One CPU for the clients and the server (which inherits it): its
     * start-up then shares the CPU with the clients knocking, as on a busy
     * machine, which is where the 404s were seen. Without this, the window
     * between opening the port and registering the routes was too short to
     * hit on an idle 2-core machine (0 of 3 runs); with it, with the routes
     * registered after mg_start2() again, 3 of 5 runs of 16 starts got a
     * 404. A race can only be made likely, not certain, from outside. */
    cpu_set_t one;
    CPU_ZERO(&one);
    cpu_set_t mine;
    cr_assert_eq(sched_getaffinity(0, sizeof mine, &mine), 0);
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++)
        if (CPU_ISSET(cpu, &mine)) {
            CPU_SET(cpu, &one);
            break;
        }
    cr_assert_eq(sched_setaffinity(0, sizeof one, &one), 0);
    int answered = 0;
    for (int round = 0; round < ROUNDS; round++) {
        atomic_store(&port, test_free_port());
        atomic_store(&refused, 0);
        atomic_store(&stop, 0);
        struct client c[CLIENTS];
        pthread_t t[CLIENTS];
        for (int i = 0; i < CLIENTS; i++) {
            c[i] = (struct client){.id = i, .round = round};
            cr_assert_eq(pthread_create(&t[i], NULL, client_main, &c[i]), 0);
        }
        /* The clients are knocking before the server exists: each has been
         * refused at least once (the 30 s bound only turns threads that
         * never run into a failure). */
        double give_up = test_now_s() + 30;
        while (atomic_load(&refused) < CLIENTS && test_now_s() < give_up) {
            struct timespec ts = {0, 1000000L};
            nanosleep(&ts, NULL);
        }
        cr_assert_geq(atomic_load(&refused), CLIENTS, "the clients did not start knocking");

        struct config cfg;
        test_config(&cfg, STORE_KIND_MEMORY);
        cfg.port = atomic_load(&port);
        struct test_server srv;
        memset(&srv, 0, sizeof srv);
        const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
        test_server_spawn(&srv, &cfg, bin && *bin ? bin : MOCKERY_SERVER_BIN);
        for (int i = 0; i < CLIENTS; i++)
            pthread_join(t[i], NULL);
        test_server_stop(&srv);
        for (int i = 0; i < CLIENTS; i++) {
            int want = c[i].id % 2 ? 200 : 201;
            cr_assert_eq(c[i].status, want, "round %d, client %d (%s) got %d during start-up: %s",
                         round, i, want == 200 ? "GET /health" : "a new payment", c[i].status,
                         c[i].body);
            answered++;
        }
    }
    cr_log_info("start-up: %d requests made while the server started, in %d starts, each "
                "answered as by a running server",
                answered, ROUNDS);
}
