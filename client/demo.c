/* demo.c - mockery-demo: the walkthrough, as a program
 *
 * Against a running server it shows a lost response and its retries, three
 * payments for one customer, a burst of concurrent duplicates, a retried
 * decline, and refunds (one whose answer is lost, two racing with different
 * keys for more than is left); given the acquirer behind the server, an
 * answer the acquirer holds after charging (503 outcome_pending, the
 * retry, one charge in the acquirer's own ledger). Then it counts the
 * charges per key through the API - and, with the acquirer, in its ledger
 * - and prints "double charges: N" (exit 1 unless N is 0). Before all
 * that it registers a webhook endpoint it serves itself
 * (webhook_receiver.h); after, it waits for every event of the run to
 * arrive there, signed, and prints them (exit 1 if one is missing). HTTP
 * through libcurl.
 */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "httpc.h"
#include "webhook_receiver.h"
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct opts {
    const char *url;
    const char *acquirer_url; /* mockery-acquirer behind the server, or NULL */
    const char *api_key;
    long timeout_ms; /* the impatient client of scenario 1 */
    int burst;
    int wait_s;                 /* how long to wait for a healthy server */
    const char *webhook_listen; /* the receiver's civetweb listening_ports */
    const char *webhook_url;    /* where the service reaches it; NULL: on 127.0.0.1 */
};

#define reply httpc_response

/* One request; body NULL for a GET. Never fails: r->status 0 says why. */
static void call(const struct opts *o, const char *method, const char *path, const char *key,
                 const char *body, long timeout_ms, struct reply *r)
{
    char url[512], keyh[300], auth[300];
    const char *headers[4] = {"Content-Type: application/json"};
    int n = 1;
    snprintf(url, sizeof url, "%s%s", o->url, path);
    if (key) {
        snprintf(keyh, sizeof keyh, "Idempotency-Key: %s", key);
        headers[n++] = keyh;
    }
    if (o->api_key) {
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", o->api_key);
        headers[n++] = auth;
    }
    httpc_request(method, url, headers, body, body ? strlen(body) : 0, timeout_ms, r);
}

static void reply_free(struct reply *r)
{
    httpc_response_free(r);
}

/* A string field of a JSON body, copied into buf ("" when absent). */
static const char *field(const struct reply *r, const char *name, char *buf, size_t len)
{
    buf[0] = '\0';
    cJSON *o = r->body ? cJSON_Parse(r->body) : NULL;
    cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!cJSON_IsString(v)) {
        cJSON *e = cJSON_GetObjectItemCaseSensitive(o, "error");
        v = cJSON_GetObjectItemCaseSensitive(e, name);
    }
    if (cJSON_IsString(v))
        snprintf(buf, len, "%s", v->valuestring);
    cJSON_Delete(o);
    return buf;
}

