/* test_acquirer.c - the acquirer's client (server/ops/acquirer.c) against an
 * acquirer of the test's own over real loopback sockets: every kind of
 * answer, and the ones that never come, classified by what they mean for
 * the money; the request it sends; connections kept open and reused */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "acquirer.h"
#include "support.h"

/* ---- the test's acquirer: one behaviour per test ------------------------ */

enum behaviour {
    ANSWER, /* sends `answer` after each request, keeps the connection */
    HOLD,   /* reads the request, answers nothing until the client gives up */
    CLOSE,  /* reads the request, closes without an answer */
    RESET,  /* reads the request, resets the connection */
};

static struct fake {
    int listener, port;
    enum behaviour behaviour;
    const char *answer;
    pthread_t thread;
    pthread_mutex_t mu;
    int connections, requests;
    char last_request[4096];
} fake = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* Reads one request (head and Content-Length body) into buf; its length,
 * or 0 when the connection ended first. */
static size_t read_request(int fd, char *buf, size_t size)
{
    size_t len = 0;
    for (;;) {
        char *end = len ? strstr(buf, "\r\n\r\n") : NULL;
        if (end) {
            const char *cl = strstr(buf, "Content-Length:");
            size_t want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 15, NULL, 10) : 0);
            if (len >= want)
                return len;
        }
        if (len + 1 >= size)
            return 0;
        ssize_t n = recv(fd, buf + len, size - 1 - len, 0);
        if (n <= 0)
            return 0;
        len += (size_t)n;
        buf[len] = '\0';
    }
}

static void *serve_connection(void *arg)
{
    int fd = (int)(intptr_t)arg;
    char buf[4096];
    while (read_request(fd, buf, sizeof buf)) {
        pthread_mutex_lock(&fake.mu);
        fake.requests++;
        snprintf(fake.last_request, sizeof fake.last_request, "%s", buf);
        enum behaviour b = fake.behaviour;
        const char *answer = fake.answer;
        pthread_mutex_unlock(&fake.mu);
        if (b == ANSWER) {
            if (send(fd, answer, strlen(answer), MSG_NOSIGNAL) < 0)
                break;
            continue;
        }
        if (b == HOLD) {
            char c;
            while (recv(fd, &c, 1, 0) > 0) /* until the client closes */
                ;
        } else if (b == RESET) {
            struct linger l = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        break;
    }
    close(fd);
    return NULL;
}

static void *accept_loop(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept(fake.listener, NULL, NULL);
        if (fd < 0)
            return NULL;
        pthread_mutex_lock(&fake.mu);
        fake.connections++;
        pthread_mutex_unlock(&fake.mu);
        pthread_t t;
        pthread_create(&t, NULL, serve_connection, (void *)(intptr_t)fd);
        pthread_detach(t);
    }
}

static void fake_start(enum behaviour b, const char *answer)
{
    fake.behaviour = b;
    fake.answer = answer;
    fake.listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    cr_assert_eq(bind(fake.listener, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fake.listener, 64), 0);
    getsockname(fake.listener, (struct sockaddr *)&sa, &len);
    fake.port = ntohs(sa.sin_port);
    pthread_create(&fake.thread, NULL, accept_loop, NULL);
}

static int requests_seen(void)
{
    pthread_mutex_lock(&fake.mu);
    int n = fake.requests;
    pthread_mutex_unlock(&fake.mu);
    return n;
}

/* The requests the fake has read once it has read at least n (its thread
 * may read the last one after the client gave up); fails after 30 s. */
static int requests_seen_once(int n)
{
    double give_up = test_now_s() + 30;
    while (requests_seen() < n) {
        cr_assert_lt(test_now_s(), give_up, "%d requests read after 30 s, not %d", requests_seen(),
                     n);
        test_sleep_ms(10);
    }
    return requests_seen();
}

static struct acquirer *client(long timeout_ms)
{
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", fake.port);
    struct acquirer *a = acquirer_new(url, timeout_ms, 4);
    cr_assert_not_null(a);
    return a;
}

static const struct acquirer_charge CHARGE = {
    .amount_minor = 1050,
    .currency = "EUR",
    .customer_id = "cust-42",
    .merchant = "tenant-a",
    .reference = "txn_1",
};

static void charge(struct acquirer *a, struct acquirer_answer *out)
{
    acquirer_charge(a, "dk-1", &CHARGE, out);
}

static char *answer_of(const char *status_line, const char *extra, const char *body)
{
    char *out = malloc(1024);
    snprintf(out, 1024,
             "HTTP/1.1 %s\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n\r\n%s",
             status_line, extra, strlen(body), body);
    return out;
}

