/* test_webhook_endpoints.c - webhook endpoints end to end: a real server on
 * 127.0.0.1, real requests over a socket, against both stores. Every test
 * has two tenants of its own (API keys made for it), so that tests can
 * share one database. */
#define _GNU_SOURCE /* unshare */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include "host_lookup.h"
#include "support.h"

static struct test_server srv;
static enum store_kind store_kind;
/* This test's tenants, A and B, and their "Authorization: Bearer ..." headers. */
static char tenant_a[80], tenant_b[80], auth_a[128], auth_b[128];

static void start(enum store_kind kind, int allow_private, int max_endpoints)
{
    char key_a[96], key_b[96], max[16];
    struct config c;
    test_config(&c, kind);
    store_kind = kind;
    test_unique(tenant_a, sizeof tenant_a, "wh-a");
    test_unique(tenant_b, sizeof tenant_b, "wh-b");
    test_unique(key_a, sizeof key_a, "key-a");
    test_unique(key_b, sizeof key_b, "key-b");
    snprintf(c.api_keys, sizeof c.api_keys, "%s:%s,%s:%s", tenant_a, key_a, tenant_b, key_b);
    snprintf(auth_a, sizeof auth_a, "Authorization: Bearer %s", key_a);
    snprintf(auth_b, sizeof auth_b, "Authorization: Bearer %s", key_b);
    c.webhook_allow_private = allow_private;
    c.webhook_max_endpoints = max_endpoints;
    /* A server spawned from MOCKERY_TEST_SERVER_BIN (the TSan pass) gets no
     * webhook flags from test_server_spawn(): the environment carries them
     * (this test's own: Criterion runs each test in a process of its own). */
    snprintf(max, sizeof max, "%d", max_endpoints);
    setenv("MOCKERY_WEBHOOK_ALLOW_PRIVATE", allow_private ? "true" : "false", 1);
    setenv("MOCKERY_WEBHOOK_MAX_ENDPOINTS", max, 1);
    test_server_start(&srv, &c);
}
static void start_mem(void)
{
    start(STORE_KIND_MEMORY, 0, 16);
}
static void start_pg(void)
{
    start(STORE_KIND_POSTGRES, 0, 16);
}
static void start_mem_private(void)
{
    start(STORE_KIND_MEMORY, 1, 32); /* room for every private URL */
}
static void start_pg_private(void)
{
    start(STORE_KIND_POSTGRES, 1, 32);
}
static void start_mem_two(void)
{
    start(STORE_KIND_MEMORY, 0, 2);
}
static void start_pg_two(void)
{
    start(STORE_KIND_POSTGRES, 0, 2);
}
static void stop(void)
{
    test_server_stop(&srv);
}

/* The test once on each store, its server started by mem_init / pg_init. */
#define BOTH_ON(name, mem_init, pg_init)                                                           \
    static void name(void);                                                                        \
    Test(webhook_endpoints_mem, name, .init = mem_init, .fini = stop, .timeout = 60)               \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    Test(webhook_endpoints_pg, name, .init = pg_init, .fini = stop, .timeout = 60)                 \
    {                                                                                              \
        name();                                                                                    \
    }                                                                                              \
    static void name(void)
#define BOTH(name) BOTH_ON(name, start_mem, start_pg)

static void request(const char *method, const char *path, const char *const *headers,
                    const char *body, struct test_response *r)
{
    char u[256];
    snprintf(u, sizeof u, "%s%s", srv.base, path);
    test_http(method, u, headers, body, body ? strlen(body) : 0, r);
}

/* POST /api/v1/webhook_endpoints as the tenant of auth. */
static void create(const char *auth, const char *body, struct test_response *r)
{
    const char *h[] = {"Content-Type: application/json", auth, NULL};
    request("POST", "/api/v1/webhook_endpoints", h, body, r);
}

/* A new endpoint at url (every type) for the tenant of auth; fails the test
 * unless 201. Its id into id. */
static void create_ok(const char *auth, const char *url, char *id, size_t len)
{
    char body[2300];
    struct test_response r;
    snprintf(body, sizeof body, "{\"url\":\"%s\"}", url);
    create(auth, body, &r);
    cr_assert_eq(r.status, 201, "%s: %ld %s", url, r.status, r.body);
    cJSON *o = test_json(&r);
    snprintf(id, len, "%s", test_json_str(o, "id"));
    cJSON_Delete(o);
    test_response_free(&r);
}

/* GET /api/v1/webhook_endpoints as the tenant of auth; fails the test unless 200. */
static void list(const char *auth, struct test_response *r)
{
    const char *h[] = {auth, NULL};
    request("GET", "/api/v1/webhook_endpoints", h, NULL, r);
    cr_assert_eq(r->status, 200, "%s", r->body);
}

/* The list as JSON, checked against its count (cJSON_Delete it). */
static cJSON *list_json(const char *auth)
{
    struct test_response r;
    list(auth, &r);
    cJSON *o = test_json(&r);
    cJSON *items = cJSON_GetObjectItemCaseSensitive(o, "webhook_endpoints");
    cr_assert(cJSON_IsArray(items), "%s", r.body);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(o, "count")->valueint, cJSON_GetArraySize(items),
                 "%s", r.body);
    test_response_free(&r);
    return o;
}