static void show(const char *what, const struct reply *r)
{
    char id[64], code[64], refund[64];
    if (!r->status) {
        printf("  %-34s -> no answer (%s)\n", what, r->error);
        return;
    }
    printf("  %-34s -> %ld", what, r->status);
    if (field(r, "refund_id", refund, sizeof refund)[0])
        printf("  refund %s", refund);
    else if (field(r, "transaction_id", id, sizeof id)[0])
        printf("  transaction %s", id);
    if (field(r, "code", code, sizeof code)[0])
        printf("  error %s", code);
    if (r->replay[0])
        printf("  X-Idempotent-Replay: %s", r->replay);
    if (r->retry_after[0])
        printf("  Retry-After: %s", r->retry_after);
    printf("\n");
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static char run_id[16];

static void payment_body(char *buf, size_t len, const char *customer, const char *amount)
{
    snprintf(buf, len,
             "{\"amount\":%s,\"currency\":\"EUR\",\"customer_id\":\"%s\","
             "\"description\":\"mockery demo\"}",
             amount, customer);
}

/* 1: the client gives up before the server answers, retries, waits, and
 * gets the first result. */
static int lost_response(const struct opts *o)
{
    char key[64], cust[64], body[256];
    struct reply r;
    snprintf(key, sizeof key, "demo-%s-lost", run_id);
    /* A slow customer: the simulated processor takes 1.5 s, longer than
     * this client waits. */
    snprintf(cust, sizeof cust, "cust-slow-demo-%s", run_id);
    payment_body(body, sizeof body, cust, "49.90");
    printf("\n1. A payment whose response is lost (client timeout %ld ms)\n", o->timeout_ms);
    call(o, "POST", "/api/v1/payments", key, body, o->timeout_ms, &r);
    show("POST (client gives up early)", &r);
    if (r.status)
        printf("     (the answer came in time: this client waited longer than the payment took)\n");
    reply_free(&r);
    for (int attempt = 0; attempt < 60; attempt++) {
        call(o, "POST", "/api/v1/payments", key, body, 30000, &r);
        show("POST retry, same key", &r);
        if (r.status != 409) {
            char id[64], path[128], k[300];
            int ok = (r.status == 200 || r.status == 201);
            field(&r, "transaction_id", id, sizeof id);
            reply_free(&r);
            /* The replayed transaction is the one that was charged. */
            snprintf(path, sizeof path, "/api/v1/payments/%s", id);
            call(o, "GET", path, NULL, NULL, 30000, &r);
            ok = ok && r.status == 200 &&
                 strcmp(field(&r, "idempotency_key", k, sizeof k), key) == 0;
            printf("  GET %s -> %ld: the charge behind the replay, made once: %s\n", id, r.status,
                   ok ? "yes" : "NO");
            reply_free(&r);
            return ok ? 0 : -1;
        }
        long wait = atol(r.retry_after) > 0 ? atol(r.retry_after) * 1000 : 1000;
        printf("     still running on the server: waiting %ld ms as Retry-After says\n", wait);
        reply_free(&r);
        sleep_ms(wait);
    }
    return -1;
}

/* 2: different keys are different payments. */
static int three_payments(const struct opts *o)
{
    char cust[64], body[256], key[64];
    snprintf(cust, sizeof cust, "cust-demo-%s", run_id);
    printf("\n2. Three payments for %s, three keys\n", cust);
    int created = 0;
    const char *amounts[] = {"10.00", "20.00", "30.00"};
    for (int i = 0; i < 3; i++) {
        struct reply r;
        snprintf(key, sizeof key, "demo-%s-order-%d", run_id, i + 1);
        payment_body(body, sizeof body, cust, amounts[i]);
        call(o, "POST", "/api/v1/payments", key, body, 30000, &r);
        char what[64];
        snprintf(what, sizeof what, "POST %s", key + strlen(run_id) + 6);
        show(what, &r);
        created += r.status == 201;
        reply_free(&r);
    }
    printf("  three keys, %d charges\n", created);
    return created == 3 ? 0 : -1;
}

struct burst_arg {
    const struct opts *o;
    pthread_barrier_t *barrier;
    const char *key;
    const char *body;
    struct reply r;
};

static void *burst_one(void *p)
{
    struct burst_arg *a = p;
    pthread_barrier_wait(a->barrier);
    call(a->o, "POST", "/api/v1/payments", a->key, a->body, 30000, &a->r);
    return NULL;
}

/* 3: many copies of one request at the same instant. */
static int burst(const struct opts *o)
{
    char key[64], cust[64], body[256];
    snprintf(key, sizeof key, "demo-%s-burst", run_id);
    snprintf(cust, sizeof cust, "cust-slow-demo-burst-%s", run_id); /* slow: they overlap */
    payment_body(body, sizeof body, cust, "99.00");
    printf("\n3. A burst of %d concurrent requests with one key\n", o->burst);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)o->burst);
    struct burst_arg *args = calloc((size_t)o->burst, sizeof *args);
    pthread_t *t = calloc((size_t)o->burst, sizeof *t);
    if (!args || !t) {
        free(args);
        free(t);
        return -1;
    }
    for (int i = 0; i < o->burst; i++) {
        args[i] = (struct burst_arg){o, &barrier, key, body, {0}};
        pthread_create(&t[i], NULL, burst_one, &args[i]);
    }
    int counts[600] = {0}, other = 0;
    for (int i = 0; i < o->burst; i++) {
        pthread_join(t[i], NULL);
        long s = args[i].r.status;
        if (s > 0 && s < 600)
            counts[s]++;
        else
            other++;
        reply_free(&args[i].r);
    }
    printf("  201 created: %d   409 in use: %d   200 replay: %d   other: %d\n", counts[201],
           counts[409], counts[200], other);
    printf("  one charge: %s\n", counts[201] == 1 ? "yes" : "NO");
    pthread_barrier_destroy(&barrier);
    free(args);
    free(t);
    return counts[201] == 1 ? 0 : -1;
}

