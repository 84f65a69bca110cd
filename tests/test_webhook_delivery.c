/* test_webhook_delivery.c - webhook deliveries end to end: real mockery-server
 * processes on the PostgreSQL test database deliver the events of completed
 * payments and refunds to a receiver of this test's own (civetweb, in this
 * process, on 127.0.0.1)
 *
 * What is checked is what a merchant's receiver notices: each event arrives
 * as a POST of the bytes GET /api/v1/events/{id} shows, signed with its
 * endpoint's secret; once when the receiver answers 2xx; again after a 5xx,
 * a timeout, a refused connection or a server killed mid-request, and no
 * more after the last attempt; never to an endpoint that did not ask for its
 * type, another tenant's, a deleted one or a private address the server does
 * not allow; two servers never send one event twice at once; and a receiver
 * that hangs slows no payment. The delivery rows (webhook_deliveries) are
 * read with psql, as an operator would.
 *
 * Each test has tenants, a receiver and servers of its own. The tests run
 * one at a time all the same (a lock file, below): every server's dispatchers
 * claim every tenant's due deliveries, so a server started by another test
 * with other flags (private addresses refused, three attempts at most) would
 * deliver this test's events its own way.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <civetweb.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"
#include "webhook_delivery.h"
#include "webhook_lookback.h"

/* How long a test waits for something that must happen: the bound says when
 * to give up, never when it should happen. */
#define LIMIT_S 30.0

/* ---- the receiver --------------------------------------------------------- */

#define MAX_ROUTES 4
#define MAX_REQUESTS 1024
#define MAX_BODY (1024 * 1024)

/* A path of the receiver: one webhook endpoint's URL. */
struct route {
    char path[96];
    char secret[64]; /* the endpoint's, to verify signatures with */
    int fail_first;  /* answer 500 to this many requests first */
    int status;      /* then this */
    int hang;        /* hold every request until receiver_release() */
    int tally;       /* a load's route: requests counted and answered, not kept */
    long tallied;
};

/* One request as it arrived, and what the receiver made of it. */
struct request {
    int route;
    char method[16];
    char event_id[64];     /* Mockery-Event-Id */
    char content_type[64]; /* Content-Type */
    char signature[256];   /* Mockery-Signature */
    char *body;            /* NUL-terminated; len bytes */
    size_t len;
    int signature_ok; /* it verifies with the route's secret */
    long t;           /* the signature's timestamp */
    int status;       /* the answer, 0 until given */
    int finished;     /* the answer written */
    int overlapped;   /* another request for its event was in flight when it came */
    int port;         /* the client's end of the connection it came on */
};

struct receiver {
    struct mg_context *ctx;
    int port;
    pthread_mutex_t mu;
    pthread_cond_t changed; /* broadcast on every change below */
    struct route routes[MAX_ROUTES];
    int n_routes;
    struct request reqs[MAX_REQUESTS]; /* in arrival order */
    int n;
    int strays;   /* requests for no route */
    int hold;     /* requests still to hold until released: -1 every one */
    int released; /* the test let every held request go, for good */
    int holding;  /* requests held now */
    int most_held; /* the most held at once */
    int answered; /* answers given */
    int delay_ms; /* each answer this much later: load, not a verdict */
    int keep_alive; /* connections kept open between requests (else closed after each) */
    int let_go;     /* bumped by receiver_let_go(): the requests held until then go */
};

static struct receiver rcv;

/* Requests of the same event not yet answered, besides request i. */
static int in_flight(const struct receiver *r, const char *event_id, int i)
{
    int n = 0;
    for (int k = 0; k < r->n; k++)
        n += k != i && !r->reqs[k].finished && strcmp(r->reqs[k].event_id, event_id) == 0;
    return n;
}

/* The header says t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>"> keyed
 * with the whole secret ("whsec_" included): 1 when it verifies, with t into
 * *t. */
static int signature_valid(const char *secret, const char *header, const char *body, size_t len,
                           long *t)
{
    char want[65];
    int t_end = 0, used = 0;
    if (!secret[0] || !body ||
        sscanf(header, "t=%ld%n,v1=%64[0-9a-f]%n", t, &t_end, want, &used) != 2 ||
        header[used] != '\0' || strlen(want) != 64)
        return 0;
    /* "<t>." as sent (header + 2 up to the comma), then the body */
    size_t t_len = (size_t)t_end - 2;
    char *msg = malloc(t_len + 1 + len);
    if (!msg)
        return 0;
    memcpy(msg, header + 2, t_len);
    msg[t_len] = '.';
    memcpy(msg + t_len + 1, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned mac_len = 0;
    unsigned char *ok = HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)msg,
                             t_len + 1 + len, mac, &mac_len);
    free(msg);
    if (!ok || mac_len != 32)
        return 0;
    char got[65];
    for (unsigned i = 0; i < mac_len; i++)
        snprintf(got + 2 * i, 3, "%02x", mac[i]);
    return strcmp(got, want) == 0;
}

/* The body, read whole (at most MAX_BODY); *body is NUL-terminated. */
static void read_body(struct mg_connection *conn, char **body, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap + 1);
    int got;
    while (b && n < MAX_BODY && (got = mg_read(conn, b + n, cap - n)) > 0) {
        n += (size_t)got;
        if (n == cap) {
            char *more = realloc(b, 2 * cap + 1);
            if (!more)
                break;
            b = more;
            cap *= 2;
        }
    }
    if (b)
        b[n] = '\0';
    *body = b;
    *len = b ? n : 0;
}

static void copy_header(struct mg_connection *conn, const char *name, char *out, size_t len)
{
    const char *v = mg_get_header(conn, name);
    snprintf(out, len, "%s", v ? v : "");
}

static void reply(struct mg_connection *conn, int status, int keep_alive)
{
    const char *reason = status == 200   ? "OK"
                         : status == 404 ? "Not Found"
                                         : "Internal Server Error";
    mg_printf(conn, "HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n%s\r\n",
              status, reason, keep_alive ? "" : "Connection: close\r\n");
}

/* Records the request; holds it while the test says so; answers as its route
 * says. No assertion here: this is a civetweb worker, not the test. */
static int on_request(struct mg_connection *conn, void *data)
{
    struct receiver *r = data;
    const struct mg_request_info *ri = mg_get_request_info(conn);
    char *body;
    size_t len;
    read_body(conn, &body, &len);

    pthread_mutex_lock(&r->mu);
    int route = -1;
    for (int i = 0; i < r->n_routes; i++)
        if (ri->local_uri && strcmp(ri->local_uri, r->routes[i].path) == 0)
            route = i;
    int keep_alive = r->keep_alive;
    if (route >= 0 && r->routes[route].tally) {
        r->routes[route].tallied++;
        int status = r->routes[route].status;
        pthread_mutex_unlock(&r->mu);
        free(body);
        reply(conn, status, keep_alive);
        return status;
    }
    if (route < 0 || r->n == MAX_REQUESTS) {
        r->strays++;
        pthread_cond_broadcast(&r->changed);
        pthread_mutex_unlock(&r->mu);
        free(body);
        reply(conn, 404, keep_alive);
        return 404;
    }
    struct request *q = &r->reqs[r->n++];
    q->route = route;
    snprintf(q->method, sizeof q->method, "%s", ri->request_method);
    copy_header(conn, "Mockery-Event-Id", q->event_id, sizeof q->event_id);
    copy_header(conn, "Content-Type", q->content_type, sizeof q->content_type);
    copy_header(conn, "Mockery-Signature", q->signature, sizeof q->signature);
    q->body = body ? body : strdup("");
    q->len = len;
    q->signature_ok = signature_valid(r->routes[route].secret, q->signature, q->body, len, &q->t);
    q->overlapped = in_flight(r, q->event_id, (int)(q - r->reqs)) > 0;
    q->port = ri->remote_port;
    if ((r->hold != 0 || r->routes[route].hang) && !r->released) {
        if (r->hold > 0 && !r->routes[route].hang)
            r->hold--;
        r->holding++;
        if (r->holding > r->most_held)
            r->most_held = r->holding;
        pthread_cond_broadcast(&r->changed);
        int let_go = r->let_go;
        while (!r->released && r->let_go == let_go)
            pthread_cond_wait(&r->changed, &r->mu);
        r->holding--;
    }
    struct route *rt = &r->routes[route];
    int status = rt->status;
    if (rt->fail_first > 0) {
        rt->fail_first--;
        status = 500;
    }
    q->status = status;
    r->answered++;
    int delay = r->delay_ms;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);

    if (delay)
        test_sleep_ms(delay);
    reply(conn, status, keep_alive);
    pthread_mutex_lock(&r->mu);
    q->finished = 1;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
    return status;
}

static int quiet_log(const struct mg_connection *conn, const char *message)
{
    (void)conn;
    (void)message;
    return 1;
}

/* Listens on r->port (a free one first, when 0). */
static void receiver_listen(struct receiver *r)
{
    for (int tries = 0; tries < 20 && !r->ctx; tries++) {
        int port = r->port ? r->port : test_free_port();
        char ports[32];
        snprintf(ports, sizeof ports, "127.0.0.1:%d", port);
        /* kept alive: for as long as any test runs */
        const char *options[] = {"listening_ports",
                                 ports,
                                 "num_threads",
                                 "128",
                                 "enable_keep_alive",
                                 r->keep_alive ? "yes" : "no",
                                 "keep_alive_timeout_ms",
                                 "600000",
                                 NULL};
        struct mg_callbacks cb;
        memset(&cb, 0, sizeof cb);
        cb.log_message = quiet_log;
        r->ctx = mg_start(&cb, r, options);
        if (r->ctx) {
            r->port = port;
            mg_set_request_handler(r->ctx, "/", on_request, r);
        } else if (r->port) {
            test_sleep_ms(50); /* the same port again: only a moment's clash can take it */
        }
    }
    cr_assert_not_null(r->ctx, "the receiver could not listen on 127.0.0.1:%d", r->port);
}

