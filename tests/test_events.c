/* test_events.c - the events completed payments and refunds leave: the real
 * mockery-server process on the PostgreSQL test database, asked over real
 * sockets at /api/v1/events
 *
 * Each test starts a server of its own whose API keys name tenants of its
 * own, so that the events a tenant lists are that test's alone while the
 * tests run in parallel on one database. What is checked is what a
 * merchant reading its events would notice: one event per payment or
 * refund that happened, none for an answer that completed nothing, the
 * event's object as GET shows the payment or refund, its id naming the
 * operation, the same bytes by id as in the list, pages newest first, the
 * type filter, and another tenant's events out of sight.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "support.h"

struct tenant {
    char name[80];
    char auth[128]; /* "Authorization: Bearer <key>" */
};

static struct test_server srv;
static struct tenant ta, tb; /* two tenants of this test's own */

/* A tenant with a name and a key no other test has. */
static void new_tenant(struct tenant *t, const char *prefix)
{
    char key[80];
    test_unique(t->name, sizeof t->name, prefix);
    test_unique(key, sizeof key, "key");
    snprintf(t->auth, sizeof t->auth, "Authorization: Bearer %s", key);
}

/* The real server binary (MOCKERY_TEST_SERVER_BIN when set: the TSan run's)
 * on the test database, serving the tenants ta and tb. */
static void start(void)
{
    struct config c;
    test_config(&c, STORE_KIND_POSTGRES);
    new_tenant(&ta, "events-a");
    new_tenant(&tb, "events-b");
    snprintf(c.api_keys, sizeof c.api_keys, "%s:%s,%s:%s", ta.name,
             ta.auth + strlen("Authorization: Bearer "), tb.name,
             tb.auth + strlen("Authorization: Bearer "));
    const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, bin && *bin ? bin : MOCKERY_SERVER_BIN);
}

static void stop(void)
{
    test_server_stop(&srv);
}

TestSuite(events, .init = start, .fini = stop, .timeout = 90);

/* ---- requests ------------------------------------------------------------ */

/* One request as tenant t to path; key and body may be NULL. */
static void call(const struct tenant *t, const char *method, const char *path, const char *key,
                 const char *body, struct test_response *r)
{
    char u[512], keyh[160];
    const char *headers[4];
    int n = 0;
    snprintf(u, sizeof u, "%s%s", srv.base, path);
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

static void payment_body(char *buf, size_t len, const char *customer, const char *amount)
{
    snprintf(buf, len,
             "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"description\":\"tea\"}",
             amount, customer);
}

/* POST a payment of amount for customer as t under key. */
static void pay(const struct tenant *t, const char *key, const char *customer, const char *amount,
                struct test_response *r)
{
    char body[256];
    payment_body(body, sizeof body, customer, amount);
    call(t, "POST", "/api/v1/payments", key, body, r);
}

/* POST a refund of payment as t under key. */
static void refund(const struct tenant *t, const char *payment, const char *key, const char *body,
                   struct test_response *r)
{
    char path[160];
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", payment);
    call(t, "POST", path, key, body, r);
}

/* GET path as t; fails the test unless 200. */
static void get_ok(const struct tenant *t, const char *path, struct test_response *r)
{
    call(t, "GET", path, NULL, NULL, r);
    cr_assert_eq(r->status, 200, "GET %s: %ld %s", path, r->status, r->body);
}

/* The string member name of an answer's JSON body. */
static void str_of(const struct test_response *r, const char *name, char *out, size_t len)
{
    cJSON *o = test_json(r);
    snprintf(out, len, "%s", test_json_str(o, name));
    cJSON_Delete(o);
}

/* A new payment of amount for a customer of prefix as t, with a key of its
 * own, answered want (201 or 402); its transaction id into txn. */
static void new_payment(const struct tenant *t, const char *prefix, const char *amount, long want,
                        char *txn, size_t len)
{
    char key[96], cust[64];
    struct test_response r;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, prefix);
    pay(t, key, cust, amount, &r);
    cr_assert_eq(r.status, want, "payment: %ld %s", r.status, r.body);
    str_of(&r, "transaction_id", txn, len);
    test_response_free(&r);
}

/* A new refund (body) of payment as t, with a key of its own, answered 201;
 * its refund id into id. */
