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

int http_send(struct request *r, int status, const char *body, size_t len,
              const char *const *headers)
{
    return http_send_typed(r, status, "application/json", body, len, headers);
}

int http_send_typed(struct request *r, int status, const char *content_type, const char *body,
                    size_t len, const char *const *headers)
{
    char clen[24];
    snprintf(clen, sizeof clen, "%zu", len);
    r->status = status;
    if (mg_response_header_start(r->conn, status) != 0)
        return -1;
    mg_response_header_add(r->conn, "Content-Type", content_type, -1);
    mg_response_header_add(r->conn, "Content-Length", clen, -1);
    mg_response_header_add(r->conn, "Cache-Control", "no-store", -1);
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        mg_response_header_add(r->conn, headers[i], headers[i + 1], -1);
    if (mg_response_header_send(r->conn) != 0)
        return -1;
    if (len && mg_write(r->conn, body, len) != (int)len)
        return -1;
    return 0;
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
