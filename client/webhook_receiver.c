/* webhook_receiver.c - the walkthrough's webhook endpoint on civetweb
 * (webhook_receiver.h) */
#define _POSIX_C_SOURCE 200809L
#include "webhook_receiver.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_EVENTS 256
#define MAX_BODY (1 << 20)
/* A signature older or newer than this is a replay, not a delivery. */
#define TOLERANCE_S 300

struct receiver {
    struct mg_context *ctx;
    int port;
    pthread_mutex_t mu;
    char secret[128];
    struct receiver_counts counts;
    struct received_event events[MAX_EVENTS];
};

/* Does "t=<unix>,v1=<hex>" sign body with secret, t within tolerance? */
static int signature_ok(const char *secret, const char *header, const char *body, size_t len)
{
    long long t;
    char v1[65];
    int end = 0;
    if (!header || sscanf(header, "t=%lld,v1=%64[0-9a-f]%n", &t, v1, &end) != 2 ||
        strlen(v1) != 64 || header[end] != '\0')
        return 0;
    long long now = (long long)time(NULL);
    if (t < now - TOLERANCE_S || t > now + TOLERANCE_S)
        return 0;
    char stamp[32];
    int n = snprintf(stamp, sizeof stamp, "%lld.", t);
    unsigned char *text = malloc((size_t)n + len);
    if (!text)
        return 0;
    memcpy(text, stamp, (size_t)n);
    memcpy(text + n, body, len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), secret, (int)strlen(secret), text, (size_t)n + len, mac, &mac_len);
    free(text);
    char want[65];
    for (unsigned int i = 0; i < mac_len && i < 32; i++)
        snprintf(want + 2 * i, 3, "%02x", mac[i]);
    return mac_len == 32 && CRYPTO_memcmp(want, v1, 64) == 0;
}

/* Does the (signed) body begin {"id":"<id>"? Mockery-Event-Id is not
 * signed: deduping by it is safe only when it is the body's id. */
static int names(const char *body, size_t len, const char *id)
{
    static const char head[] = "{\"id\":\"";
    size_t h = sizeof head - 1, n = strlen(id);
    return len > h + n && memcmp(body, head, h) == 0 && memcmp(body + h, id, n) == 0 &&
           body[h + n] == '"';
}

static void answer(struct mg_connection *c, int status)
{
    mg_printf(c, "HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n", status,
              status == 200 ? "OK" : "Error");
}

/* Keeps an event by its id (once), under mu. */
static void keep(struct receiver *r, const char *id, const char *body, size_t len)
{
    for (int i = 0; i < r->counts.events; i++)
        if (strcmp(r->events[i].id, id) == 0) {
            r->counts.duplicates++;
            return;
        }
    if (r->counts.events == MAX_EVENTS)
        return;
    struct received_event *e = &r->events[r->counts.events++];
    snprintf(e->id, sizeof e->id, "%s", id);
    cJSON *j = cJSON_ParseWithLength(body, len);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    snprintf(e->type, sizeof e->type, "%s", cJSON_IsString(type) ? type->valuestring : "?");
    cJSON_Delete(j);
}

/* GET: the counts, as JSON (for a program watching the receiver). */
static int on_counts(struct mg_connection *c, struct receiver *r)
{
    struct receiver_counts n;
    receiver_counts(r, &n);
    char body[200];
    int len = snprintf(body, sizeof body,
                       "{\"deliveries\":%d,\"verified\":%d,\"duplicates\":%d,\"events\":%d}",
                       n.deliveries, n.verified, n.duplicates, n.events);
    mg_printf(c,
              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
              len, body);
    return 200;
}

static int on_delivery(struct mg_connection *c, void *arg)
{
    struct receiver *r = arg;
    const struct mg_request_info *ri = mg_get_request_info(c);
    long long len = ri->content_length;
    if (strcmp(ri->request_method, "GET") == 0)
        return on_counts(c, r);
    if (strcmp(ri->request_method, "POST") != 0 || len < 0 || len > MAX_BODY) {
        answer(c, 400);
        return 400;
    }
    char *body = malloc((size_t)len + 1);
    long long got = 0;
    while (body && got < len) {
        int n = mg_read(c, body + got, (size_t)(len - got));
        if (n <= 0)
            break;
        got += n;
    }
    const char *id = mg_get_header(c, "Mockery-Event-Id");
    const char *sig = mg_get_header(c, "Mockery-Signature");
    char secret[sizeof r->secret];
    pthread_mutex_lock(&r->mu);
    memcpy(secret, r->secret, sizeof secret);
    pthread_mutex_unlock(&r->mu);
    int status = 200;
    if (!body || got != len || !id)
        status = 400;
    else if (!secret[0])
        status = 503; /* not ready: the service tries again */
    else if (!signature_ok(secret, sig, body, (size_t)len) || !names(body, (size_t)len, id))
        status = 401;
    pthread_mutex_lock(&r->mu);
    r->counts.deliveries++;
    if (status == 200) {
        r->counts.verified++;
        keep(r, id, body, (size_t)len);
    }
    pthread_mutex_unlock(&r->mu);
    free(body);
    answer(c, status);
    return status;
}

struct receiver *receiver_start(const char *ports, char *err, size_t errlen)
{
    struct receiver *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&r->mu, NULL);
    /* Kept-alive connections, as a merchant's receiver would keep them:
     * the service reuses its connections between deliveries. civetweb
     * gives each open connection a thread of its own, and the service
     * keeps open up to a claim's 32 per dispatcher to one endpoint: room
     * for four servers with the default two dispatchers each (a
     * connection beyond the threads would wait in civetweb's queue). */
    const char *options[] = {"listening_ports",
                             ports,
                             "num_threads",
                             "256",
                             "enable_keep_alive",
                             "yes",
                             "keep_alive_timeout_ms",
                             "10000",
                             "tcp_nodelay",
                             "1",
                             NULL};
    struct mg_callbacks cb = {0};
    r->ctx = mg_start(&cb, r, options);
    struct mg_server_port sp[1];
    if (!r->ctx || mg_get_server_ports(r->ctx, 1, sp) < 1) {
        snprintf(err, errlen, "could not listen on %s", ports);
        receiver_stop(r);
        return NULL;
    }
    r->port = sp[0].port;
    mg_set_request_handler(r->ctx, "/", on_delivery, r);
    return r;
}

int receiver_port(const struct receiver *r)
{
    return r->port;
}

void receiver_set_secret(struct receiver *r, const char *secret)
{
    pthread_mutex_lock(&r->mu);
    snprintf(r->secret, sizeof r->secret, "%s", secret);
    pthread_mutex_unlock(&r->mu);
}

void receiver_counts(struct receiver *r, struct receiver_counts *out)
{
    pthread_mutex_lock(&r->mu);
    *out = r->counts;
    pthread_mutex_unlock(&r->mu);
}

int receiver_has(struct receiver *r, const char *id)
{
    int found = 0;
    pthread_mutex_lock(&r->mu);
    for (int i = 0; !found && i < r->counts.events; i++)
        found = strcmp(r->events[i].id, id) == 0;
    pthread_mutex_unlock(&r->mu);
    return found;
}

void receiver_stop(struct receiver *r)
{
    if (!r)
        return;
    if (r->ctx)
        mg_stop(r->ctx);
    pthread_mutex_destroy(&r->mu);
    free(r);
}