/* 4: a decline is an answer too: replayed, not re-run. */
static int declined(const struct opts *o)
{
    char key[64], cust[64], body[256], first[64], again[64];
    snprintf(key, sizeof key, "demo-%s-declined", run_id);
    snprintf(cust, sizeof cust, "cust-declined-demo-%s", run_id);
    payment_body(body, sizeof body, cust, "15.00");
    printf("\n4. A declined card, retried\n");
    struct reply a, b;
    call(o, "POST", "/api/v1/payments", key, body, 30000, &a);
    show("POST", &a);
    call(o, "POST", "/api/v1/payments", key, body, 30000, &b);
    show("POST retry, same key", &b);
    field(&a, "transaction_id", first, sizeof first);
    field(&b, "transaction_id", again, sizeof again);
    int ok = a.status == 402 && b.status == 402 && strcmp(b.replay, "true") == 0 &&
             strcmp(first, again) == 0;
    printf("  the same decline, replayed: %s\n", ok ? "yes" : "NO");
    reply_free(&a);
    reply_free(&b);
    return ok ? 0 : -1;
}

/* Retries a POST with the same key until it is not a 409 (as Retry-After
 * says); returns the last reply in *r. */
static void post_until_settled(const struct opts *o, const char *path, const char *key,
                               const char *body, struct reply *r)
{
    for (int attempt = 0; attempt < 60; attempt++) {
        call(o, "POST", path, key, body, 30000, r);
        show("POST retry, same key", r);
        if (r->status != 409)
            return;
        long wait = atol(r->retry_after) > 0 ? atol(r->retry_after) * 1000 : 1000;
        reply_free(r);
        sleep_ms(wait);
    }
}

struct refund_arg {
    const struct opts *o;
    pthread_barrier_t *barrier;
    const char *path;
    char key[64];
    struct reply r;
};

static void *refund_one(void *p)
{
    struct refund_arg *a = p;
    pthread_barrier_wait(a->barrier);
    call(a->o, "POST", a->path, a->key, "{\"amount\":30.00}", 30000, &a->r);
    return NULL;
}

/* 5: refunds are idempotent the same way, and never add up to more than
 * the payment: a refund whose answer is lost, then two refunds with
 * different keys that together ask for more than is left. */