static int list_count(const char *auth)
{
    cJSON *o = list_json(auth);
    int n = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(o, "webhook_endpoints"));
    cJSON_Delete(o);
    return n;
}

/* The listed endpoint's id at position i. */
static const char *listed_id(const cJSON *list, int i)
{
    const cJSON *item =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(list, "webhook_endpoints"), i);
    cr_assert_not_null(item, "no endpoint %d in the list", i);
    return test_json_str(item, "id");
}

static void delete_endpoint(const char *auth, const char *id, struct test_response *r)
{
    char path[160];
    snprintf(path, sizeof path, "/api/v1/webhook_endpoints/%s", id);
    const char *h[] = {auth, NULL};
    request("DELETE", path, h, NULL, r);
}

/* The tenant's rows in webhook_endpoints (PostgreSQL). */
static long rows_of(const char *tenant)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM webhook_endpoints WHERE tenant_id = $1", tenant);
}

/* A member's value as compact JSON text ("null", "[...]"): free it. */
static char *member_text(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert_not_null(v, "no %s", name);
    return cJSON_PrintUnformatted(v);
}

static int url_safe(const char *s)
{
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") ==
           strlen(s);
}

BOTH(an_endpoint_is_made_with_a_secret_shown_once_and_listed_without_it)
{
    struct test_response a, b;
    create(auth_a,
           "{\"url\":\"https://8.8.8.8/hooks/mockery\","
           "\"events\":[\"payment.succeeded\",\"refund.succeeded\"]}",
           &a);
    cr_assert_eq(a.status, 201, "%s", a.body);
    cr_assert_eq(strncmp(a.content_type, "application/json", 16), 0, "%s", a.content_type);
    cJSON *made = test_json(&a);
    cr_assert_eq(cJSON_GetArraySize(made), 5, "id, url, events, secret, created_at: %s", a.body);
    const char *id = test_json_str(made, "id");
    const char *secret = test_json_str(made, "secret");
    cr_assert_eq(strlen(id), 27, "%s", id);
    cr_assert_eq(strncmp(id, "we_", 3), 0, "%s", id);
    cr_assert(url_safe(id + 3), "%s", id);
    cr_assert_eq(strlen(secret), 30, "%s", secret);
    cr_assert_eq(strncmp(secret, "whsec_", 6), 0, "%s", secret);
    cr_assert(url_safe(secret + 6), "%s", secret);
    cr_assert_str_eq(test_json_str(made, "url"), "https://8.8.8.8/hooks/mockery");
    char *events = member_text(made, "events");
    cr_assert_str_eq(events, "[\"payment.succeeded\",\"refund.succeeded\"]");
    free(events);
    const char *created = test_json_str(made, "created_at");
    cr_assert_eq(strlen(created), 27, "%s", created);
    cr_assert_eq(created[26], 'Z', "%s", created);

    /* a second one: an id and a secret of its own */
    create(auth_a, "{\"url\":\"http://[2606:4700:4700::1111]:8443/second\"}", &b);
    cr_assert_eq(b.status, 201, "%s", b.body);
    cJSON *second = test_json(&b);
    cr_assert_str_neq(test_json_str(second, "id"), id);
    cr_assert_str_neq(test_json_str(second, "secret"), secret);

    /* the list: oldest first, as made, never a secret */
    struct test_response l;
    list(auth_a, &l);
    cr_assert_null(strstr(l.body, "secret"), "%s", l.body);
    cr_assert_null(strstr(l.body, "whsec_"), "%s", l.body);
    cJSON *lo = test_json(&l);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(lo, "count")->valueint, 2, "%s", l.body);
    const cJSON *made_ones[] = {made, second};
    for (int i = 0; i < 2; i++) {
        const cJSON *item =
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(lo, "webhook_endpoints"), i);
        cr_assert_eq(cJSON_GetArraySize(item), 4, "id, url, events, created_at: %s", l.body);
        const char *const same[] = {"id", "url", "events", "created_at"};
        for (size_t k = 0; k < sizeof same / sizeof same[0]; k++) {
            char *want = member_text(made_ones[i], same[k]), *got = member_text(item, same[k]);
            cr_assert_str_eq(got, want, "endpoint %d, %s", i, same[k]);
            free(want);
            free(got);
        }
    }

    /* the secret kept is the one shown, under this tenant */
    if (store_kind == STORE_KIND_POSTGRES) {
        char kept[64], tenant[96];
        test_query_text(test_db_url(),
                        "SELECT secret FROM webhook_endpoints WHERE endpoint_id = $1", id, kept,
                        sizeof kept);
        cr_assert_str_eq(kept, secret);
        test_query_text(test_db_url(),
                        "SELECT tenant_id FROM webhook_endpoints WHERE endpoint_id = $1", id,
                        tenant, sizeof tenant);
        cr_assert_str_eq(tenant, tenant_a);
    }
    cJSON_Delete(lo);
    cJSON_Delete(second);
    cJSON_Delete(made);
    test_response_free(&l);
    test_response_free(&b);
    test_response_free(&a);
}

