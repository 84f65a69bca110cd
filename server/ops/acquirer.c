/* acquirer.c - the acquirer's client over libcurl (acquirer.h) */
#define _POSIX_C_SOURCE 200809L
#include "acquirer.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "clock.h"

/* An answer larger than this cannot be the acquirer's: read as unknown. */
#define ANSWER_MAX 65536

struct acquirer {
    char base[512];
    long timeout_ms;
    pthread_mutex_t mu;
    CURL **idle; /* handles not in use, each keeping its connection open */
    int nidle, max_idle;
    unsigned long long connections; /* atomic */
    struct acquirer_stats stats;    /* atomic, each member */
};

const double ACQUIRER_BUCKET_S[ACQUIRER_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25,  0.5,  1,     2.5,  5};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_start(void)
{
    curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

struct acquirer *acquirer_new(const char *base_url, long timeout_ms, int max_idle)
{
    pthread_once(&curl_once, curl_start);
    if (!curl_ready || strlen(base_url) >= sizeof((struct acquirer *)0)->base)
        return NULL;
    struct acquirer *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->max_idle = max_idle > 0 ? max_idle : 1;
    a->idle = calloc((size_t)a->max_idle, sizeof *a->idle);
    if (!a->idle) {
        free(a);
        return NULL;
    }
    snprintf(a->base, sizeof a->base, "%s", base_url);
    size_t n = strlen(a->base);
    while (n && a->base[n - 1] == '/')
        a->base[--n] = '\0';
    a->timeout_ms = timeout_ms;
    pthread_mutex_init(&a->mu, NULL);
    return a;
}

void acquirer_free(struct acquirer *a)
{
    if (!a)
        return;
    for (int i = 0; i < a->nidle; i++)
        curl_easy_cleanup(a->idle[i]);
    free(a->idle);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

unsigned long long acquirer_connections(const struct acquirer *a)
{
    return __atomic_load_n(&a->connections, __ATOMIC_RELAXED);
}

/* read and written as an array of counters */
_Static_assert(sizeof(struct acquirer_stats) % sizeof(unsigned long long) == 0,
               "struct acquirer_stats holds counters alone");

void acquirer_stats(const struct acquirer *a, struct acquirer_stats *out)
{
    const unsigned long long *in = (const unsigned long long *)&a->stats;
    unsigned long long *to = (unsigned long long *)out;
    for (size_t i = 0; i < sizeof *out / sizeof *to; i++)
        to[i] = __atomic_load_n(&in[i], __ATOMIC_RELAXED);
    out->connections = acquirer_connections(a);
}

const char *acquirer_op_name(enum acquirer_op op)
{
    return op == ACQUIRER_OP_REFUND ? "refund" : "charge";
}

/* Counts one ask that took us microseconds. */
static void count_ask(struct acquirer *a, enum acquirer_op op, enum acquirer_verdict v, int64_t us)
{
    struct acquirer_stats *st = &a->stats;
    __atomic_add_fetch(&st->calls[op][v], 1, __ATOMIC_RELAXED);
    for (int i = 0; i < ACQUIRER_BUCKETS; i++)
        if (us <= (int64_t)(ACQUIRER_BUCKET_S[i] * 1e6)) {
            __atomic_add_fetch(&st->buckets[i], 1, __ATOMIC_RELAXED);
            break;
        }
    __atomic_add_fetch(&st->count, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&st->sum_us, (unsigned long long)(us > 0 ? us : 0), __ATOMIC_RELAXED);
}

const char *acquirer_verdict_name(enum acquirer_verdict v)
{
    switch (v) {
    case ACQUIRER_MOVED:
        return "moved";
    case ACQUIRER_DECLINED:
        return "declined";
    case ACQUIRER_NOTHING_MOVED:
        return "nothing_moved";
    case ACQUIRER_UNKNOWN:
        return "unknown";
    }
    return "unknown";
}

/* A handle with its open connection, or a new one. */
static CURL *take(struct acquirer *a)
{
    CURL *h = NULL;
    pthread_mutex_lock(&a->mu);
    if (a->nidle > 0)
        h = a->idle[--a->nidle];
    pthread_mutex_unlock(&a->mu);
    return h ? h : curl_easy_init();
}

static void give_back(struct acquirer *a, CURL *h)
{
    pthread_mutex_lock(&a->mu);
    if (a->nidle < a->max_idle) {
        a->idle[a->nidle++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&a->mu);
    if (h)
        curl_easy_cleanup(h);
}

struct buffer {
    char data[ANSWER_MAX + 1];
    size_t len;
    int too_long;
    int replayed;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct buffer *b = arg;
    size_t len = size * n;
    if (b->len + len > ANSWER_MAX) {
        b->too_long = 1;
        return 0; /* ends the transfer: read as unknown */
    }
    memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct buffer *b = arg;
    size_t len = size * n;
    static const char NAME[] = "Idempotent-Replayed:";
    if (len > sizeof NAME - 1 && strncasecmp(p, NAME, sizeof NAME - 1) == 0) {
        const char *v = p + sizeof NAME - 1;
        while (*v == ' ' || *v == '\t')
            v++;
        b->replayed = strncasecmp(v, "true", 4) == 0;
    }
    return len;
}

static void copy_string(const cJSON *obj, const char *name, char *out, size_t size)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (cJSON_IsString(v) && strlen(v->valuestring) < size)
        snprintf(out, size, "%s", v->valuestring);
}

/* What an HTTP answer means (acquirer.h's table). id_field names the id a
 * success or a decline must carry: without it the outcome cannot be
 * recorded, so it is unknown. */
static void classify(int status, const struct buffer *b, const char *id_field,
                     struct acquirer_answer *out)
{
    out->status = status;
    out->replayed = b->replayed;
    cJSON *root = b->too_long ? NULL : cJSON_ParseWithLength(b->data, b->len);
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
    if (root && (status == 200 || status == 201 || status == 402))
        copy_string(root, id_field, out->id, sizeof out->id);
    if (cJSON_IsObject(err))
        copy_string(err, "code", out->detail, sizeof out->detail);
    if (status == 200 || status == 201 || status == 402) {
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(root, "status");
        const char *want = status == 402 ? "declined" : "succeeded";
        if (out->id[0] && cJSON_IsString(st) && strcmp(st->valuestring, want) == 0) {
            out->verdict = status == 402 ? ACQUIRER_DECLINED : ACQUIRER_MOVED;
            if (status == 402)
                copy_string(root, "decline_code", out->decline_code, sizeof out->decline_code);
        } else {
            out->verdict = ACQUIRER_UNKNOWN;
            snprintf(out->detail, sizeof out->detail, "a %d without a %s and status '%s'", status,
                     id_field, want);
        }
    } else if (status >= 400 && status < 500 && status != 409 &&
               strcmp(out->detail, "idempotency_key_reused") != 0) {
        out->verdict = ACQUIRER_NOTHING_MOVED;
    } else {
        out->verdict = ACQUIRER_UNKNOWN; /* 409 (still running), 5xx, anything else */
        if (!out->detail[0])
            snprintf(out->detail, sizeof out->detail, "HTTP %d", status);
    }
    cJSON_Delete(root);
}

static void ask_once(struct acquirer *a, const char *path, const char *key, const char *body,
                     const char *id_field, struct acquirer_answer *out);

/* One ask, counted. */
static void ask(struct acquirer *a, enum acquirer_op op, const char *path, const char *key,
                const char *body, const char *id_field, struct acquirer_answer *out)
{
    int64_t start = clock_mono_us();
    ask_once(a, path, key, body, id_field, out);
    count_ask(a, op, out->verdict, clock_mono_us() - start);
}

static void ask_once(struct acquirer *a, const char *path, const char *key, const char *body,
                     const char *id_field, struct acquirer_answer *out)
{
    memset(out, 0, sizeof *out);
    out->verdict = ACQUIRER_UNKNOWN;
    struct buffer *b = calloc(1, sizeof *b);
    CURL *h = b ? take(a) : NULL;
    char url[600], key_header[300];
    struct curl_slist *headers = NULL;
    if (!h || !body || strlen(key) > 255) {
        /* nothing was sent */
        out->verdict = ACQUIRER_NOTHING_MOVED;
        snprintf(out->detail, sizeof out->detail,
                 body && b && h ? "downstream key too long" : "out of memory");
        if (h)
            give_back(a, h);
        free(b);
        return;
    }
    snprintf(url, sizeof url, "%s%s", a->base, path);
    snprintf(key_header, sizeof key_header, "Idempotency-Key: %s", key);
    headers = curl_slist_append(headers, "Content-Type: application/json");
    headers = curl_slist_append(headers, key_header);
    curl_easy_reset(h); /* the options of the last ask, not its connection */
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, a->timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, b);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    CURLcode rc = curl_easy_perform(h);
    long status = 0, connects = 0, sent = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &connects);
    curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &sent);
    __atomic_add_fetch(&a->connections, (unsigned long long)connects, __ATOMIC_RELAXED);
    if (rc == CURLE_OK) {
        classify((int)status, b, id_field, out);
    } else {
        /* No answer, or not all of it. Nothing sent (the connection was
         * refused, or not made in time): nothing moved. Sent: the acquirer
         * may have acted on it. */
        out->status = 0;
        out->verdict = sent == 0 ? ACQUIRER_NOTHING_MOVED : ACQUIRER_UNKNOWN;
        snprintf(out->detail, sizeof out->detail, "%s%s", curl_easy_strerror(rc),
                 b->too_long ? " (an answer too long)" : "");
    }
    curl_slist_free_all(headers);
    if (rc == CURLE_OK)
        give_back(a, h);
    else
        curl_easy_cleanup(h); /* its connection is in an unknown state */
    free(b);
}