static void new_refund(const struct tenant *t, const char *payment, const char *body, char *id,
                       size_t len)
{
    char key[96];
    struct test_response r;
    test_unique(key, sizeof key, "refund");
    refund(t, payment, key, body, &r);
    cr_assert_eq(r.status, 201, "refund: %ld %s", r.status, r.body);
    str_of(&r, "refund_id", id, len);
    test_response_free(&r);
}

/* The event id of a payment (txn_…) or refund (re_…): evt_ and the same
 * random characters. */
static void event_id_of(const char *op_id, char *out, size_t len)
{
    const char *chars = strchr(op_id, '_');
    cr_assert_not_null(chars, "not an id: %s", op_id);
    snprintf(out, len, "evt_%s", chars + 1);
}

/* ---- the events' text ---------------------------------------------------- */

/* The length of the JSON object at p, read as text: brackets counted,
 * strings and their escapes skipped. */
static size_t object_span(const char *p)
{
    cr_assert_eq(*p, '{', "not an object: %.80s", p);
    size_t i = 0;
    int depth = 0, in_string = 0;
    do {
        char c = p[i];
        cr_assert(c != '\0', "an object not closed: %s", p);
        if (in_string) {
            if (c == '\\' && p[i + 1])
                i++;
            else if (c == '"')
                in_string = 0;
        } else if (c == '"') {
            in_string = 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
        i++;
    } while (depth > 0);
    return i;
}

/* The bytes of the event event_id in a list's body, as sent (free them). */
static char *entry_text(const char *list_body, const char *event_id)
{
    char head[96];
    snprintf(head, sizeof head, "{\"id\":\"%s\"", event_id);
    const char *p = strstr(list_body, head);
    cr_assert_not_null(p, "no event %s in %s", event_id, list_body);
    cr_assert_null(strstr(p + 1, head), "event %s twice in %s", event_id, list_body);
    return strndup(p, object_span(p));
}

/* The bytes of an event's data.object, as sent (free them). */
static char *object_text(const char *event)
{
    const char *key = ",\"data\":{\"object\":";
    const char *p = strstr(event, key);
    cr_assert_not_null(p, "no data.object in %s", event);
    p += strlen(key);
    size_t n = object_span(p);
    cr_assert_str_eq(p + n, "}}", "data.object is not the event's last member: %s", event);
    return strndup(p, n);
}

/* The event's data.object is what GET returns for its payment or refund:
 * byte for byte, and (the same said by a JSON parser) member for member. */
static void expect_object_is(const char *event, const char *get_body)
{
    char *obj = object_text(event);
    cr_assert_str_eq(obj, get_body, "the event's object is not what GET returns:\n%s\n%s", obj,
                     get_body);
    cJSON *a = cJSON_Parse(obj), *b = cJSON_Parse(get_body);
    cr_assert(a && b && cJSON_Compare(a, b, 1), "%s\n%s", obj, get_body);
    cJSON_Delete(a);
    cJSON_Delete(b);
    free(obj);
}

/* ---- the list ------------------------------------------------------------ */

#define MAX_EVENTS 16

struct page {
    int count;
    int has_more;
    char next[64]; /* "" when next_cursor is null */
    char ids[MAX_EVENTS][64];
    char types[MAX_EVENTS][32];
    char *body; /* the answer's bytes (free it) */
};

/* GET /api/v1/events?query as t: one page, checked for its envelope. */
static void list(const struct tenant *t, const char *query, struct page *pg)
{
    char path[256];
    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/events%s", query);
    get_ok(t, path, &r);
    cr_assert_eq(strncmp(r.content_type, "application/json", 16), 0, "%s", r.content_type);
    cJSON *o = test_json(&r);
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(o, "events");
    const cJSON *count = cJSON_GetObjectItemCaseSensitive(o, "count");
    const cJSON *more = cJSON_GetObjectItemCaseSensitive(o, "has_more");
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(o, "next_cursor");
    cr_assert(cJSON_IsArray(events) && cJSON_IsNumber(count) && cJSON_IsBool(more) &&
                  (cJSON_IsNull(next) || cJSON_IsString(next)),
              "not an event list: %s", r.body);
    memset(pg, 0, sizeof *pg);
    pg->count = cJSON_GetArraySize(events);
    cr_assert_eq(count->valueint, pg->count, "count says %d, the page holds %d: %s",
                 count->valueint, pg->count, r.body);
    cr_assert_leq(pg->count, MAX_EVENTS, "more events than this test made: %s", r.body);
    pg->has_more = cJSON_IsTrue(more);
    if (cJSON_IsString(next))
        snprintf(pg->next, sizeof pg->next, "%s", next->valuestring);
    for (int i = 0; i < pg->count; i++) {
        const cJSON *e = cJSON_GetArrayItem(events, i);
        snprintf(pg->ids[i], sizeof pg->ids[i], "%s", test_json_str(e, "id"));
        snprintf(pg->types[i], sizeof pg->types[i], "%s", test_json_str(e, "type"));
        cr_assert_eq(strncmp(pg->ids[i], "evt_", 4), 0, "%s", r.body);
        cr_assert_eq(strlen(test_json_str(e, "created")), 27, "created is RFC 3339: %s", r.body);
        cr_assert(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(
                      cJSON_GetObjectItemCaseSensitive(e, "data"), "object")),
                  "no data.object: %s", r.body);
    }
    cJSON_Delete(o);
    pg->body = r.body;
    r.body = NULL;
    test_response_free(&r);
}

