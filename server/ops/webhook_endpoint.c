/* webhook_endpoint.c - a tenant's webhook endpoint (webhook_endpoint.h) */
#define _POSIX_C_SOURCE 200809L
#include "webhook_endpoint.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "event.h"
#include "host_lookup.h"
#include "ids.h"
#include "request_json.h"
#include "utc_text.h"

static const char *const FIELDS[] = {"url", "events"};

/* The URL's host (malloc'd) when it is one we may keep: http or https, a
 * host, no user or password, no longer than WEBHOOK_URL_MAX; else NULL
 * with err. */
static char *url_host(const char *url, struct apierr *err)
{
    char *scheme = NULL, *host = NULL, *user = NULL, *password = NULL;
    CURLU *u = strlen(url) <= WEBHOOK_URL_MAX ? curl_url() : NULL;
    const char *why = u ? NULL : "url must be at most 2048 bytes";
    if (!why && curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
        why = "url is not a URL";
    if (!why && (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
                 (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0)))
        why = "url must be http or https";
    if (!why && (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !host[0]))
        why = "url has no host";
    if (!why && (curl_url_get(u, CURLUPART_USER, &user, 0) == CURLUE_OK ||
                 curl_url_get(u, CURLUPART_PASSWORD, &password, 0) == CURLUE_OK))
        why = "url must not carry a user or a password (it is listed back to every reader)";
    char *out = NULL;
    if (!why) {
        /* an IPv6 literal comes bracketed: the resolver wants it bare */
        size_t n = strlen(host);
        out = host[0] == '[' && n > 2 ? strndup(host + 1, n - 2) : strdup(host);
        if (!out)
            why = "out of memory";
    }
    if (why)
        apierr_of(err,
                  strcmp(why, "out of memory") == 0 ? APIERR_INTERNAL_ERROR : APIERR_INVALID_URL,
                  "url", "%s", why);
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(password);
    curl_url_cleanup(u);
    return out;
}

/* The types, comma-separated, from a non-empty array of distinct ones. */
static int events_text(const cJSON *events, char **out, struct apierr *err)
{
    size_t n = 0, len = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, events)
    {
        if (!cJSON_IsString(item) || !event_type_valid(item->valuestring))
            goto bad;
        const cJSON *before;
        cJSON_ArrayForEach(before, events)
        {
            if (before == item)
                break;
            if (strcmp(before->valuestring, item->valuestring) == 0)
                goto bad;
        }
        n++;
        len += strlen(item->valuestring) + 1;
    }
    if (n == 0)
        goto bad;
    *out = malloc(len);
    if (!*out) {
        apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
        return -1;
    }
    (*out)[0] = '\0';
    cJSON_ArrayForEach(item, events)
    {
        if (item != events->child)
            strcat(*out, ",");
        strcat(*out, item->valuestring);
    }
    return 0;
bad:
    apierr_of(err, APIERR_INVALID_EVENTS, "events",
              "events must be a non-empty array of distinct types: payment.succeeded, "
              "payment.declined, refund.succeeded");
    return -1;
}

int webhook_endpoint_parse(const char *body, size_t len, struct webhook_endpoint_request *out,
                           struct apierr *err)
{
    struct json_top top;
    struct webhook_endpoint_request r = {0};
    cJSON *root =
        request_json_object(body, len, FIELDS, sizeof FIELDS / sizeof FIELDS[0], &top, err);
    if (!root)
        return -1;
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(root, "url");
    const cJSON *events = cJSON_GetObjectItemCaseSensitive(root, "events");
    char *host = NULL;
    if (!cJSON_IsString(url)) {
        apierr_of(err, APIERR_INVALID_URL, "url", "url is required, as a string");
        goto fail;
    }
    if (!(host = url_host(url->valuestring, err)))
        goto fail;
    if (events && !cJSON_IsNull(events)) {
        if (!cJSON_IsArray(events)) {
            apierr_of(err, APIERR_INVALID_EVENTS, "events", "events must be an array of types");
            goto fail;
        }
        if (events_text(events, &r.events, err) != 0)
            goto fail;
    }
    if (!(r.url = strdup(url->valuestring))) {
        apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
        goto fail;
    }
    free(host);
    cJSON_Delete(root);
    *out = r;
    return 0;
fail:
    free(host);
    cJSON_Delete(root);
    webhook_endpoint_request_clear(&r);
    return -1;
}

void webhook_endpoint_request_clear(struct webhook_endpoint_request *r)
{
    free(r->url);
    free(r->events);
    memset(r, 0, sizeof *r);
}

