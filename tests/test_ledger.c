/* test_ledger.c - the real mockery-acquirer process (acquirer/) over real
 * loopback sockets against the real PostgreSQL test database: charges and
 * refunds run once per downstream Idempotency-Key, each fault acted out by
 * flag, bad input refused with nothing recorded, the process's flags and
 * exit codes - every verdict read back from the acquirer's own ledger
 * (GET /v1/charges?reference=, GET /v1/refunds?charge_id=) and, where it
 * says more, from its tables. Then the service's acquirer client
 * (server/ops/acquirer.c) against that real program: what each answer, and
 * each lost one, means for the money.
 *
 * No verdict depends on the machine's speed: a held answer is held far
 * past the client's timeout (3000 ms against 300 ms), and a retry that
 * finds the first request still running (409) asks again until it is
 * answered with the recorded outcome.
 */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "acquirer.h"
#include "acquirer_proc.h"
#include "support.h"

extern char **environ;

/* The prefix faults most tests run with. */
#define FAULTS                                                                                     \
    "--fault", "hold:prefix=cust-hold:ms=3000", "--fault", "500:prefix=cust-err", "--fault",       \
        "close:prefix=cust-close", "--fault", "503:prefix=cust-busy"
#define HOLD_MS 3000
#define SHORT_TIMEOUT_MS 300 /* far below the hold */
#define NORMAL_TIMEOUT_MS 30000

/* ---- the process: tests/acquirer_proc.c ------------------------------------ */

static void setup(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT); /* before any thread asks */
}

static void teardown(void)
{
    test_acquirers_kill_all();
}

TestSuite(ledger, .init = setup, .fini = teardown, .timeout = 60);

/* The acquirer's log has its line for this fault acted out on key. */
static void expect_fault_logged(const struct test_acquirer *a, const char *kind, const char *key)
{
    char text[16384], want[200];
    snprintf(want, sizeof want, "mockery-acquirer: fault %s on key %s\n", kind, key);
    /* a held answer's line comes once its charge is written, which may be
     * after the client gave up */
    double give_up = test_now_s() + 30;
    for (;;) {
        test_read_text(a->log, text, sizeof text);
        if (strstr(text, want))
            return;
        cr_assert_lt(test_now_s(), give_up, "no \"%s\" in its log after 30 s: %s", want, text);
        test_sleep_ms(20);
    }
}

/* ---- requests --------------------------------------------------------------- */

static void url_of(const struct test_acquirer *a, const char *path, char *out, size_t len)
{
    snprintf(out, len, "%s%s", a->base, path);
}

/* POST body to path with this key (NULL: no header); the HTTP status, or
 * -1 when no answer came within timeout_ms (r->error says why). */
static int post_within(const struct test_acquirer *a, const char *path, const char *key,
                       const char *body, long timeout_ms, struct test_response *r)
{
    char url[320], keyh[300];
    url_of(a, path, url, sizeof url);
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key ? key : "");
    const char *headers[] = {"Content-Type: application/json", key ? keyh : NULL, NULL};
    return httpc_request("POST", url, headers, body, strlen(body), timeout_ms, r) == 0
               ? (int)r->status
               : -1;
}

/* The same; an answer must come. */
static void post(const struct test_acquirer *a, const char *path, const char *key, const char *body,
                 struct test_response *r)
{
    int st = post_within(a, path, key, body, NORMAL_TIMEOUT_MS, r);
    cr_assert_neq(st, -1, "POST %s: no answer: %s", path, r->error);
}

/* A retry of a request whose answer was lost: asked again while the first
 * is still running there (409, idempotency_key_in_use), until it is
 * answered otherwise. */
static void post_settled(const struct test_acquirer *a, const char *path, const char *key,
                         const char *body, struct test_response *r)
{
    for (int i = 0; i < 600; i++) {
        post(a, path, key, body, r);
        if (r->status != 409)
            return;
        test_expect_error(r, 409, "idempotency_key_in_use", NULL);
        test_response_free(r);
        test_sleep_ms(50);
    }
    cr_assert_fail("POST %s with key %s: still 409 after 30 s", path, key);
}

static void get(const struct test_acquirer *a, const char *path, struct test_response *r)
{
    char url[320];
    url_of(a, path, url, sizeof url);
    test_http("GET", url, NULL, NULL, 0, r);
}

static void charge_json(char *buf, size_t len, long long amount, const char *customer,
                        const char *reference)
{
    snprintf(buf, len,
             "{\"amount_minor\":%lld,\"currency\":\"EUR\",\"customer_id\":\"%s\","
             "\"merchant\":\"merchant-a\",\"reference\":\"%s\"}",
             amount, customer, reference);
}

static void refund_json(char *buf, size_t len, const char *charge_id, long long amount,
                        const char *reference)
{
    snprintf(buf, len, "{\"charge_id\":\"%s\",\"amount_minor\":%lld,\"reference\":\"%s\"}",
             charge_id, amount, reference);
}

/* A string member of a response's JSON body into out. */
static void body_str(const struct test_response *r, const char *name, char *out, size_t len)
{
    cJSON *o = test_json(r);
    snprintf(out, len, "%s", test_json_str(o, name));
    cJSON_Delete(o);
}

static long long body_num(const struct test_response *r, const char *name)
{
    cJSON *o = test_json(r);
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert(cJSON_IsNumber(v), "no number %s in %s", name, r->body);
    long long n = (long long)v->valuedouble;
    cJSON_Delete(o);
    return n;
}

static int replayed(const struct test_response *r)
{
    return strcmp(r->replayed, "true") == 0;
}

/* ---- the ledger ----------------------------------------------------------------- */

/* GET /v1/charges?reference=ref (or /v1/refunds?charge_id=id): the list's
 * root; its array is member name. */
static cJSON *ledger_list(const struct test_acquirer *a, const char *name, const char *param,
                          const char *value)
{
    char path[200];
    struct test_response r;
    snprintf(path, sizeof path, "/v1/%s?%s=%s", name, param, value);
    get(a, path, &r);
    cr_assert_eq(r.status, 200, "GET %s: %ld %s", path, r.status, r.body);
    cJSON *root = test_json(&r);
    cr_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(root, name)), "%s", r.body);
    test_response_free(&r);
    return root;
}

/* The charges of a reference as the acquirer shows them: how many, and
 * the first's id and status ("" when none). */
static int ledger_charges(const struct test_acquirer *a, const char *reference, char *id,
                          char *status)
{
    cJSON *root = ledger_list(a, "charges", "reference", reference);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "charges");
    int n = cJSON_GetArraySize(arr);
    if (id)
        id[0] = '\0';
    if (status)
        status[0] = '\0';
    if (n > 0) {
        const cJSON *c = cJSON_GetArrayItem(arr, 0);
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "charge_id");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(c, "status");
        cr_assert(cJSON_IsString(cid) && cJSON_IsString(st));
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(c, "reference")->valuestring, reference);
        if (id)
            snprintf(id, 65, "%s", cid->valuestring);
        if (status)
            snprintf(status, 16, "%s", st->valuestring);
    }
    cJSON_Delete(root);
    return n;
}