/* How many of t's events (all of them, one page) have this id. */
static int events_with_id(const struct page *pg, const char *event_id)
{
    int n = 0;
    for (int i = 0; i < pg->count; i++)
        n += strcmp(pg->ids[i], event_id) == 0;
    return n;
}

/* Rows of the events table with this id, whatever the tenant: what the
 * database holds, not only what the API shows. */
static long rows_of(const char *event_id)
{
    return test_query_long(test_db_url(), "SELECT count(*) FROM events WHERE event_id = $1",
                           event_id);
}

/* All of t's events hold exactly one with this id, of this type: its bytes
 * as the list sends them (free them). */
static char *the_one_event(const struct tenant *t, const char *event_id, const char *type)
{
    struct page pg;
    list(t, "?limit=500", &pg);
    cr_assert_eq(events_with_id(&pg, event_id), 1, "events %s of the tenant's %d: %s", event_id,
                 pg.count, pg.body);
    cr_assert_eq(rows_of(event_id), 1, "rows of event %s in the database", event_id);
    char *text = entry_text(pg.body, event_id);
    cJSON *e = cJSON_Parse(text);
    cr_assert_not_null(e, "%s", text);
    cr_assert_str_eq(test_json_str(e, "type"), type, "%s", text);
    cJSON_Delete(e);
    free(pg.body);
    return text;
}

/* The member name of a JSON text. */
static void member(const char *json, const char *name, char *out, size_t len)
{
    cJSON *o = cJSON_Parse(json);
    cr_assert_not_null(o, "not JSON: %s", json);
    snprintf(out, len, "%s", test_json_str(o, name));
    cJSON_Delete(o);
}

/* ---- one event per completed operation ---------------------------------- */

Test(events, a_payment_leaves_one_payment_succeeded_event_however_often_it_is_replayed)
{
    char key[96], cust[64], txn[64], evt[64], path[128], again[256];
    struct test_response r, g;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust");
    pay(&ta, key, cust, "10.50", &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);

    /* the client lost the answer, five times, spelled otherwise too: each
     * time the first answer again, and never a second event */
    snprintf(again, sizeof again,
             "{ \"description\": \"tea\", \"customer_id\": \"%s\", \"currency\": \"EUR\","
             " \"amount\": 10.5 }",
             cust);
    for (int i = 0; i < 5; i++) {
        struct test_response p;
        if (i % 2)
            call(&ta, "POST", "/api/v1/payments", key, again, &p);
        else
            pay(&ta, key, cust, "10.50", &p);
        cr_assert_eq(p.status, 200, "replay %d: %ld %s", i, p.status, p.body);
        cr_assert_str_eq(p.replay, "true");
        cr_assert_str_eq(p.body, r.body);
        test_response_free(&p);
    }

    snprintf(path, sizeof path, "/api/v1/payments/%s", txn);
    get_ok(&ta, path, &g);
    char *event = the_one_event(&ta, evt, "payment.succeeded");
    struct page pg;
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 1, "one payment, one event: %s", pg.body);
    cr_assert_not(pg.has_more);
    cr_assert_str_empty(pg.next, "next_cursor is null on the last page: %s", pg.body);
    free(pg.body);

    /* the id names the payment; created is when it was processed; the
     * object is the payment as GET returns it */
    char created[40], processed[40];
    member(event, "created", created, sizeof created);
    member(g.body, "processed_at", processed, sizeof processed);
    cr_assert_str_eq(created, processed, "the event was created when the payment was processed");
    cr_assert_str_eq(evt + 4, txn + 4);
    expect_object_is(event, g.body);
    free(event);
    test_response_free(&g);
    test_response_free(&r);
}