static int refunds(const struct opts *o)
{
    char key[64], cust[64], body[256], id[64], path[160], refunded[64];
    struct reply r;
    snprintf(cust, sizeof cust, "cust-slow-demo-refund-%s", run_id); /* slow refunds */
    snprintf(key, sizeof key, "demo-%s-refunded-order", run_id);
    payment_body(body, sizeof body, cust, "80.00");
    printf("\n5. Refunds of an 80.00 EUR payment\n");
    call(o, "POST", "/api/v1/payments", key, body, 30000, &r);
    show("POST payment", &r);
    field(&r, "transaction_id", id, sizeof id);
    int ok = r.status == 201;
    reply_free(&r);
    if (!ok)
        return -1;
    snprintf(path, sizeof path, "/api/v1/payments/%s/refunds", id);

    snprintf(key, sizeof key, "demo-%s-refund-lost", run_id);
    const char *thirty = "{\"amount\":30.00,\"reason\":\"requested_by_customer\"}";
    call(o, "POST", path, key, thirty, o->timeout_ms, &r);
    show("POST refund 30.00 (client gives up)", &r);
    reply_free(&r);
    post_until_settled(o, path, key, thirty, &r);
    ok = r.status == 200 || r.status == 201;
    reply_free(&r);

    printf("  two refunds of 30.00 at once, two keys, 50.00 left:\n");
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, 2);
    struct refund_arg args[2];
    pthread_t t[2];
    for (int i = 0; i < 2; i++) {
        args[i] = (struct refund_arg){o, &barrier, path, "", {0}};
        snprintf(args[i].key, sizeof args[i].key, "demo-%s-refund-race-%d", run_id, i + 1);
        pthread_create(&t[i], NULL, refund_one, &args[i]);
    }
    int created = 0, refused = 0;
    for (int i = 0; i < 2; i++) {
        pthread_join(t[i], NULL);
        show(args[i].key + strlen(run_id) + 6, &args[i].r);
        created += args[i].r.status == 201;
        refused += args[i].r.status == 422;
        reply_free(&args[i].r);
    }
    pthread_barrier_destroy(&barrier);
    printf("  one refunded, one refused (refund_exceeds_payment): %s\n",
           created == 1 && refused == 1 ? "yes" : "NO");
    ok = ok && created == 1 && refused == 1;

    snprintf(path, sizeof path, "/api/v1/payments/%s", id);
    call(o, "GET", path, NULL, NULL, 30000, &r);
    cJSON *p = r.status == 200 ? cJSON_Parse(r.body) : NULL;
    cJSON *amount = cJSON_GetObjectItem(p, "amount_refunded");
    /* the money as the server wrote it, never through a float */
    const char *at = r.body ? strstr(r.body, "\"amount_refunded\":") : NULL;
    snprintf(refunded, sizeof refunded, "%.*s", at ? (int)strcspn(at + 18, ",}") : 1,
             at ? at + 18 : "?");
    printf("  GET %s -> %ld: amount_refunded %s of 80.00\n", id, r.status, refunded);
    ok = ok && cJSON_IsNumber(amount) && strcmp(refunded, "60.00") == 0;
    cJSON_Delete(p);
    reply_free(&r);
    return ok ? 0 : -1;
}

/* The acquirer's charges for transaction txn (its reference), from its
 * own ledger: how many (-1 when it cannot be asked); the first's id and
 * status into id, status. */
static int acquirer_charges(const struct opts *o, const char *txn, char id[64], char status[32])
{
    char url[512];
    struct reply r;
    snprintf(url, sizeof url, "%s/v1/charges?reference=%s", o->acquirer_url, txn);
    httpc_request("GET", url, NULL, NULL, 0, 30000, &r);
    cJSON *root = r.status == 200 ? cJSON_Parse(r.body) : NULL;
    reply_free(&r);
    cJSON *list = cJSON_GetObjectItem(root, "charges");
    int n = cJSON_IsArray(list) ? cJSON_GetArraySize(list) : -1;
    id[0] = status[0] = '\0';
    if (n > 0) {
        cJSON *c = cJSON_GetArrayItem(list, 0);
        cJSON *cid = cJSON_GetObjectItem(c, "charge_id"), *st = cJSON_GetObjectItem(c, "status");
        if (cJSON_IsString(cid))
            snprintf(id, 64, "%s", cid->valuestring);
        if (cJSON_IsString(st))
            snprintf(status, 32, "%s", st->valuestring);
    }
    cJSON_Delete(root);
    return n;
}

/* 6: the window where money moves. The acquirer charges, then holds its
 * answer past the server's --acquirer-timeout-ms (its customers cust-held…:
 * `--fault hold:prefix=cust-held`): the server cannot know whether the
 * money moved, so it answers 503 outcome_pending and keeps the key; the
 * retry asks the acquirer again under the same key downstream and is
 * answered the first charge. One charge, read from the acquirer's ledger. */