BOTH(events_absent_or_null_mean_every_type_and_a_list_comes_back_as_sent)
{
    static const struct {
        const char *body, *events;
    } cases[] = {
        {"{\"url\":\"https://8.8.8.8/all\"}", "null"},
        {"{\"url\":\"https://8.8.8.8/all-null\",\"events\":null}", "null"},
        {"{\"url\":\"https://8.8.8.8/"
         "two\",\"events\":[\"refund.succeeded\",\"payment.succeeded\"]}",
         "[\"refund.succeeded\",\"payment.succeeded\"]"},
        {"{\"url\":\"https://8.8.8.8/one\",\"events\":[\"payment.declined\"]}",
         "[\"payment.declined\"]"},
        {"{\"url\":\"https://8.8.8.8/three\",\"events\":[\"payment.declined\","
         "\"payment.succeeded\",\"refund.succeeded\"]}",
         "[\"payment.declined\",\"payment.succeeded\",\"refund.succeeded\"]"},
    };
    const size_t n = sizeof cases / sizeof cases[0];
    for (size_t i = 0; i < n; i++) {
        struct test_response r;
        create(auth_a, cases[i].body, &r);
        cr_assert_eq(r.status, 201, "%s: %s", cases[i].body, r.body);
        cJSON *o = test_json(&r);
        char *events = member_text(o, "events");
        cr_assert_str_eq(events, cases[i].events, "%s", cases[i].body);
        if (store_kind == STORE_KIND_POSTGRES) {
            char kept[256];
            test_query_text(test_db_url(),
                            "SELECT coalesce(array_to_json(events)::text, 'null')"
                            " FROM webhook_endpoints WHERE endpoint_id = $1",
                            test_json_str(o, "id"), kept, sizeof kept);
            cr_assert_str_eq(kept, cases[i].events, "kept for %s", cases[i].body);
        }
        free(events);
        cJSON_Delete(o);
        test_response_free(&r);
    }
    /* the list says the same */
    cJSON *l = list_json(auth_a);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(l, "webhook_endpoints")),
                 (int)n);
    for (size_t i = 0; i < n; i++) {
        char *events = member_text(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "webhook_endpoints"), (int)i),
            "events");
        cr_assert_str_eq(events, cases[i].events, "listed %zu", i);
        free(events);
    }
    cJSON_Delete(l);
}

BOTH(every_refusal_says_what_is_wrong_and_keeps_nothing)
{
    char kept[64];
    create_ok(auth_a, "https://8.8.8.8/kept", kept, sizeof kept);
    struct test_response before;
    list(auth_a, &before);

    /* a URL one byte too long: 2,049 bytes */
    char long_url[2050], too_long[2100];
    int at = snprintf(long_url, sizeof long_url, "https://8.8.8.8/");
    memset(long_url + at, 'a', sizeof long_url - 1 - (size_t)at);
    long_url[2049] = '\0';
    snprintf(too_long, sizeof too_long, "{\"url\":\"%s\"}", long_url);
    const char *const base = "{\"url\":\"https://8.8.8.8/hooks\",";
    char ev[16][160];
    const char *const bad_events[] = {
        "\"events\":[]",
        "\"events\":\"payment.succeeded\"",
        "\"events\":[\"payment.failed\"]",
        "\"events\":[\"Payment.Succeeded\"]",
        "\"events\":[\"payment.succeeded\",\"payment.succeeded\"]",
        "\"events\":[\"payment.succeeded\",null]",
        "\"events\":[1]",
        "\"events\":{}",
        "\"events\":true",
    };
    const size_t n_events = sizeof bad_events / sizeof bad_events[0];
    for (size_t i = 0; i < n_events; i++)
        snprintf(ev[i], sizeof ev[i], "%s%s}", base, bad_events[i]);

    const struct {
        const char *body;
        long status;
        const char *code, *param;
    } refused[] = {
        {"{\"url\":\"ftp://8.8.8.8/hooks\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"file:///etc/passwd\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"8.8.8.8/hooks\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"https://\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"https://user:secret@8.8.8.8/hooks\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"https://user@8.8.8.8/hooks\"}", 422, "invalid_url", "url"},
        {"{\"url\":\"https://:secret@8.8.8.8/hooks\"}", 422, "invalid_url", "url"},
        {too_long, 422, "invalid_url", "url"},
        {"{\"url\":\"https://nothing-here.invalid/hooks\"}", 422, "invalid_url", "url"},
        {"{}", 422, "invalid_url", "url"},
        {"{\"url\":null}", 422, "invalid_url", "url"},
        {"{\"url\":42}", 422, "invalid_url", "url"},
        {"{\"url\":\"\"}", 422, "invalid_url", "url"},
        {"{\"url\":[\"https://8.8.8.8/hooks\"]}", 422, "invalid_url", "url"},
        {"{\"url\":\"http://10.0.0.1/hooks\"}", 422, "url_not_allowed", "url"},
        {"{\"url\":\"https://8.8.8.8/hooks\",\"secret\":\"whsec_mine\"}", 422, "unknown_field",
         "secret"},
        {"{\"url\":\"https://8.8.8.8/hooks\",\"id\":\"we_mine\"}", 422, "unknown_field", "id"},
        {"{\"url\":\"https://8.8.8.8/hooks\"", 400, "invalid_json", NULL},
        {"[]", 400, "invalid_json", NULL},
        {"{\"url\":\"https://8.8.8.8/hooks\",\"url\":\"http://10.0.0.1/\"}", 400, "invalid_json",
         NULL},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        struct test_response r;
        create(auth_a, refused[i].body, &r);
        test_expect_error(&r, refused[i].status, refused[i].code, refused[i].param);
        test_response_free(&r);
    }
    for (size_t i = 0; i < n_events; i++) {
        struct test_response r;
        create(auth_a, ev[i], &r);
        test_expect_error(&r, 422, "invalid_events", "events");
        test_response_free(&r);
    }

    /* a body of another type, or of none said: 415 */
    const char *const types[] = {"Content-Type: text/plain",
                                 "Content-Type: application/x-www-form-urlencoded",
                                 NULL /* no Content-Type */};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        const char *h[] = {auth_a, types[i], NULL};
        struct test_response r;
        request("POST", "/api/v1/webhook_endpoints", h, "{\"url\":\"https://8.8.8.8/hooks\"}", &r);
        test_expect_error(&r, 415, "unsupported_media_type", NULL);
        test_response_free(&r);
    }

    /* nothing of that was kept */
    struct test_response after;
    list(auth_a, &after);
    cr_assert_str_eq(after.body, before.body);
    if (store_kind == STORE_KIND_POSTGRES)
        cr_assert_eq(rows_of(tenant_a), 1);
    test_response_free(&after);
    test_response_free(&before);
}

