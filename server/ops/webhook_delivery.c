/* webhook_delivery.c - deliveries sent with libcurl's multi interface
 * (webhook_delivery.h) */
#define _POSIX_C_SOURCE 200809L
#include "webhook_delivery.h"

#include <curl/curl.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "webhook_endpoint.h"
#include "webhook_signature.h"

/* A claim's lease: past the attempt's own bound, so that the attempt is
 * over (answered, or given up by libcurl) before another server may claim
 * the delivery again. */
#define LEASE_MARGIN_MS 5000

/* One attempt in flight. */
struct attempt {
    CURL *h;
    struct curl_slist *headers;
    int refused; /* an address the check refused */
};

struct webhook_sender {
    struct webhook_options o;
    CURLM *multi; /* keeps the connections between passes */
    struct attempt a[WEBHOOK_BATCH];
    int stopping; /* atomic */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static int curl_ready;

static void curl_start(void)
{
    curl_ready = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
}

struct webhook_sender *webhook_sender_new(const struct webhook_options *o)
{
    pthread_once(&curl_once, curl_start);
    struct webhook_sender *w = curl_ready ? calloc(1, sizeof *w) : NULL;
    if (!w)
        return NULL;
    w->o = *o;
    w->multi = curl_multi_init();
    int ok = w->multi != NULL;
    /* A bound, not a queue: a pass never has more attempts than this to
     * one host (webhook_delivery.h). */
    if (ok)
        curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)WEBHOOK_HOST_CONNECTIONS);
    for (int i = 0; ok && i < WEBHOOK_BATCH; i++)
        ok = (w->a[i].h = curl_easy_init()) != NULL;
    if (!ok) {
        webhook_sender_free(w);
        return NULL;
    }
    return w;
}

void webhook_sender_free(struct webhook_sender *w)
{
    if (!w)
        return;
    for (int i = 0; i < WEBHOOK_BATCH; i++)
        if (w->a[i].h)
            curl_easy_cleanup(w->a[i].h);
    if (w->multi)
        curl_multi_cleanup(w->multi);
    free(w);
}

void webhook_sender_stop(struct webhook_sender *w)
{
    __atomic_store_n(&w->stopping, 1, __ATOMIC_RELEASE);
    curl_multi_wakeup(w->multi);
}

static int stopping(struct webhook_sender *w)
{
    return __atomic_load_n(&w->stopping, __ATOMIC_ACQUIRE);
}

int64_t webhook_retry_delay_ms(int backoff_ms, int attempt, double draw)
{
    int64_t d = backoff_ms;
    for (int i = 1; i < attempt && d < WEBHOOK_BACKOFF_CAP_MS; i++)
        d *= 2;
    if (d > WEBHOOK_BACKOFF_CAP_MS)
        d = WEBHOOK_BACKOFF_CAP_MS;
    /* jitter: retries of many deliveries that failed together (an endpoint
     * down for a while) spread out rather than arrive together */
    return (int64_t)((double)d * (0.5 + draw));
}

static double draw(void)
{
    uint32_t r = 0;
    if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        return 0.5;
    return (double)r / 4294967296.0;
}

/* libcurl opens every connection here: refused unless the address is one a
 * tenant may reach. A connection kept alive was checked when opened. */
static curl_socket_t open_socket(void *arg, curlsocktype purpose, struct curl_sockaddr *addr)
{
    struct attempt *a = arg;
    if (purpose == CURLSOCKTYPE_IPCXN && !webhook_address_public(&addr->addr)) {
        a->refused = 1;
        return CURL_SOCKET_BAD;
    }
    return socket(addr->family, addr->socktype, addr->protocol);
}

/* The receiver's answer body is not ours to keep. */
static size_t discard(char *p, size_t size, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return size * n;
}

/* Sets up attempt a for delivery d: 0, or -1 when out of memory. */
static int prepare(struct webhook_sender *w, struct attempt *a, const struct store_delivery *d)
{
    char sig[WEBHOOK_SIGNATURE_MAX], h_sig[WEBHOOK_SIGNATURE_MAX + 32], h_id[160];
    if (webhook_signature(d->secret, (int64_t)time(NULL), d->body, d->body_len, sig) != 0)
        return -1;
    snprintf(h_sig, sizeof h_sig, "Mockery-Signature: %s", sig);
    snprintf(h_id, sizeof h_id, "Mockery-Event-Id: %s", d->event_id);
    const char *lines[] = {"Content-Type: application/json", "User-Agent: mockery-webhooks/1",
                           "Expect:", h_id, h_sig};
    a->headers = NULL;
    a->refused = 0;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct curl_slist *l = curl_slist_append(a->headers, lines[i]);
        if (!l) {
            curl_slist_free_all(a->headers);
            a->headers = NULL;
            return -1;
        }
        a->headers = l;
    }
    CURL *h = a->h;
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, d->url);
    curl_easy_setopt(h, CURLOPT_POST, 1L);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, d->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)d->body_len);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, a->headers);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)w->o.timeout_ms);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_PRIVATE, a);
    if (!w->o.allow_private) {
        curl_easy_setopt(h, CURLOPT_OPENSOCKETFUNCTION, open_socket);
        curl_easy_setopt(h, CURLOPT_OPENSOCKETDATA, a);
    }
    return 0;
}