/* A charge's refunds as the acquirer shows them: how many, their sum. */
static int ledger_refunds(const struct test_acquirer *a, const char *charge_id, long long *sum)
{
    cJSON *root = ledger_list(a, "refunds", "charge_id", charge_id);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "refunds");
    int n = cJSON_GetArraySize(arr);
    long long total = 0;
    for (int i = 0; i < n; i++) {
        const cJSON *rf = cJSON_GetArrayItem(arr, i);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(rf, "charge_id")->valuestring, charge_id);
        total += (long long)cJSON_GetObjectItemCaseSensitive(rf, "amount_minor")->valuedouble;
    }
    if (sum)
        *sum = total;
    cJSON_Delete(root);
    return n;
}

/* GET /v1/charges/{id}: its amount_refunded_minor. */
static long long ledger_refunded(const struct test_acquirer *a, const char *charge_id)
{
    char path[128];
    struct test_response r;
    snprintf(path, sizeof path, "/v1/charges/%s", charge_id);
    get(a, path, &r);
    cr_assert_eq(r.status, 200, "GET %s: %ld %s", path, r.status, r.body);
    long long n = body_num(&r, "amount_refunded_minor");
    test_response_free(&r);
    return n;
}

/* The acquirer's tables, read directly. */
static long sql_charges(const char *reference)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM acquirer_charges WHERE reference = $1", reference);
}

static long sql_refunds(const char *charge_id)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM acquirer_refunds WHERE charge_id = $1", charge_id);
}

/* The acquirer's idempotency records of a key (tenant "mockery"). */
static long sql_keys(const char *key)
{
    return test_query_long(test_db_url(),
                           "SELECT count(*) FROM idempotency_keys WHERE tenant_id = 'mockery'"
                           " AND idempotency_key = $1",
                           key);
}

/* A new succeeded charge of amount for a customer of its own; its id. */
static void new_charge(const struct test_acquirer *a, long long amount, char *id, size_t len)
{
    char key[96], cust[96], ref[96], body[400];
    struct test_response r;
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, amount, cust, ref);
    post(a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    body_str(&r, "charge_id", id, len);
    test_response_free(&r);
}

/* ---- 1. a charge, its replay, its key reused ------------------------------------ */

Test(ledger, a_charge_is_made_once_and_replayed)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char key[96], cust[96], ref[96], body[400], other[400], id[65], again[65], st[16];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cr_assert_not(replayed(&r));
    body_str(&r, "charge_id", id, sizeof id);
    cr_assert(strncmp(id, "ch_", 3) == 0 && strlen(id) > 3, "%s", id);
    cJSON *o = test_json(&r);
    cr_assert_str_eq(test_json_str(o, "status"), "succeeded");
    cr_assert_str_eq(test_json_str(o, "currency"), "EUR");
    cr_assert_str_eq(test_json_str(o, "reference"), ref);
    cr_assert_str_eq(test_json_str(o, "idempotency_key"), key);
    cr_assert_eq(cJSON_GetObjectItemCaseSensitive(o, "amount_minor")->valuedouble, 1050);
    cJSON_Delete(o);
    test_response_free(&r);

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(replayed(&r), "no Idempotent-Replayed: true on the replay");
    body_str(&r, "charge_id", again, sizeof again);
    cr_assert_str_eq(again, id);
    test_response_free(&r);

    charge_json(other, sizeof other, 1051, cust, ref);
    post(&a, "/v1/charges", key, other, &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);

    cr_assert_eq(ledger_charges(&a, ref, again, st), 1);
    cr_assert_str_eq(again, id);
    cr_assert_str_eq(st, "succeeded");
    cr_assert_eq(sql_charges(ref), 1);
    cr_assert_eq(sql_keys(key), 1);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT response_status FROM idempotency_keys WHERE tenant_id ="
                                 " 'mockery' AND idempotency_key = $1 AND state = 'completed'",
                                 key),
                 201);
    /* GET /v1/charges/{id} shows the same charge. */
    char path[128];
    snprintf(path, sizeof path, "/v1/charges/%s", id);
    get(&a, path, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    body_str(&r, "idempotency_key", again, sizeof again);
    cr_assert_str_eq(again, key);
    test_response_free(&r);
    test_acquirer_stop(&a);
}

/* ---- 2. sixteen duplicates at once -------------------------------------------------- */

enum { DUPLICATES = 16 };

struct dup {
    const struct test_acquirer *a;
    pthread_barrier_t *go;
    const char *path, *key, *body;
    int status;
    int replayed;
    char id[65];
    char code[64];
    char error[256];
};

static void *send_one(void *arg)
{
    struct dup *d = arg;
    struct test_response r;
    pthread_barrier_wait(d->go);
    d->status = post_within(d->a, d->path, d->key, d->body, NORMAL_TIMEOUT_MS, &r);
    d->replayed = replayed(&r);
    snprintf(d->error, sizeof d->error, "%s", r.error);
    cJSON *o = d->status > 0 ? cJSON_Parse(r.body) : NULL;
    /* A refund's answer names its charge too: its own id first. */
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "refund_id");
    if (!cJSON_IsString(id))
        id = cJSON_GetObjectItemCaseSensitive(o, "charge_id");
    if (cJSON_IsString(id))
        snprintf(d->id, sizeof d->id, "%s", id->valuestring);
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItem(o, "error"), "code");
    if (cJSON_IsString(code))
        snprintf(d->code, sizeof d->code, "%s", code->valuestring);
    cJSON_Delete(o);
    test_response_free(&r);
    return NULL;
}

/* n requests from n threads released at once; each answer into d[i]. */
static void send_at_once(struct dup *d, int n)
{
    pthread_t t[DUPLICATES];
    pthread_barrier_t go;
    cr_assert_leq(n, DUPLICATES);
    pthread_barrier_init(&go, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        d[i].go = &go;
        cr_assert_eq(pthread_create(&t[i], NULL, send_one, &d[i]), 0);
    }
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
}

