/* delivery_floor.c - mockery-delivery-floor: what the HTTP round trip of a
 * webhook delivery alone costs this machine, for bench/run.py
 *
 *   mockery-delivery-floor URL SECRET BODY_FILE SECONDS RATE BURST
 *
 * POSTs BODY_FILE (an event as the API shows it) to URL, signed with
 * SECRET as a server's dispatcher signs it, RATE times a second in bursts
 * of BURST begun at once, over libcurl's multi interface with connections
 * kept alive between bursts - the way the dispatchers send
 * (server/ops/webhook_delivery.c) - but with no server and no database:
 * nothing is claimed or written. What the machine's CPU spends per
 * delivery here is a floor under what a delivery can cost through the
 * server at the same rate. Prints one JSON line: the deliveries answered
 * 2xx, the others, those not begun because every slot was busy (a slow
 * receiver: fewer sent, no error), and the seconds taken; exits 1 if any
 * answer was not 2xx.
 */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "webhook_signature.h"

/* Transfers under way at most: a sender's slots (WEBHOOK_SLOTS). */
#define SLOTS 128
/* The largest body read (an event is a few hundred bytes). */
#define MAX_BODY (1 << 16)

struct transfer {
    CURL *h;
    struct curl_slist *headers;
};

static size_t discard(char *p, size_t size, size_t n, void *user)
{
    (void)p;
    (void)user;
    return size * n;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *p = malloc(MAX_BODY + 1);
    *len = p ? fread(p, 1, MAX_BODY + 1, f) : 0;
    fclose(f);
    if (p && *len > MAX_BODY) {
        free(p);
        return NULL;
    }
    if (p)
        p[*len] = '\0';
    return p;
}

/* The id of the event in body ({"id":"evt_...", ...}), for its header. */
static int event_id(const char *body, char *out, size_t outlen)
{
    static const char head[] = "{\"id\":\"";
    if (strncmp(body, head, sizeof head - 1) != 0)
        return -1;
    const char *s = body + sizeof head - 1, *e = strchr(s, '"');
    if (!e || (size_t)(e - s) >= outlen)
        return -1;
    memcpy(out, s, (size_t)(e - s));
    out[e - s] = '\0';
    return 0;
}

/* Signs the body now and sets the transfer up as a dispatcher does. */
static int prepare(struct transfer *x, const char *url, const char *secret, const char *id_line,
                   const char *body, size_t len)
{
    char sig[WEBHOOK_SIGNATURE_MAX], sig_line[WEBHOOK_SIGNATURE_MAX + 32];
    if (webhook_signature(secret, (int64_t)time(NULL), body, len, sig) != 0)
        return -1;
    snprintf(sig_line, sizeof sig_line, "Mockery-Signature: %s", sig);
    const char *lines[] = {"Content-Type: application/json", "User-Agent: mockery-webhooks/1",
                           "Expect:", id_line, sig_line};
    curl_slist_free_all(x->headers);
    x->headers = NULL;
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct curl_slist *l = curl_slist_append(x->headers, lines[i]);
        if (!l)
            return -1;
        x->headers = l;
    }
    curl_easy_setopt(x->h, CURLOPT_URL, url);
    curl_easy_setopt(x->h, CURLOPT_POST, 1L);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(x->h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(x->h, CURLOPT_HTTPHEADER, x->headers);
    curl_easy_setopt(x->h, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(x->h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(x->h, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(x->h, CURLOPT_PROXY, ""); /* never through a proxy from the environment */
    curl_easy_setopt(x->h, CURLOPT_PRIVATE, x);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fputs("usage: mockery-delivery-floor URL SECRET BODY_FILE SECONDS RATE BURST\n", stderr);
        return 2;
    }
    const char *url = argv[1], *secret = argv[2];
    double seconds = atof(argv[4]), rate = atof(argv[5]);
    int burst = atoi(argv[6]);
    size_t len = 0;
    char *body = read_file(argv[3], &len);
    char id[128], id_line[160];
    if (!body || event_id(body, id, sizeof id) != 0 || seconds <= 0 || rate <= 0 || burst < 1 ||
        burst > SLOTS) {
        fputs("mockery-delivery-floor: bad arguments or body file\n", stderr);
        return 2;
    }
    snprintf(id_line, sizeof id_line, "Mockery-Event-Id: %s", id);
    CURLM *multi = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? curl_multi_init() : NULL;
    if (!multi) {
        fputs("mockery-delivery-floor: libcurl failed to start\n", stderr);
        return 1;
    }
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long)SLOTS);
    static struct transfer xs[SLOTS];
    struct transfer *idle[SLOTS];
    int n_idle = 0;
    for (int i = 0; i < SLOTS; i++) {
        if (!(xs[i].h = curl_easy_init())) {
            fputs("mockery-delivery-floor: out of memory\n", stderr);
            return 1;
        }
        idle[n_idle++] = &xs[i];
    }
    long ok = 0, other = 0, not_begun = 0;
    int running = 0;
    double start = now_s(), next = start;
    while (now_s() - start < seconds || running) {
        double t = now_s();
        if (t >= next && t - start < seconds) {
            for (int i = 0; i < burst; i++) {
                if (n_idle == 0) {
                    not_begun += burst - i;
                    break;
                }
                struct transfer *x = idle[--n_idle];
                if (prepare(x, url, secret, id_line, body, len) != 0 ||
                    curl_multi_add_handle(multi, x->h) != CURLM_OK) {
                    other++;
                    idle[n_idle++] = x;
                }
            }
            next = next + burst / rate > t ? next + burst / rate : t;
        }
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            struct transfer *x;
            long status = 0;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
            curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            if (m->data.result == CURLE_OK && status >= 200 && status < 300)
                ok++;
            else
                other++;
            curl_multi_remove_handle(multi, m->easy_handle);
            idle[n_idle++] = x;
        }
        /* Until the next burst, rounded up (no spinning through its last
         * millisecond); after the last, until the transfers end. */
        double until = now_s() - start < seconds ? next - now_s() : 0.05;
        int wait_ms = until <= 0 ? 0 : until >= 0.05 ? 50 : (int)ceil(until * 1000);
        curl_multi_poll(multi, NULL, 0, wait_ms, NULL);
    }
    printf("{\"delivered\":%ld,\"other\":%ld,\"not_begun\":%ld,\"seconds\":%.3f}\n", ok, other,
           not_begun, now_s() - start);
    for (int i = 0; i < SLOTS; i++) {
        curl_slist_free_all(xs[i].headers);
        curl_easy_cleanup(xs[i].h);
    }
    curl_multi_cleanup(multi);
    free(body);
    curl_global_cleanup();
    return other ? 1 : 0;
}