static int held_answer(const struct opts *o)
{
    char key[64], cust[64], body[256], other[256], txn[64], again[64], charge[64], id[64];
    char status[32];
    struct reply r;
    snprintf(key, sizeof key, "demo-%s-held", run_id);
    snprintf(cust, sizeof cust, "cust-held-demo-%s", run_id);
    payment_body(body, sizeof body, cust, "12.34");
    payment_body(other, sizeof other, cust, "12.35");
    printf("\n6. The acquirer charges and its answer is lost (held past the server's timeout)\n");
    call(o, "POST", "/api/v1/payments", key, body, 30000, &r);
    show("POST", &r);
    field(&r, "transaction_id", txn, sizeof txn);
    int ok = r.status == 503 && txn[0];
    reply_free(&r);
    call(o, "POST", "/api/v1/payments", key, other, 30000, &r);
    show("POST another amount, same key", &r);
    ok = ok && r.status == 422;
    printf("     the key was kept, not released: %s\n", r.status == 422 ? "yes" : "NO");
    reply_free(&r);
    for (int attempt = 0; attempt < 60; attempt++) {
        call(o, "POST", "/api/v1/payments", key, body, 30000, &r);
        show("POST retry, same key", &r);
        if (r.status != 409 && r.status != 503)
            break;
        long wait = atol(r.retry_after) > 0 ? atol(r.retry_after) * 1000 : 1000;
        reply_free(&r);
        sleep_ms(wait);
    }
    field(&r, "transaction_id", again, sizeof again);
    field(&r, "charge_id", charge, sizeof charge);
    ok = ok && (r.status == 200 || r.status == 201) && strcmp(again, txn) == 0;
    reply_free(&r);
    int n = acquirer_charges(o, txn, id, status);
    printf("  the acquirer's ledger, charges for %s: %d (%s %s)\n", txn, n, id, status);
    ok = ok && n == 1 && strcmp(id, charge) == 0 && strcmp(status, "succeeded") == 0;
    printf("  one charge at the acquirer, the payment's: %s\n", ok ? "yes" : "NO");
    return ok ? 0 : -1;
}

/* Counts payments per idempotency key for one customer, through the API;
 * returns how many keys were charged more than once, or -1. */
static int double_charges_for(const struct opts *o, const char *customer, int *payments,
                              int *at_acquirer)
{
    char path[256], cursor[64] = "";
    char keys[256][80];
    int counts[256] = {0}, nkeys = 0, doubles = 0;
    for (int page = 0; page < 100; page++) {
        struct reply r;
        snprintf(path, sizeof path, "/api/v1/payments?limit=100&customer_id=%s%s%s", customer,
                 cursor[0] ? "&starting_after=" : "", cursor);
        call(o, "GET", path, NULL, NULL, 30000, &r);
        cJSON *root = r.status == 200 ? cJSON_Parse(r.body) : NULL;
        reply_free(&r);
        if (!root)
            return -1;
        cJSON *item;
        cJSON_ArrayForEach(item, cJSON_GetObjectItem(root, "payments"))
        {
            cJSON *k = cJSON_GetObjectItem(item, "idempotency_key");
            const char *key = cJSON_IsString(k) ? k->valuestring : "(none)";
            int i = 0;
            while (i < nkeys && strcmp(keys[i], key) != 0)
                i++;
            if (i == nkeys && nkeys < 256)
                snprintf(keys[nkeys++], sizeof keys[0], "%s", key);
            if (i < nkeys)
                counts[i]++;
            (*payments)++;
            /* and, given the acquirer, in its ledger: one charge per payment */
            cJSON *txn = cJSON_GetObjectItem(item, "transaction_id");
            char id[64], status[32];
            int n = o->acquirer_url && cJSON_IsString(txn)
                        ? acquirer_charges(o, txn->valuestring, id, status)
                        : 1;
            if (n != 1) {
                printf("  payment %s has %d charges at the acquirer\n", txn->valuestring, n);
                doubles++;
            }
            *at_acquirer += o->acquirer_url && n > 0 ? n : 0;
        }
        cJSON *next = cJSON_GetObjectItem(root, "next_cursor");
        int more = cJSON_IsString(next);
        if (more)
            snprintf(cursor, sizeof cursor, "%s", next->valuestring);
        cJSON_Delete(root);
        if (!more)
            break;
    }
    for (int i = 0; i < nkeys; i++)
        if (counts[i] > 1) {
            printf("  key %s was charged %d times\n", keys[i], counts[i]);
            doubles++;
        }
    return doubles;
}