/* What came of one attempt, as the store keeps it. */
static void judge(const struct webhook_sender *w, const struct attempt *a, CURLcode rc,
                  const struct store_delivery *d, struct store_delivery_result *r, char *error,
                  size_t errlen)
{
    long status = 0;
    curl_easy_getinfo(a->h, CURLINFO_RESPONSE_CODE, &status);
    *r = (struct store_delivery_result){
        .tenant = d->tenant,
        .event_id = d->event_id,
        .endpoint_id = d->endpoint_id,
        .attempt = d->attempt,
        .attempts = d->attempt,
        .http_status = rc == CURLE_OK ? (int)status : 0,
    };
    if (rc == CURLE_OK && status >= 200 && status <= 299) {
        r->state = STORE_DELIVERY_DELIVERED;
        return;
    }
    if (rc == CURLE_OK)
        snprintf(error, errlen, "HTTP %ld", status);
    else if (a->refused)
        snprintf(error, errlen, "address not allowed (loopback, private or reserved)");
    else if (rc == CURLE_OPERATION_TIMEDOUT)
        snprintf(error, errlen, "timeout after %d ms", w->o.timeout_ms);
    else
        snprintf(error, errlen, "%s", curl_easy_strerror(rc));
    r->error = error;
    r->state = d->attempt >= w->o.max_attempts ? STORE_DELIVERY_FAILED : STORE_DELIVERY_RETRY;
    r->retry_in_ms = webhook_retry_delay_ms(w->o.backoff_ms, d->attempt, draw());
}

/* Runs the attempts added to the multi handle until all are done, or the
 * sender stops (then 1: the rest are not done). */
static int run_all(struct webhook_sender *w, const struct store_delivery_list *l,
                   struct store_delivery_result *r, char (*errors)[160], int *done)
{
    int running = 1;
    while (running > 0) {
        if (stopping(w))
            return 1;
        if (curl_multi_perform(w->multi, &running) != CURLM_OK)
            break;
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(w->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct attempt *a = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
            size_t i = (size_t)(a - w->a);
            judge(w, a, m->data.result, &l->items[i], &r[i], errors[i], sizeof errors[i]);
            done[i] = 1;
        }
        if (running > 0)
            curl_multi_poll(w->multi, NULL, 0, 1000, NULL);
    }
    return 0;
}

/* A delivery failed without being sent: claimed again after the last
 * allowed attempt's server died before writing its result, or whose
 * endpoint is gone. */
static void give_up(const struct store_delivery *d, struct store_delivery_result *r)
{
    *r = (struct store_delivery_result){
        .tenant = d->tenant,
        .event_id = d->event_id,
        .endpoint_id = d->endpoint_id,
        .attempt = d->attempt,
        .attempts = d->attempt - 1,
        .state = STORE_DELIVERY_FAILED,
        .error = d->url ? "the last attempt ended without an answer (its server stopped)"
                        : "the endpoint or the event no longer exists",
    };
}

void webhook_deliver_due(struct webhook_sender *w, struct store *s, struct webhook_pass *out)
{
    *out = (struct webhook_pass){0};
    if (stopping(w))
        return;
    struct store_delivery_list l = {0};
    out->store =
        store_claim_deliveries(s, WEBHOOK_BATCH, (int64_t)w->o.timeout_ms + LEASE_MARGIN_MS, &l,
                               out->error, sizeof out->error);
    if (out->store != STORE_OK || l.count == 0) {
        store_delivery_list_clear(&l); /* an empty list is allocated too */
        return;
    }
    out->claimed = (int)l.count;
    struct store_delivery_result r[WEBHOOK_BATCH];
    char errors[WEBHOOK_BATCH][160];
    int done[WEBHOOK_BATCH] = {0}, added[WEBHOOK_BATCH] = {0};
    for (size_t i = 0; i < l.count; i++) {
        if (l.items[i].attempt > w->o.max_attempts || !l.items[i].url) {
            give_up(&l.items[i], &r[i]);
            done[i] = 1;
        } else if (prepare(w, &w->a[i], &l.items[i]) == 0) {
            added[i] = curl_multi_add_handle(w->multi, w->a[i].h) == CURLM_OK;
            if (!added[i]) {
                curl_slist_free_all(w->a[i].headers);
                w->a[i].headers = NULL;
            }
        }
        /* not added (out of memory): left claimed, due again after its lease */
    }
    /* Stopping: the attempts still under way are left claimed (sent again
     * after their lease); those that ended are written all the same. */
    run_all(w, &l, r, errors, done);
    for (size_t i = 0; i < l.count; i++) {
        if (added[i]) {
            curl_multi_remove_handle(w->multi, w->a[i].h);
            curl_slist_free_all(w->a[i].headers);
            w->a[i].headers = NULL;
        }
    }
    /* The results written, in one statement: the finished ones first. */
    size_t n = 0;
    for (size_t i = 0; i < l.count; i++) {
        if (!done[i])
            continue;
        if (r[i].state == STORE_DELIVERY_DELIVERED)
            out->delivered++;
        else {
            if (r[i].state == STORE_DELIVERY_RETRY)
                out->retried++;
            else
                out->failed++;
            snprintf(out->error, sizeof out->error, "%s %s: %s", r[i].event_id, r[i].endpoint_id,
                     r[i].error);
        }
        r[n++] = r[i];
    }
    char err[256] = "";
    enum store_status st = store_finish_deliveries(s, r, n, err, sizeof err);
    if (st != STORE_OK) {
        out->store = st;
        snprintf(out->error, sizeof out->error, "%s", err);
    }
    store_delivery_list_clear(&l);
}