/* Lets every held request go, and holds none from now on. */
static void receiver_release(struct receiver *r)
{
    pthread_mutex_lock(&r->mu);
    r->released = 1;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
}

/* Down: nothing listens on its port (connections are refused) until
 * receiver_listen(). Held requests are let go first: civetweb's stop waits
 * for its workers. */
static void receiver_stop(struct receiver *r)
{
    if (!r->ctx)
        return;
    receiver_release(r);
    mg_stop(r->ctx);
    r->ctx = NULL;
}

/* A new route answering 200, its index. */
static int receiver_route(struct receiver *r, const char *path)
{
    pthread_mutex_lock(&r->mu);
    cr_assert_lt(r->n_routes, MAX_ROUTES, "more routes than the receiver has room for");
    int i = r->n_routes++;
    snprintf(r->routes[i].path, sizeof r->routes[i].path, "%s", path);
    r->routes[i].status = 200;
    r->routes[i].hang = 0;
    r->routes[i].tally = 0;
    r->routes[i].tallied = 0;
    pthread_mutex_unlock(&r->mu);
    return i;
}

static void receiver_set_secret(struct receiver *r, int route, const char *secret)
{
    pthread_mutex_lock(&r->mu);
    snprintf(r->routes[route].secret, sizeof r->routes[route].secret, "%s", secret);
    pthread_mutex_unlock(&r->mu);
}

/* From now on: answer 500 to the route's first n requests, then status. */
static void receiver_answer(struct receiver *r, int route, int fail_first, int status)
{
    pthread_mutex_lock(&r->mu);
    r->routes[route].fail_first = fail_first;
    r->routes[route].status = status;
    pthread_mutex_unlock(&r->mu);
}

/* From now on: the route's requests are only counted (receiver_tallied())
 * and answered its status - never held, failed first or kept - so that a
 * load does not fill the MAX_REQUESTS kept. */
static void receiver_tally(struct receiver *r, int route)
{
    pthread_mutex_lock(&r->mu);
    r->routes[route].tally = 1;
    pthread_mutex_unlock(&r->mu);
}

static long receiver_tallied(struct receiver *r, int route)
{
    pthread_mutex_lock(&r->mu);
    long n = r->routes[route].tallied;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Holds the next n requests (-1: every one) until receiver_release(). */
static void receiver_hold(struct receiver *r, int n)
{
    pthread_mutex_lock(&r->mu);
    r->hold = n;
    pthread_mutex_unlock(&r->mu);
}

/* Holds every request to a route until receiver_release(). */
static void receiver_hang(struct receiver *r, int route)
{
    pthread_mutex_lock(&r->mu);
    r->routes[route].hang = 1;
    pthread_mutex_unlock(&r->mu);
}

/* Lets the requests held now go; those that come later are held as
 * before. */
static void receiver_let_go(struct receiver *r)
{
    pthread_mutex_lock(&r->mu);
    r->let_go++;
    pthread_cond_broadcast(&r->changed);
    pthread_mutex_unlock(&r->mu);
}

/* From now on: connections kept open between requests, as a merchant's
 * receiver would keep them (on the same port; nothing held). */
static void receiver_keep_alive(struct receiver *r)
{
    receiver_stop(r);
    r->keep_alive = 1;
    receiver_listen(r);
    pthread_mutex_lock(&r->mu);
    r->released = 0;
    r->hold = 0;
    pthread_mutex_unlock(&r->mu);
}

/* Under r->mu: waits for a change, or 100 ms (a deadline's check). */
static void wait_changed(struct receiver *r)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 100 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->changed, &r->mu, &ts);
}

/* Waits until the receiver holds n requests or more. */
static void receiver_wait_held(struct receiver *r, int n)
{
    double give_up = test_now_s() + LIMIT_S;
    pthread_mutex_lock(&r->mu);
    while (r->holding < n && test_now_s() < give_up) {
        wait_changed(r);
    }
    int holding = r->holding, total = r->n;
    pthread_mutex_unlock(&r->mu);
    cr_assert_geq(holding, n, "the receiver holds %d requests, not %d, after %.0f s (%d requests)",
                  holding, n, LIMIT_S, total);
}

/* The connections the requests came on: distinct client ports. */
static int receiver_connections(struct receiver *r)
{
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++) {
        int seen = 0;
        for (int k = 0; k < i && !seen; k++)
            seen = r->reqs[k].port == r->reqs[i].port;
        n += !seen;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Requests that came for a route (and this event, unless NULL). */
static int receiver_count(struct receiver *r, int route, const char *event_id)
{
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++)
        n += r->reqs[i].route == route && (!event_id || strcmp(r->reqs[i].event_id, event_id) == 0);
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* Distinct events that came for a route: only those it answered 2xx when
 * ok. */
static int receiver_events(struct receiver *r, int route, int ok)
{
    int n = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; i < r->n; i++) {
        const struct request *q = &r->reqs[i];
        int counts = q->route == route && (!ok || (q->status >= 200 && q->status <= 299));
        for (int k = 0; k < i && counts; k++) {
            const struct request *p = &r->reqs[k];
            counts = !(p->route == route && (!ok || (p->status >= 200 && p->status <= 299)) &&
                       strcmp(p->event_id, q->event_id) == 0);
        }
        n += counts;
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* The k-th request for a route, in arrival order (its fields are not written
 * again but for status and finished). */
static const struct request *receiver_nth(struct receiver *r, int route, int k)
{
    const struct request *found = NULL;
    pthread_mutex_lock(&r->mu);
    for (int i = 0, seen = 0; i < r->n && !found; i++)
        if (r->reqs[i].route == route && seen++ == k)
            found = &r->reqs[i];
    pthread_mutex_unlock(&r->mu);
    cr_assert_not_null(found, "no request %d for route %d", k, route);
    return found;
}

/* ---- tenants, servers, endpoints ------------------------------------------ */

struct tenant {
    char name[80];
    char auth[128]; /* "Authorization: Bearer <key>" */
};

/* What a server is started with; the rest are test_config()'s. */
struct webhook_flags {
    int dispatchers, timeout_ms, max_attempts, backoff_ms, allow_private;
};

/* Quick retries, so that a test sees several attempts in a second; an
 * attempt's bound well past what a healthy receiver needs on a loaded
 * machine (the tests count requests exactly). */
static const struct webhook_flags QUICK = {.dispatchers = 2,
                                           .timeout_ms = 5000,
                                           .max_attempts = 16,
                                           .backoff_ms = 100,
                                           .allow_private = 1};

struct endpoint {
    char id[64];
    char secret[64];
    int route; /* its path on the receiver */
};

static struct tenant ta, tb;
static struct test_server srv[2];

static void new_tenant(struct tenant *t, const char *prefix)
{
    char key[80];
    test_unique(t->name, sizeof t->name, prefix);
    test_unique(key, sizeof key, "key");
    snprintf(t->auth, sizeof t->auth, "Authorization: Bearer %s", key);
}

/* The real server binary (MOCKERY_TEST_SERVER_BIN when set: the TSan run's)
 * on the test database, serving tenants ta and tb. */
static void start_server(struct test_server *s, const struct webhook_flags *f)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    const char *bearer = "Authorization: Bearer ";
    snprintf(c.api_keys, sizeof c.api_keys, "%s:%s,%s:%s", ta.name, ta.auth + strlen(bearer),
             tb.name, tb.auth + strlen(bearer));
    c.webhook_dispatchers = f->dispatchers;
    c.webhook_timeout_ms = f->timeout_ms;
    c.webhook_max_attempts = f->max_attempts;
    c.webhook_backoff_ms = f->backoff_ms;
    c.webhook_allow_private = f->allow_private;
    const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
    memset(s, 0, sizeof *s);
    test_server_spawn(s, &c, bin && *bin ? bin : MOCKERY_SERVER_BIN);
}

/* One request as tenant t to path on s; key and body may be NULL. */
static void call(const struct test_server *s, const struct tenant *t, const char *method,
                 const char *path, const char *key, const char *body, struct test_response *r)
{
    char u[512], keyh[160];
    const char *headers[4];
    int n = 0;
    snprintf(u, sizeof u, "%s%s", s->base, path);
    headers[n++] = t->auth;
    if (body)
        headers[n++] = "Content-Type: application/json";
    if (key) {
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
        headers[n++] = keyh;
    }
    headers[n] = NULL;
    test_http(method, u, headers, body, body ? strlen(body) : 0, r);
}

static void str_of(const struct test_response *r, const char *name, char *out, size_t len)
{
    cJSON *o = test_json(r);
    snprintf(out, len, "%s", test_json_str(o, name));
    cJSON_Delete(o);
}

/* POST a payment of amount for customer as t under key. */
static void pay(const struct test_server *s, const struct tenant *t, const char *key,
                const char *customer, const char *amount, struct test_response *r)
{
    char body[256];
    snprintf(body, sizeof body, "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
             amount, customer);
    call(s, t, "POST", "/api/v1/payments", key, body, r);
}

/* A new payment for a customer of prefix ("cust-declined" declines) as t,
 * answered want; its transaction id into txn. Returns its latency in s. */
static double new_payment(const struct test_server *s, const struct tenant *t, const char *prefix,
                          long want, char *txn, size_t len)
{
    char key[96], cust[64];
    struct test_response r;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, prefix);
    double began = test_now_s();
    pay(s, t, key, cust, "10.50", &r);
    double took = test_now_s() - began;
    cr_assert_eq(r.status, want, "payment: %ld %s", r.status, r.body);
    if (txn)
        str_of(&r, "transaction_id", txn, len);
    test_response_free(&r);
    return took;
}

/* The event id of a payment (txn_…) or refund (re_…): evt_ and the same
 * random characters. */
