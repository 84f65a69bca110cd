/* test_hostile.c - raw-socket abuse: garbage, oversized request lines and
 * headers, unfinished requests, idle connections; the server answers each
 * with a bounded error or a close, and keeps serving everyone else */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

static struct test_server srv;

static void start(void)
{
    struct config c;
    test_config(&c, STORE_KIND_MEMORY);
    c.threads = 48;
    test_server_start(&srv, &c);
}

static void stop(void)
{
    test_server_stop(&srv);
}

static int connect_raw(void)
{
    return test_server_connect(&srv);
}

/* What came back within timeout_ms before the server closed: the status
 * code of the response (0 when it closed without one). */
static int read_status(int fd, int timeout_ms, char *body, size_t blen)
{
    char buf[8192];
    size_t n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (n + 1 < sizeof buf && poll(&p, 1, timeout_ms) > 0) {
        ssize_t got = recv(fd, buf + n, sizeof buf - n - 1, 0);
        if (got <= 0)
            break;
        n += (size_t)got;
    }
    buf[n] = '\0';
    cr_assert(n > 0 || poll(&p, 1, 0) >= 0, "no answer and no close within %d ms", timeout_ms);
    int status = 0;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    const char *b = strstr(buf, "\r\n\r\n");
    snprintf(body, blen, "%s", b ? b + 4 : "");
    return status;
}

/* The server still does its job for a well-behaved client. */
static void still_serving(void)
{
    char key[96], body[160];
    struct test_response r;
    test_unique(key, sizeof key, "after");
    snprintf(body, sizeof body, "{\"amount\":1,\"currency\":\"USD\",\"customer_id\":\"cust-ok\"}");
    test_post_payment(&srv, key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
}

/* An error answer is in the API's JSON error shape. */
static void expect_json_error(int status, const char *body)
{
    if (status == 0)
        return; /* closed without an answer */
    cr_assert(status >= 400 && status < 500, "status %d for garbage", status);
    cr_assert_not_null(strstr(body, "{\"error\":{"), "not the error shape: %s", body);
}

Test(hostile, random_bytes, .init = start, .fini = stop, .timeout = 60)
{
    for (int i = 0; i < 50; i++) {
        unsigned char junk[4096];
        RAND_bytes(junk, sizeof junk);
        size_t len = 1 + junk[0] * 16u;
        if (i % 2)
            memcpy(junk, "POST /api/v1/payments HTTP/1.1\r\n", 32); /* then garbage headers */
        int fd = connect_raw();
        test_send_all(fd, junk, len);
        test_send_all(fd, "\r\n\r\n", 4);
        char body[4096];
        expect_json_error(read_status(fd, 3000, body, sizeof body), body);
        close(fd);
    }
    still_serving();
}

Test(hostile, oversized_request_line_and_headers, .init = start, .fini = stop, .timeout = 60)
{
    char body[4096];
    size_t big = 100 * 1024;
    char *line = malloc(big + 64);
    memcpy(line, "GET /", 5);
    memset(line + 5, 'a', big);
    memcpy(line + 5 + big, " HTTP/1.1\r\nHost: x\r\n\r\n", 23);
    int fd = connect_raw();
    test_send_all(fd, line, big + 28);
    int st = read_status(fd, 5000, body, sizeof body);
    cr_assert(st == 0 || (st >= 400 && st < 500), "status %d", st);
    expect_json_error(st, body);
    close(fd);

    /* One header of 20 KiB. */
    memcpy(line, "GET /health HTTP/1.1\r\nX-Big: ", 29);
    memset(line + 29, 'b', 20 * 1024);
    memcpy(line + 29 + 20 * 1024, "\r\n\r\n", 4);
    fd = connect_raw();
    test_send_all(fd, line, 29 + 20 * 1024 + 4);
    st = read_status(fd, 5000, body, sizeof body);
    cr_assert(st == 0 || (st >= 400 && st < 500), "status %d", st);
    expect_json_error(st, body);
    close(fd);

    /* 200 small headers: more than civetweb keeps (64). */
    size_t n = (size_t)snprintf(line, big, "GET /health HTTP/1.1\r\n");
    for (int i = 0; i < 200; i++)
        n += (size_t)snprintf(line + n, big - n, "X-H%d: v\r\n", i);
    n += (size_t)snprintf(line + n, big - n, "\r\n");
    fd = connect_raw();
    test_send_all(fd, line, n);
    st = read_status(fd, 5000, body, sizeof body);
    cr_assert(st == 0 || st == 200 || (st >= 400 && st < 500), "status %d", st);
    close(fd);
    free(line);

    /* A body announced far over the limit: 413 at once, nothing read. */
    fd = connect_raw();
    const char *hdr = "POST /api/v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: big\r\n"
                      "Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n";
    test_send_all(fd, hdr, strlen(hdr));
    st = read_status(fd, 5000, body, sizeof body);
    cr_assert_eq(st, 413, "status %d: %s", st, body);
    cr_assert_not_null(strstr(body, "body_too_large"), "%s", body);
    close(fd);
    still_serving();
}

/* A client that sends a body over the limit anyway (most do: they write the
 * whole request before reading) gets the 413, not a connection reset: the
 * server reads and drops the rest of a body up to HTTP_DISCARD_MAX before it
 * closes. Without that, the close with unread data resets the connection and
 * the client's upload fails (seen as curl's "Send failure: Broken pipe"). */
Test(hostile, an_oversized_body_still_sent_gets_the_413_not_a_reset, .init = start, .fini = stop,
     .timeout = 60)
{
    enum { SIZE = 100 * 1000 };
    int fd = connect_raw();
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "POST /api/v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: over\r\n"
                      "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
                      SIZE);
    test_send_all(fd, hdr, (size_t)hl);
    /* the answer comes before the body: it is refused by its length */
    char buf[4096] = "";
    size_t n = 0;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    while (!strstr(buf, "body_too_large") && n + 1 < sizeof buf && poll(&p, 1, 5000) > 0) {
        ssize_t got = recv(fd, buf + n, sizeof buf - n - 1, 0);
        cr_assert_gt(got, 0, "closed before the answer");
        n += (size_t)got;
        buf[n] = '\0';
    }
    cr_assert(strncmp(buf, "HTTP/1.1 413", 12) == 0 && strstr(buf, "body_too_large"), "%s", buf);
    /* then the client sends its body, all of it, and sees an orderly close */
    char *body = malloc(SIZE);
    memset(body, ' ', SIZE);
    size_t sent = 0;
    while (sent < SIZE) {
        ssize_t k = send(fd, body + sent, SIZE - sent, MSG_NOSIGNAL);
        cr_assert_gt(k, 0, "the upload failed after %zu bytes: %s", sent, strerror(errno));
        sent += (size_t)k;
    }
    free(body);
    cr_assert_gt(poll(&p, 1, 5000), 0, "the connection was not closed");
    ssize_t end = recv(fd, buf, sizeof buf, 0);
    cr_assert_eq(end, 0, "not an orderly close: %s", end < 0 ? strerror(errno) : "more data");
    close(fd);
    still_serving();
}