Test(ledger, sixteen_duplicates_at_once_make_one_charge)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char key[96], cust[96], ref[96], body[400], id[65] = "", ledger_id[65];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 777, cust, ref);
    struct dup d[DUPLICATES];
    for (int i = 0; i < DUPLICATES; i++)
        d[i] = (struct dup){.a = &a, .path = "/v1/charges", .key = key, .body = body};
    send_at_once(d, DUPLICATES);

    int created = 0;
    for (int i = 0; i < DUPLICATES; i++) {
        cr_assert(d[i].status == 201 || d[i].status == 200 || d[i].status == 409,
                  "answer %d: %d %s %s", i, d[i].status, d[i].code, d[i].error);
        if (d[i].status == 409) {
            cr_assert_str_eq(d[i].code, "idempotency_key_in_use");
            continue;
        }
        created += d[i].status == 201;
        cr_assert_eq(d[i].replayed, d[i].status == 200, "answer %d", i);
        if (!id[0])
            snprintf(id, sizeof id, "%s", d[i].id);
        cr_assert_str_eq(d[i].id, id, "answer %d names another charge", i);
    }
    cr_assert_eq(created, 1, "%d answers 201", created);
    cr_assert(strncmp(id, "ch_", 3) == 0, "%s", id);
    cr_assert_eq(ledger_charges(&a, ref, ledger_id, NULL), 1);
    cr_assert_str_eq(ledger_id, id);
    cr_assert_eq(sql_charges(ref), 1);
    test_acquirer_stop(&a);
}

/* A lease that runs out under a slow charge (cust-slow: 1.5 s, the lease
 * 100 ms): a retry takes the key over and charges; the first request's
 * completion finds its lease lost and writes nothing. Whichever order the
 * two end in, the ledger holds one charge and every answer that names a
 * charge names that one. */
Test(ledger, a_lapsed_lease_taken_over_still_makes_one_charge)
{
    static const char *const flags[] = {"--lease-ms", "100", NULL};
    struct test_acquirer a = {0};
    test_acquirer_start(&a, flags, 0);
    char key[96], cust[96], ref[96], body[400], ledger_id[65];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-slow");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct dup d[2];
    for (int i = 0; i < 2; i++)
        d[i] = (struct dup){.a = &a, .path = "/v1/charges", .key = key, .body = body};

    pthread_barrier_t go;
    pthread_t first;
    pthread_barrier_init(&go, NULL, 1);
    d[0].go = &go;
    cr_assert_eq(pthread_create(&first, NULL, send_one, &d[0]), 0);
    /* Until the first request's lease has lapsed (or it is done). */
    int lapsed = 0;
    for (int i = 0; i < 1500 && !lapsed; i++) {
        lapsed = test_query_long(test_db_url(),
                                 "SELECT count(*) FROM idempotency_keys WHERE tenant_id ="
                                 " 'mockery' AND idempotency_key = $1 AND (state = 'completed'"
                                 " OR locked_until < now())",
                                 key) == 1;
        if (!lapsed)
            test_sleep_ms(20);
    }
    cr_assert(lapsed, "the first request's claim never lapsed");
    d[1].go = &go;
    send_one(&d[1]);
    pthread_join(first, NULL);
    pthread_barrier_destroy(&go);

    cr_assert_eq(ledger_charges(&a, ref, ledger_id, NULL), 1);
    cr_assert_eq(sql_charges(ref), 1);
    cr_assert(d[0].status == 201 || d[0].status == 409, "the first: %d %s %s", d[0].status,
              d[0].code, d[0].error);
    cr_assert(d[1].status == 201 || d[1].status == 200, "the takeover: %d %s %s", d[1].status,
              d[1].code, d[1].error);
    for (int i = 0; i < 2; i++)
        if (d[i].status == 201 || d[i].status == 200)
            cr_assert_str_eq(d[i].id, ledger_id, "answer %d names a charge the ledger lacks", i);
    cr_assert_eq((d[0].status == 201) + (d[1].status == 201), 1, "%d and %d", d[0].status,
                 d[1].status);
    struct test_response r;
    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    char id[65];
    body_str(&r, "charge_id", id, sizeof id);
    cr_assert_str_eq(id, ledger_id);
    test_response_free(&r);
    test_acquirer_stop(&a);
}

/* ---- 3. a decline is recorded, and replayed ----------------------------------------- */

Test(ledger, a_decline_is_recorded_and_replayed)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char key[96], cust[96], ref[96], body[400], id[65], again[65], st[16];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-declined");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 402, "%s", r.body);
    cr_assert_not(replayed(&r));
    cJSON *o = test_json(&r);
    cr_assert_str_eq(test_json_str(o, "status"), "declined");
    cr_assert_str_eq(test_json_str(o, "decline_code"), "card_declined");
    snprintf(id, sizeof id, "%s", test_json_str(o, "charge_id"));
    cr_assert(strncmp(id, "ch_", 3) == 0, "%s", id);
    cJSON_Delete(o);
    test_response_free(&r);

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 402, "%s", r.body);
    cr_assert(replayed(&r), "no Idempotent-Replayed: true on the replay");
    body_str(&r, "charge_id", again, sizeof again);
    cr_assert_str_eq(again, id);
    test_response_free(&r);

    cr_assert_eq(ledger_charges(&a, ref, again, st), 1);
    cr_assert_str_eq(again, id);
    cr_assert_str_eq(st, "declined");
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT count(*) FROM acquirer_charges WHERE reference = $1 AND"
                                 " status = 'declined' AND decline_code = 'card_declined'",
                                 ref),
                 1);
    test_acquirer_stop(&a);
}

/* ---- 4. a gateway error moved nothing, and is not cached ---------------------------- */

Test(ledger, a_gateway_error_is_released_not_recorded)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char key[96], cust[96], ref[96], body[400];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-gateway-error");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;
    for (int i = 0; i < 2; i++) {
        post(&a, "/v1/charges", key, body, &r);
        test_expect_error(&r, 422, "processing_error", NULL);
        cr_assert_not(replayed(&r), "ask %d: a released refusal is not a replay", i);
        test_response_free(&r);
        cr_assert_eq(ledger_charges(&a, ref, NULL, NULL), 0);
        cr_assert_eq(sql_charges(ref), 0);
        cr_assert_eq(sql_keys(key), 0, "ask %d: the key was not released", i);
    }
    test_acquirer_stop(&a);
}

/* ---- 5. faults by prefix -------------------------------------------------------------- */

static const char *const PREFIX_FAULTS[] = {FAULTS, NULL};

/* (a) The answer held past the client's timeout: the charge was made; the
 * retry is its replay. */
Test(ledger, a_held_answer_lost_then_replayed)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    char key[96], cust[96], ref[96], body[400], id[65], ledger_id[65];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-hold");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;

    cr_assert_eq(post_within(&a, "/v1/charges", key, body, SHORT_TIMEOUT_MS, &r), -1,
                 "an answer within %d ms of a %d ms hold: %ld %s", SHORT_TIMEOUT_MS, HOLD_MS,
                 r.status, r.body);
    cr_assert_eq(r.status, 0);
    cr_assert_not_null(strstr(r.error, "timed out"), "%s", r.error);
    test_response_free(&r);
    expect_fault_logged(&a, "hold", key);

    post_settled(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(replayed(&r));
    body_str(&r, "charge_id", id, sizeof id);
    test_response_free(&r);
    cr_assert_eq(ledger_charges(&a, ref, ledger_id, NULL), 1);
    cr_assert_str_eq(ledger_id, id);
    cr_assert_eq(sql_charges(ref), 1);
    test_acquirer_stop(&a); /* after the held answer ends */
}