/* A JSON body, malloc'd; NULL when out of memory. */
static char *charge_body(const struct acquirer_charge *c)
{
    cJSON *o = cJSON_CreateObject();
    char amount[32];
    snprintf(amount, sizeof amount, "%lld", (long long)c->amount_minor);
    /* the amount as its exact digits: cJSON would print a double */
    if (!o || !cJSON_AddItemToObject(o, "amount_minor", cJSON_CreateRaw(amount)) ||
        !cJSON_AddStringToObject(o, "currency", c->currency) ||
        !cJSON_AddStringToObject(o, "customer_id", c->customer_id) ||
        !cJSON_AddStringToObject(o, "merchant", c->merchant) ||
        !cJSON_AddStringToObject(o, "reference", c->reference)) {
        cJSON_Delete(o);
        return NULL;
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

static char *refund_body(const struct acquirer_refund *r)
{
    cJSON *o = cJSON_CreateObject();
    char amount[32];
    snprintf(amount, sizeof amount, "%lld", (long long)r->amount_minor);
    if (!o || !cJSON_AddStringToObject(o, "charge_id", r->charge_id) ||
        !cJSON_AddItemToObject(o, "amount_minor", cJSON_CreateRaw(amount)) ||
        !cJSON_AddStringToObject(o, "reference", r->reference)) {
        cJSON_Delete(o);
        return NULL;
    }
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return text;
}

void acquirer_charge(struct acquirer *a, const char *downstream_key,
                     const struct acquirer_charge *c, struct acquirer_answer *out)
{
    char *body = charge_body(c);
    ask(a, ACQUIRER_OP_CHARGE, "/v1/charges", downstream_key, body, "charge_id", out);
    free(body);
}

void acquirer_refund(struct acquirer *a, const char *downstream_key,
                     const struct acquirer_refund *r, struct acquirer_answer *out)
{
    char *body = refund_body(r);
    ask(a, ACQUIRER_OP_REFUND, "/v1/refunds", downstream_key, body, "refund_id", out);
    free(body);
}

int acquirer_nothing_moved(const struct acquirer_answer *a, int asked_before)
{
    return a->verdict == ACQUIRER_NOTHING_MOVED && (a->status != 0 || !asked_before);
}