Test(events, a_declined_payment_leaves_one_payment_declined_event)
{
    char key[96], cust[64], txn[64], evt[64], path[128], status[16];
    struct test_response r, g;
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust-declined");
    pay(&ta, key, cust, "7.00", &r);
    test_expect_error(&r, 402, "card_declined", NULL);
    str_of(&r, "transaction_id", txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    for (int i = 0; i < 3; i++) { /* the decline is cached: replays, no other event */
        struct test_response p;
        pay(&ta, key, cust, "7.00", &p);
        cr_assert_eq(p.status, 402, "%s", p.body);
        cr_assert_str_eq(p.replay, "true");
        cr_assert_str_eq(p.body, r.body);
        test_response_free(&p);
    }

    snprintf(path, sizeof path, "/api/v1/payments/%s", txn);
    get_ok(&ta, path, &g);
    member(g.body, "status", status, sizeof status);
    cr_assert_str_eq(status, "declined");
    char *event = the_one_event(&ta, evt, "payment.declined");
    /* the payment, not the 402's error body */
    expect_object_is(event, g.body);
    free(event);

    struct page pg;
    list(&ta, "?type=payment.succeeded", &pg);
    cr_assert_eq(pg.count, 0, "a declined payment did not succeed: %s", pg.body);
    free(pg.body);
    list(&ta, "?type=payment.declined", &pg);
    cr_assert_eq(pg.count, 1, "%s", pg.body);
    cr_assert_str_eq(pg.ids[0], evt);
    free(pg.body);
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 1, "%s", pg.body);
    free(pg.body);
    test_response_free(&g);
    test_response_free(&r);
}

Test(events, a_refund_leaves_one_refund_succeeded_event)
{
    char txn[64], pay_evt[64], key[96], rid[64], evt[64], path[128];
    struct test_response pay_get, r, g;
    new_payment(&ta, "cust", "100.00", 201, txn, sizeof txn);
    event_id_of(txn, pay_evt, sizeof pay_evt);
    snprintf(path, sizeof path, "/api/v1/payments/%s", txn);
    get_ok(&ta, path, &pay_get); /* the payment before its refund */

    test_unique(key, sizeof key, "refund");
    refund(&ta, txn, key, "{\"amount\":30,\"reason\":\"requested_by_customer\"}", &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    str_of(&r, "refund_id", rid, sizeof rid);
    event_id_of(rid, evt, sizeof evt);
    for (int i = 0; i < 3; i++) {
        struct test_response p;
        refund(&ta, txn, key, "{\"reason\":\"requested_by_customer\",\"amount\":30.00}", &p);
        cr_assert_eq(p.status, 200, "%s", p.body);
        cr_assert_str_eq(p.body, r.body);
        test_response_free(&p);
    }

    snprintf(path, sizeof path, "/api/v1/refunds/%s", rid);
    get_ok(&ta, path, &g);
    char *event = the_one_event(&ta, evt, "refund.succeeded");
    char created[40], created_at[40];
    member(event, "created", created, sizeof created);
    member(g.body, "created_at", created_at, sizeof created_at);
    cr_assert_str_eq(created, created_at, "the event was created with the refund");
    cr_assert_str_eq(evt + 4, rid + 3);
    expect_object_is(event, g.body);
    free(event);

    /* two events in all: the payment's, still the payment as it was before
     * the refund (a snapshot), and the refund's */
    struct page pg;
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 2, "%s", pg.body);
    cr_assert_str_eq(pg.ids[0], evt, "the refund is the newest: %s", pg.body);
    cr_assert_str_eq(pg.ids[1], pay_evt, "%s", pg.body);
    free(pg.body);
    list(&ta, "?type=refund.succeeded", &pg);
    cr_assert_eq(pg.count, 1, "%s", pg.body);
    cr_assert_str_eq(pg.ids[0], evt);
    free(pg.body);
    char *paid = the_one_event(&ta, pay_evt, "payment.succeeded");
    expect_object_is(paid, pay_get.body);
    free(paid);
    test_response_free(&pay_get);
    test_response_free(&g);
    test_response_free(&r);
}