static void event_id_of(const char *op_id, char *out, size_t len)
{
    const char *chars = strchr(op_id, '_');
    cr_assert_not_null(chars, "not an id: %s", op_id);
    snprintf(out, len, "evt_%s", chars + 1);
}

/* An endpoint of t on a new path of the receiver, for events (a JSON array,
 * or NULL for every type), made through the API; the receiver learns its
 * secret. */
static void add_endpoint(const struct test_server *s, const struct tenant *t, const char *events,
                         struct endpoint *e)
{
    char path[96], unique[64], body[512];
    struct test_response r;
    test_unique(unique, sizeof unique, "hook");
    snprintf(path, sizeof path, "/%s", unique);
    e->route = receiver_route(&rcv, path);
    snprintf(body, sizeof body, "{\"url\":\"http://127.0.0.1:%d%s\"%s%s}", rcv.port, path,
             events ? ",\"events\":" : "", events ? events : "");
    call(s, t, "POST", "/api/v1/webhook_endpoints", NULL, body, &r);
    cr_assert_eq(r.status, 201, "the endpoint: %ld %s", r.status, r.body);
    str_of(&r, "id", e->id, sizeof e->id);
    str_of(&r, "secret", e->secret, sizeof e->secret);
    test_response_free(&r);
    receiver_set_secret(&rcv, e->route, e->secret);
}

/* GET /api/v1/events/{id} as t: the event's bytes (free them). */
static char *event_body(const struct test_server *s, const struct tenant *t, const char *event_id)
{
    char path[128];
    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/events/%s", event_id);
    call(s, t, "GET", path, NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "GET %s: %ld %s", path, r.status, r.body);
    char *body = r.body;
    r.body = NULL;
    test_response_free(&r);
    return body;
}

/* ---- the delivery rows ---------------------------------------------------- */

struct delivery {
    int found;
    char state[16];
    long attempts;
    long last_status; /* -1: NULL, no HTTP answer */
    char last_error[256];
    int has_error; /* last_error is not NULL */
};

/* PQexecParams on a connection of its own; fails the test unless tuples
 * came back (PQclear the result). */
static PGresult *query(const char *sql, int n, const char *const *params)
{
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    PGresult *res = PQexecParams(conn, sql, n, NULL, params, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(conn));
    PQfinish(conn);
    return res;
}

static void delivery_of(const char *event_id, const char *endpoint_id, struct delivery *d)
{
    const char *params[] = {event_id, endpoint_id};
    PGresult *res = query("SELECT state, attempts, last_status, last_error FROM webhook_deliveries"
                          " WHERE event_id = $1 AND endpoint_id = $2",
                          2, params);
    memset(d, 0, sizeof *d);
    d->last_status = -1;
    if (PQntuples(res) == 1) {
        d->found = 1;
        snprintf(d->state, sizeof d->state, "%s", PQgetvalue(res, 0, 0));
        d->attempts = strtol(PQgetvalue(res, 0, 1), NULL, 10);
        if (!PQgetisnull(res, 0, 2))
            d->last_status = strtol(PQgetvalue(res, 0, 2), NULL, 10);
        d->has_error = !PQgetisnull(res, 0, 3);
        snprintf(d->last_error, sizeof d->last_error, "%s", PQgetvalue(res, 0, 3));
    }
    PQclear(res);
}

/* An endpoint's delivery rows, one line each, for a failure's message. */
static void describe(const char *endpoint_id, char *out, size_t len)
{
    const char *params[] = {endpoint_id};
    PGresult *res = query("SELECT event_id, state, attempts, coalesce(last_status::text, 'null'),"
                          " coalesce(last_error, 'null') FROM webhook_deliveries"
                          " WHERE endpoint_id = $1 ORDER BY created_at LIMIT 5",
                          1, params);
    size_t at = 0;
    out[0] = '\0';
    for (int i = 0; i < PQntuples(res) && at < len; i++)
        at += (size_t)snprintf(out + at, len - at, "\n  %s %s attempts %s last_status %s (%s)",
                               PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                               PQgetvalue(res, i, 3), PQgetvalue(res, i, 4));
    if (!PQntuples(res))
        snprintf(out, len, " (no rows)");
    PQclear(res);
}

/* Polls a count of an endpoint's rows (sql takes the endpoint id as $1)
 * until it is want; fails the test with its rows after LIMIT_S. */
static void wait_rows(const char *sql, const char *endpoint_id, long want, const char *what)
{
    double give_up = test_now_s() + LIMIT_S;
    long got;
    while ((got = test_query_long(test_db_url(), sql, endpoint_id)) != want) {
        if (test_now_s() > give_up) {
            char rows[1024];
            describe(endpoint_id, rows, sizeof rows);
            cr_assert_fail("%s: %ld, not %ld, after %.0f s; endpoint %s:%s", what, got, want,
                           LIMIT_S, endpoint_id, rows);
        }
        test_sleep_ms(50);
    }
}

static const char ROWS[] = "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1";

/* Waits until the receiver has answered 2xx to n distinct events of e and e
 * has no delivery row left (a delivered row is deleted: every one made for
 * e is delivered); then no other event came to e. */
static void wait_delivered_after(const struct endpoint *e, int n, double wait_s, const char *what)
{
    double give_up = test_now_s() + wait_s + LIMIT_S;
    int got;
    while ((got = receiver_events(&rcv, e->route, 1)) < n) {
        if (test_now_s() > give_up) {
            char rows[1024];
            describe(e->id, rows, sizeof rows);
            cr_assert_fail("%s: the receiver answered 2xx to %d events, not %d, after %.0f s;"
                           " endpoint %s:%s",
                           what, got, n, wait_s + LIMIT_S, e->id, rows);
        }
        test_sleep_ms(50);
    }
    wait_rows(ROWS, e->id, 0, what);
    got = receiver_events(&rcv, e->route, 0);
    cr_assert_eq(got, n, "%s: the receiver got %d events, not %d", what, got, n);
}

/* The same, for what comes at once (within LIMIT_S). */
static void wait_delivered(const struct endpoint *e, int n, const char *what)
{
    wait_delivered_after(e, n, 0, what);
}

/* Asserts event_id is delivered to e: its row is gone, and the receiver got
 * it in exactly attempts requests. */
static void expect_delivered(const char *event_id, const struct endpoint *e, int attempts)
{
    struct delivery d;
    delivery_of(event_id, e->id, &d);
    cr_assert(!d.found, "the delivery of %s to %s is still there: %s after %ld attempts (%s)",
              event_id, e->id, d.state, d.attempts, d.last_error);
    int got = receiver_count(&rcv, e->route, event_id);
    cr_assert_eq(got, attempts, "the delivery of %s: %d requests, want %d", event_id, got,
                 attempts);
}

/* Asserts the row of event_id to endpoint_id is in state after attempts. */
static void expect_delivery(const char *event_id, const struct endpoint *e, const char *state,
                            long attempts)
{
    struct delivery d;
    delivery_of(event_id, e->id, &d);
    cr_assert(d.found, "no delivery of %s to %s", event_id, e->id);
    cr_assert_str_eq(d.state, state, "the delivery of %s: %s after %ld attempts (%s)", event_id,
                     d.state, d.attempts, d.last_error);
    cr_assert_eq(d.attempts, attempts, "the delivery of %s: %ld attempts, want %ld", event_id,
                 d.attempts, attempts);
}

/* Polls s's /metrics once: series' value. */
static double metric_now(const struct test_server *s, const char *series)
{
    char *text = test_scrape(s);
    double v = test_metric(text, series);
    free(text);
    return v;
}

/* Polls s's /metrics until series is at least want. */
static void wait_metric(const struct test_server *s, const char *series, double want)
{
    double give_up = test_now_s() + LIMIT_S, got;
    for (;;) {
        got = metric_now(s, series);
        if (got >= want)
            return;
        if (test_now_s() > give_up)
            cr_assert_fail("%s is %g, want at least %g, after %.0f s", series, got, want, LIMIT_S);
        test_sleep_ms(50);
    }
}

/* Asserts a request is the event event_id as the API shows it (body), sent
 * as the contract says and signed with its endpoint's secret. */
static void expect_event_request(const struct request *q, const char *event_id, const char *body)
{
    cr_assert_str_eq(q->method, "POST");
    cr_assert_str_eq(q->event_id, event_id, "Mockery-Event-Id");
    cr_assert_str_eq(q->content_type, "application/json");
    cr_assert_eq(q->len, strlen(body), "a body of %zu bytes, the event has %zu:\n%s\n%s", q->len,
                 strlen(body), q->body, body);
    cr_assert_str_eq(q->body, body, "the body is not the event's bytes");
    cr_assert(q->signature_ok, "Mockery-Signature does not verify: %s", q->signature);
    long now = (long)time(NULL);
    cr_assert(q->t > now - 300 && q->t < now + 300, "the signature's t %ld is not now (%ld)", q->t,
              now);
}

/* ---- a load ---------------------------------------------------------------- */

/* A load: LOADERS clients paying as ta on srv[0], one payment after
 * another each, until load_stop() (teardown's too, should an assert end
 * the test first). No asserts in its threads: failures are counted. */
enum { LOADERS = 4 };
static struct load {
    int stop; /* atomic */
    int started;
    pthread_t threads[LOADERS];
    long paid[LOADERS], failed[LOADERS];
} load;

static void *load_main(void *p)
{
    int i = (int)(intptr_t)p;
    char url[512];
    snprintf(url, sizeof url, "%s/api/v1/payments", srv[0].base);
    while (!__atomic_load_n(&load.stop, __ATOMIC_ACQUIRE)) {
        char key[96], cust[64], keyh[160], body[256];
        test_unique(key, sizeof key, "pay");
        test_unique(cust, sizeof cust, "cust");
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
        snprintf(body, sizeof body, "{\"amount\":1.00,\"currency\":\"EUR\",\"customer_id\":\"%s\"}",
                 cust);
        const char *headers[] = {ta.auth, "Content-Type: application/json", keyh, NULL};
        struct test_response r;
        int rc = httpc_request("POST", url, headers, body, strlen(body), 30000, &r);
        if (rc == 0 && r.status == 201)
            load.paid[i]++;
        else
            load.failed[i]++;
        httpc_response_free(&r);
    }
    return NULL;
}