/* (b) 500 after recording. */
Test(ledger, a_500_after_recording_then_replayed)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    char key[96], cust[96], ref[96], body[400], id[65], ledger_id[65];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-err");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;

    post(&a, "/v1/charges", key, body, &r);
    test_expect_error(&r, 500, "internal_error", NULL);
    test_response_free(&r);
    cr_assert_eq(sql_charges(ref), 1, "the 500 came after the charge was recorded");
    expect_fault_logged(&a, "500", key);

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(replayed(&r));
    body_str(&r, "charge_id", id, sizeof id);
    test_response_free(&r);
    cr_assert_eq(ledger_charges(&a, ref, ledger_id, NULL), 1);
    cr_assert_str_eq(ledger_id, id);
    test_acquirer_stop(&a);
}

/* (c) The connection closed without an answer after recording. */
Test(ledger, a_connection_closed_after_recording_then_replayed)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    char key[96], cust[96], ref[96], body[400], id[65], ledger_id[65];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-close");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;

    cr_assert_eq(post_within(&a, "/v1/charges", key, body, NORMAL_TIMEOUT_MS, &r), -1,
                 "an answer came: %ld %s", r.status, r.body);
    cr_assert_eq(r.status, 0, "a status came: %ld", r.status);
    cr_assert_null(strstr(r.error, "timed out"), "no close, a timeout: %s", r.error);
    test_response_free(&r);
    cr_assert_eq(sql_charges(ref), 1, "the close came after the charge was recorded");
    expect_fault_logged(&a, "close", key);

    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(replayed(&r));
    body_str(&r, "charge_id", id, sizeof id);
    test_response_free(&r);
    cr_assert_eq(ledger_charges(&a, ref, ledger_id, NULL), 1);
    cr_assert_str_eq(ledger_id, id);
    test_acquirer_stop(&a);
}

/* (d) 503: nothing recorded, however often asked. */
Test(ledger, a_503_records_nothing)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    char key[96], cust[96], ref[96], body[400];
    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-busy");
    test_unique(ref, sizeof ref, "ref");
    charge_json(body, sizeof body, 1050, cust, ref);
    struct test_response r;
    for (int i = 0; i < 2; i++) {
        post(&a, "/v1/charges", key, body, &r);
        test_expect_error(&r, 503, "acquirer_unavailable", NULL);
        cr_assert_str_eq(r.retry_after, "1");
        test_response_free(&r);
        cr_assert_eq(ledger_charges(&a, ref, NULL, NULL), 0, "ask %d", i);
        cr_assert_eq(sql_charges(ref), 0, "ask %d", i);
        cr_assert_eq(sql_keys(key), 0, "ask %d", i);
    }
    expect_fault_logged(&a, "503", key);
    test_acquirer_stop(&a);
}

/* ---- 6. faults by rate ------------------------------------------------------------------- */

enum { RATE_KEYS = 10 };

Test(ledger, every_first_answer_500_by_rate_every_retry_replayed)
{
    static const char *const flags[] = {"--fault", "500:rate=1", "--quiet", NULL};
    struct test_acquirer a = {0};
    test_acquirer_start(&a, flags, 1);
    char ref[96], ids[RATE_KEYS][65];
    test_unique(ref, sizeof ref, "ref");
    for (int i = 0; i < RATE_KEYS; i++) {
        char key[96], cust[96], body[400];
        struct test_response r;
        test_unique(key, sizeof key, "lk");
        test_unique(cust, sizeof cust, "cust");
        charge_json(body, sizeof body, 100 + i, cust, ref);
        post(&a, "/v1/charges", key, body, &r);
        test_expect_error(&r, 500, "internal_error", NULL);
        test_response_free(&r);
        post(&a, "/v1/charges", key, body, &r);
        cr_assert_eq(r.status, 200, "key %d: %s", i, r.body);
        cr_assert(replayed(&r));
        body_str(&r, "charge_id", ids[i], sizeof ids[i]);
        test_response_free(&r);
        for (int j = 0; j < i; j++)
            cr_assert_str_neq(ids[i], ids[j]);
    }
    cJSON *root = ledger_list(&a, "charges", "reference", ref);
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(root, "charges");
    cr_assert_eq(cJSON_GetArraySize(arr), RATE_KEYS);
    for (int i = 0; i < RATE_KEYS; i++) {
        /* Made one after another: oldest first is the order they were asked in. */
        const char *id =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(arr, i), "charge_id")->valuestring;
        cr_assert_str_eq(id, ids[i], "charge %d in the ledger is not the one asked %d-th", i, i);
    }
    cJSON_Delete(root);
    cr_assert_eq(sql_charges(ref), RATE_KEYS);
    /* --quiet: the faults were acted out without a line each. */
    char text[8192];
    test_read_text(a.log, text, sizeof text);
    cr_assert_null(strstr(text, "mockery-acquirer: fault"), "%s", text);
    test_acquirer_stop(&a);
}

/* ---- 7. refunds ----------------------------------------------------------------------------- */