/* ---- answers that complete nothing -------------------------------------- */

Test(events, answers_that_complete_nothing_leave_no_event)
{
    char key[96], cust[64], txn[64], declined[64], refund_error[64], other[256], path[128];
    struct test_response r;
    struct page pg;

    /* a gateway failure: 502, the key released; its retry fails the same way */
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust-gateway-error");
    for (int i = 0; i < 2; i++) {
        pay(&ta, key, cust, "5.00", &r);
        test_expect_error(&r, 502, "gateway_error", NULL);
        test_response_free(&r);
    }
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 0, "a failed payment left an event: %s", pg.body);
    free(pg.body);

    /* refused before anything ran: a bad amount */
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust");
    pay(&ta, key, cust, "0", &r);
    test_expect_error(&r, 422, "invalid_amount", "amount");
    test_response_free(&r);

    /* one payment, then its key sent with another body: 422 */
    pay(&ta, key, cust, "12.00", &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    str_of(&r, "transaction_id", txn, sizeof txn);
    test_response_free(&r);
    payment_body(other, sizeof other, cust, "13.00");
    call(&ta, "POST", "/api/v1/payments", key, other, &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);

    /* refunds refused: more than the payment, a declined payment, the
     * refund gateway failing (released, twice), a key already used for
     * the payment */
    new_payment(&ta, "cust-declined", "3.00", 402, declined, sizeof declined);
    new_payment(&ta, "cust-refund-error", "4.00", 201, refund_error, sizeof refund_error);
    char rkey[96];
    test_unique(rkey, sizeof rkey, "refund");
    refund(&ta, txn, rkey, "{\"amount\":12.01}", &r);
    test_expect_error(&r, 422, "refund_exceeds_payment", "amount");
    test_response_free(&r);
    refund(&ta, declined, rkey, "{}", &r);
    test_expect_error(&r, 409, "payment_not_refundable", NULL);
    test_response_free(&r);
    for (int i = 0; i < 2; i++) {
        refund(&ta, refund_error, rkey, "{}", &r);
        test_expect_error(&r, 502, "gateway_error", NULL);
        test_response_free(&r);
    }
    refund(&ta, txn, key, "{}", &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);

    /* The events are exactly the three completed payments', once each. */
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 3, "three payments completed: %s", pg.body);
    const char *done[] = {txn, declined, refund_error};
    for (int i = 0; i < 3; i++) {
        char evt[64];
        event_id_of(done[i], evt, sizeof evt);
        cr_assert_eq(events_with_id(&pg, evt), 1, "the event of %s: %s", done[i], pg.body);
        cr_assert_eq(rows_of(evt), 1, "rows of event %s", evt);
    }
    free(pg.body);
    list(&ta, "?type=refund.succeeded", &pg);
    cr_assert_eq(pg.count, 0, "no refund happened: %s", pg.body);
    free(pg.body);
    /* and the refused refunds left no refund the API could show */
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", refund_error);
    get_ok(&ta, path, &r);
    cr_assert_not_null(strstr(r.body, "\"count\":0"), "%s", r.body);
    test_response_free(&r);
}

struct bg_pay {
    const char *key, *customer;
    pthread_barrier_t *barrier; /* NULL: go at once */
    struct test_response r;
};

static void *bg_pay_main(void *p)
{
    struct bg_pay *b = p;
    if (b->barrier)
        pthread_barrier_wait(b->barrier);
    pay(&ta, b->key, b->customer, "20.00", &b->r);
    return NULL;
}

/* Events whose payment was made under key, in the database. */
static long events_of_key(const char *key)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM events"
                           " WHERE body -> 'data' -> 'object' ->> 'idempotency_key' = $1",
                           key);
}

/* Sends a slow customer's payment under key in the background (b, thread
 * t), waits until its record is processing, and sends the same again: 1
 * when that one was told 409 (the first still ran), 0 when it came after
 * the first had finished (a replay: the window was missed). */