BOTH(a_url_of_2048_bytes_is_kept_whole)
{
    char url[2049], body[2100], id[64];
    int at = snprintf(url, sizeof url, "https://8.8.8.8/");
    memset(url + at, 'x', sizeof url - 1 - (size_t)at);
    url[2048] = '\0';
    snprintf(body, sizeof body, "{\"url\":\"%s\"}", url);
    struct test_response r;
    create(auth_a, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cJSON *o = test_json(&r);
    cr_assert_str_eq(test_json_str(o, "url"), url);
    snprintf(id, sizeof id, "%s", test_json_str(o, "id"));
    cJSON *l = list_json(auth_a);
    cr_assert_str_eq(listed_id(l, 0), id);
    cr_assert_str_eq(
        test_json_str(
            cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(l, "webhook_endpoints"), 0), "url"),
        url);
    cJSON_Delete(l);
    cJSON_Delete(o);
    test_response_free(&r);
}

/* Hosts on the operator's own network, each a way to write one. */
static const char *const PRIVATE_URLS[] = {
    "http://127.0.0.1/hooks",
    "http://localhost:8080/hooks", /* a name that resolves to loopback */
    "https://LocalHost/hooks",
    "http://10.0.0.1/hooks",
    "http://[::1]/hooks",
    "http://169.254.169.254/latest/meta-data/", /* cloud metadata */
    "http://[::ffff:127.0.0.1]/hooks",
    "http://[::ffff:a9fe:a9fe]/latest/meta-data/", /* metadata, IPv4-mapped in hex */
    "http://192.168.1.1/hooks",
    "http://172.16.0.1/hooks",
    "http://100.64.0.1/hooks",
    "http://0.0.0.0:8080/hooks",
    "http://[fe80::1]/hooks",
    "http://[fd00::1]/hooks",
    "http://224.0.0.1/hooks",
    "http://2130706433/hooks", /* 127.0.0.1 as one number */
    "http://127.1/hooks",
};
#define N_PRIVATE (sizeof PRIVATE_URLS / sizeof PRIVATE_URLS[0])

BOTH(private_addresses_are_refused)
{
    for (size_t i = 0; i < N_PRIVATE; i++) {
        char body[256];
        struct test_response r;
        snprintf(body, sizeof body, "{\"url\":\"%s\",\"events\":[\"payment.succeeded\"]}",
                 PRIVATE_URLS[i]);
        create(auth_a, body, &r);
        cr_assert_eq(r.status, 422, "%s: %ld %s", PRIVATE_URLS[i], r.status, r.body);
        test_expect_error(&r, 422, "url_not_allowed", "url");
        test_response_free(&r);
    }
    cr_assert_eq(list_count(auth_a), 0);
    if (store_kind == STORE_KIND_POSTGRES)
        cr_assert_eq(rows_of(tenant_a), 0);
    /* public addresses, by the same server */
    char id[64];
    create_ok(auth_a, "https://1.1.1.1/hooks", id, sizeof id);
    create_ok(auth_a, "https://[2606:4700:4700::1111]/hooks", id, sizeof id);
    create_ok(auth_a, "https://[::ffff:8.8.8.8]/hooks", id, sizeof id);
    cr_assert_eq(list_count(auth_a), 3);
}