/* One charge against the test's acquirer behaving as b, with a client of
 * its own bounded by timeout_ms. */
static struct acquirer_answer charge_once(enum behaviour b, char *answer, long timeout_ms)
{
    fake_start(b, answer);
    struct acquirer *a = client(timeout_ms);
    struct acquirer_answer out;
    charge(a, &out);
    acquirer_free(a);
    return out;
}

/* ---- answers ---------------------------------------------------------- */

Test(acquirer, a_201_is_money_moved_with_its_charge_id)
{
    fake_start(ANSWER,
               answer_of("201 Created", "",
                         "{\"charge_id\":\"ch_1\",\"status\":\"succeeded\","
                         "\"amount_minor\":1050,\"currency\":\"EUR\",\"reference\":\"txn_1\"}"));
    struct acquirer *a = client(2000);
    struct acquirer_answer out;
    charge(a, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", acquirer_verdict_name(out.verdict),
                 out.detail);
    cr_assert_eq(out.status, 201);
    cr_assert_str_eq(out.id, "ch_1");
    cr_assert_eq(out.replayed, 0);
    acquirer_free(a);
}

Test(acquirer, a_replay_of_a_lost_201_is_the_same_charge)
{
    struct acquirer_answer out =
        charge_once(ANSWER,
                    answer_of("200 OK", "Idempotent-Replayed: true\r\n",
                              "{\"charge_id\":\"ch_1\",\"status\":\"succeeded\"}"),
                    2000);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED);
    cr_assert_eq(out.status, 200);
    cr_assert_eq(out.replayed, 1);
    cr_assert_str_eq(out.id, "ch_1");
}

Test(acquirer, a_402_is_declined_with_its_charge_and_code)
{
    struct acquirer_answer out =
        charge_once(ANSWER,
                    answer_of("402 Payment Required", "",
                              "{\"charge_id\":\"ch_2\",\"status\":\"declined\","
                              "\"decline_code\":\"card_declined\"}"),
                    2000);
    cr_assert_eq(out.verdict, ACQUIRER_DECLINED);
    cr_assert_str_eq(out.id, "ch_2");
    cr_assert_str_eq(out.decline_code, "card_declined");
}

Test(acquirer, a_refusal_moved_nothing)
{
    struct acquirer_answer out =
        charge_once(ANSWER,
                    answer_of("422 Unprocessable Entity", "",
                              "{\"error\":{\"code\":\"processing_error\",\"message\":\"no\"}}"),
                    2000);
    cr_assert_eq(out.verdict, ACQUIRER_NOTHING_MOVED);
    cr_assert_eq(out.status, 422);
    cr_assert_str_eq(out.detail, "processing_error");
}

/* 422 idempotency_key_reused: the key holds another request there (a
 * full refund asked again after the payment's balance changed), which may
 * have moved money: unknown, never released. */
Test(acquirer, a_key_reused_there_is_unknown)
{
    struct acquirer_answer out = charge_once(
        ANSWER,
        answer_of("422 Unprocessable Entity", "",
                  "{\"error\":{\"code\":\"idempotency_key_reused\",\"message\":\"no\"}}"),
        2000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN);
    cr_assert_eq(out.status, 422);
}

/* 409: the first request with this key is still running there - it may
 * charge. */
Test(acquirer, a_409_is_unknown)
{
    fake_start(ANSWER,
               answer_of("409 Conflict", "",
                         "{\"error\":{\"code\":\"idempotency_key_in_use\",\"message\":\"x\"}}"));
    struct acquirer *a = client(2000);
    struct acquirer_answer out;
    charge(a, &out);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN);
    cr_assert_eq(out.status, 409);
    acquirer_free(a);
}

Test(acquirer, a_500_is_unknown)
{
    struct acquirer_answer out =
        charge_once(ANSWER,
                    answer_of("500 Internal Server Error", "",
                              "{\"error\":{\"code\":\"internal_error\",\"message\":\"x\"}}"),
                    2000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN);
    cr_assert_eq(out.status, 500);
}

/* A 201 that cannot be recorded (no charge id) says money moved, but not
 * which charge: unknown, to be asked again with the same key. */
Test(acquirer, a_201_without_a_charge_id_is_unknown)
{
    struct acquirer_answer out =
        charge_once(ANSWER, answer_of("201 Created", "", "{\"status\":\"succeeded\"}"), 2000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN);
}

/* ---- answers that never come ----------------------------------------------- */

Test(acquirer, an_answer_held_past_the_timeout_is_unknown)
{
    struct acquirer_answer out = charge_once(HOLD, NULL, 1000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s: %s", acquirer_verdict_name(out.verdict),
                 out.detail);
    cr_assert_eq(out.status, 0);
    cr_assert_eq(requests_seen_once(1), 1, "the request was sent once");
}