Test(ledger, a_refund_is_made_once_within_its_charge)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char charge[65], key[96], ref[96], body[300], other[300], id[65], again[65];
    new_charge(&a, 1050, charge, sizeof charge);
    test_unique(key, sizeof key, "lk");
    test_unique(ref, sizeof ref, "rref");
    refund_json(body, sizeof body, charge, 300, ref);
    struct test_response r;

    post(&a, "/v1/refunds", key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    cr_assert_not(replayed(&r));
    body_str(&r, "refund_id", id, sizeof id);
    cr_assert(strncmp(id, "rf_", 3) == 0 && strlen(id) > 3, "%s", id);
    body_str(&r, "charge_id", again, sizeof again);
    cr_assert_str_eq(again, charge);
    cr_assert_eq(body_num(&r, "amount_minor"), 300);
    test_response_free(&r);

    post(&a, "/v1/refunds", key, body, &r);
    cr_assert_eq(r.status, 200, "%s", r.body);
    cr_assert(replayed(&r));
    body_str(&r, "refund_id", again, sizeof again);
    cr_assert_str_eq(again, id);
    test_response_free(&r);

    refund_json(other, sizeof other, charge, 301, ref);
    post(&a, "/v1/refunds", key, other, &r);
    test_expect_error(&r, 422, "idempotency_key_reused", NULL);
    test_response_free(&r);

    long long sum = 0;
    cr_assert_eq(ledger_refunds(&a, charge, &sum), 1);
    cr_assert_eq(sum, 300);
    cr_assert_eq(ledger_refunded(&a, charge), 300);
    cr_assert_eq(sql_refunds(charge), 1);

    /* More than what is left (750): refused, nothing written, released. */
    char over_key[96];
    test_unique(over_key, sizeof over_key, "lk");
    refund_json(body, sizeof body, charge, 751, ref);
    post(&a, "/v1/refunds", over_key, body, &r);
    test_expect_error(&r, 422, "refund_exceeds_charge", NULL);
    test_response_free(&r);
    cr_assert_eq(ledger_refunds(&a, charge, &sum), 1);
    cr_assert_eq(sum, 300);
    cr_assert_eq(ledger_refunded(&a, charge), 300);
    cr_assert_eq(sql_refunds(charge), 1);
    cr_assert_eq(sql_keys(over_key), 0);
    /* What is left, exactly: taken. */
    char rest_key[96];
    test_unique(rest_key, sizeof rest_key, "lk");
    refund_json(body, sizeof body, charge, 750, ref);
    post(&a, "/v1/refunds", rest_key, body, &r);
    cr_assert_eq(r.status, 201, "%s", r.body);
    test_response_free(&r);
    cr_assert_eq(ledger_refunded(&a, charge), 1050);
    test_acquirer_stop(&a);
}

Test(ledger, refunds_of_no_charge_and_of_a_decline_are_refused)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char key[96], ref[96], body[400], missing[96], cust[96], cref[96], declined[65];
    struct test_response r;

    test_unique(missing, sizeof missing, "ch_missing");
    test_unique(key, sizeof key, "lk");
    test_unique(ref, sizeof ref, "rref");
    refund_json(body, sizeof body, missing, 100, ref);
    post(&a, "/v1/refunds", key, body, &r);
    test_expect_error(&r, 404, "charge_not_found", NULL);
    test_response_free(&r);
    cr_assert_eq(ledger_refunds(&a, missing, NULL), 0);
    cr_assert_eq(sql_keys(key), 0);

    test_unique(key, sizeof key, "lk");
    test_unique(cust, sizeof cust, "cust-declined");
    test_unique(cref, sizeof cref, "ref");
    charge_json(body, sizeof body, 1050, cust, cref);
    post(&a, "/v1/charges", key, body, &r);
    cr_assert_eq(r.status, 402, "%s", r.body);
    body_str(&r, "charge_id", declined, sizeof declined);
    test_response_free(&r);

    test_unique(key, sizeof key, "lk");
    refund_json(body, sizeof body, declined, 100, ref);
    post(&a, "/v1/refunds", key, body, &r);
    test_expect_error(&r, 422, "charge_not_refundable", NULL);
    test_response_free(&r);
    cr_assert_eq(ledger_refunds(&a, declined, NULL), 0);
    cr_assert_eq(sql_refunds(declined), 0);
    cr_assert_eq(ledger_refunded(&a, declined), 0);
    cr_assert_eq(sql_keys(key), 0);
    test_acquirer_stop(&a);
}

enum { RACERS = 10 };

Test(ledger, ten_racing_refunds_take_no_more_than_the_charge)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char charge[65], keys[RACERS][96], ref[96], body[RACERS][300];
    new_charge(&a, 1050, charge, sizeof charge);
    struct dup d[RACERS];
    for (int i = 0; i < RACERS; i++) {
        test_unique(keys[i], sizeof keys[i], "lk");
        test_unique(ref, sizeof ref, "rref");
        refund_json(body[i], sizeof body[i], charge, 300, ref);
        d[i] = (struct dup){.a = &a, .path = "/v1/refunds", .key = keys[i], .body = body[i]};
    }
    send_at_once(d, RACERS);
    int ok = 0;
    for (int i = 0; i < RACERS; i++) {
        cr_assert(d[i].status == 201 || d[i].status == 422, "refund %d: %d %s %s", i, d[i].status,
                  d[i].code, d[i].error);
        if (d[i].status == 201) {
            ok++;
            cr_assert(strncmp(d[i].id, "rf_", 3) == 0);
        } else {
            cr_assert_str_eq(d[i].code, "refund_exceeds_charge", "refund %d", i);
        }
    }
    cr_assert_eq(ok, 3, "%d of 10 refunds of 300 from 1050 succeeded", ok);
    long long sum = 0;
    cr_assert_eq(ledger_refunds(&a, charge, &sum), 3);
    cr_assert_eq(sum, 900);
    cr_assert_eq(ledger_refunded(&a, charge), 900);
    cr_assert_eq(sql_refunds(charge), 3);
    cr_assert_eq(test_query_long(test_db_url(),
                                 "SELECT amount_refunded_minor FROM acquirer_charges WHERE"
                                 " charge_id = $1",
                                 charge),
                 900);
    test_acquirer_stop(&a);
}

/* ---- 8. bad input: refused, nothing recorded --------------------------------------------- */

/* POST with explicit headers. */
static void post_raw(const struct test_acquirer *a, const char *path, const char *const *headers,
                     const char *body, struct test_response *r)
{
    char url[320];
    url_of(a, path, url, sizeof url);
    test_http("POST", url, headers, body, strlen(body), r);
}