BOTH_ON(private_addresses_are_kept_by_a_server_that_allows_them, start_mem_private,
        start_pg_private)
{
    for (size_t i = 0; i < N_PRIVATE; i++) {
        char id[64];
        create_ok(auth_a, PRIVATE_URLS[i], id, sizeof id);
    }
    cJSON *l = list_json(auth_a);
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(l, "webhook_endpoints");
    cr_assert_eq(cJSON_GetArraySize(items), (int)N_PRIVATE);
    for (size_t i = 0; i < N_PRIVATE; i++)
        cr_assert_str_eq(test_json_str(cJSON_GetArrayItem(items, (int)i), "url"), PRIVATE_URLS[i]);
    cJSON_Delete(l);
}

BOTH(another_tenant_neither_sees_nor_deletes_an_endpoint)
{
    char mine[64], theirs[64];
    struct test_response r;
    create_ok(auth_a, "https://8.8.8.8/a", mine, sizeof mine);
    cr_assert_eq(list_count(auth_b), 0);
    create_ok(auth_b, "https://8.8.8.8/b", theirs, sizeof theirs);

    cJSON *l = list_json(auth_a);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(l, "count")->valueint, 1);
    cr_assert_str_eq(listed_id(l, 0), mine);
    cJSON_Delete(l);

    /* B deleting A's: as if there were none, and A's stays */
    delete_endpoint(auth_b, mine, &r);
    test_expect_error(&r, 404, "webhook_endpoint_not_found", NULL);
    test_response_free(&r);
    cr_assert_eq(list_count(auth_a), 1);
    if (store_kind == STORE_KIND_POSTGRES)
        cr_assert_eq(rows_of(tenant_a), 1);

    /* A deletes its own: 200, then it is gone and a second DELETE is 404 */
    char want[128];
    delete_endpoint(auth_a, mine, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    snprintf(want, sizeof want, "{\"id\":\"%s\",\"deleted\":true}", mine);
    cr_assert_str_eq(r.body, want);
    test_response_free(&r);
    cr_assert_eq(list_count(auth_a), 0);
    if (store_kind == STORE_KIND_POSTGRES)
        cr_assert_eq(rows_of(tenant_a), 0);
    delete_endpoint(auth_a, mine, &r);
    test_expect_error(&r, 404, "webhook_endpoint_not_found", NULL);
    test_response_free(&r);

    /* A cannot delete B's either; B's is still there */
    delete_endpoint(auth_a, theirs, &r);
    test_expect_error(&r, 404, "webhook_endpoint_not_found", NULL);
    test_response_free(&r);
    l = list_json(auth_b);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(l, "count")->valueint, 1);
    cr_assert_str_eq(listed_id(l, 0), theirs);
    cJSON_Delete(l);

    /* ids that were never made */
    const char *const never[] = {"we_doesnotexist", "we_", "nope", "txn_123"};
    for (size_t i = 0; i < sizeof never / sizeof never[0]; i++) {
        delete_endpoint(auth_a, never[i], &r);
        test_expect_error(&r, 404, "webhook_endpoint_not_found", NULL);
        test_response_free(&r);
    }

    /* and no key at all: 401, for every method */
    const char *none[] = {NULL};
    request("GET", "/api/v1/webhook_endpoints", none, NULL, &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    const char *json_only[] = {"Content-Type: application/json", NULL};
    request("POST", "/api/v1/webhook_endpoints", json_only, "{\"url\":\"https://8.8.8.8/x\"}", &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    char path[160];
    snprintf(path, sizeof path, "/api/v1/webhook_endpoints/%s", theirs);
    request("DELETE", path, none, NULL, &r);
    test_expect_error(&r, 401, "unauthorized", NULL);
    test_response_free(&r);
    cr_assert_eq(list_count(auth_b), 1);
}

BOTH_ON(a_tenant_at_its_limit_must_delete_one_first, start_mem_two, start_pg_two)
{
    char first[64], second[64], third[64];
    struct test_response r;
    create_ok(auth_a, "https://8.8.8.8/1", first, sizeof first);
    create_ok(auth_a, "https://8.8.8.8/2", second, sizeof second);
    create(auth_a, "{\"url\":\"https://8.8.8.8/3\"}", &r);
    test_expect_error(&r, 422, "endpoint_limit_reached", NULL);
    test_response_free(&r);
    cr_assert_eq(list_count(auth_a), 2);
    if (store_kind == STORE_KIND_POSTGRES)
        cr_assert_eq(rows_of(tenant_a), 2);

    /* the limit is each tenant's own */
    char b1[64];
    create_ok(auth_b, "https://8.8.8.8/b1", b1, sizeof b1);

    /* one deleted: one more can be made, and then no more */
    delete_endpoint(auth_a, first, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    test_response_free(&r);
    create_ok(auth_a, "https://8.8.8.8/3", third, sizeof third);
    create(auth_a, "{\"url\":\"https://8.8.8.8/4\"}", &r);
    test_expect_error(&r, 422, "endpoint_limit_reached", NULL);
    test_response_free(&r);
    cJSON *l = list_json(auth_a);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(l, "count")->valueint, 2);
    cr_assert_str_eq(listed_id(l, 0), second);
    cr_assert_str_eq(listed_id(l, 1), third);
    cJSON_Delete(l);
}

/* Creates at once: each thread waits at the barrier, then asks for one
 * endpoint; its status into status. */
struct racer {
    pthread_barrier_t *go;
    int n;
    long status;
};

static void *race_create(void *arg)
{
    struct racer *r = arg;
    char body[64];
    struct test_response res;
    snprintf(body, sizeof body, "{\"url\":\"https://8.8.8.8/race-%d\"}", r->n);
    pthread_barrier_wait(r->go);
    create(auth_a, body, &res);
    r->status = res.status;
    test_response_free(&res);
    return NULL;
}

/* The limit holds against creates that arrive together (PostgreSQL's
 * count and insert once let a few through side by side): in each round,
 * 16 at once at a limit of 2, exactly 2 made and the rest refused; then
 * both deleted for the next round. */
BOTH_ON(creates_at_once_never_pass_the_limit, start_mem_two, start_pg_two)
{
    enum { RACERS = 16, ROUNDS = 8 };
    for (int round = 0; round < ROUNDS; round++) {
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, RACERS);
        pthread_t t[RACERS];
        struct racer r[RACERS];
        for (int i = 0; i < RACERS; i++) {
            r[i] = (struct racer){&go, round * RACERS + i, 0};
            pthread_create(&t[i], NULL, race_create, &r[i]);
        }
        int made = 0;
        for (int i = 0; i < RACERS; i++) {
            pthread_join(t[i], NULL);
            cr_assert(r[i].status == 201 || r[i].status == 422, "round %d: %ld", round,
                      r[i].status);
            made += r[i].status == 201;
        }
        pthread_barrier_destroy(&go);
        cr_assert_eq(made, 2, "round %d: %d made at a limit of 2", round, made);
        cJSON *l = list_json(auth_a);
        cr_assert_eq(cJSON_GetObjectItemCaseSensitive(l, "count")->valueint, 2);
        for (int i = 0; i < 2; i++) {
            struct test_response d;
            delete_endpoint(auth_a, listed_id(l, i), &d);
            cr_assert_eq(d.status, 200, "%s", d.body);
            test_response_free(&d);
        }
        cJSON_Delete(l);
    }
}