Test(acquirer, a_connection_closed_after_the_request_is_unknown)
{
    struct acquirer_answer out = charge_once(CLOSE, NULL, 2000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s", out.detail);
    cr_assert_geq(requests_seen(), 1);
}

Test(acquirer, a_connection_reset_after_the_request_is_unknown)
{
    struct acquirer_answer out = charge_once(RESET, NULL, 2000);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s", out.detail);
    cr_assert_geq(requests_seen(), 1);
}

/* Nothing listens: the request was never sent. */
Test(acquirer, no_connection_moved_nothing)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    cr_assert_eq(bind(s, (struct sockaddr *)&sa, sizeof sa), 0);
    getsockname(s, (struct sockaddr *)&sa, &len);
    fake.port = ntohs(sa.sin_port);
    close(s); /* the port is free, and nothing listens on it */
    struct acquirer *a = client(2000);
    struct acquirer_answer out;
    charge(a, &out);
    cr_assert_eq(out.verdict, ACQUIRER_NOTHING_MOVED, "%s: %s", acquirer_verdict_name(out.verdict),
                 out.detail);
    cr_assert_eq(out.status, 0);
    acquirer_free(a);
}

/* ---- what it sends, and how ---------------------------------------------------- */

Test(acquirer, the_request_carries_the_downstream_key_and_the_exact_amount)
{
    fake_start(ANSWER,
               answer_of("201 Created", "", "{\"charge_id\":\"ch_1\",\"status\":\"succeeded\"}"));
    struct acquirer *a = client(2000);
    struct acquirer_answer out;
    struct acquirer_charge big = CHARGE;
    big.amount_minor = 900719925474099301LL; /* beyond a double's exact integers */
    acquirer_charge(a, "dk-7f3a", &big, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED);
    const char *req = fake.last_request;
    cr_assert(strncmp(req, "POST /v1/charges HTTP/1.1\r\n", 27) == 0, "%s", req);
    cr_assert_not_null(strstr(req, "\r\nIdempotency-Key: dk-7f3a\r\n"), "%s", req);
    cr_assert_not_null(strstr(req, "\r\nContent-Type: application/json\r\n"), "%s", req);
    cr_assert_not_null(strstr(req, "\r\n\r\n{\"amount_minor\":900719925474099301,\"currency\":"
                                   "\"EUR\",\"customer_id\":\"cust-42\",\"merchant\":"
                                   "\"tenant-a\",\"reference\":\"txn_1\"}"),
                       "%s", req);
    acquirer_free(a);
}

Test(acquirer, a_refund_is_asked_with_its_own_key_and_read_by_its_refund_id)
{
    fake_start(ANSWER, answer_of("201 Created", "",
                                 "{\"refund_id\":\"rf_1\",\"status\":\"succeeded\","
                                 "\"charge_id\":\"ch_1\",\"amount_minor\":300}"));
    struct acquirer *a = client(2000);
    struct acquirer_answer out;
    struct acquirer_refund r = {.charge_id = "ch_1", .amount_minor = 300, .reference = "re_1"};
    acquirer_refund(a, "dk-r1", &r, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s", out.detail);
    cr_assert_str_eq(out.id, "rf_1");
    const char *req = fake.last_request;
    cr_assert(strncmp(req, "POST /v1/refunds HTTP/1.1\r\n", 27) == 0, "%s", req);
    cr_assert_not_null(strstr(req, "\r\nIdempotency-Key: dk-r1\r\n"), "%s", req);
    cr_assert_not_null(
        strstr(req, "{\"charge_id\":\"ch_1\",\"amount_minor\":300,\"reference\":\"re_1\"}"), "%s",
        req);
    acquirer_free(a);
}

/* 50 asks one after another: one TCP connection, kept open and reused. */
Test(acquirer, connections_are_kept_and_reused)
{
    fake_start(ANSWER,
               answer_of("201 Created", "", "{\"charge_id\":\"ch_1\",\"status\":\"succeeded\"}"));
    struct acquirer *a = client(2000);
    for (int i = 0; i < 50; i++) {
        struct acquirer_answer out;
        charge(a, &out);
        cr_assert_eq(out.verdict, ACQUIRER_MOVED, "ask %d: %s", i, out.detail);
    }
    pthread_mutex_lock(&fake.mu);
    int connections = fake.connections, requests = fake.requests;
    pthread_mutex_unlock(&fake.mu);
    cr_assert_eq(requests, 50);
    cr_assert_eq(connections, 1, "50 asks opened %d connections", connections);
    cr_assert_eq(acquirer_connections(a), 1);
    acquirer_free(a);
}
