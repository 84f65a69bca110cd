/* test_one_answer.c - every refusal is one answer: a refused request
 * followed by others on the same keep-alive connection gets exactly one
 * answer, and each later request gets its own.
 *
 * A list request with a bad paging parameter once got its 400 and then a
 * 200 page as well; every later answer on that connection then went to the
 * request before it (a payment POST got the previous one's payment). Here
 * each refusal the server makes is sent over a raw socket, then two
 * GET /health, the second with Connection: close, and everything the server
 * writes is read until it closes the connection: that close is the event
 * the test waits for, so no timing decides the verdict. The server is the
 * real mockery-server process. */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "support.h"

static struct test_server srv;

static void start_with(enum store_kind kind, const char *api_keys, int rate_limit)
{
    struct config c;
    test_config(&c, kind);
    c.rate_limit = rate_limit;
    if (api_keys)
        snprintf(c.api_keys, sizeof c.api_keys, "%s", api_keys);
    /* The real server process; the TSan pass names its own build. */
    memset(&srv, 0, sizeof srv);
    const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
    test_server_spawn(&srv, &c, bin && *bin ? bin : MOCKERY_SERVER_BIN);
}
static void start_mem(void)
{
    start_with(STORE_KIND_MEMORY, NULL, 0);
}
static void start_pg(void)
{
    start_with(STORE_KIND_POSTGRES, NULL, 0);
}
static void start_keys(void)
{
    start_with(STORE_KIND_MEMORY, "acme:key-acme-0001", 0);
}
static void start_limited(void)
{
    start_with(STORE_KIND_MEMORY, NULL, 1);
}
static void stop(void)
{
    test_server_stop(&srv);
}

static int dial(void)
{
    return test_server_connect(&srv);
}

/* Everything read from one connection so far. */
struct wire {
    int fd;
    char buf[1 << 18];
    size_t len, used; /* used: the bytes of the answers parsed so far */
    int eof;
};

/* Reads what is there; 0 at the server's close. The 30 s bound only turns
 * a server that never answers (nor closes) into a failure. */
static size_t read_more(struct wire *w)
{
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    cr_assert_gt(poll(&p, 1, 30000), 0, "no answer and no close within 30 s");
    cr_assert_lt(w->len, sizeof w->buf - 1, "more than %zu bytes came back", sizeof w->buf);
    ssize_t got = recv(w->fd, w->buf + w->len, sizeof w->buf - 1 - w->len, 0);
    if (got <= 0) {
        w->eof = 1;
        return 0;
    }
    w->len += (size_t)got;
    w->buf[w->len] = '\0';
    return (size_t)got;
}

struct answer {
    int status;
    int close; /* Connection: close */
    char body[4096];
};