static void load_start(void)
{
    memset(&load, 0, sizeof load);
    for (int i = 0; i < LOADERS; i++) {
        cr_assert_eq(pthread_create(&load.threads[i], NULL, load_main, (void *)(intptr_t)i), 0);
        load.started = i + 1;
    }
}

/* Stops the load; how many it paid (failures into *failed). */
static long load_stop(long *failed)
{
    __atomic_store_n(&load.stop, 1, __ATOMIC_RELEASE);
    long paid = 0;
    *failed = 0;
    for (int i = 0; i < load.started; i++) {
        pthread_join(load.threads[i], NULL);
        paid += load.paid[i];
        *failed += load.failed[i];
    }
    load.started = 0;
    return paid;
}

/* Waits until a delivery of event_id reached route, or LIMIT_S: whether it
 * did. */
static int wait_sent(int route, const char *event_id)
{
    double give_up = test_now_s() + LIMIT_S;
    while (receiver_count(&rcv, route, event_id) == 0 && test_now_s() < give_up)
        test_sleep_ms(20);
    return receiver_count(&rcv, route, event_id) > 0;
}

/* ---- one test at a time, each cleaned up after ----------------------------- */

/* Criterion runs tests in parallel, each in a process of its own; an fcntl
 * lock on a file named after the database lets one at a time run on it (and
 * goes with the process, however it ends). */
static void one_test_at_a_time(void)
{
    unsigned long h = 5381;
    for (const char *p = test_db_url(); *p; p++)
        h = h * 33 + (unsigned char)*p;
    char path[128];
    snprintf(path, sizeof path, "/tmp/mockery-test-webhook-delivery.%lx.lock", h);
    int fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "could not open %s: %s", path, strerror(errno));
    struct flock lock = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    int rc;
    while ((rc = fcntl(fd, F_SETLKW, &lock)) != 0 && errno == EINTR)
        ;
    cr_assert_eq(rc, 0, "could not lock %s: %s", path, strerror(errno));
}

static void setup(void)
{
    one_test_at_a_time();
    new_tenant(&ta, "wd-a");
    new_tenant(&tb, "wd-b");
    pthread_mutex_init(&rcv.mu, NULL);
    pthread_cond_init(&rcv.changed, NULL);
    receiver_listen(&rcv);
}

/* Held requests go first (a server stops only once its deliveries end);
 * then the servers, and this test's delivery rows: left pending, they would
 * be retried by the servers of the tests after it. The receiver ends with
 * the test's process (civetweb's stop waits up to 2 s for its listening
 * thread's poll: that, on every test, is time for nothing). */
static void teardown(void)
{
    long failed;
    load_stop(&failed);
    receiver_release(&rcv);
    for (int i = 0; i < 2; i++)
        if (srv[i].pid > 0)
            test_server_stop(&srv[i]);
    const struct tenant *mine[] = {&ta, &tb};
    for (int i = 0; i < 2; i++)
        test_query_long(test_db_url(),
                        "WITH d AS (DELETE FROM webhook_deliveries WHERE tenant_id = $1"
                        " RETURNING 1) SELECT count(*) FROM d",
                        mine[i]->name);
}

/* A test takes 10 s at most, but may first wait for the others' turns. */
TestSuite(webhook_delivery, .init = setup, .fini = teardown, .timeout = 240);

/* ---- the tests ------------------------------------------------------------ */

Test(webhook_delivery, a_payment_is_delivered_once_as_its_event_signed)
{
    struct endpoint e;
    char txn[64], evt[64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &e);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_delivered(&e, 1, "the payment's delivery");

    /* the one event the tenant has is the one delivered */
    struct test_response l;
    call(&srv[0], &ta, "GET", "/api/v1/events", NULL, NULL, &l);
    cr_assert_eq(l.status, 200, "%s", l.body);
    cJSON *list = test_json(&l);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(list, "events");
    cr_assert_eq(cJSON_GetArraySize(events), 1, "one payment, one event: %s", l.body);
    cr_assert_str_eq(test_json_str(cJSON_GetArrayItem(events, 0), "id"), evt);
    cJSON_Delete(list);
    test_response_free(&l);

    char *body = event_body(&srv[0], &ta, evt);
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), 1, "one POST for one event");
    expect_event_request(receiver_nth(&rcv, e.route, 0), evt, body);
    expect_delivered(evt, &e, 1);
    cr_assert_eq(receiver_nth(&rcv, e.route, 0)->status, 200);
    free(body);
}

static const char TAKEN[] = "mockery_webhook_handoffs_total{result=\"taken\"}";

/* A payment's completion hands its event's deliveries to its own server's
 * dispatchers in memory (store/pg/pg_handoff.h): sent without a claim
 * statement, yet each once, signed, with the event's own bytes, and its row
 * gone once it was answered 2xx. A completion hands off while a dispatcher
 * claimed within the last second (an idle one claims every 200 ms), so the
 * test pays - each payment's delivery waited for - until one was handed
 * off, and at least N. */
Test(webhook_delivery, deliveries_handed_off_by_the_completion_go_once_as_the_events_bytes)
{
    enum { N = 10, MOST = 200 };
    struct endpoint e;
    char txn[64], evt[MOST][64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &e);
    int n = 0;
    double give_up = test_now_s() + LIMIT_S;
    while (n < N || metric_now(&srv[0], TAKEN) < 1) {
        cr_assert(n < MOST && test_now_s() < give_up,
                  "none of %d payments' deliveries was handed off", n);
        new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
        event_id_of(txn, evt[n], sizeof evt[n]);
        n++;
        wait_delivered(&e, n, "the payments' deliveries");
    }
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), n, "one POST for each event");
    for (int k = 0; k < n; k++) {
        const struct request *q = receiver_nth(&rcv, e.route, k);
        int i = 0;
        while (i < n && strcmp(q->event_id, evt[i]) != 0)
            i++;
        cr_assert_lt(i, n, "a request for %s, an event of no payment here", q->event_id);
        char *body = event_body(&srv[0], &ta, evt[i]);
        expect_event_request(q, evt[i], body);
        free(body);
        expect_delivered(evt[i], &e, 1);
    }
}

Test(webhook_delivery, every_outcome_goes_to_the_endpoints_subscribed_to_its_type)
{
    struct endpoint refunds_only, every;
    char paid[64], declined[64], rid[64], key[96];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, "[\"refund.succeeded\"]", &refunds_only);
    add_endpoint(&srv[0], &ta, NULL, &every);
    new_payment(&srv[0], &ta, "cust", 201, paid, sizeof paid);
    new_payment(&srv[0], &ta, "cust-declined", 402, declined, sizeof declined);
    char path[160];
    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", paid);
    test_unique(key, sizeof key, "refund");
    call(&srv[0], &ta, "POST", path, key, "{}", &r);
    cr_assert_eq(r.status, 201, "refund: %ld %s", r.status, r.body);
    str_of(&r, "refund_id", rid, sizeof rid);
    test_response_free(&r);

    wait_delivered(&every, 3, "deliveries to the endpoint of every type");
    wait_delivered(&refunds_only, 1, "the refund's delivery to the refunds' endpoint");
    cr_assert_eq(receiver_count(&rcv, refunds_only.route, NULL), 1,
                 "no delivery of a payment's event to an endpoint of refunds only");

    const char *ops[] = {paid, declined, rid};
    const char *types[] = {"payment.succeeded", "payment.declined", "refund.succeeded"};
    for (int i = 0; i < 3; i++) {
        char evt[64];
        event_id_of(ops[i], evt, sizeof evt);
        char *body = event_body(&srv[0], &ta, evt);
        cJSON *o = cJSON_Parse(body);
        cr_assert_not_null(o, "not JSON: %s", body);
        cr_assert_str_eq(test_json_str(o, "type"), types[i], "%s", body);
        cJSON_Delete(o);
        cr_assert_eq(receiver_count(&rcv, every.route, evt), 1, "%s delivered once", types[i]);
        for (int k = 0; k < 3; k++) {
            const struct request *q = receiver_nth(&rcv, every.route, k);
            if (strcmp(q->event_id, evt) == 0)
                expect_event_request(q, evt, body);
        }
        expect_delivered(evt, &every, 1);
        if (i == 2) {
            cr_assert_eq(receiver_count(&rcv, refunds_only.route, NULL), 1,
                         "the refunds' endpoint got the refund alone");
            expect_event_request(receiver_nth(&rcv, refunds_only.route, 0), evt, body);
            expect_delivered(evt, &refunds_only, 1);
        }
        free(body);
    }
    cr_assert_eq(receiver_count(&rcv, every.route, NULL), 3);
}

struct racer {
    const char *key, *customer;
    pthread_barrier_t *barrier;
    struct test_response r;
};

static void *racer_main(void *p)
{
    struct racer *b = p;
    pthread_barrier_wait(b->barrier);
    pay(&srv[0], &ta, b->key, b->customer, "20.00", &b->r);
    return NULL;
}