/* ---- webhooks: the run's events, received and verified ----------------- */

static struct receiver *hooks;
static char endpoint_id[64];

/* 0: an endpoint of ours registered and its secret given to the receiver. */
static int webhooks_register(const struct opts *o)
{
    char err[256], url[512], body[700], secret[128];
    printf("\n0. A webhook endpoint served by this walkthrough\n");
    hooks = receiver_start(o->webhook_listen, err, sizeof err);
    if (!hooks) {
        printf("  %s\n", err);
        return -1;
    }
    char host[256] = "127.0.0.1";
    /* Listening on every interface (a container): the server reaches us by
     * our host name. */
    if (strncmp(o->webhook_listen, "127.0.0.1:", 10) != 0 && gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "127.0.0.1");
    if (o->webhook_url)
        snprintf(url, sizeof url, "%s", o->webhook_url);
    else
        snprintf(url, sizeof url, "http://%s:%d/hooks/mockery", host, receiver_port(hooks));
    snprintf(body, sizeof body, "{\"url\":\"%s\"}", url);
    struct reply r;
    call(o, "POST", "/api/v1/webhook_endpoints", NULL, body, 10000, &r);
    field(&r, "id", endpoint_id, sizeof endpoint_id);
    field(&r, "secret", secret, sizeof secret);
    int ok = r.status == 201 && endpoint_id[0] && secret[0];
    if (ok) {
        receiver_set_secret(hooks, secret);
        printf("  POST /api/v1/webhook_endpoints %s -> 201 %s (secret %.10s...)\n", url,
               endpoint_id, secret);
    } else {
        char code[64];
        printf("  POST /api/v1/webhook_endpoints %s -> %ld %s\n", url, r.status,
               field(&r, "code", code, sizeof code));
        if (strcmp(code, "url_not_allowed") == 0)
            printf("  (the server refuses loopback and private URLs: start it with "
                   "--webhook-allow-private true)\n");
        receiver_stop(hooks);
        hooks = NULL;
    }
    reply_free(&r);
    return ok ? 0 : -1;
}

/* Is a listed event this run's? A payment's names one of our customers
 * (their ids end with run_id); a refund names a payment of ours, which
 * the list (newest first) has already shown. */
static int ours(const cJSON *object, char (*txns)[64], int *ntxns, int max)
{
    const cJSON *cust = cJSON_GetObjectItemCaseSensitive(object, "customer_id");
    const cJSON *txn = cJSON_GetObjectItemCaseSensitive(object, "transaction_id");
    const cJSON *refund = cJSON_GetObjectItemCaseSensitive(object, "refund_id");
    if (!cJSON_IsString(txn))
        return 0;
    if (cJSON_IsString(refund)) {
        for (int i = 0; i < *ntxns; i++)
            if (strcmp(txns[i], txn->valuestring) == 0)
                return 1;
        return 0;
    }
    size_t n = strlen(run_id), len = cJSON_IsString(cust) ? strlen(cust->valuestring) : 0;
    if (len < n || strcmp(cust->valuestring + len - n, run_id) != 0)
        return 0;
    if (*ntxns < max)
        snprintf(txns[(*ntxns)++], 64, "%s", txn->valuestring);
    return 1;
}

