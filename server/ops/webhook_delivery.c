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

#include "clock.h"
#include "webhook_endpoint.h"
#include "webhook_lookback.h"
#include "webhook_signature.h"

/* A claim's lease is past the attempt's own bound, so that the attempt is
 * over (answered, or given up by libcurl) before another server may claim
 * the delivery again. libcurl enforces the bound only while a step runs
 * the attempts; between two runs a step writes results and claims, each
 * statement waiting up to statement_wait_ms for a pooled connection. So:
 * the bound, two such waits, a step, and this. */
#define LEASE_MARGIN_MS 5000

/* A slot for one attempt: free, sending, or done (its result not yet
 * written). */
enum slot_state { SLOT_FREE, SLOT_SENDING, SLOT_DONE };

struct attempt {
    CURL *h;
    struct curl_slist *headers;
    int refused; /* an address the check refused */
    enum slot_state state;
    struct store_delivery d; /* owned unless free */
    struct store_delivery_result r;
    char error[160];
};

struct webhook_sender {
    struct webhook_options o;
    CURLM *multi; /* keeps the connections between steps */
    struct attempt a[WEBHOOK_SLOTS];
    int sending;
    int stopping; /* atomic */
    struct webhook_lookback lookback; /* how far back the next claim looks */
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
    /* A bound, not a queue: a sender never has more attempts under way
     * than this (webhook_delivery.h). */
    if (ok)
        curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)WEBHOOK_HOST_CONNECTIONS);
    /* Kept alive: a cache of as many connections as there are slots (in
     * use and idle). By default libcurl's cache holds four per transfer
     * still added, and each transfer that ends over that closes the
     * oldest idle connection: the last attempts of a burst, and every
     * step with fewer attempts than the connections open, closed one
     * each, and the next burst connected again. */
    if (ok)
        curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, (long)WEBHOOK_SLOTS);
    for (int i = 0; ok && i < WEBHOOK_SLOTS; i++)
        ok = (w->a[i].h = curl_easy_init()) != NULL;
    if (!ok) {
        webhook_sender_free(w);
        return NULL;
    }
    return w;
}

/* Frees slot a: its attempt ended or was never begun. */
static void slot_clear(struct webhook_sender *w, struct attempt *a)
{
    if (a->state == SLOT_SENDING) {
        curl_multi_remove_handle(w->multi, a->h);
        w->sending--;
    }
    curl_slist_free_all(a->headers);
    a->headers = NULL;
    store_delivery_clear(&a->d);
    a->state = SLOT_FREE;
}