Test(webhook_delivery, replays_and_racing_duplicates_leave_one_delivery)
{
    enum { RACERS = 8 };
    struct endpoint e;
    char key[96], cust[64], txn[64], evt[64], raced[64] = "", raced_evt[64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &e);

    /* one key, three times: 201 then two replays */
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust");
    for (int i = 0; i < 3; i++) {
        struct test_response r;
        pay(&srv[0], &ta, key, cust, "20.00", &r);
        cr_assert_eq(r.status, i ? 200 : 201, "send %d: %ld %s", i, r.status, r.body);
        str_of(&r, "transaction_id", txn, sizeof txn);
        test_response_free(&r);
    }
    event_id_of(txn, evt, sizeof evt);

    /* another key, eight at once, on a slow customer (1.5 s): they overlap */
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust-slow");
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, RACERS);
    static struct racer b[RACERS];
    pthread_t t[RACERS];
    for (int i = 0; i < RACERS; i++) {
        b[i] = (struct racer){.key = key, .customer = cust, .barrier = &barrier};
        pthread_create(&t[i], NULL, racer_main, &b[i]);
    }
    int created = 0;
    for (int i = 0; i < RACERS; i++) {
        pthread_join(t[i], NULL);
        long st = b[i].r.status;
        cr_assert(st == 201 || st == 200 || st == 409, "racer %d: %ld %s", i, st, b[i].r.body);
        if (st == 201) {
            created++;
            str_of(&b[i].r, "transaction_id", raced, sizeof raced);
        }
        test_response_free(&b[i].r);
    }
    pthread_barrier_destroy(&barrier);
    cr_assert_eq(created, 1, "%d of %d racers were charged", created, RACERS);
    event_id_of(raced, raced_evt, sizeof raced_evt);

    wait_delivered(&e, 2, "the two payments' deliveries");
    cr_assert_eq(receiver_events(&rcv, e.route, 0), 2, "two payments, two deliveries");
    const char *both[] = {evt, raced_evt};
    for (int i = 0; i < 2; i++) {
        expect_delivered(both[i], &e, 1);
        cr_assert_eq(receiver_count(&rcv, e.route, both[i]), 1, "%s sent once", both[i]);
    }
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), 2);
}

Test(webhook_delivery, a_failing_receiver_gets_the_event_again_until_it_answers_2xx)
{
    struct endpoint e;
    char txn[64], evt[64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_answer(&rcv, e.route, 2, 200);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_delivered(&e, 1, "the delivery after two 500s");
    expect_delivered(evt, &e, 3);

    char *body = event_body(&srv[0], &ta, evt);
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), 3, "two 500s and the 200");
    const int answered[] = {500, 500, 200};
    for (int k = 0; k < 3; k++) {
        const struct request *q = receiver_nth(&rcv, e.route, k);
        expect_event_request(q, evt, body);
        cr_assert_eq(q->status, answered[k], "attempt %d", k + 1);
    }
    free(body);
    wait_metric(&srv[0], "mockery_webhook_deliveries_total{result=\"retried\"}", 2);
    wait_metric(&srv[0], "mockery_webhook_deliveries_total{result=\"delivered\"}", 1);
}

Test(webhook_delivery, after_the_last_attempt_the_delivery_is_failed_and_nothing_more_is_sent)
{
    struct endpoint e;
    char txn[64], evt[64];
    struct webhook_flags f = QUICK;
    f.max_attempts = 3;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_answer(&rcv, e.route, 0, 500);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_rows("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'failed'",
              e.id, 1, "the failed delivery");
    expect_delivery(evt, &e, "failed", 3);
    struct delivery d;
    delivery_of(evt, e.id, &d);
    cr_assert_eq(d.last_status, 500);
    cr_assert_eq(receiver_count(&rcv, e.route, evt), 3, "three attempts, three requests");
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), 3);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM webhook_deliveries_undelivered"
                                 " WHERE endpoint_id = $1",
                                 e.id),
                 1, "the failed delivery is listed as undelivered");
    wait_metric(&srv[0], "mockery_webhook_deliveries_total{result=\"failed\"}", 1);
}

Test(webhook_delivery, an_answer_later_than_the_timeout_is_a_failed_attempt)
{
    struct endpoint e;
    char txn[64], evt[64];
    struct webhook_flags f = QUICK;
    f.timeout_ms = 500;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_hold(&rcv, 1);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    receiver_wait_held(&rcv, 1);
    /* the first request held on: the server gives up on it and tries again
     * (or has delivered it already - its row gone - which only an attempt
     * after the held one could do) */
    wait_rows("SELECT count(*) FILTER (WHERE attempts >= 2 OR last_error IS NOT NULL)"
              " + (count(*) = 0)::int FROM webhook_deliveries WHERE endpoint_id = $1",
              e.id, 1, "the held attempt given up");
    receiver_release(&rcv);
    wait_delivered(&e, 1, "the delivery after the timeout");
    int sent = receiver_count(&rcv, e.route, evt);
    cr_assert_geq(sent, 2, "the held attempt counted as failed, the event sent again: %d requests",
                  sent);
    wait_metric(&srv[0], "mockery_webhook_deliveries_total{result=\"retried\"}", 1);
}

/* The median of n latencies (sorts them). */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

Test(webhook_delivery, a_hanging_receiver_delays_no_payment)
{
    enum { N = 50 };
    struct endpoint e;
    double with_hang[N], without[N];
    struct webhook_flags f = QUICK, none = QUICK;
    /* The dispatchers stay stuck on the receiver for the whole test: a
     * payment that waited for a delivery would wait past test_http's 30 s
     * and fail there, whatever the machine's speed. */
    f.timeout_ms = 120000;
    none.dispatchers = 0;
    start_server(&srv[0], &f);
    start_server(&srv[1], &none);
    add_endpoint(&srv[0], &ta, NULL, &e);

    /* the same payments where nothing is delivered: tenant B has no endpoint */
    for (int i = 0; i < N; i++)
        without[i] = new_payment(&srv[1], &tb, "cust", 201, NULL, 0);

    receiver_hold(&rcv, -1);
    new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    receiver_wait_held(&rcv, 1);
    for (int i = 0; i < N; i++)
        with_hang[i] = new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    pthread_mutex_lock(&rcv.mu);
    int answered = rcv.answered, holding = rcv.holding;
    pthread_mutex_unlock(&rcv.mu);
    cr_assert_eq(answered, 0, "the receiver answered before the payments were made");
    cr_assert_gt(holding, 0);
    fprintf(stderr,
            "median payment latency: %.2f ms with the receiver hanging, %.2f ms with no endpoint\n",
            median(with_hang, N) * 1e3, median(without, N) * 1e3);
}

/* An event of t and its delivery to e, written as a server killed
 * mid-attempt an hour ago leaves them: due for an hour, its first attempt
 * counted, its lease run out. */
static void old_delivery_after(const struct tenant *t, const struct endpoint *e, char evt[64],
                               int attempts);

static void old_delivery(const struct tenant *t, const struct endpoint *e, char evt[64])
{
    old_delivery_after(t, e, evt, 1);
}

/* The same, its attempts already made this many times. */
static void old_delivery_after(const struct tenant *t, const struct endpoint *e, char evt[64],
                               int attempts)
{
    char insert[512], update[512];
    test_unique(evt, 64, "evt_old");
    snprintf(insert, sizeof insert,
             "INSERT INTO events (tenant_id, event_id, type, created_at, body)"
             " VALUES ('%s', '%s', 'payment.succeeded', now() - interval '1 hour',"
             " '{\"id\":\"%s\",\"type\":\"payment.succeeded\",\"data\":{\"object\":{}}}')",
             t->name, evt, evt);
    snprintf(
        update, sizeof update,
        "UPDATE webhook_deliveries SET attempts = %d, next_attempt_at = now() - interval '1 hour',"
        " last_attempt_at = now() - interval '1 hour', leased_until = now() - interval '1 s'"
        " WHERE tenant_id = '%s' AND event_id = '%s' AND endpoint_id = '%s'",
        attempts, t->name, evt, e->id);
    /* one transaction: no dispatcher sees the delivery due now */
    const char *const steps[] = {"BEGIN", insert, update, "COMMIT"};
    PGconn *conn = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(conn), CONNECTION_OK, "%s", PQerrorMessage(conn));
    for (int i = 0; i < 4; i++) {
        PGresult *res = PQexec(conn, steps[i]);
        cr_assert_eq(PQresultStatus(res), PGRES_COMMAND_OK, "%s: %s", steps[i],
                     PQerrorMessage(conn));
        if (steps[i] == update)
            cr_assert_str_eq(PQcmdTuples(res), "1", "the event's delivery to %s not made old",
                             e->id);
        PQclear(res);
    }
    PQfinish(conn);
}

/* srv[0] with dispatchers, ta's endpoint *hung on a route of the receiver
 * that holds every request (the attempts' bound, 120 s, past every wait
 * here: only the release ends them), and tb's endpoint *other. */
static void start_with_a_hanging_endpoint(int dispatchers, struct endpoint *hung,
                                          struct endpoint *other)
{
    struct webhook_flags f = QUICK;
    f.dispatchers = dispatchers;
    f.timeout_ms = 120000;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, hung);
    add_endpoint(&srv[0], &tb, NULL, other);
    receiver_hang(&rcv, hung->route);
}

/* An endpoint that hangs holds its own attempts - at most a claim's 32
 * (webhook_delivery.h: WEBHOOK_CLAIM), and no more claimed for it while
 * they are under way - and not the other endpoints': another tenant's
 * event is delivered while every attempt to the hanging one is still
 * held, by the same one dispatcher. So is a delivery of that other
 * endpoint that came due long ago: while an endpoint hangs, claims look
 * back only over what came due since the last claim that looked at every
 * due row, and such a claim comes every WEBHOOK_LOOK_ALL_MS (5 s, well
 * inside LIMIT_S, and nowhere near the hanging attempts' timeout). */