/* This run's events, as the API lists them (oldest first). */
static int run_events(const struct opts *o, struct received_event *out, int max)
{
    static char txns[256][64];
    int ntxns = 0, n = 0;
    struct reply r;
    call(o, "GET", "/api/v1/events?limit=500", NULL, NULL, 10000, &r);
    cJSON *j = r.status == 200 && r.body ? cJSON_Parse(r.body) : NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(j, "events");
    /* oldest first, so that a refund comes after its payment */
    for (int i = cJSON_GetArraySize(list) - 1; j && i >= 0 && n < max; i--) {
        const cJSON *e = cJSON_GetArrayItem(list, i);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(e, "type");
        const cJSON *object =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(e, "data"), "object");
        if (!cJSON_IsString(id) || !cJSON_IsString(type) || !ours(object, txns, &ntxns, 256))
            continue;
        snprintf(out[n].id, sizeof out[n].id, "%s", id->valuestring);
        snprintf(out[n].type, sizeof out[n].type, "%s", type->valuestring);
        n++;
    }
    int listed = j != NULL;
    cJSON_Delete(j);
    reply_free(&r);
    return listed ? n : -1;
}

/* Waits (up to 30 s) for every event of the run at our endpoint; prints
 * them; removes the endpoint. 0 when every one came, signed. */
static int webhooks_check(const struct opts *o)
{
    enum { MAX = 256 };
    struct received_event want[MAX];
    printf("\nThe run's events at our webhook endpoint (signatures checked, deduped by "
           "Mockery-Event-Id)\n");
    int n = run_events(o, want, MAX), missing = n < 0 ? 1 : n;
    for (int waited = 0; n >= 0 && missing > 0 && waited < 300; waited++) {
        missing = 0;
        for (int i = 0; i < n; i++)
            missing += !receiver_has(hooks, want[i].id);
        if (missing)
            sleep_ms(100);
    }
    for (int i = 0; i < n; i++)
        printf("  %-18s %s  %s\n", want[i].type, want[i].id,
               receiver_has(hooks, want[i].id) ? "received, signature ok" : "NOT RECEIVED");
    struct receiver_counts c;
    receiver_counts(hooks, &c);
    printf("  %d events of this run, %d received (%d deliveries: %d signed correctly, %d "
           "duplicates dropped)\n",
           n, n - missing, c.deliveries, c.verified, c.duplicates);
    struct reply r;
    char path[128];
    snprintf(path, sizeof path, "/api/v1/webhook_endpoints/%s", endpoint_id);
    call(o, "DELETE", path, NULL, NULL, 10000, &r);
    reply_free(&r);
    receiver_stop(hooks);
    hooks = NULL;
    /* every delivery signed correctly; a duplicate is allowed (at least
     * once), and dropped */
    return n > 0 && missing == 0 && c.verified == c.deliveries ? 0 : -1;
}

static void usage(void)
{
    fputs("usage: mockery-demo [--url URL] [--acquirer-url URL] [--api-key KEY] [--timeout-ms N]\n"
          "                    [--burst N] [--wait S] [--webhook-listen PORTS]\n"
          "                    [--webhook-url URL]\n"
          "  --url         the server (http://127.0.0.1:8080)\n"
          "  --acquirer-url  the server's mockery-acquirer, started with\n"
          "                --fault hold:prefix=cust-held:ms=N (N above the server's\n"
          "                --acquirer-timeout-ms): step 6, and the charges counted in its\n"
          "                ledger too\n"
          "  --api-key     sent as Authorization: Bearer KEY when the server has keys\n"
          "  --timeout-ms  the impatient client of steps 1 and 5 (500): the payments and\n"
          "                refunds of its cust-slow customers take 1.5 s, so the answer is lost\n"
          "  --burst       concurrent duplicates in step 3 (20)\n"
          "  --wait        seconds to wait for the server's /health to answer 200 (60)\n"
          "  --webhook-listen  where this walkthrough's webhook endpoint listens, as\n"
          "                civetweb's listening_ports (127.0.0.1:0: any free port)\n"
          "  --webhook-url the endpoint's URL as the server reaches it\n"
          "                (http://HOST:PORT/hooks/mockery, HOST 127.0.0.1 or, listening\n"
          "                on more than loopback, this machine's name); the server needs\n"
          "                --webhook-allow-private true for a loopback or private one\n",
          stderr);
}

