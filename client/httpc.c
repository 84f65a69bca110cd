/* httpc.c - one HTTP request over libcurl */
#define _POSIX_C_SOURCE 200809L
#include "httpc.h"

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct httpc_response *r = arg;
    size_t add = size * n;
    char *nb = realloc(r->body, r->len + add + 1);
    if (!nb)
        return 0;
    memcpy(nb + r->len, p, add);
    r->body = nb;
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

static void copy_header(const char *line, size_t n, const char *name, char *dst, size_t dlen)
{
    size_t nl = strlen(name);
    if (n <= nl + 1 || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
        return;
    const char *v = line + nl + 1;
    size_t vl = n - nl - 1;
    while (vl && *v == ' ')
        v++, vl--;
    while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n'))
        vl--;
    snprintf(dst, dlen, "%.*s", (int)vl, v);
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct httpc_response *r = arg;
    size_t len = size * n;
    copy_header(p, len, "Location", r->location, sizeof r->location);
    copy_header(p, len, "X-Idempotent-Replay", r->replay, sizeof r->replay);
    copy_header(p, len, "Idempotent-Replayed", r->replayed, sizeof r->replayed);
    copy_header(p, len, "Retry-After", r->retry_after, sizeof r->retry_after);
    copy_header(p, len, "Allow", r->allow, sizeof r->allow);
    copy_header(p, len, "Content-Type", r->content_type, sizeof r->content_type);
    return len;
}

int httpc_request(const char *method, const char *url, const char *const *headers, const char *body,
                  size_t body_len, long timeout_ms, struct httpc_response *out)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *list = NULL;
    memset(out, 0, sizeof *out);
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(out->error, sizeof out->error, "could not start curl");
        return -1;
    }
    for (int i = 0; headers && headers[i]; i++)
        list = curl_slist_append(list, headers[i]);
    list = curl_slist_append(list, "Expect:"); /* no 100-continue round trip */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)body_len);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    else
        snprintf(out->error, sizeof out->error, "%s", errbuf[0] ? errbuf : curl_easy_strerror(rc));
    curl_slist_free_all(list);
    curl_easy_cleanup(c);
    if (!out->body)
        out->body = calloc(1, 1);
    return rc == CURLE_OK ? 0 : -1;
}

void httpc_response_free(struct httpc_response *r)
{
    free(r->body);
    r->body = NULL;
    r->len = 0;
}