Test(ledger, bad_input_is_refused_and_nothing_recorded)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, NULL, 0);
    char cust[96], ref[96], good[400], body[400], keyh[2048];
    char keys[16][96];
    int nkeys = 0;
    struct test_response r;
    test_unique(cust, sizeof cust, "cust");
    test_unique(ref, sizeof ref, "ref");
    charge_json(good, sizeof good, 1050, cust, ref);

    /* No Idempotency-Key. */
    post(&a, "/v1/charges", NULL, good, &r);
    test_expect_error(&r, 400, "idempotency_key_missing", NULL);
    test_response_free(&r);

    /* Not JSON by its Content-Type. */
    test_unique(keys[nkeys], sizeof keys[nkeys], "lk");
    snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", keys[nkeys++]);
    const char *text_plain[] = {"Content-Type: text/plain", keyh, NULL};
    post_raw(&a, "/v1/charges", text_plain, good, &r);
    test_expect_error(&r, 415, "unsupported_media_type", NULL);
    test_response_free(&r);
    const char *no_type[] = {keyh, "Content-Type:", NULL};
    post_raw(&a, "/v1/charges", no_type, good, &r);
    cr_assert_eq(r.status, 415, "%s", r.body);
    test_response_free(&r);

    static const struct {
        const char *fmt; /* %s: the customer, then the reference */
        long status;
        const char *code;
    } cases[] = {
        {"{\"amount_minor\":1050,\"currency\":\"EUR\",\"customer_id\":\"%s\",", 400,
         "invalid_json"},
        {"{\"amount_minor\":10.5,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_amount"},
        {"{\"amount_minor\":\"10\",\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_amount"},
        {"{\"amount_minor\":0,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_amount"},
        {"{\"amount_minor\":-5,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_amount"},
        {"{\"amount_minor\":1e3,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_amount"},
        {"{\"amount_minor\":1050,\"currency\":\"EUR\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\",\"extra\":1}",
         422, "unknown_field"},
        {"{\"amount_minor\":1050,\"currency\":\"XYZ\",\"customer_id\":\"%s\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_currency"},
        {"{\"amount_minor\":1050,\"currency\":\"EUR\",\"customer_id\":\"%s x\",\"merchant\":\"m\","
         "\"reference\":\"%s\"}",
         422, "invalid_request"},
        {"{\"amount_minor\":1050,\"currency\":\"EUR\",\"customer_id\":\"%s\","
         "\"reference\":\"%s\"}",
         422, "invalid_request"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        test_unique(keys[nkeys], sizeof keys[nkeys], "lk");
        snprintf(body, sizeof body, cases[i].fmt, cust, ref);
        post(&a, "/v1/charges", keys[nkeys++], body, &r);
        test_expect_error(&r, cases[i].status, cases[i].code, NULL);
        test_response_free(&r);
    }
    /* A body over 16 KiB. */
    size_t big_len = 17 * 1024;
    char *big = malloc(big_len + 1);
    cr_assert_not_null(big);
    int head = snprintf(big, big_len + 1,
                        "{\"amount_minor\":1050,\"currency\":\"EUR\",\"customer_id\":\"%s\","
                        "\"merchant\":\"m\",\"reference\":\"%s\",\"pad\":\"",
                        cust, ref);
    memset(big + head, 'x', big_len - (size_t)head - 2);
    memcpy(big + big_len - 2, "\"}", 3);
    test_unique(keys[nkeys], sizeof keys[nkeys], "lk");
    post(&a, "/v1/charges", keys[nkeys++], big, &r);
    free(big);
    test_expect_error(&r, 413, "body_too_large", NULL);
    test_response_free(&r);

    /* A refund's amount too. */
    char charge[65], rbody[300];
    new_charge(&a, 1050, charge, sizeof charge);
    snprintf(rbody, sizeof rbody, "{\"charge_id\":\"%s\",\"amount_minor\":0,\"reference\":\"%s\"}",
             charge, ref);
    test_unique(keys[nkeys], sizeof keys[nkeys], "lk");
    post(&a, "/v1/refunds", keys[nkeys++], rbody, &r);
    test_expect_error(&r, 422, "invalid_amount", NULL);
    test_response_free(&r);

    /* The reads, routes and methods. */
    get(&a, "/v1/charges", &r);
    test_expect_error(&r, 400, "invalid_parameter", NULL);
    test_response_free(&r);
    get(&a, "/v1/refunds", &r);
    test_expect_error(&r, 400, "invalid_parameter", NULL);
    test_response_free(&r);
    get(&a, "/v1/charges/ch_no_such_charge", &r);
    test_expect_error(&r, 404, "charge_not_found", NULL);
    test_response_free(&r);
    get(&a, "/v1/nothing-here", &r);
    test_expect_error(&r, 404, "route_not_found", NULL);
    test_response_free(&r);
    static const char *const wrong[][2] = {
        {"DELETE", "/v1/charges"}, {"PUT", "/v1/refunds"}, {"POST", "/health"}};
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        char url[320];
        url_of(&a, wrong[i][1], url, sizeof url);
        test_http(wrong[i][0], url, NULL, NULL, 0, &r);
        test_expect_error(&r, 405, "method_not_allowed", NULL);
        test_response_free(&r);
    }

    cr_assert_eq(ledger_charges(&a, ref, NULL, NULL), 0);
    cr_assert_eq(sql_charges(ref), 0);
    cr_assert_eq(ledger_refunds(&a, charge, NULL), 0);
    cr_assert_eq(sql_refunds(charge), 0);
    for (int i = 0; i < nkeys; i++)
        cr_assert_eq(sql_keys(keys[i]), 0, "key %d (%s) was recorded", i, keys[i]);
    test_acquirer_stop(&a);
}

/* ---- 9. the process ------------------------------------------------------------------------ */

/* mockery-acquirer with args to its end (it must exit by itself). */
static void run_acquirer(char *const args[], char *const envp[], struct test_run *r)
{
    test_run_program(MOCKERY_ACQUIRER_BIN, args, envp, r);
}

/* environ without MOCKERY_ACQUIRER_DATABASE_URL (plus extra, if not NULL);
 * free the array (not its strings). */
static char **env_without_url(char *extra)
{
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    cr_assert_not_null(env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(environ[i], "MOCKERY_ACQUIRER_DATABASE_URL=", 30) != 0)
            env[k++] = environ[i];
    if (extra)
        env[k++] = extra;
    env[k] = NULL;
    return env;
}

Test(ledger, a_bad_fault_flag_exits_2_with_why)
{
    static const char *const bad[] = {"bogus",
                                      "hold",
                                      "500:rate=0",
                                      "500:rate=2",
                                      "close:prefix=",
                                      "500:prefix=x:ms=10",
                                      "drop:rate=1",
                                      "hold:prefix=a:ms=-1",
                                      "500::prefix=x",
                                      "500:prefix=x::",
                                      "hold:prefix=a:ms="};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *const args[] = {MOCKERY_ACQUIRER_BIN,
                              "--database-url",
                              (char *)test_db_url(),
                              "--port",
                              "1",
                              "--fault",
                              (char *)bad[i],
                              NULL};
        struct test_run r;
        run_acquirer(args, environ, &r);
        cr_assert_eq(r.code, 2, "--fault %s: exit %d: %s", bad[i], r.code, r.err);
        char want[96];
        snprintf(want, sizeof want, "mockery-acquirer: --fault %s:", bad[i]);
        cr_assert_not_null(strstr(r.err, want), "--fault %s: %s", bad[i], r.err);
        cr_assert_str_eq(r.out, "");
    }
}

Test(ledger, no_database_url_exits_2)
{
    char **env = env_without_url(NULL);
    char *const args[] = {MOCKERY_ACQUIRER_BIN, "--port", "1", NULL};
    struct test_run r;
    run_acquirer(args, env, &r);
    free(env);
    cr_assert_eq(r.code, 2, "exit %d: %s", r.code, r.err);
    cr_assert_not_null(strstr(r.err, "--database-url (or MOCKERY_ACQUIRER_DATABASE_URL) is"
                                     " required"),
                       "%s", r.err);
    cr_assert_str_eq(r.out, "");
}