void webhook_sender_free(struct webhook_sender *w)
{
    if (!w)
        return;
    /* Attempts still under way are left claimed: sent again after their
     * lease. */
    for (int i = 0; i < WEBHOOK_SLOTS; i++) {
        if (w->a[i].state != SLOT_FREE && w->multi)
            slot_clear(w, &w->a[i]);
        if (w->a[i].h)
            curl_easy_cleanup(w->a[i].h);
    }
    if (w->multi)
        curl_multi_cleanup(w->multi);
    webhook_lookback_forget(&w->lookback);
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

int64_t webhook_lease_ms(const struct webhook_options *o)
{
    return (int64_t)o->timeout_ms + 2LL * o->statement_wait_ms + WEBHOOK_STEP_MS + LEASE_MARGIN_MS;
}

int64_t webhook_retry_span_ms(const struct webhook_options *o)
{
    int64_t span = (int64_t)(o->max_attempts + WEBHOOK_ATTEMPTS_AFTER_DEATHS) * webhook_lease_ms(o);
    for (int attempt = 1; attempt < o->max_attempts; attempt++)
        span += webhook_retry_delay_ms(o->backoff_ms, attempt, 1.0);
    return span;
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
static void judge(const struct webhook_sender *w, struct attempt *a, CURLcode rc)
{
    const struct store_delivery *d = &a->d;
    struct store_delivery_result *r = &a->r;
    char *error = a->error;
    size_t errlen = sizeof a->error;
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

/* Leaves every attempt under way claimed (sent again after its lease):
 * libcurl failed, and running them again would only fail again. */
static void abandon_all(struct webhook_sender *w, const char *why, struct webhook_pass *out)
{
    for (int i = 0; i < WEBHOOK_SLOTS; i++)
        if (w->a[i].state == SLOT_SENDING)
            slot_clear(w, &w->a[i]);
    out->stalled = 1;
    snprintf(out->error, sizeof out->error, "libcurl: %s", why);
}

/* Runs the attempts under way until none is, want of them ended, the
 * sender stops, or WEBHOOK_STEP_MS passed: so that while one endpoint
 * hangs the others' results are written and new deliveries claimed at
 * once, or every step at the latest. */
static void run_some(struct webhook_sender *w, int want, struct webhook_pass *out)
{
    int64_t t0 = clock_mono_us();
    int ended = 0;
    while (w->sending > 0 && !stopping(w)) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(w->multi, &running);
        if (mc != CURLM_OK) {
            abandon_all(w, curl_multi_strerror(mc), out);
            return;
        }
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(w->multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct attempt *a = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
            judge(w, a, m->data.result);
            curl_multi_remove_handle(w->multi, a->h);
            curl_slist_free_all(a->headers);
            a->headers = NULL;
            a->state = SLOT_DONE;
            w->sending--;
            ended++;
        }
        int64_t elapsed_ms = (clock_mono_us() - t0) / 1000;
        if (w->sending == 0 || ended >= want || elapsed_ms >= WEBHOOK_STEP_MS)
            break;
        mc = curl_multi_poll(w->multi, NULL, 0, (int)(WEBHOOK_STEP_MS - elapsed_ms), NULL);
        if (mc != CURLM_OK) {
            abandon_all(w, curl_multi_strerror(mc), out);
            return;
        }
    }
}

/* A delivery failed without being sent: claimed again after the servers
 * of WEBHOOK_ATTEMPTS_AFTER_DEATHS attempts past the last allowed one died
 * before writing their result, or whose endpoint is gone. */
static void give_up(struct attempt *a)
{
    const struct store_delivery *d = &a->d;
    a->r = (struct store_delivery_result){
        .tenant = d->tenant,
        .event_id = d->event_id,
        .endpoint_id = d->endpoint_id,
        .attempt = d->attempt,
        .attempts = d->attempt - 1,
        .state = STORE_DELIVERY_FAILED,
        .error = d->url ? "the last attempts ended without an answer (their servers stopped, "
                          "or their claims came back too late to send)"
                        : "the endpoint or the event no longer exists",
    };
    a->state = SLOT_DONE;
}

/* The endpoints with attempts under way. */
static size_t busy_endpoints(const struct webhook_sender *w, struct store_endpoint_busy *b)
{
    size_t n = 0;
    for (int i = 0; i < WEBHOOK_SLOTS; i++) {
        const struct store_delivery *d = &w->a[i].d;
        if (w->a[i].state == SLOT_SENDING && !store_endpoint_in(b, n, d->tenant, d->endpoint_id))
            b[n++] =
                (struct store_endpoint_busy){.tenant = d->tenant, .endpoint_id = d->endpoint_id};
    }
    return n;
}

/* Claims up to WEBHOOK_CLAIM deliveries for free slots, none to an
 * endpoint with attempts under way, and begins them. */
static void claim_and_begin(struct webhook_sender *w, struct store *s, struct webhook_pass *out)
{
    struct store_endpoint_busy busy[WEBHOOK_SLOTS];
    int free_slots = WEBHOOK_SLOTS - w->sending;
    struct store_delivery_claim c = {
        .batch = free_slots < WEBHOOK_CLAIM ? free_slots : WEBHOOK_CLAIM,
        .lease_ms = webhook_lease_ms(&w->o),
        .busy = busy,
        /* the lease keeps LEASE_MARGIN_MS for the time until the attempts
         * begin: a claim statement that ran longer (a lock wait, a slow
         * database) may leave too little to finish them before another
         * server may claim the same rows */
        .late_after_ms = LEASE_MARGIN_MS,
    };
    c.nbusy = busy_endpoints(w, busy);
    int64_t began_us = clock_mono_us();
    c.lookback_ms =
        webhook_lookback_ms(&w->lookback, busy, c.nbusy, began_us, w->o.statement_wait_ms);
    struct store_delivery_list l = {0};
    out->store = store_claim_deliveries(s, &c, &l, out->error, sizeof out->error);
    /* a claim served only from what completions handed off read no row */
    if (c.lookback_ms == 0 && !(out->store == STORE_OK && l.table_unread))
        webhook_lookback_looked_all(&w->lookback, began_us,
                                    out->store == STORE_OK && l.count + l.late < (size_t)c.batch,
                                    busy, c.nbusy);
    if (out->store != STORE_OK) {
        store_delivery_list_clear(&l); /* an empty list is allocated too */
        return;
    }
    out->late = (int)l.late; /* logged on a line of their own */
    out->claimed = (int)l.count;
    int slot = 0;
    for (size_t i = 0; i < l.count; i++) {
        while (slot < WEBHOOK_SLOTS && w->a[slot].state != SLOT_FREE)
            slot++;
        if (slot == WEBHOOK_SLOTS)
            break; /* cannot be: a claim takes no more than the free slots */
        struct attempt *a = &w->a[slot];
        a->d = l.items[i];
        memset(&l.items[i], 0, sizeof l.items[i]); /* a owns its strings now */
        if (a->d.attempt > w->o.max_attempts + WEBHOOK_ATTEMPTS_AFTER_DEATHS || !a->d.url) {
            give_up(a);
        } else if (prepare(w, a, &a->d) == 0 && curl_multi_add_handle(w->multi, a->h) == CURLM_OK) {
            a->state = SLOT_SENDING;
            w->sending++;
        } else {
            /* out of memory: left claimed, due again after its lease */
            curl_slist_free_all(a->headers);
            a->headers = NULL;
            store_delivery_clear(&a->d);
        }
    }
    store_delivery_list_clear(&l);
}

/* Writes every finished attempt's result in one statement and frees its
 * slot. */
static void write_done(struct webhook_sender *w, struct store *s, struct webhook_pass *out)
{
    struct store_delivery_result r[WEBHOOK_SLOTS];
    struct attempt *from[WEBHOOK_SLOTS];
    size_t n = 0;
    for (int i = 0; i < WEBHOOK_SLOTS; i++) {
        struct attempt *a = &w->a[i];
        if (a->state != SLOT_DONE)
            continue;
        if (a->r.state == STORE_DELIVERY_DELIVERED)
            out->delivered++;
        else {
            if (a->r.state == STORE_DELIVERY_RETRY)
                out->retried++;
            else
                out->failed++;
            snprintf(out->error, sizeof out->error, "%s %s: %s", a->r.event_id, a->r.endpoint_id,
                     a->r.error);
        }
        from[n] = a;
        r[n++] = a->r;
    }
    if (n == 0)
        return;
    char err[256] = "";
    enum store_status st = store_finish_deliveries(s, r, n, err, sizeof err);
    if (st != STORE_OK) {
        out->store = st;
        snprintf(out->error, sizeof out->error, "%s", err);
    }
    for (size_t i = 0; i < n; i++)
        slot_clear(w, from[i]);
}

void webhook_deliver_due(struct webhook_sender *w, struct store *s, struct webhook_pass *out)
{
    *out = (struct webhook_pass){0};
    if (stopping(w))
        return;
    if (w->sending < WEBHOOK_SLOTS)
        claim_and_begin(w, s, out);
    /* until as many ended as began (with healthy endpoints: all of them),
     * or one, when none began */
    run_some(w, out->claimed > 0 ? out->claimed : 1, out);
    /* Stopping: the attempts still under way are left claimed (sent again
     * after their lease); those that ended are written all the same. */
    write_done(w, s, out);
    out->in_flight = w->sending;
}
