/* http.c - responses and bounded body reading on civetweb */
#define _POSIX_C_SOURCE 200809L
#include "http.h"

#include "app.h"
#include "log.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int http_send(struct request *r, int status, const char *body, size_t len,
              const char *const *headers)
{
    return http_send_typed(r, status, "application/json", body, len, headers);
}

void http_close_after(struct request *r)
{
    r->close = 1;
    mg_disable_connection_keep_alive(r->conn);
}

/* Whether the client asked for the connection to end with this answer. */
static int client_closes(const struct request *r)
{
    const char *c = mg_get_header(r->conn, "Connection");
    if (c && strcasecmp(c, "close") == 0)
        return 1;
    if (r->ri->http_version && strcmp(r->ri->http_version, "1.1") != 0)
        return !(c && strcasecmp(c, "keep-alive") == 0);
    return 0;
}

/* The status line, headers and body go out in one write: civetweb's
 * mg_response_header_send() writes every header line with a send() of its
 * own, and with TCP_NODELAY each becomes a packet - measured at 11 send()s
 * and ~300 us of CPU per payment, most of it in the loopback TCP path. */
int http_send_typed(struct request *r, int status, const char *content_type, const char *body,
                    size_t len, const char *const *headers)
{
    char stack[8192], date[64];
    struct tm tm;
    time_t now = time(NULL);
    gmtime_r(&now, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        if (strcasecmp(headers[i], "Connection") == 0 && strcasecmp(headers[i + 1], "close") == 0)
            http_close_after(r);
    if (!r->close && client_closes(r))
        r->close = 1;
    r->status = status;

    size_t extra = 0;
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        extra += strlen(headers[i]) + strlen(headers[i + 1]) + 4;
    size_t cap = 512 + strlen(content_type) + extra + len;
    char *buf = cap <= sizeof stack ? stack : malloc(cap);
    if (!buf)
        return -1;
    int n = snprintf(buf, cap,
                     "HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Cache-Control: no-store\r\nConnection: %s\r\n",
                     status, mg_get_response_code_text(r->conn, status), date, content_type, len,
                     r->close ? "close" : "keep-alive");
    size_t used = n > 0 ? (size_t)n : 0;
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2) {
        if (strcasecmp(headers[i], "Connection") == 0)
            continue;
        n = snprintf(buf + used, cap - used, "%s: %s\r\n", headers[i], headers[i + 1]);
        used += n > 0 ? (size_t)n : 0;
    }
    memcpy(buf + used, "\r\n", 2);
    used += 2;
    memcpy(buf + used, body, len);
    used += len;
    int rc = mg_write(r->conn, buf, used) == (int)used ? 0 : -1;
    if (buf != stack)
        free(buf);
    return rc;
}

static const char INTERNAL[] = "{\"error\":{\"type\":\"api_error\",\"code\":\"internal_error\","
                               "\"message\":\"the response could not be built\"}}";

int http_send_json(struct request *r, int status, const cJSON *obj)
{
    char *body = cJSON_PrintUnformatted(obj);
    if (!body)
        return http_send(r, 500, INTERNAL, sizeof INTERNAL - 1, NULL);
    int rc = http_send(r, status, body, strlen(body), NULL);
    free(body);
    return rc;
}

int http_send_error(struct request *r, const struct apierr *e, const char *const *headers)
{
    char *body = apierr_json(e);
    if (!body)
        return http_send(r, 500, INTERNAL, sizeof INTERNAL - 1, NULL);
    int rc = http_send(r, e->status, body, strlen(body), headers);
    free(body);
    return rc;
}

int http_fail(struct request *r, int status, const char *type, const char *code, const char *param,
              const char *fmt, ...)
{
    struct apierr e;
    va_list ap;
    apierr_set(&e, status, type, code, param, "%s", "");
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return http_send_error(r, &e, NULL);
}

enum http_body http_read_body(struct request *r, size_t max, char **out, size_t *len)
{
    long long declared = r->ri->content_length;
    if (declared > (long long)max)
        return HTTP_BODY_TOO_LARGE;
    size_t cap = declared > 0 ? (size_t)declared + 1 : 4096;
    size_t n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return HTTP_BODY_BROKEN;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) { /* chunked body longer than allowed */
                free(buf);
                return HTTP_BODY_TOO_LARGE;
            }
            size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                return HTTP_BODY_BROKEN;
            }
            buf = nb;
            cap = ncap;
        }
        int got = mg_read(r->conn, buf + n, cap - n - 1);
        if (got < 0) {
            free(buf);
            return HTTP_BODY_BROKEN;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > max) {
            free(buf);
            return HTTP_BODY_TOO_LARGE;
        }
    }
    if (declared >= 0 && (long long)n != declared) {
        free(buf);
        return HTTP_BODY_BROKEN;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return HTTP_BODY_OK;
}

void http_discard_body(struct request *r)
{
    if (r->ri->content_length > HTTP_DISCARD_MAX)
        return;
    char buf[8192];
    size_t total = 0;
    int got;
    while (total < HTTP_DISCARD_MAX && (got = mg_read(r->conn, buf, sizeof buf)) > 0)
        total += (size_t)got;
}

int http_header_count(const struct mg_request_info *ri, const char *name)
{
    int n = 0;
    for (int i = 0; i < ri->num_headers; i++)
        if (strcasecmp(ri->http_headers[i].name, name) == 0)
            n++;
    return n;
}

int http_is_json(const char *ct)
{
    if (!ct)
        return 0;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strlen("application/json");
    if (strncasecmp(ct, "application/json", n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

void http_log_store_error(struct request *r, const char *op, enum store_status st, const char *err)
{
    cJSON *line = log_begin(r->app->log, LOG_ERROR, "store call failed");
    cJSON_AddStringToObject(line, "op", op);
    cJSON_AddStringToObject(line, "store_status", store_status_name(st));
    cJSON_AddStringToObject(line, "error", err);
    if (r->key[0])
        cJSON_AddStringToObject(line, "key", r->key);
    log_end(r->app->log, line);
}

int http_fail_store(struct request *r, const char *op, enum store_status st, const char *err)
{
    struct apierr e;
    http_log_store_error(r, op, st, err);
    if (st == STORE_UNAVAILABLE) {
        const char *headers[] = {"Retry-After", "1", NULL};
        apierr_set(&e, 503, "api_error", "store_unavailable", NULL,
                   "the payment store is unavailable; nothing was recorded, retry with the "
                   "same idempotency key");
        return http_send_error(r, &e, headers);
    }
    apierr_set(&e, 500, "api_error", "internal_error", NULL,
               "the payment store failed; nothing was recorded, retry with the same "
               "idempotency key");
    return http_send_error(r, &e, NULL);
}