Test(ledger, an_unreachable_database_exits_1)
{
    char url[128], port[16];
    snprintf(port, sizeof port, "%d", test_free_port());
    snprintf(url, sizeof url, "postgresql://postgres@127.0.0.1:%d/mockery?connect_timeout=5",
             test_free_port()); /* nothing listens there */
    char *const args[] = {MOCKERY_ACQUIRER_BIN, "--database-url", url, "--port", port, NULL};
    struct test_run r;
    run_acquirer(args, environ, &r);
    cr_assert_eq(r.code, 1, "exit %d: %s", r.code, r.err);
    cr_assert_not_null(strstr(r.err, "mockery-acquirer: the database:"), "%s", r.err);
}

Test(ledger, the_database_url_may_come_from_the_environment)
{
    char var[600];
    snprintf(var, sizeof var, "MOCKERY_ACQUIRER_DATABASE_URL=%s", test_db_url());
    char **env = env_without_url(var);
    struct test_acquirer a = {0};
    test_acquirer_start_env(&a, NULL, 0, 0, env);
    free(env);
    char charge[65];
    new_charge(&a, 5, charge, sizeof charge);
    test_acquirer_stop(&a);
}

/* ---- 10. the service's acquirer client against the real program ------------------------------ */

static struct acquirer *client(const struct test_acquirer *a, long timeout_ms)
{
    struct acquirer *c = acquirer_new(a->base, timeout_ms, 4);
    cr_assert_not_null(c);
    return c;
}

/* A charge of its own for a customer of this prefix. */
struct ask {
    char key[96], cust[96], ref[96];
    struct acquirer_charge c;
};

static void ask_init(struct ask *k, const char *prefix, long long amount)
{
    test_unique(k->key, sizeof k->key, "dk");
    test_unique(k->cust, sizeof k->cust, prefix);
    test_unique(k->ref, sizeof k->ref, "txn");
    k->c = (struct acquirer_charge){.amount_minor = amount,
                                    .currency = "EUR",
                                    .customer_id = k->cust,
                                    .merchant = "tenant-a",
                                    .reference = k->ref};
}

static const char *verdict(const struct acquirer_answer *o)
{
    return acquirer_verdict_name(o->verdict);
}

/* Asks again with the same key while the first ask is still running
 * there (409): until the recorded outcome is told. */
static void charge_settled(struct acquirer *c, const struct ask *k, struct acquirer_answer *out)
{
    for (int i = 0; i < 600; i++) {
        acquirer_charge(c, k->key, &k->c, out);
        if (!(out->verdict == ACQUIRER_UNKNOWN && out->status == 409))
            return;
        test_sleep_ms(50);
    }
    cr_assert_fail("still 409 after 30 s");
}

/* The ledger holds exactly one charge for k, this one. */
static void expect_one_charge(const struct test_acquirer *a, const struct ask *k, const char *id,
                              const char *status)
{
    char ledger_id[65], st[16];
    cr_assert_eq(ledger_charges(a, k->ref, ledger_id, st), 1);
    cr_assert_str_eq(ledger_id, id);
    cr_assert_str_eq(st, status);
    cr_assert_eq(sql_charges(k->ref), 1);
}

Test(ledger, client_moved_then_replayed_on_one_connection)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask k;
    ask_init(&k, "cust", 1050);
    struct acquirer_answer first, again;
    acquirer_charge(c, k.key, &k.c, &first);
    cr_assert_eq(first.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&first), first.detail);
    cr_assert_eq(first.status, 201);
    cr_assert_eq(first.replayed, 0);
    cr_assert(strncmp(first.id, "ch_", 3) == 0, "%s", first.id);
    acquirer_charge(c, k.key, &k.c, &again);
    cr_assert_eq(again.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&again), again.detail);
    cr_assert_eq(again.status, 200);
    cr_assert_eq(again.replayed, 1);
    cr_assert_str_eq(again.id, first.id);
    expect_one_charge(&a, &k, first.id, "succeeded");
    /* Twenty more asks, one after another: the one connection, kept. */
    for (int i = 0; i < 20; i++) {
        struct ask more;
        struct acquirer_answer out;
        ask_init(&more, "cust", 10 + i);
        acquirer_charge(c, more.key, &more.c, &out);
        cr_assert_eq(out.verdict, ACQUIRER_MOVED, "ask %d: %s", i, out.detail);
    }
    cr_assert_eq(acquirer_connections(c), 1, "22 asks opened %llu connections",
                 acquirer_connections(c));
    acquirer_free(c);
    test_acquirer_stop(&a);
}

Test(ledger, client_declined_and_gateway_error)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask k;
    struct acquirer_answer out;

    ask_init(&k, "cust-declined", 1050);
    acquirer_charge(c, k.key, &k.c, &out);
    cr_assert_eq(out.verdict, ACQUIRER_DECLINED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 402);
    cr_assert_str_eq(out.decline_code, "card_declined");
    cr_assert(strncmp(out.id, "ch_", 3) == 0, "%s", out.id);
    expect_one_charge(&a, &k, out.id, "declined");
    char first[65];
    snprintf(first, sizeof first, "%s", out.id);
    acquirer_charge(c, k.key, &k.c, &out);
    cr_assert_eq(out.verdict, ACQUIRER_DECLINED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.replayed, 1);
    cr_assert_str_eq(out.id, first);

    ask_init(&k, "cust-gateway-error", 1050);
    for (int i = 0; i < 2; i++) {
        acquirer_charge(c, k.key, &k.c, &out);
        cr_assert_eq(out.verdict, ACQUIRER_NOTHING_MOVED, "%s: %s", verdict(&out), out.detail);
        cr_assert_eq(out.status, 422);
        cr_assert_str_eq(out.detail, "processing_error");
        cr_assert_eq(ledger_charges(&a, k.ref, NULL, NULL), 0);
        cr_assert_eq(sql_charges(k.ref), 0);
    }
    acquirer_free(c);
    test_acquirer_stop(&a);
}

Test(ledger, client_hold_is_unknown_then_moved_as_the_ledger_shows)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *impatient = client(&a, SHORT_TIMEOUT_MS);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask k;
    struct acquirer_answer out;
    ask_init(&k, "cust-hold", 1050);
    acquirer_charge(impatient, k.key, &k.c, &out);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 0, "an answer within %d ms of a %d ms hold: %d", SHORT_TIMEOUT_MS,
                 HOLD_MS, out.status);
    charge_settled(c, &k, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.replayed, 1);
    expect_one_charge(&a, &k, out.id, "succeeded");
    acquirer_free(impatient);
    acquirer_free(c);
    test_acquirer_stop(&a);
}

/* The answer lost after the charge was recorded - a 500, or the connection
 * closed without a word - is unknown; asking again with the same key tells
 * the charge the ledger holds. Each first ask on a connection of its own
 * (a fresh client): see the next test for a kept one. */