static int duplicate_while_running(const char *key, const char *cust, struct bg_pay *b,
                                   pthread_t *t)
{
    *b = (struct bg_pay){.key = key, .customer = cust};
    pthread_create(t, NULL, bg_pay_main, b);
    test_wait_count(test_db_url(),
                    "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                    " AND state = 'processing'",
                    key, 1, 30, "the first request never started");
    struct test_response r;
    pay(&ta, key, cust, "20.00", &r);
    int in_use = r.status == 409;
    if (in_use)
        test_expect_error(&r, 409, "idempotency_key_in_use", NULL);
    else
        cr_assert_eq(r.status, 200, "neither 409 nor the replay: %ld %s", r.status, r.body);
    test_response_free(&r);
    return in_use;
}

/* A slow customer's payment takes 1.5 s in the simulated processor: long
 * enough to send the same key while it runs. (On a machine so slow that
 * the second request came after the first had finished, it is a replay,
 * and the case runs again with another key, up to TRIES times.) */
Test(events, a_request_told_the_key_is_in_use_leaves_no_event)
{
    enum { TRIES = 5 };
    char key[96], cust[64], txn[64], evt[64];
    struct bg_pay first;
    pthread_t t;
    test_unique(cust, sizeof cust, "cust-slow");
    int tries = 0, in_use = 0;
    while (!in_use && tries++ < TRIES) {
        test_unique(key, sizeof key, "pay");
        in_use = duplicate_while_running(key, cust, &first, &t);
        if (!in_use) {
            pthread_join(t, NULL);
            test_response_free(&first.r);
        }
    }
    cr_assert(in_use, "in %d tries the same key never came while the first still ran", TRIES);
    /* While the first still runs, nothing is completed: no event of the
     * key. (Its completion writes the event and ends the record's
     * processing in one statement; a count made while the record is still
     * processing after it came back can have seen no event.) */
    long early = events_of_key(key);
    if (test_query_long(test_db_url(),
                        "SELECT count(*) FROM idempotency_keys WHERE idempotency_key = $1"
                        " AND state = 'processing'",
                        key) == 1)
        cr_assert_eq(early, 0, "%ld events of the key before its payment completed", early);

    pthread_join(t, NULL);
    cr_assert_eq(first.r.status, 201, "%s", first.r.body);
    str_of(&first.r, "transaction_id", txn, sizeof txn);
    event_id_of(txn, evt, sizeof evt);
    test_response_free(&first.r);
    free(the_one_event(&ta, evt, "payment.succeeded"));
    long of_key = events_of_key(key);
    cr_assert_eq(of_key, 1, "events of the key: %ld, not the payment's one (the 409 none)", of_key);
}

Test(events, sixteen_concurrent_requests_with_one_key_leave_one_event)
{
    enum { N = 16 };
    char key[96], cust[64], txn[64] = "", evt[64];
    test_unique(key, sizeof key, "pay");
    test_unique(cust, sizeof cust, "cust-slow"); /* 1.5 s: the sixteen overlap */
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, N);
    static struct bg_pay b[N];
    pthread_t t[N];
    for (int i = 0; i < N; i++) {
        b[i] = (struct bg_pay){.key = key, .customer = cust, .barrier = &barrier};
        pthread_create(&t[i], NULL, bg_pay_main, &b[i]);
    }
    int created = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(t[i], NULL);
        long st = b[i].r.status;
        cr_assert(st == 201 || st == 409 || st == 200, "status %ld: %s", st, b[i].r.body);
        if (st == 201) {
            created++;
            str_of(&b[i].r, "transaction_id", txn, sizeof txn);
        }
    }
    pthread_barrier_destroy(&barrier);
    cr_assert_eq(created, 1, "%d of %d requests were charged", created, N);
    for (int i = 0; i < N; i++)
        test_response_free(&b[i].r);
    event_id_of(txn, evt, sizeof evt);
    char *event = the_one_event(&ta, evt, "payment.succeeded");
    free(event);
    struct page pg;
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 1, "one payment, one event: %s", pg.body);
    free(pg.body);
}

/* ---- reading events ------------------------------------------------------ */