Test(webhook_delivery, a_hanging_endpoint_holds_up_no_other_endpoints_deliveries)
{
    enum { HUNG = 40, CLAIM = 32 };
    struct endpoint eh, eo;
    start_with_a_hanging_endpoint(1, &eh, &eo);
    for (int i = 0; i < HUNG; i++)
        new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    receiver_wait_held(&rcv, 1);

    new_payment(&srv[0], &tb, "cust", 201, NULL, 0);
    wait_delivered(&eo, 1, "the other tenant's event while the first endpoint hangs");
    pthread_mutex_lock(&rcv.mu);
    int holding = rcv.holding, most = rcv.most_held, answered_hung = 0;
    for (int i = 0; i < rcv.n; i++)
        answered_hung += rcv.reqs[i].route == eh.route && rcv.reqs[i].status != 0;
    pthread_mutex_unlock(&rcv.mu);
    cr_assert_eq(answered_hung, 0, "the hanging endpoint was answered before the other's delivery");
    cr_assert_gt(holding, 0, "no attempt held at the hanging endpoint");
    cr_assert_leq(most, CLAIM, "%d attempts at once to one endpoint, more than a claim's %d", most,
                  CLAIM);

    char old_evt[64];
    old_delivery(&tb, &eo, old_evt);
    wait_delivered(&eo, 2, "a delivery due for an hour, while the first endpoint hangs");
    cr_assert_eq(receiver_count(&rcv, eo.route, old_evt), 1);
    pthread_mutex_lock(&rcv.mu);
    answered_hung = 0;
    for (int i = 0; i < rcv.n; i++)
        answered_hung += rcv.reqs[i].route == eh.route && rcv.reqs[i].status != 0;
    pthread_mutex_unlock(&rcv.mu);
    cr_assert_eq(answered_hung, 0, "the hanging endpoint was answered before the old delivery");

    /* released: the held ones answered, then the rest of its backlog */
    receiver_release(&rcv);
    wait_delivered(&eh, HUNG, "the hanging endpoint's events once it answers");
}

/* Whether the delivery of event_id to e is leased now with its first
 * attempt counted: handed off by its completion (pg_sql.c, FAN_OUT). */
static int handed_off(const char *event_id, const struct endpoint *e)
{
    const char *params[] = {event_id, e->id};
    PGresult *res = query("SELECT count(*) FROM webhook_deliveries WHERE event_id = $1"
                          " AND endpoint_id = $2 AND attempts = 1 AND leased_until > now()",
                          2, params);
    int yes = strcmp(PQgetvalue(res, 0, 0), "1") == 0;
    PQclear(res);
    return yes;
}

/* A stopped server leaves nothing handed off to it leased: what waited in
 * its memory, not begun, is due at once for any server, its attempt
 * uncounted - not left for a claim's lease and more to a server that is
 * gone. One dispatcher, its endpoint busy with a held attempt: what the
 * next payments hand off waits in memory (none is begun while its
 * endpoint is busy) until the server is stopped, and the stop puts it
 * back (store_free). (Had the stop come over a second after the hand-off,
 * a claim would have put it back first, as expired: the same row.) */
Test(webhook_delivery, a_stopped_server_leaves_nothing_handed_off_to_it_leased)
{
    struct endpoint e;
    char txn[64], held[64], evt[64] = "";
    struct webhook_flags f = QUICK;
    f.dispatchers = 1;
    f.timeout_ms = 120000; /* the held attempt keeps its endpoint busy */
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_hold(&rcv, 1);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, held, sizeof held);
    receiver_wait_held(&rcv, 1);
    /* the dispatcher steps while the held attempt is under way: claiming,
     * so the next payment is handed off */
    double give_up = test_now_s() + LIMIT_S;
    while (!evt[0]) {
        cr_assert(test_now_s() < give_up, "no payment's delivery handed off in %.0f s", LIMIT_S);
        char paid[64];
        new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
        event_id_of(txn, paid, sizeof paid);
        if (handed_off(paid, &e))
            snprintf(evt, sizeof evt, "%s", paid);
    }
    test_server_stop(&srv[0]);

    const char *params[] = {evt, e.id};
    PGresult *res = query("SELECT state, attempts, leased_until IS NULL, next_attempt_at <= now()"
                          " FROM webhook_deliveries WHERE event_id = $1 AND endpoint_id = $2",
                          2, params);
    cr_assert_eq(PQntuples(res), 1, "the delivery of %s is gone", evt);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "pending");
    cr_assert_str_eq(PQgetvalue(res, 0, 1), "0", "its attempt still counted: never sent");
    cr_assert_str_eq(PQgetvalue(res, 0, 2), "t", "still leased to the stopped server");
    cr_assert_str_eq(PQgetvalue(res, 0, 3), "t", "not due at once");
    PQclear(res);
    cr_assert_eq(receiver_count(&rcv, e.route, evt), 0, "%s was sent", evt);
    /* and none of the endpoint's rows but the held attempt's is leased */
    const char *others[] = {e.id, held};
    res = query("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1"
                " AND event_id <> $2 AND leased_until > now()",
                2, others);
    cr_assert_str_eq(PQgetvalue(res, 0, 0), "0", "deliveries still leased to the stopped server");
    PQclear(res);
}

/* With the load running and series (a hand-off counter) moving: a
 * delivery of tb due for an hour, only in the table, is sent while the
 * load goes on (and series moves once more after it: the hand-offs never
 * stopped). Stops the load. */
static void expect_the_table_read_under_load(const char *series, const struct endpoint *eo)
{
    wait_metric(&srv[0], series, 1);
    char old_evt[64];
    double before = metric_now(&srv[0], series);
    old_delivery(&tb, eo, old_evt);
    int sent = wait_sent(eo->route, old_evt);
    wait_metric(&srv[0], series, before + 1);
    double after = metric_now(&srv[0], series);
    long failed, paid = load_stop(&failed);
    cr_assert_eq(failed, 0, "%ld of the load's payments failed", failed);
    cr_assert(sent, "the delivery in the table was not sent in %.0f s (%ld payments, %s %.0f)",
              LIMIT_S, paid, series, after);
    wait_delivered(eo, 1, "the delivery in the table");
    cr_assert_eq(receiver_count(&rcv, eo->route, old_evt), 1);
}

/* While completions keep handing deliveries off, the table is still read
 * (pg_handoff.h: by a claim every 200 ms at least): a delivery only the
 * table holds - here one due for an hour, as a retry, a refund's or
 * another server's expired lease would be - is sent while the hand-offs
 * go on, not once they stop. (Four clients pay without pause, so that a
 * completion hands some off every few milliseconds.) */
Test(webhook_delivery, the_table_is_read_while_hand_offs_keep_coming)
{
    struct endpoint busy, eo;
    struct webhook_flags f = QUICK;
    f.dispatchers = 1;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &busy);
    add_endpoint(&srv[0], &tb, NULL, &eo);
    receiver_tally(&rcv, busy.route);
    load_start();
    expect_the_table_read_under_load(TAKEN, &eo);
    long taken = (long)metric_now(&srv[0], TAKEN);
    double give_up = test_now_s() + LIMIT_S;
    while (receiver_tallied(&rcv, busy.route) < taken && test_now_s() < give_up)
        test_sleep_ms(20);
    cr_assert_geq(receiver_tallied(&rcv, busy.route), taken,
                  "fewer deliveries of the load arrived than were handed off");
}

/* Nor while hand-offs keep expiring: an endpoint hangs, so that what its
 * payments hand off waits, expires and is put back at every claim - and
 * a claim puts back or reads the table, one statement, never put-backs
 * only while a read is due (pg_handoff.h). Another tenant's delivery due
 * in the table is sent meanwhile, by either of the two dispatchers (which
 * share what waits in memory, and the rule). */
Test(webhook_delivery, the_table_is_read_while_hand_offs_keep_expiring)
{
    struct endpoint hung, eo;
    start_with_a_hanging_endpoint(2, &hung, &eo);
    load_start();
    receiver_wait_held(&rcv, 1);
    expect_the_table_read_under_load("mockery_webhook_handoffs_total{result=\"expired\"}", &eo);
}

/* A burst of deliveries, held at the receiver until all of it is under
 * way: n payments made while the endpoint is busy with one held delivery
 * (so the dispatcher claims none of them), then that one let go - the next
 * claim takes all n at once. */
static void burst(int n)
{
    receiver_hold(&rcv, -1);
    new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    receiver_wait_held(&rcv, 1);
    for (int i = 0; i < n; i++)
        new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    receiver_let_go(&rcv);
    receiver_wait_held(&rcv, n);
}

/* The connections to an endpoint are kept open between steps and reused,
 * as a merchant's receiver that keeps them alive expects (a connection
 * closed is one opened again: for https, a TLS handshake on both sides).
 * One dispatcher sends a burst of 20 at once (20 connections), then
 * single deliveries one after another, then another burst of 20: every
 * request comes on one of the first burst's connections. (Unless told
 * otherwise, libcurl's cache holds four connections per transfer still
 * added, and a transfer that ends over that closes the oldest idle one:
 * each single delivery would close one, and the second burst open them
 * again.) The attempts' bound is past every wait here: no attempt ends by
 * a timeout, which would close its connection. (libcurl reuses an idle
 * connection for up to 118 s, far past the seconds between the bursts.) */
Test(webhook_delivery, connections_to_an_endpoint_are_kept_open_and_reused)
{
    enum { BURST = 20, SINGLES = 5 };
    struct endpoint e;
    struct webhook_flags none = QUICK, one = QUICK;
    none.dispatchers = 0; /* srv[0] takes the payments and delivers nothing */
    one.dispatchers = 1;
    one.timeout_ms = 600000;
    start_server(&srv[0], &none);
    add_endpoint(&srv[0], &ta, NULL, &e);
    start_server(&srv[1], &one);
    receiver_keep_alive(&rcv);

    burst(BURST);
    int first = receiver_connections(&rcv);
    cr_assert_eq(first, BURST, "%d held requests came on %d connections", BURST, first);
    receiver_hold(&rcv, 0);
    receiver_let_go(&rcv);
    int delivered = 1 + BURST;
    wait_delivered(&e, delivered, "the first burst");

    for (int i = 0; i < SINGLES; i++) {
        new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
        wait_delivered(&e, ++delivered, "a single delivery");
    }

    burst(BURST);
    int all = receiver_connections(&rcv);
    cr_assert_eq(all, BURST,
                 "%d connections for at most %d requests at once: %d opened again after the"
                 " first burst",
                 all, BURST, all - BURST);
    receiver_hold(&rcv, 0);
    receiver_let_go(&rcv);
    wait_delivered(&e, delivered + 1 + BURST, "the second burst");
}