/* Whether an IPv4 address (host order) is public. */
static int ipv4_public(uint32_t a)
{
    static const struct {
        uint32_t net;
        int bits;
    } NOT_PUBLIC[] = {
        {0x00000000, 8},  /* "this network", unspecified */
        {0x0A000000, 8},  /* private */
        {0x64400000, 10}, /* shared address space (carrier NAT) */
        {0x7F000000, 8},  /* loopback */
        {0xA9FE0000, 16}, /* link-local (cloud metadata lives here) */
        {0xAC100000, 12}, /* private */
        {0xC0000000, 24}, /* IETF protocol assignments */
        {0xC0000200, 24}, /* documentation (TEST-NET-1) */
        {0xC6336400, 24}, /* documentation (TEST-NET-2) */
        {0xCB007100, 24}, /* documentation (TEST-NET-3) */
        {0xC0A80000, 16}, /* private */
        {0xC6120000, 15}, /* benchmarking */
        {0xE0000000, 4},  /* multicast */
        {0xF0000000, 4},  /* reserved, and the broadcast address */
    };
    for (size_t i = 0; i < sizeof NOT_PUBLIC / sizeof NOT_PUBLIC[0]; i++)
        if ((a >> (32 - NOT_PUBLIC[i].bits)) == (NOT_PUBLIC[i].net >> (32 - NOT_PUBLIC[i].bits)))
            return 0;
    return 1;
}

int webhook_address_public(const struct sockaddr *sa)
{
    if (sa->sa_family == AF_INET)
        return ipv4_public(ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr));
    if (sa->sa_family != AF_INET6)
        return 0;
    const uint8_t *b = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const uint8_t MAPPED[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    static const uint8_t NAT64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
    static const uint8_t ZERO[12] = {0};
    if (memcmp(b, ZERO, 12) == 0) /* ::, ::1, the old IPv4-compatible ::/96 */
        return 0;
    if (memcmp(b, MAPPED, 12) == 0 || memcmp(b, NAT64, 12) == 0) /* IPv4 inside */
        return ipv4_public((uint32_t)b[12] << 24 | (uint32_t)b[13] << 16 | (uint32_t)b[14] << 8 |
                           b[15]);
    if (b[0] == 0x20 && b[1] == 0x02) /* 6to4, 2002::/16: IPv4 in bits 16-47 */
        return ipv4_public((uint32_t)b[2] << 24 | (uint32_t)b[3] << 16 | (uint32_t)b[4] << 8 |
                           b[5]);
    /* the rest: global unicast (2000::/3) only - not unique local, link-
     * or site-local, multicast or reserved - and not Teredo (2001::/32,
     * IPv4 behind a tunnel) nor the documentation prefixes 2001:db8::/32
     * and 3fff::/20 */
    if (b[0] == 0x20 && b[1] == 0x01 &&
        ((b[2] == 0 && b[3] == 0) || (b[2] == 0x0d && b[3] == 0xb8)))
        return 0;
    if (b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0)
        return 0;
    return (b[0] & 0xe0) == 0x20;
}

/* host_lookup()'s each: clears *public at the first address that is not. */
static int address_judged(const struct sockaddr *addr, void *arg)
{
    int *public = arg;
    *public = webhook_address_public(addr);
    return !*public;
}

static int address_seen(const struct sockaddr *addr, void *arg)
{
    (void)addr;
    (void)arg;
    return 1;
}

int webhook_url_check(const char *url, int allow_private, const char *tenant, struct apierr *err)
{
    char *host = url_host(url, err);
    if (!host)
        return -1;
    int public = 1;
    const char *why = "";
    enum host_lookup_result found =
        host_lookup(host, tenant, WEBHOOK_LOOKUP_TIMEOUT_MS,
                    allow_private ? address_seen : address_judged, &public, &why);
    if (found == HOST_LOOKUP_NOT_FOUND)
        apierr_of(err, APIERR_INVALID_URL, "url", "url's host %s does not resolve", host);
    else if (found == HOST_LOOKUP_UNAVAILABLE)
        apierr_of(err, APIERR_DNS_UNAVAILABLE, "url",
                  "url's host %s could not be looked up now (%s); retry later", host, why);
    else if (!public)
        apierr_of(err, APIERR_URL_NOT_ALLOWED, "url",
                  "url's host %s resolves to a loopback, private, link-local or other "
                  "non-public address",
                  host);
    free(host);
    return found == HOST_LOOKUP_OK && public ? 0 : -1;
}

int webhook_endpoint_id_valid(const char *s)
{
    return ids_valid("we_", s);
}

cJSON *webhook_endpoint_to_cjson(const struct store_endpoint *e, int with_secret)
{
    char created[28];
    utc_iso_micro(e->created_at_us, created);
    cJSON *o = cJSON_CreateObject();
    cJSON *events = NULL;
    if (!o || !cJSON_AddStringToObject(o, "id", e->endpoint_id) ||
        !cJSON_AddStringToObject(o, "url", e->url))
        goto fail;
    if (e->events) {
        events = cJSON_AddArrayToObject(o, "events");
        if (!events)
            goto fail;
        for (const char *p = e->events; *p;) {
            size_t n = strcspn(p, ",");
            char type[64];
            if (n >= sizeof type)
                goto fail;
            memcpy(type, p, n);
            type[n] = '\0';
            if (!cJSON_AddItemToArray(events, cJSON_CreateString(type)))
                goto fail;
            p += n + (p[n] == ',');
        }
    } else if (!cJSON_AddNullToObject(o, "events")) {
        goto fail;
    }
    if ((with_secret && !cJSON_AddStringToObject(o, "secret", e->secret)) ||
        !cJSON_AddStringToObject(o, "created_at", created))
        goto fail;
    return o;
fail:
    cJSON_Delete(o);
    return NULL;
}