Test(hostile, unfinished_and_idle_connections_do_not_stop_others, .init = start, .fini = stop,
     .timeout = 60)
{
    enum { IDLE = 10, UNFINISHED = 10 };
    int fds[IDLE + UNFINISHED];
    for (int i = 0; i < IDLE; i++)
        fds[i] = connect_raw(); /* says nothing */
    for (int i = 0; i < UNFINISHED; i++) {
        fds[IDLE + i] = connect_raw();
        const char *partial =
            i % 2 ? "POST /api/v1/payments HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                    "\r\nIdempotency-Key: slow\r\nContent-Length: 100\r\n\r\n{\"amount\":"
                  : "GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: still typ";
        test_send_all(fds[IDLE + i], partial, strlen(partial));
    }
    /* With twenty connections hanging, a client that behaves is served. */
    still_serving();
    char u[128];
    struct test_response r;
    snprintf(u, sizeof u, "%s/health", srv.base);
    test_http("GET", u, NULL, NULL, 0, &r);
    cr_assert_eq(r.status, 200);
    test_response_free(&r);
    for (int i = 0; i < IDLE + UNFINISHED; i++)
        close(fds[i]);
    /* The half-sent payment ("slow") was never claimed: its key is free. */
    char body[160];
    snprintf(body, sizeof body,
             "{\"amount\":2,\"currency\":\"USD\",\"customer_id\":\"cust-slow\"}");
    test_post_payment(&srv, "slow", body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
}

Test(hostile, body_shorter_than_announced, .init = start, .fini = stop, .timeout = 60)
{
    int fd = connect_raw();
    const char *req = "POST /api/v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: short\r\n"
                      "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"amount\":1}";
    test_send_all(fd, req, strlen(req));
    shutdown(fd, SHUT_WR); /* and nothing more */
    char body[4096];
    int st = read_status(fd, 15000, body, sizeof body);
    cr_assert(st == 0 || st == 400, "status %d: %s", st, body);
    close(fd);
    still_serving();
}