Test(webhook_delivery, a_receiver_that_was_down_gets_the_event_when_it_is_back)
{
    struct endpoint e;
    char txn[64], evt[64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_stop(&rcv);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_rows("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1"
              " AND attempts >= 1 AND last_error IS NOT NULL",
              e.id, 1, "the refused attempt");
    struct delivery d;
    delivery_of(evt, e.id, &d);
    cr_assert_str_eq(d.state, "pending", "retried, not given up: %s", d.state);
    cr_assert_eq(d.last_status, -1, "no HTTP answer, no status: %ld", d.last_status);

    receiver_listen(&rcv); /* the same port */
    wait_delivered(&e, 1, "the delivery once the receiver is back");
    char *body = event_body(&srv[0], &ta, evt);
    cr_assert_eq(receiver_count(&rcv, e.route, NULL), 1, "delivered once it was back");
    expect_event_request(receiver_nth(&rcv, e.route, 0), evt, body);
    free(body);
}

Test(webhook_delivery, a_tenants_events_go_to_its_own_endpoints_only)
{
    struct endpoint ea, eb;
    char txn[4][64], evt[4][64];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &ea);
    add_endpoint(&srv[0], &tb, NULL, &eb);
    const struct tenant *of[] = {&ta, &tb, &ta, &tb};
    for (int i = 0; i < 4; i++) {
        new_payment(&srv[0], of[i], "cust", 201, txn[i], sizeof txn[i]);
        event_id_of(txn[i], evt[i], sizeof evt[i]);
    }
    wait_delivered(&ea, 2, "tenant A's deliveries");
    wait_delivered(&eb, 2, "tenant B's deliveries");
    for (int i = 0; i < 4; i++) {
        const struct endpoint *own = of[i] == &ta ? &ea : &eb, *other = of[i] == &ta ? &eb : &ea;
        char *body = event_body(&srv[0], of[i], evt[i]);
        cr_assert_eq(receiver_count(&rcv, own->route, evt[i]), 1, "%s to its tenant's endpoint",
                     evt[i]);
        cr_assert_eq(receiver_count(&rcv, other->route, evt[i]), 0,
                     "%s to the other tenant's endpoint", evt[i]);
        for (int k = 0; k < 2; k++) {
            const struct request *q = receiver_nth(&rcv, own->route, k);
            if (strcmp(q->event_id, evt[i]) == 0)
                expect_event_request(q, evt[i], body); /* signed with its own secret */
        }
        free(body);
    }
    cr_assert_eq(receiver_count(&rcv, ea.route, NULL), 2);
    cr_assert_eq(receiver_count(&rcv, eb.route, NULL), 2);
}

Test(webhook_delivery, a_private_address_is_refused_at_delivery_time_too)
{
    char txn[64], evt[64], path[96], unique[64], url[160], endpoint_id[96];
    struct webhook_flags f = QUICK;
    f.allow_private = 0;
    f.max_attempts = 2;
    start_server(&srv[0], &f);
    /* The row an endpoint made when its host resolved to a public address
     * would leave, had DNS answered otherwise since: the API would refuse
     * this URL now. */
    test_unique(unique, sizeof unique, "hook");
    snprintf(path, sizeof path, "/%s", unique);
    int route = receiver_route(&rcv, path);
    receiver_set_secret(&rcv, route, "whsec_test");
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", rcv.port, path);
    test_unique(unique, sizeof unique, "ssrf");
    snprintf(endpoint_id, sizeof endpoint_id, "we_%s", unique);
    const char *params[] = {ta.name, endpoint_id, url};
    PQclear(query("INSERT INTO webhook_endpoints (tenant_id, endpoint_id, url, events, secret,"
                  " created_at) VALUES ($1, $2, $3, NULL, 'whsec_test', now()) RETURNING 1",
                  3, params));

    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_rows("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'failed'",
              endpoint_id, 1, "the refused delivery given up");
    struct delivery d;
    delivery_of(evt, endpoint_id, &d);
    cr_assert_eq(d.attempts, 2, "%ld attempts", d.attempts);
    cr_assert_not_null(strstr(d.last_error, "address"), "last_error: %s", d.last_error);
    cr_assert_eq(d.last_status, -1, "no HTTP answer, no status: %ld", d.last_status);
    pthread_mutex_lock(&rcv.mu);
    int got = rcv.n + rcv.strays;
    pthread_mutex_unlock(&rcv.mu);
    cr_assert_eq(got, 0, "the receiver on 127.0.0.1 got %d requests", got);
}

Test(webhook_delivery, two_servers_share_the_deliveries_and_never_send_one_twice)
{
    enum { N = 200 };
    struct endpoint e;
    struct webhook_flags f = QUICK;
    f.timeout_ms = 5000; /* healthy: no attempt of a busy test machine is given up */
    start_server(&srv[0], &f);
    start_server(&srv[1], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    pthread_mutex_lock(&rcv.mu);
    rcv.delay_ms = 20; /* requests overlap, as a real receiver's would */
    pthread_mutex_unlock(&rcv.mu);
    for (int i = 0; i < N; i++)
        new_payment(&srv[i % 2], &ta, "cust", 201, NULL, 0);
    wait_delivered(&e, N, "deliveries of every payment");

    pthread_mutex_lock(&rcv.mu);
    int n = rcv.n, overlapped = 0, unverified = 0;
    for (int i = 0; i < rcv.n; i++) {
        overlapped += rcv.reqs[i].overlapped;
        unverified += !rcv.reqs[i].signature_ok;
    }
    pthread_mutex_unlock(&rcv.mu);
    cr_assert_eq(overlapped, 0, "%d requests came while their event was already in flight",
                 overlapped);
    cr_assert_eq(unverified, 0, "%d requests did not verify", unverified);
    cr_assert_eq(n, N, "%d requests for %d events to a healthy receiver", n, N);
}

/* Its one allowed attempt (counted as the completion handed it off) is cut
 * short by SIGKILL: the next server sends the event all the same - an
 * attempt whose server died is not one the endpoint failed. */
Test(webhook_delivery, a_server_killed_mid_delivery_loses_nothing)
{
    struct endpoint e;
    char txn[64], evt[64];
    struct webhook_flags f = QUICK;
    f.dispatchers = 1;
    f.max_attempts = 1;
    /* the lease: the timeout and 15.2 s (webhook_delivery.c); srv[0] is
     * killed well before its timeout */
    f.timeout_ms = 2000;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    receiver_hold(&rcv, 1);
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    receiver_wait_held(&rcv, 1);
    test_server_kill(&srv[0]);
    receiver_release(&rcv); /* its 200 goes to no one */

    start_server(&srv[1], &f);
    /* (the lease runs out first: its length on top of the usual bound) */
    wait_delivered_after(&e, 1, f.timeout_ms / 1000.0 + 15.2,
                         "the delivery by the second server after the lease");
    /* the second server made it: not the first, before it was killed */
    wait_metric(&srv[1], "mockery_webhook_deliveries_total{result=\"delivered\"}", 1);
    int sent = receiver_count(&rcv, e.route, evt);
    cr_assert_geq(sent, 2, "the event sent again: %d requests", sent);
    char *body = event_body(&srv[1], &ta, evt);
    int n = receiver_count(&rcv, e.route, NULL);
    for (int k = 0; k < n; k++)
        expect_event_request(receiver_nth(&rcv, e.route, k), evt, body);
    free(body);
}

/* A claim's lease is counted from its statement's start; one that comes
 * back later than the lease's margin (5 s, webhook_delivery.c) may not
 * have the lease left to finish its attempts before another server claims
 * them, so its deliveries are not begun: they go again after the lease.
 * The claim is stalled for 6 s by a lock on the table, held by a session
 * of the test that also writes a due delivery (seen by the claim once the
 * lock is let go): nothing is sent until the row's lease has ended, then
 * it is delivered. One dispatcher, so that no other claim waits less; the
 * lock (EXCLUSIVE) lets reads through - the backlog's count - and stops
 * every claim. */
Test(webhook_delivery, a_claim_that_came_back_late_sends_nothing_within_its_lease)
{
    struct endpoint e;
    char evt[64], insert[512];
    struct webhook_flags f = QUICK;
    f.timeout_ms = 1000; /* the lease: 16.2 s */
    f.dispatchers = 1;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);

    PGconn *locker = PQconnectdb(test_db_url());
    cr_assert_eq(PQstatus(locker), CONNECTION_OK, "%s", PQerrorMessage(locker));
    test_exec_ok(locker, "BEGIN");
    test_exec_ok(locker, "LOCK TABLE webhook_deliveries IN EXCLUSIVE MODE");
    test_unique(evt, sizeof evt, "evt_late");
    snprintf(insert, sizeof insert,
             "INSERT INTO events (tenant_id, event_id, type, created_at, body)"
             " VALUES ('%s', '%s', 'payment.succeeded', now(),"
             " '{\"id\":\"%s\",\"type\":\"payment.succeeded\",\"data\":{\"object\":{}}}')",
             ta.name, evt, evt);
    test_exec_ok(locker, insert); /* its delivery, due now, by the trigger */
    char pid[16];
    snprintf(pid, sizeof pid, "%d", PQbackendPID(locker));
    /* a claim of the server waits for the lock, and has for 6 s */
    double give_up = test_now_s() + LIMIT_S;
    while (!test_query_long(test_db_url(),
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                            " 'mockery-server' AND query LIKE 'WITH busy AS%'"
                            " AND $1::int = ANY(pg_blocking_pids(pid))"
                            " AND clock_timestamp() - query_start > interval '6 s'",
                            pid)) {
        cr_assert_lt(test_now_s(), give_up + 6, "no claim waited 6 s for the lock");
        test_sleep_ms(50);
    }
    /* the first request is held: were the late claim's attempt begun, its
     * row would stay leased with the request here */
    receiver_hold(&rcv, 1);
    test_exec_ok(locker, "COMMIT");
    PQfinish(locker);

    /* the claim came back: its row leased (or, were it begun, sent) */
    const char *params[] = {evt, e.id};
    give_up = test_now_s() + LIMIT_S;
    while (!receiver_count(&rcv, e.route, evt) &&
           !test_query_long(test_db_url(),
                            "SELECT count(*) FROM webhook_deliveries WHERE event_id = $1"
                            " AND attempts >= 1 AND leased_until > now()",
                            evt)) {
        cr_assert_lt(test_now_s(), give_up, "the stalled claim never came back");
        test_sleep_ms(50);
    }
    /* nothing sent while the lease holds (counted before the lease is
     * read: a count read while it still held) */
    for (;;) {
        int sent = receiver_count(&rcv, e.route, evt);
        PGresult *res = query("SELECT leased_until > now() FROM webhook_deliveries"
                              " WHERE event_id = $1 AND endpoint_id = $2",
                              2, params);
        int leased = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (!leased)
            break;
        cr_assert_eq(sent, 0, "sent by the late claim, within its lease");
        test_sleep_ms(50);
    }
    cr_assert(test_log_has(srv[0].log_path, "a claim came back late"),
              "the late claim was not logged");
    receiver_release(&rcv);
    wait_delivered(&e, 1, "the delivery after the late claim's lease");
}