BOTH(sixteen_endpoints_by_default_and_not_seventeen)
{
    for (int i = 0; i < 16; i++) {
        char url[64], id[64];
        snprintf(url, sizeof url, "https://8.8.8.8/%d", i);
        create_ok(auth_a, url, id, sizeof id);
    }
    struct test_response r;
    create(auth_a, "{\"url\":\"https://8.8.8.8/16\"}", &r);
    test_expect_error(&r, 422, "endpoint_limit_reached", NULL);
    test_response_free(&r);
    cr_assert_eq(list_count(auth_a), 16);
}

/* ---- a host whose lookup does not answer ---------------------------------- */

/* The nameserver of the DNS test: nothing else listens on this address. */
#define DNS_ADDR "127.0.0.9"

/* Binds a file of this text over target (in this mount namespace only). */
static void bind_text(const char *target, const char *text)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/mockery-etc.%d.XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    cr_assert_eq(mount(path, target, NULL, MS_BIND, NULL), 0, "binding %s over %s: %s", path,
                 target, strerror(errno));
    unlink(path); /* the mount keeps it */
}

/* Gives this test's process (Criterion runs each test in one of its own)
 * and its children a resolver that asks only DNS_ADDR, waiting 30 s for an
 * answer: a mount namespace of its own, a resolv.conf bound over
 * /etc/resolv.conf and an nsswitch.conf that looks names up in files and
 * DNS alone (no nscd, no other service in the way). Needs root, as the
 * test suite does. */
static void resolve_through_test_dns(void)
{
    cr_assert_eq(unshare(CLONE_NEWNS), 0, "unshare(CLONE_NEWNS): %s (the test needs root)",
                 strerror(errno));
    cr_assert_eq(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL), 0, "%s", strerror(errno));
    bind_text("/etc/resolv.conf", "nameserver " DNS_ADDR "\noptions timeout:30 attempts:1\n");
    bind_text("/etc/nsswitch.conf", "hosts: files dns\n");
}

/* Answers a DNS query "no such name". */
static void answer_no_such_name(int fd, unsigned char *q, size_t len, const struct sockaddr_in *to)
{
    q[2] |= 0x84;                                     /* a response, authoritative */
    q[3] = (unsigned char)((q[3] & 0x70) | 0x80 | 3); /* recursion available, NXDOMAIN */
    sendto(fd, q, len, 0, (const struct sockaddr *)to, sizeof *to);
}

/* Answers every query on fd "no such name" until stop. */
struct answerer {
    int fd;
    atomic_int stop;
};

static void *answerer_main(void *arg)
{
    struct answerer *a = arg;
    while (!atomic_load(&a->stop)) {
        struct pollfd p = {.fd = a->fd, .events = POLLIN};
        if (poll(&p, 1, 50) <= 0)
            continue;
        unsigned char q[512];
        struct sockaddr_in from;
        socklen_t fl = sizeof from;
        ssize_t n = recvfrom(a->fd, q, sizeof q, 0, (struct sockaddr *)&from, &fl);
        if (n >= 12)
            answer_no_such_name(a->fd, q, (size_t)n, &from);
    }
    return NULL;
}