int main(int argc, char **argv)
{
    struct opts o = {.url = "http://127.0.0.1:8080",
                     .timeout_ms = 500,
                     .burst = 20,
                     .wait_s = 60,
                     .webhook_listen = "127.0.0.1:0"};
    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(argv[i], "--url") && v)
            o.url = v, i++;
        else if (!strcmp(argv[i], "--acquirer-url") && v)
            o.acquirer_url = v, i++;
        else if (!strcmp(argv[i], "--api-key") && v)
            o.api_key = v, i++;
        else if (!strcmp(argv[i], "--timeout-ms") && v && atol(v) > 0)
            o.timeout_ms = atol(v), i++;
        else if (!strcmp(argv[i], "--burst") && v && atoi(v) >= 2 && atoi(v) <= 500)
            o.burst = atoi(v), i++;
        else if (!strcmp(argv[i], "--wait") && v && atoi(v) >= 0 && atoi(v) <= 3600)
            o.wait_s = atoi(v), i++;
        else if (!strcmp(argv[i], "--webhook-listen") && v)
            o.webhook_listen = v, i++;
        else if (!strcmp(argv[i], "--webhook-url") && v)
            o.webhook_url = v, i++;
        else {
            usage();
            return 2;
        }
    }
    unsigned char rnd[4];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return 1;
    snprintf(run_id, sizeof run_id, "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    /* A server just started (docker-compose up) may not answer yet, or
     * answer 503 until its database does: ask again until the deadline. */
    struct reply h;
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int attempt = 0;; attempt++) {
        call(&o, "GET", "/health", NULL, NULL, 5000, &h);
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (h.status == 200 || now.tv_sec - t0.tv_sec >= o.wait_s)
            break;
        if (attempt == 0)
            printf("Waiting up to %d s for %s/health (now: %s)\n", o.wait_s, o.url,
                   h.status ? "not 200" : h.error);
        reply_free(&h);
        sleep_ms(500);
    }
    printf("Mockery payment service at %s: /health %ld %s\n", o.url, h.status,
           h.body ? h.body : h.error);
    int ok = h.status == 200;
    reply_free(&h);
    if (!ok) {
        curl_global_cleanup();
        return 1;
    }
    int failed = webhooks_register(&o) != 0;
    failed |= lost_response(&o) != 0;
    failed |= three_payments(&o) != 0;
    failed |= burst(&o) != 0;
    failed |= declined(&o) != 0;
    failed |= refunds(&o) != 0;
    if (o.acquirer_url)
        failed |= held_answer(&o) != 0;

    printf("\nCounting the charges per idempotency key through the API%s\n",
           o.acquirer_url ? ", and in the acquirer's ledger" : "");
    const char *prefixes[] = {"cust-slow-demo-",        "cust-demo-",
                              "cust-slow-demo-burst-",  "cust-declined-demo-",
                              "cust-slow-demo-refund-", "cust-held-demo-"};
    size_t nprefixes = sizeof prefixes / sizeof prefixes[0] - (o.acquirer_url ? 0 : 1);
    int doubles = 0, payments = 0, at_acquirer = 0, keys = o.acquirer_url ? 8 : 7;
    for (size_t i = 0; i < nprefixes; i++) {
        char cust[64];
        snprintf(cust, sizeof cust, "%s%s", prefixes[i], run_id);
        int d = double_charges_for(&o, cust, &payments, &at_acquirer);
        if (d < 0) {
            printf("  could not list the payments of %s\n", cust);
            failed = 1;
        } else {
            doubles += d;
        }
    }
    printf("  %d payments for %d keys (%d requests sent)\n", payments, keys,
           3 + 3 + o.burst + 2 + 1 + (o.acquirer_url ? 4 : 0));
    if (o.acquirer_url)
        printf("  %d charges at the acquirer for %d payments\n", at_acquirer, payments);
    if (hooks)
        failed |= webhooks_check(&o) != 0;
    printf("double charges: %d\n", doubles);
    curl_global_cleanup();
    if (payments != keys || (o.acquirer_url && at_acquirer != payments))
        failed = 1;
    return doubles == 0 && !failed ? 0 : 1;
}