Test(ledger, client_500_and_close_are_unknown_then_moved)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    static const char *const prefixes[] = {"cust-err", "cust-close"};
    for (size_t i = 0; i < 2; i++) {
        struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
        struct ask k;
        struct acquirer_answer out;
        ask_init(&k, prefixes[i], 1050);
        acquirer_charge(c, k.key, &k.c, &out);
        cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s: %s: %s", prefixes[i], verdict(&out),
                     out.detail);
        cr_assert_eq(out.status, i == 0 ? 500 : 0, "%s: %d", prefixes[i], out.status);
        cr_assert_eq(sql_charges(k.ref), 1, "%s: recorded before the answer was lost", prefixes[i]);
        acquirer_charge(c, k.key, &k.c, &out);
        cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s: %s", prefixes[i], verdict(&out),
                     out.detail);
        cr_assert_eq(out.status, 200);
        cr_assert_eq(out.replayed, 1);
        expect_one_charge(&a, &k, out.id, "succeeded");
        acquirer_free(c);
    }
    test_acquirer_stop(&a);
}

/* The close on a kept-alive connection: libcurl takes a reused connection
 * that ends before a byte of the answer for a stale one, and sends the
 * request again on a new connection - with the same key, so it is answered
 * with the recorded charge (moved, replayed) rather than unknown. Either
 * way the verdict is true to the ledger: one charge, and the id told is
 * its id. */
Test(ledger, client_close_on_a_kept_connection_is_true_to_the_ledger)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask warm, k;
    struct acquirer_answer out;
    ask_init(&warm, "cust", 10);
    acquirer_charge(c, warm.key, &warm.c, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(acquirer_connections(c), 1);

    ask_init(&k, "cust-close", 1050);
    acquirer_charge(c, k.key, &k.c, &out);
    cr_assert(out.verdict == ACQUIRER_MOVED || out.verdict == ACQUIRER_UNKNOWN, "%s: %s",
              verdict(&out), out.detail);
    if (out.verdict == ACQUIRER_MOVED) {
        cr_assert_eq(out.status, 200);
        cr_assert_eq(out.replayed, 1, "a moved without a replay: the close was not acted out");
        expect_one_charge(&a, &k, out.id, "succeeded");
    } else {
        cr_assert_eq(out.status, 0);
    }
    acquirer_charge(c, k.key, &k.c, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.replayed, 1);
    expect_one_charge(&a, &k, out.id, "succeeded");
    acquirer_free(c);
    test_acquirer_stop(&a);
}

Test(ledger, client_503_is_unknown_and_nothing_is_charged)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask k;
    struct acquirer_answer out;
    ask_init(&k, "cust-busy", 1050);
    for (int i = 0; i < 2; i++) {
        acquirer_charge(c, k.key, &k.c, &out);
        cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s: %s", verdict(&out), out.detail);
        cr_assert_eq(out.status, 503);
        cr_assert_str_eq(out.detail, "acquirer_unavailable");
        cr_assert_eq(ledger_charges(&a, k.ref, NULL, NULL), 0);
        cr_assert_eq(sql_charges(k.ref), 0);
        cr_assert_eq(sql_keys(k.key), 0);
    }
    acquirer_free(c);
    test_acquirer_stop(&a);
}

Test(ledger, client_refunds)
{
    struct test_acquirer a = {0};
    test_acquirer_start(&a, PREFIX_FAULTS, 4);
    struct acquirer *c = client(&a, NORMAL_TIMEOUT_MS);
    struct ask k;
    struct acquirer_answer ch, out;
    ask_init(&k, "cust", 1050);
    acquirer_charge(c, k.key, &k.c, &ch);
    cr_assert_eq(ch.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&ch), ch.detail);

    char key[96], ref[96], first[65];
    test_unique(key, sizeof key, "dk");
    test_unique(ref, sizeof ref, "re");
    struct acquirer_refund rf = {.charge_id = ch.id, .amount_minor = 300, .reference = ref};
    acquirer_refund(c, key, &rf, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 201);
    cr_assert(strncmp(out.id, "rf_", 3) == 0, "%s", out.id);
    snprintf(first, sizeof first, "%s", out.id);
    acquirer_refund(c, key, &rf, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.replayed, 1);
    cr_assert_str_eq(out.id, first);

    /* More than what is left (750), and a charge that is not there. */
    char over[96];
    test_unique(over, sizeof over, "dk");
    struct acquirer_refund too_much = {.charge_id = ch.id, .amount_minor = 751, .reference = ref};
    acquirer_refund(c, over, &too_much, &out);
    cr_assert_eq(out.verdict, ACQUIRER_NOTHING_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 422);
    cr_assert_str_eq(out.detail, "refund_exceeds_charge");
    test_unique(over, sizeof over, "dk");
    struct acquirer_refund none = {
        .charge_id = "ch_not_there", .amount_minor = 1, .reference = ref};
    acquirer_refund(c, over, &none, &out);
    cr_assert_eq(out.verdict, ACQUIRER_NOTHING_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 404);
    cr_assert_str_eq(out.detail, "charge_not_found");

    long long sum = 0;
    cr_assert_eq(ledger_refunds(&a, ch.id, &sum), 1);
    cr_assert_eq(sum, 300);
    cr_assert_eq(ledger_refunded(&a, ch.id), 300);

    /* A refund of a charge whose customer draws the 500: the refund is
     * recorded, its answer lost, the retry tells it. */
    struct ask e;
    ask_init(&e, "cust-err", 1000);
    acquirer_charge(c, e.key, &e.c, &ch);
    cr_assert_eq(ch.verdict, ACQUIRER_UNKNOWN, "%s: %s", verdict(&ch), ch.detail);
    acquirer_charge(c, e.key, &e.c, &ch);
    cr_assert_eq(ch.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&ch), ch.detail);
    test_unique(key, sizeof key, "dk");
    struct acquirer_refund half = {.charge_id = ch.id, .amount_minor = 500, .reference = ref};
    acquirer_refund(c, key, &half, &out);
    cr_assert_eq(out.verdict, ACQUIRER_UNKNOWN, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.status, 500);
    cr_assert_eq(sql_refunds(ch.id), 1);
    acquirer_refund(c, key, &half, &out);
    cr_assert_eq(out.verdict, ACQUIRER_MOVED, "%s: %s", verdict(&out), out.detail);
    cr_assert_eq(out.replayed, 1);
    cr_assert_eq(ledger_refunds(&a, ch.id, &sum), 1);
    cr_assert_eq(sum, 500);
    cr_assert_eq(ledger_refunded(&a, ch.id), 500);
    acquirer_free(c);
    test_acquirer_stop(&a);
}