struct slow_create {
    const char *auth;
    long status;
    char retry_after[16];
    char body[512];
    double took;
};

static void *slow_create_main(void *arg)
{
    struct slow_create *c = arg;
    struct test_response r;
    double t0 = test_now_s();
    create(c->auth, "{\"url\":\"https://hooks.example.com/slow\"}", &r);
    c->took = test_now_s() - t0;
    c->status = r.status;
    snprintf(c->retry_after, sizeof c->retry_after, "%s", r.retry_after);
    snprintf(c->body, sizeof c->body, "%s", r.body);
    if (r.status == 503)
        test_expect_error(&r, 503, "dns_unavailable", "url");
    test_response_free(&r);
    return NULL;
}

/* The test nameserver's queries, kept to be answered at the end. */
enum { QUERIES = 64 };
struct queries {
    int fd;
    int n;
    struct {
        struct sockaddr_in from;
        unsigned char q[512];
        ssize_t len;
    } q[QUERIES];
    int ports[HOST_LOOKUPS_MAX], nports; /* each lookup asks from a socket of its own */
};

/* Reads queries until lookups distinct lookups have asked (bounded). */
static void wait_lookups(struct queries *qs, int lookups)
{
    double t0 = test_now_s();
    while (qs->nports < lookups) {
        cr_assert_lt(test_now_s() - t0, 30, "%d of %d lookups seen after 30 s", qs->nports,
                     lookups);
        struct pollfd p = {.fd = qs->fd, .events = POLLIN};
        if (poll(&p, 1, 100) <= 0 || qs->n == QUERIES)
            continue;
        socklen_t fl = sizeof qs->q[qs->n].from;
        qs->q[qs->n].len = recvfrom(qs->fd, qs->q[qs->n].q, sizeof qs->q[qs->n].q, 0,
                                    (struct sockaddr *)&qs->q[qs->n].from, &fl);
        if (qs->q[qs->n].len < 12)
            continue;
        int port = ntohs(qs->q[qs->n].from.sin_port), seen = 0;
        for (int i = 0; i < qs->nports; i++)
            seen |= qs->ports[i] == port;
        if (!seen && qs->nports < HOST_LOOKUPS_MAX)
            qs->ports[qs->nports++] = port;
        qs->n++;
    }
}

enum { DNS_TENANTS = HOST_LOOKUPS_MAX / HOST_LOOKUPS_PER_OWNER + 1 };
static char dns_auth[DNS_TENANTS][128];

/* A create asks the resolver on a request's worker: a nameserver that does
 * not answer must neither hold the worker longer than the bound (5 s), nor
 * let slow names hold more than HOST_LOOKUPS_MAX (8) workers, nor let one
 * tenant's slow names take more than HOST_LOOKUPS_PER_OWNER (2) of those
 * places. Through a test nameserver: none listening - a temporary
 * failure, 503 dns_unavailable at once; one that reads and never answers -
 * a tenant's 2 creates wait, its third is refused at once while places are
 * free; 3 more tenants' 2 each fill the 8; a fifth tenant's is refused at
 * once and the worker pool still answers; the 8 are 503 after their 5 s;
 * then the nameserver answers every query "no such name", the lookups left
 * behind end, and a create is 422 invalid_url again. */