static const char *header(const char *head, const char *end, const char *name)
{
    size_t n = strlen(name);
    for (const char *l = strstr(head, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n"))
        if (strncasecmp(l + 2, name, n) == 0 && l[2 + n] == ':')
            return l + 3 + n;
    return NULL;
}

/* The next whole answer, reading as needed; 0 when the connection ended
 * before another one began. */
static int next_answer(struct wire *w, struct answer *a)
{
    for (;;) {
        char *head = w->buf + w->used;
        char *end = w->len > w->used ? strstr(head, "\r\n\r\n") : NULL;
        if (end) {
            cr_assert_eq(strncmp(head, "HTTP/1.1 ", 9), 0, "not an answer: %.200s", head);
            const char *cl = header(head, end, "Content-Length");
            cr_assert_not_null(cl, "an answer without Content-Length: %.300s", head);
            size_t body_len = strtoul(cl, NULL, 10);
            size_t whole = (size_t)(end + 4 - head) + body_len;
            if (w->len - w->used >= whole) {
                a->status = atoi(head + 9);
                const char *conn = header(head, end, "Connection");
                a->close = conn && strncasecmp(conn + strspn(conn, " "), "close", 5) == 0;
                snprintf(a->body, sizeof a->body, "%.*s", (int)body_len, end + 4);
                w->used += whole;
                return 1;
            }
        }
        if (w->eof || read_more(w) == 0) {
            cr_assert_eq(w->len, w->used, "the connection ended inside an answer: %.300s",
                         w->buf + w->used);
            return 0;
        }
    }
}

static void send_text(int fd, const char *s)
{
    test_send_all(fd, s, strlen(s));
}

#define HEALTH "GET /health HTTP/1.1\r\nHost: t\r\n\r\n"
#define HEALTH_CLOSE "GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"

/* Sends request, which the server refuses with want; then, unless that
 * answer ends the connection, two GET /health. Reads until the server
 * closes and asserts one answer per request, in order. Returns the status
 * of the first answer. */
static int one_answer_each(const char *what, const char *request, int want)
{
    static struct wire w;
    memset(&w, 0, sizeof w);
    w.fd = dial();
    send_text(w.fd, request);
    struct answer a;
    cr_assert(next_answer(&w, &a), "%s: no answer at all", what);
    if (want)
        cr_assert_eq(a.status, want, "%s: %d, want %d: %s", what, a.status, want, a.body);
    cr_assert((a.status >= 200 && a.status < 300) || strstr(a.body, "\"error\""), "%s: %d %s", what,
              a.status, a.body);
    int first = a.status;
    if (a.close) {
        /* It said the connection ends: nothing may follow. */
        struct answer extra;
        cr_assert_not(next_answer(&w, &extra), "%s: answered %d and said close, then also %d: %s",
                      what, first, extra.status, extra.body);
    } else {
        send_text(w.fd, HEALTH HEALTH_CLOSE);
        for (int i = 0; i < 2; i++) {
            cr_assert(next_answer(&w, &a), "%s: GET /health #%d after it was not answered", what,
                      i + 1);
            cr_assert(a.status == 200 && strstr(a.body, "\"status\"") && !strstr(a.body, "\"count\""),
                      "%s: GET /health #%d after it got %d %s - an answer meant for another "
                      "request",
                      what, i + 1, a.status, a.body);
        }
        struct answer extra;
        cr_assert_not(next_answer(&w, &extra), "%s: a fourth answer for three requests: %d %s",
                      what, extra.status, extra.body);
    }
    close(w.fd);
    return first;
}

static void post_text(char *out, size_t len, const char *path, const char *extra_headers,
                      const char *body)
{
    snprintf(out, len,
             "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
             "Content-Length: %zu\r\n\r\n%s",
             path, extra_headers, strlen(body), body);
}

static void get_text(char *out, size_t len, const char *target)
{
    snprintf(out, len, "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", target);
}

/* Every refusal of the /api/v1 routes, in both stores. */
static void every_route_refusal(void)
{
    char txn[64], req[2048], path[256], key[96], hdr[160];
    test_pay(&srv, "10.00", txn, sizeof txn);
    const char *bad_paging[] = {"?limit=0", "?limit=501", "?limit=abc", "?limit=",
                                "?starting_after=nope", "?starting_after="};
    for (size_t i = 0; i < sizeof bad_paging / sizeof bad_paging[0]; i++) {
        snprintf(path, sizeof path, "/api/v1/payments%s", bad_paging[i]);
        get_text(req, sizeof req, path);
        one_answer_each(path, req, 400);
        snprintf(path, sizeof path, "/api/v1/payments/%s/refunds%s", txn, bad_paging[i]);
        get_text(req, sizeof req, path);
        one_answer_each(path, req, 400);
    }
    /* and the pages themselves, each one answer */
    get_text(req, sizeof req, "/api/v1/payments?limit=2");
    one_answer_each("a page of payments", req, 200);
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", txn);
    get_text(req, sizeof req, path);
    one_answer_each("a page of refunds", req, 200);

    get_text(req, sizeof req, "/nowhere");
    one_answer_each("an unknown route", req, 404);
    get_text(req, sizeof req, "/api/v1/payments/txn_nope");
    one_answer_each("an unknown payment", req, 404);
    get_text(req, sizeof req, "/api/v1/refunds/re_nope");
    one_answer_each("an unknown refund", req, 404);
    snprintf(req, sizeof req, "DELETE /api/v1/payments HTTP/1.1\r\nHost: t\r\n\r\n");
    one_answer_each("DELETE /api/v1/payments", req, 405);
    snprintf(req, sizeof req, "POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    one_answer_each("POST /health", req, 405);

    const char *good = "{\"amount\":1.00,\"currency\":\"EUR\",\"customer_id\":\"cust-one\"}";
    post_text(req, sizeof req, "/api/v1/payments", "", good);
    one_answer_each("a payment without Idempotency-Key", req, 400);
    test_unique(key, sizeof key, "one");
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s\r\n", key);
    post_text(req, sizeof req, "/api/v1/payments", hdr, "{\"amount\":");
    one_answer_each("a payment whose JSON is cut", req, 400);
    post_text(req, sizeof req, "/api/v1/payments", hdr,
              "{\"amount\":-1,\"currency\":\"EUR\",\"customer_id\":\"c\"}");
    one_answer_each("a negative amount", req, 422);
    post_text(req, sizeof req, "/api/v1/payments", hdr,
              "{\"amount\":1.00,\"currency\":\"XXX\",\"customer_id\":\"c\"}");
    one_answer_each("an unknown currency", req, 0);
    snprintf(req, sizeof req,
             "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n%s"
             "Content-Length: %zu\r\n\r\n%s",
             hdr, strlen(good), good);
    one_answer_each("a payment as text/plain", req, 415);
    snprintf(req, sizeof req,
             "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
             "Content-Length: 100000\r\n\r\n",
             hdr);
    one_answer_each("a payment of 100,000 bytes announced", req, 413);
    /* the key itself is still free: the refusals above spent nothing */
    post_text(req, sizeof req, "/api/v1/payments", hdr, good);
    one_answer_each("the payment itself", req, 201);
    one_answer_each("its retry", req, 200);
    post_text(req, sizeof req, "/api/v1/payments", hdr,
              "{\"amount\":2.00,\"currency\":\"EUR\",\"customer_id\":\"cust-one\"}");
    one_answer_each("the key reused for another payment", req, 422);

    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", txn);
    test_unique(key, sizeof key, "one-re");
    snprintf(hdr, sizeof hdr, "Idempotency-Key: %s\r\n", key);
    post_text(req, sizeof req, path, hdr, "{\"amount\":\"abc\"}");
    one_answer_each("a refund of no amount", req, 422);
    post_text(req, sizeof req, path, hdr, "{\"amount\":10.01}");
    one_answer_each("a refund of more than the payment", req, 0);
    post_text(req, sizeof req, "/api/v1/payments/txn_nope/refunds", hdr, "{\"amount\":1.00}");
    one_answer_each("a refund of an unknown payment", req, 404);
}

Test(one_answer_mem, every_route_refusal, .init = start_mem, .fini = stop, .timeout = 120)
{
    every_route_refusal();
}

Test(one_answer_pg, every_route_refusal, .init = start_pg, .fini = stop, .timeout = 120)
{
    every_route_refusal();
}

Test(one_answer, unauthenticated, .init = start_keys, .fini = stop, .timeout = 60)
{
    char req[512];
    get_text(req, sizeof req, "/api/v1/payments?limit=0");
    one_answer_each("a list without a key", req, 401);
    snprintf(req, sizeof req,
             "GET /api/v1/payments?limit=0 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer nope\r\n\r\n");
    one_answer_each("a list with a wrong key", req, 401);
    snprintf(req, sizeof req,
             "GET /api/v1/payments?limit=0 HTTP/1.1\r\nHost: t\r\n"
             "Authorization: Bearer key-acme-0001\r\n\r\n");
    one_answer_each("a bad limit with the right key", req, 400);
}

/* One request a second: a request right after another is refused 429.
 * Each round spends the token with one answered request, then sends the
 * checked one at once; a round slower than the refill gets a 200 instead,
 * which is checked the same way, and the test goes on until it saw a 429
 * (the 50 rounds only turn a limit that never refuses into a failure). */
Test(one_answer, rate_limited, .init = start_limited, .fini = stop, .timeout = 120)
{
    char req[512];
    get_text(req, sizeof req, "/api/v1/payments?limit=1");
    int refused = 0;
    for (int round = 0; round < 50 && !refused; round++) {
        one_answer_each("the request that spends the second's one", req, 0);
        refused = one_answer_each("a list over the rate limit", req, 0) == 429;
    }
    cr_assert(refused, "no 429 in 50 rounds of two requests in a row");
}

/* A body that stops part-way, and headers that stop part-way: one answer
 * each, which ends the connection. (The body's is 408 when the server's
 * deadline ends the read and 400 invalid_body when civetweb's own read
 * timeout, of the same length, returns first - both seen here; issue 22's
 * item 5 is about that deadline.) */
Test(one_answer, too_slow, .init = start_mem, .fini = stop, .timeout = 90)
{
    char req[512];
    snprintf(req, sizeof req,
             "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Idempotency-Key: slow-body-1\r\nContent-Length: 10\r\n\r\n{");
    one_answer_each("a body that stops", req, 0);
    snprintf(req, sizeof req, "GET /health HTTP/1.1\r\nHost: t\r\n");
    one_answer_each("headers that stop", req, 0);
}

/* Expect: 100-continue: the client sends the headers, waits for the interim
 * 100, then sends the body and gets one final answer. The test waits for the
 * 100 itself, not for a time: a server that never sends it answers after its
 * body deadline with an error, and that error is what the test then reads. */
static void expect_continue(void)
{
    static struct wire w;
    memset(&w, 0, sizeof w);
    w.fd = dial();
    char key[96], req[1024];
    test_unique(key, sizeof key, "continue");
    const char *body = "{\"amount\":3.00,\"currency\":\"EUR\",\"customer_id\":\"cust-continue\"}";
    snprintf(req, sizeof req,
             "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Idempotency-Key: %s\r\nExpect: 100-continue\r\nContent-Length: %zu\r\n\r\n",
             key, strlen(body));
    send_text(w.fd, req);
    char *end;
    while (!(end = strstr(w.buf, "\r\n\r\n")))
        cr_assert(read_more(&w), "the connection ended before any answer");
    cr_assert_eq(strncmp(w.buf, "HTTP/1.1 100 Continue\r\n", 23), 0,
                 "the first thing back is not the interim 100: %.300s", w.buf);
    w.used = (size_t)(end + 4 - w.buf);
    send_text(w.fd, body);
    struct answer a;
    cr_assert(next_answer(&w, &a), "no final answer after the body");
    cr_assert_eq(a.status, 201, "%d %s", a.status, a.body);
    cr_assert_not(a.close, "the connection was closed after a 201");
    send_text(w.fd, HEALTH HEALTH_CLOSE);
    for (int i = 0; i < 2; i++) {
        cr_assert(next_answer(&w, &a), "GET /health #%d after it was not answered", i + 1);
        cr_assert(a.status == 200 && strstr(a.body, "\"status\""), "%d %s", a.status, a.body);
    }
    cr_assert_not(next_answer(&w, &a), "a fourth answer: %d %s", a.status, a.body);
    close(w.fd);

    /* announced too large: the 413 at once, without a 100 */
    memset(&w, 0, sizeof w);
    w.fd = dial();
    snprintf(req, sizeof req,
             "POST /api/v1/payments HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Idempotency-Key: %s-big\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n",
             key);
    send_text(w.fd, req);
    cr_assert(next_answer(&w, &a), "no answer to a body announced too large");
    cr_assert_eq(a.status, 413, "%d %s", a.status, a.body);
    cr_assert(a.close);
    cr_assert_not(next_answer(&w, &a), "more after the 413: %d %s", a.status, a.body);
    close(w.fd);
}

Test(one_answer_mem, expect_continue, .init = start_mem, .fini = stop, .timeout = 60)
{
    expect_continue();
}

Test(one_answer_pg, expect_continue, .init = start_pg, .fini = stop, .timeout = 60)
{
    expect_continue();
}