Test(events, an_event_read_by_its_id_is_the_bytes_of_its_list_entry)
{
    char paid[64], declined[64], rid[64];
    new_payment(&ta, "cust", "50.00", 201, paid, sizeof paid);
    new_payment(&ta, "cust-declined", "8.00", 402, declined, sizeof declined);
    new_refund(&ta, paid, "{\"amount\":5.5,\"reason\":\"duplicate\"}", rid, sizeof rid);
    struct page pg;
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 3, "%s", pg.body);
    for (int i = 0; i < pg.count; i++) {
        char path[128];
        struct test_response r;
        snprintf(path, sizeof path, "/api/v1/events/%s", pg.ids[i]);
        get_ok(&ta, path, &r);
        cr_assert_eq(strncmp(r.content_type, "application/json", 16), 0, "%s", r.content_type);
        char *entry = entry_text(pg.body, pg.ids[i]);
        cr_assert_str_eq(r.body, entry, "GET %s is not its entry in the list:\n%s\n%s", path,
                         r.body, entry);
        free(entry);
        test_response_free(&r);
    }
    free(pg.body);

    /* an id that names no event: 404 event_not_found, whatever its shape */
    const char *unknown[] = {"evt_AAAAAAAAAAAAAAAAAAAAAAAA", "evt_nope", "txn_nope", "nope"};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        char path[128];
        struct test_response r;
        snprintf(path, sizeof path, "/api/v1/events/%s", unknown[i]);
        call(&ta, "GET", path, NULL, NULL, &r);
        test_expect_error(&r, 404, "event_not_found", NULL);
        test_response_free(&r);
    }
}

Test(events, a_tenant_sees_none_of_another_tenants_events)
{
    char a_txn[64], a_rid[64], b_txn[64], a_evt[64], a_revt[64], b_evt[64];
    new_payment(&ta, "cust", "30.00", 201, a_txn, sizeof a_txn);
    new_refund(&ta, a_txn, "{\"amount\":1}", a_rid, sizeof a_rid);
    new_payment(&tb, "cust", "40.00", 201, b_txn, sizeof b_txn);
    event_id_of(a_txn, a_evt, sizeof a_evt);
    event_id_of(a_rid, a_revt, sizeof a_revt);
    event_id_of(b_txn, b_evt, sizeof b_evt);

    struct page pg;
    list(&tb, "", &pg);
    cr_assert_eq(pg.count, 1, "tenant B sees its own event only: %s", pg.body);
    cr_assert_str_eq(pg.ids[0], b_evt);
    free(pg.body);
    const char *types[] = {"payment.succeeded", "refund.succeeded", "payment.declined"};
    for (int i = 0; i < 3; i++) {
        char q[64];
        snprintf(q, sizeof q, "?type=%s", types[i]);
        list(&tb, q, &pg);
        cr_assert_eq(events_with_id(&pg, a_evt) + events_with_id(&pg, a_revt), 0, "%s", pg.body);
        free(pg.body);
    }
    list(&ta, "", &pg);
    cr_assert_eq(pg.count, 2, "tenant A sees its two: %s", pg.body);
    cr_assert_eq(events_with_id(&pg, b_evt), 0, "%s", pg.body);
    free(pg.body);

    /* A's events by id, asked by B: not found, as an unknown one */
    const char *theirs[] = {a_evt, a_revt};
    for (int i = 0; i < 2; i++) {
        char path[128];
        struct test_response r;
        snprintf(path, sizeof path, "/api/v1/events/%s", theirs[i]);
        call(&tb, "GET", path, NULL, NULL, &r);
        test_expect_error(&r, 404, "event_not_found", NULL);
        test_response_free(&r);
        get_ok(&ta, path, &r); /* A's own */
        test_response_free(&r);
    }
    /* nor as a cursor: it names no event of B's */
    char path[160];
    struct test_response r;
    snprintf(path, sizeof path, "/api/v1/events?starting_after=%s", a_evt);
    call(&tb, "GET", path, NULL, NULL, &r);
    test_expect_error(&r, 400, "invalid_parameter", "starting_after");
    test_response_free(&r);
}

/* ---- pages and the type filter ------------------------------------------- */