Test(webhook_endpoints_dns, a_nameserver_that_never_answers_holds_no_worker, .fini = stop,
     .timeout = 120)
{
    resolve_through_test_dns();
    char max[16], keys[1024] = "";
    struct config c;
    test_config(&c, STORE_KIND_MEMORY);
    for (int i = 0; i < DNS_TENANTS; i++) {
        char tenant[80], key[96];
        test_unique(tenant, sizeof tenant, "wh-dns");
        test_unique(key, sizeof key, "key-dns");
        snprintf(keys + strlen(keys), sizeof keys - strlen(keys), "%s%s:%s", i ? "," : "", tenant,
                 key);
        snprintf(dns_auth[i], sizeof dns_auth[i], "Authorization: Bearer %s", key);
    }
    snprintf(c.api_keys, sizeof c.api_keys, "%s", keys);
    c.webhook_max_endpoints = 16;
    snprintf(max, sizeof max, "%d", c.webhook_max_endpoints);
    setenv("MOCKERY_WEBHOOK_ALLOW_PRIVATE", "false", 1);
    setenv("MOCKERY_WEBHOOK_MAX_ENDPOINTS", max, 1);
    const char *bin = getenv("MOCKERY_TEST_SERVER_BIN");
    memset(&srv, 0, sizeof srv);
    test_server_spawn(&srv, &c, bin && *bin ? bin : MOCKERY_SERVER_BIN);

    /* nothing listening: refused, a temporary failure */
    struct slow_create first = {.auth = dns_auth[0]};
    slow_create_main(&first);
    cr_assert_eq(first.status, 503);
    cr_assert_str_eq(first.retry_after, "1");

    /* a nameserver that reads and never answers */
    static struct queries qs;
    qs.fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in at = {.sin_family = AF_INET, .sin_port = htons(53)};
    inet_pton(AF_INET, DNS_ADDR, &at.sin_addr);
    cr_assert_eq(bind(qs.fd, (struct sockaddr *)&at, sizeof at), 0, "%s", strerror(errno));
    enum { HELD = HOST_LOOKUPS_MAX };
    pthread_t t[HELD];
    struct slow_create held[HELD];
    /* the first tenant's two, then one more of its own, refused at once */
    for (int i = 0; i < HELD; i++)
        held[i] = (struct slow_create){.auth = dns_auth[i / HOST_LOOKUPS_PER_OWNER]};
    for (int i = 0; i < HOST_LOOKUPS_PER_OWNER; i++)
        pthread_create(&t[i], NULL, slow_create_main, &held[i]);
    wait_lookups(&qs, HOST_LOOKUPS_PER_OWNER);
    struct slow_create one_more = {.auth = dns_auth[0]};
    slow_create_main(&one_more);
    cr_assert_eq(one_more.status, 503, "a tenant's lookup beside its %d under way",
                 HOST_LOOKUPS_PER_OWNER);
    cr_assert(strstr(one_more.body, "too many lookups of yours under way"), "%s", one_more.body);
    /* the other tenants' fill every place: one more of anyone's is refused
     * at once, and the workers still answer */
    for (int i = HOST_LOOKUPS_PER_OWNER; i < HELD; i++)
        pthread_create(&t[i], NULL, slow_create_main, &held[i]);
    wait_lookups(&qs, HELD);
    one_more = (struct slow_create){.auth = dns_auth[DNS_TENANTS - 1]};
    slow_create_main(&one_more);
    cr_assert_eq(one_more.status, 503, "one more lookup beside %d under way", HELD);
    cr_assert(strstr(one_more.body, "too many lookups under way"), "%s", one_more.body);
    struct test_response r;
    const char *h[] = {dns_auth[0], NULL};
    request("GET", "/api/v1/webhook_endpoints", h, NULL, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    test_response_free(&r);
    for (int i = 0; i < HELD; i++) {
        pthread_join(t[i], NULL);
        cr_assert_eq(held[i].status, 503, "create %d: %ld", i, held[i].status);
        cr_assert(strstr(held[i].body, "no answer within the bound"), "%s", held[i].body);
        cr_assert_geq(held[i].took, 4.9, "create %d answered after %.2f s, before the bound", i,
                      held[i].took);
    }
    /* The nameserver answers "no such name" from now on, the queries kept
     * too: the lookups left behind end and free their places. */
    for (int i = 0; i < qs.n; i++)
        answer_no_such_name(qs.fd, qs.q[i].q, (size_t)qs.q[i].len, &qs.q[i].from);
    struct answerer ans = {qs.fd, 0};
    pthread_t at_t;
    pthread_create(&at_t, NULL, answerer_main, &ans);
    double t0 = test_now_s();
    for (;;) {
        create(dns_auth[DNS_TENANTS - 1], "{\"url\":\"https://hooks.example.com/again\"}", &r);
        if (r.status != 503)
            break;
        test_response_free(&r);
        cr_assert_lt(test_now_s() - t0, 30, "the lookups left behind never ended");
        test_sleep_ms(50);
    }
    atomic_store(&ans.stop, 1);
    pthread_join(at_t, NULL);
    test_expect_error(&r, 422, "invalid_url", "url");
    test_response_free(&r);
    close(qs.fd);
}

BOTH(a_wrong_method_is_405_and_says_which_are_allowed)
{
    char id[64], path[160];
    create_ok(auth_a, "https://8.8.8.8/hooks", id, sizeof id);
    snprintf(path, sizeof path, "/api/v1/webhook_endpoints/%s", id);
    const char *h[] = {auth_a, "Content-Type: application/json", NULL};
    const struct {
        const char *method, *path, *allow;
    } wrong[] = {
        {"DELETE", "/api/v1/webhook_endpoints", "GET, POST"},
        {"PUT", "/api/v1/webhook_endpoints", "GET, POST"},
        {"GET", path, "DELETE"},
        {"POST", path, "DELETE"},
        {"PUT", path, "DELETE"},
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        struct test_response r;
        request(wrong[i].method, wrong[i].path, h,
                strcmp(wrong[i].method, "GET") == 0 || strcmp(wrong[i].method, "DELETE") == 0
                    ? NULL
                    : "{\"url\":\"https://8.8.8.8/other\"}",
                &r);
        test_expect_error(&r, 405, "method_not_allowed", NULL);
        cr_assert_str_eq(r.allow, wrong[i].allow, "%s %s", wrong[i].method, wrong[i].path);
        test_response_free(&r);
    }
    /* none of them changed anything */
    cJSON *l = list_json(auth_a);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(l, "count")->valueint, 1);
    cr_assert_str_eq(listed_id(l, 0), id);
    cJSON_Delete(l);
}