/* Rows whose last attempts' servers all died (leased, then nothing written):
 * one claimed for the third time past the last allowed attempt is still
 * sent; one claimed for the fourth is failed without a send, so that a
 * delivery whose every sender dies ends. */
Test(webhook_delivery, a_delivery_whose_every_sender_died_is_failed_at_last)
{
    struct endpoint e;
    char sent[64], given_up[64];
    struct webhook_flags f = QUICK;
    f.max_attempts = 2;
    start_server(&srv[0], &f);
    add_endpoint(&srv[0], &ta, NULL, &e);
    old_delivery_after(&ta, &e, sent, 2 + WEBHOOK_ATTEMPTS_AFTER_DEATHS - 1);
    old_delivery_after(&ta, &e, given_up, 2 + WEBHOOK_ATTEMPTS_AFTER_DEATHS);
    wait_rows("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND state = 'failed'",
              e.id, 1, "the delivery past every allowance failed");
    wait_rows(ROWS, e.id, 1, "the other one delivered");
    struct delivery d;
    delivery_of(given_up, e.id, &d);
    cr_assert_str_eq(d.state, "failed");
    cr_assert_not_null(strstr(d.last_error, "servers stopped"), "last_error: %s", d.last_error);
    cr_assert_eq(receiver_count(&rcv, e.route, sent), 1, "the one within them was not sent once");
    cr_assert_eq(receiver_count(&rcv, e.route, given_up), 0, "the one past them was sent");
}

Test(webhook_delivery, a_deleted_endpoint_gets_nothing_more)
{
    struct endpoint failing, sentinel;
    char txn[64], evt[64], path[160];
    start_server(&srv[0], &QUICK);
    add_endpoint(&srv[0], &ta, NULL, &failing);
    add_endpoint(&srv[0], &ta, NULL, &sentinel);
    receiver_answer(&rcv, failing.route, 0, 500);
    new_payment(&srv[0], &ta, "cust", 201, NULL, 0);
    wait_rows("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND attempts >= 2",
              failing.id, 1, "the failing endpoint retried");

    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/webhook_endpoints/%s", failing.id);
    call(&srv[0], &ta, "DELETE", path, NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    test_response_free(&r);
    wait_rows(ROWS, failing.id, 0, "the deleted endpoint's deliveries");
    int before = receiver_count(&rcv, failing.route, NULL);

    /* a further payment: delivered to the endpoint that is left, not to the
     * deleted one */
    new_payment(&srv[0], &ta, "cust", 201, txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    wait_delivered(&sentinel, 2, "the deliveries to the endpoint left");
    cr_assert_eq(test_query_long(test_db_url(), ROWS, failing.id), 0);
    cr_assert_eq(receiver_count(&rcv, failing.route, evt), 0,
                 "the deleted endpoint got the further payment's event");
    /* at most the attempt in flight when it was deleted came after */
    int after = receiver_count(&rcv, failing.route, NULL);
    cr_assert_leq(after, before + 1, "%d requests to the deleted endpoint after it was gone",
                  after - before);
}

/* ---- how far back a claim looks (webhook_lookback.c) ---------------------- */

/* No server and no clock: each rule with times made up here (us). */

#define T0 1000000000LL
#define SEC 1000000LL
#define WAIT_MS 5000 /* a statement's longest wait for a connection */

static const struct store_endpoint_busy EA = {"tenant-a", "we_a"}, EB = {"tenant-b", "we_b"},
                                        EC = {"tenant-a", "we_c"};

Test(webhook_lookback, with_nothing_remembered_a_claim_looks_at_every_row)
{
    struct webhook_lookback lb = {0};
    const struct store_endpoint_busy busy[] = {EA};
    cr_assert_eq(webhook_lookback_ms(&lb, busy, 1, T0, WAIT_MS), 0);
}

Test(webhook_lookback, while_the_endpoints_stepped_over_are_busy_it_looks_back_since_then)
{
    struct webhook_lookback lb = {0};
    /* copies: the sender's busy list points into slots cleared later */
    char tenant[16] = "tenant-a", id[16] = "we_a";
    const struct store_endpoint_busy then[] = {{tenant, id}, EB};
    webhook_lookback_looked_all(&lb, T0, 1, then, 2);
    memset(tenant, 0, sizeof tenant);
    memset(id, 0, sizeof id);

    const struct store_endpoint_busy now[] = {EC, EB, EA}; /* and one more */
    cr_assert_eq(webhook_lookback_ms(&lb, now, 3, T0 + 2 * SEC + 500, WAIT_MS),
                 2000 + WAIT_MS + WEBHOOK_LOOKBACK_MARGIN_MS);
    int64_t last = T0 + WEBHOOK_LOOK_ALL_MS * 1000LL - 1;
    cr_assert_gt(webhook_lookback_ms(&lb, now, 3, last, WAIT_MS), 0);
    webhook_lookback_forget(&lb);
}

Test(webhook_lookback, once_an_endpoint_stepped_over_is_not_busy_it_looks_at_every_row)
{
    struct webhook_lookback lb = {0};
    const struct store_endpoint_busy then[] = {EA, EB};
    webhook_lookback_looked_all(&lb, T0, 1, then, 2);
    /* EB's attempts ended: its backlog may be taken now */
    const struct store_endpoint_busy now[] = {EA, EC};
    cr_assert_eq(webhook_lookback_ms(&lb, now, 2, T0 + SEC, WAIT_MS), 0);
    cr_assert_eq(webhook_lookback_ms(&lb, NULL, 0, T0 + SEC, WAIT_MS), 0);
    webhook_lookback_forget(&lb);

    /* an endpoint is its tenant's: EB's id under another tenant, or
     * another id of EB's tenant, is not EB */
    webhook_lookback_looked_all(&lb, T0, 1, (const struct store_endpoint_busy[]){EB}, 1);
    const struct store_endpoint_busy id_elsewhere[] = {{"tenant-a", "we_b"}};
    cr_assert_eq(webhook_lookback_ms(&lb, id_elsewhere, 1, T0 + SEC, WAIT_MS), 0);
    const struct store_endpoint_busy other_id[] = {{"tenant-b", "we_c"}};
    cr_assert_eq(webhook_lookback_ms(&lb, other_id, 1, T0 + SEC, WAIT_MS), 0);
    cr_assert_gt(
        webhook_lookback_ms(&lb, (const struct store_endpoint_busy[]){EB}, 1, T0 + SEC, WAIT_MS),
        0);
    webhook_lookback_forget(&lb);
}

Test(webhook_lookback, every_look_all_ms_it_looks_at_every_row)
{
    struct webhook_lookback lb = {0};
    const struct store_endpoint_busy busy[] = {EA};
    webhook_lookback_looked_all(&lb, T0, 1, busy, 1);
    cr_assert_eq(webhook_lookback_ms(&lb, busy, 1, T0 + WEBHOOK_LOOK_ALL_MS * 1000LL, WAIT_MS), 0);
    webhook_lookback_forget(&lb);
}

Test(webhook_lookback, a_claim_that_took_all_it_asked_for_or_stepped_over_none_is_not_remembered)
{
    struct webhook_lookback lb = {0};
    const struct store_endpoint_busy busy[] = {EA};
    webhook_lookback_looked_all(&lb, T0, 0, busy, 1); /* took a full batch */
    cr_assert_eq(webhook_lookback_ms(&lb, busy, 1, T0 + SEC, WAIT_MS), 0);
    /* and one remembered before is forgotten */
    webhook_lookback_looked_all(&lb, T0, 1, busy, 1);
    cr_assert_gt(webhook_lookback_ms(&lb, busy, 1, T0 + SEC, WAIT_MS), 0);
    webhook_lookback_looked_all(&lb, T0 + SEC, 0, busy, 1);
    cr_assert_eq(webhook_lookback_ms(&lb, busy, 1, T0 + 2 * SEC, WAIT_MS), 0);
    webhook_lookback_looked_all(&lb, T0, 1, busy, 1);
    webhook_lookback_looked_all(&lb, T0 + SEC, 1, NULL, 0); /* nothing to step over */
    cr_assert_eq(webhook_lookback_ms(&lb, busy, 1, T0 + 2 * SEC, WAIT_MS), 0);
    webhook_lookback_forget(&lb);
}