Test(events, pages_of_two_walk_every_event_newest_first_and_the_type_filters_them)
{
    /* six events, made one after the other: oldest first */
    char p1[64], p2[64], p3[64], p4[64], r1[64], r2[64];
    new_payment(&ta, "cust", "10.00", 201, p1, sizeof p1);
    new_payment(&ta, "cust-declined", "11.00", 402, p2, sizeof p2);
    new_payment(&ta, "cust", "12.00", 201, p3, sizeof p3);
    new_refund(&ta, p1, "{\"amount\":2}", r1, sizeof r1);
    new_payment(&ta, "cust", "13.00", 201, p4, sizeof p4);
    new_refund(&ta, p3, "{}", r2, sizeof r2);
    const char *made[] = {p1, p2, p3, r1, p4, r2};
    const char *made_types[] = {"payment.succeeded", "payment.declined",  "payment.succeeded",
                                "refund.succeeded",  "payment.succeeded", "refund.succeeded"};
    enum { N = 6 };
    char want[N][64];
    for (int i = 0; i < N; i++) /* newest first */
        event_id_of(made[N - 1 - i], want[i], sizeof want[i]);

    /* limit=2: three pages, every event once, newest first */
    char query[160] = "?limit=2";
    int seen = 0;
    for (int page = 0; page < 3; page++) {
        struct page pg;
        list(&ta, query, &pg);
        cr_assert_eq(pg.count, 2, "page %d: %s", page, pg.body);
        for (int i = 0; i < 2; i++, seen++) {
            cr_assert_str_eq(pg.ids[i], want[seen], "event %d, newest first: %s", seen, pg.body);
            cr_assert_str_eq(pg.types[i], made_types[N - 1 - seen], "%s", pg.body);
        }
        if (page < 2) {
            cr_assert(pg.has_more, "page %d: %s", page, pg.body);
            cr_assert_str_eq(pg.next, pg.ids[1], "next_cursor is the page's last id: %s", pg.body);
            snprintf(query, sizeof query, "?limit=2&starting_after=%s", pg.next);
        } else {
            cr_assert_not(pg.has_more, "the last page: %s", pg.body);
            cr_assert_str_empty(pg.next, "next_cursor is null on the last page: %s", pg.body);
        }
        free(pg.body);
    }
    cr_assert_eq(seen, N);

    /* one type at a time: only that type, newest first, paged too */
    const char *types[] = {"payment.succeeded", "payment.declined", "refund.succeeded"};
    for (int k = 0; k < 3; k++) {
        const char *of_type[N];
        int n = 0;
        for (int i = 0; i < N; i++)
            if (strcmp(made_types[N - 1 - i], types[k]) == 0)
                of_type[n++] = want[i];
        struct page pg;
        snprintf(query, sizeof query, "?type=%s", types[k]);
        list(&ta, query, &pg);
        cr_assert_eq(pg.count, n, "%s: %s", types[k], pg.body);
        for (int i = 0; i < n; i++) {
            cr_assert_str_eq(pg.ids[i], of_type[i], "%s: %s", types[k], pg.body);
            cr_assert_str_eq(pg.types[i], types[k], "%s", pg.body);
        }
        free(pg.body);
    }
    struct page pg;
    list(&ta, "?type=payment.succeeded&limit=2", &pg);
    cr_assert_eq(pg.count, 2, "%s", pg.body);
    cr_assert(pg.has_more, "%s", pg.body);
    snprintf(query, sizeof query, "?type=payment.succeeded&limit=2&starting_after=%s", pg.next);
    free(pg.body);
    list(&ta, query, &pg);
    cr_assert_eq(pg.count, 1, "the third succeeded payment: %s", pg.body);
    cr_assert_not(pg.has_more);
    event_id_of(p1, want[0], sizeof want[0]);
    cr_assert_str_eq(pg.ids[0], want[0], "%s", pg.body);
    free(pg.body);

    /* a type that is none of the three, and other bad parameters: 400 */
    const struct {
        const char *query, *param;
    } bad[] = {
        {"?type=bogus", "type"},
        {"?type=", "type"},
        {"?type=PAYMENT.SUCCEEDED", "type"},
        {"?type=payment.succeeded.and.more.than.thirty.two.bytes", "type"},
        {"?limit=0", "limit"},
        {"?limit=501", "limit"},
        {"?starting_after=evt_AAAAAAAAAAAAAAAAAAAAAAAA", "starting_after"},
        {"?starting_after=txn_nope", "starting_after"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char path[160];
        struct test_response r;
        snprintf(path, sizeof path, "/api/v1/events%s", bad[i].query);
        call(&ta, "GET", path, NULL, NULL, &r);
        test_expect_error(&r, 400, "invalid_parameter", bad[i].param);
        test_response_free(&r);
    }
}
