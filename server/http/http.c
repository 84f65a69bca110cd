/* http.c - responses and bounded body reading on civetweb */
#define _POSIX_C_SOURCE 200809L
#include "http.h"

#include "edge.h"
#include "civetweb_internals.h"
#include "clock.h"
#include "peer_socket.h"
#include "log.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "decimal.h"
#include "utc_text.h"

void http_send(struct request *r, int status, const char *body, size_t len,
               const char *const *headers)
{
    http_send_typed(r, status, "application/json", body, len, headers);
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

/* Reason phrases of the statuses the server sends (civetweb's table has
 * typos, such as "Unproccessable entity" for 422). */
static const char *reason(struct mg_connection *conn, int status)
{
    static const struct {
        int status;
        const char *text;
    } TABLE[] = {
        {200, "OK"},
        {201, "Created"},
        {400, "Bad Request"},
        {401, "Unauthorized"},
        {402, "Payment Required"},
        {404, "Not Found"},
        {405, "Method Not Allowed"},
        {408, "Request Timeout"},
        {409, "Conflict"},
        {411, "Length Required"},
        {413, "Content Too Large"},
        {414, "URI Too Long"},
        {415, "Unsupported Media Type"},
        {422, "Unprocessable Content"},
        {429, "Too Many Requests"},
        {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"},
        {502, "Bad Gateway"},
        {503, "Service Unavailable"},
        {505, "HTTP Version Not Supported"},
    };
    for (size_t i = 0; i < sizeof TABLE / sizeof TABLE[0]; i++)
        if (TABLE[i].status == status)
            return TABLE[i].text;
    return mg_get_response_code_text(conn, status);
}

static void append(char *buf, size_t *used, const char *s, size_t n)
{
    memcpy(buf + *used, s, n);
    *used += n;
}

/* The status line, headers and body go out in one write: civetweb's
 * mg_response_header_send() writes every header line with a send() of its
 * own, and with TCP_NODELAY each becomes a packet - measured at 11 send()s
 * and ~300 us of CPU per payment, most of it in the loopback TCP path. */
void http_send_typed(struct request *r, int status, const char *content_type, const char *body,
                     size_t len, const char *const *headers)
{
    char stack[8192], date[32];
    if (r->status != 0) {
        /* A second answer to one request: a bug of the caller's. Written,
         * it would answer the connection's next request (http.h). */
        if (r->edge) {
            cJSON *line =
                log_begin(r->svc->log, LOG_ERROR, "a second answer to one request refused");
            cJSON_AddNumberToObject(line, "status", r->status);
            cJSON_AddNumberToObject(line, "refused_status", status);
            log_end(r->svc->log, line);
        }
        http_close_after(r);
        return;
    }
    utc_http_date(time(NULL), date);
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        if (strcasecmp(headers[i], "Connection") == 0 && strcasecmp(headers[i + 1], "close") == 0)
            http_close_after(r);
    if (!r->close && client_closes(r))
        r->close = 1;

    size_t extra = 0;
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        extra += strlen(headers[i]) + strlen(headers[i + 1]) + 4;
    size_t cap = 512 + strlen(content_type) + extra + len;
    char *buf = cap <= sizeof stack ? stack : malloc(cap);
    if (!buf) {
        /* No memory for this answer: a short 500 from the stack instead,
         * and the connection ends with it. */
        status = 500;
        content_type = "application/json";
        body = apierr_default_json(APIERR_INTERNAL_ERROR);
        len = strlen(body);
        headers = NULL;
        buf = stack;
        http_close_after(r);
    }
    r->status = status;
    /* (cap holds it all: the fixed text is under 512 bytes with the reason
     * and the numbers; snprintf was 8% of a replay's instructions) */
    size_t used = 0;
    char num[24];
    append(buf, &used, "HTTP/1.1 ", 9);
    append(buf, &used, num, (size_t)decimal_digits(num, (unsigned long long)status, 3));
    append(buf, &used, " ", 1);
    const char *why = reason(r->conn, status);
    append(buf, &used, why, strlen(why));
    append(buf, &used, "\r\nDate: ", 8);
    append(buf, &used, date, strlen(date));
    append(buf, &used, "\r\nContent-Type: ", 16);
    append(buf, &used, content_type, strlen(content_type));
    append(buf, &used, "\r\nContent-Length: ", 18);
    append(buf, &used, num, (size_t)decimal_digits(num, (unsigned long long)len, 1));
    append(buf, &used, "\r\nCache-Control: no-store\r\nConnection: ", 39);
    append(buf, &used, r->close ? "close\r\n" : "keep-alive\r\n", r->close ? 7 : 12);
    for (int i = 0; headers && headers[i] && headers[i + 1]; i += 2) {
        if (strcasecmp(headers[i], "Connection") == 0)
            continue;
        append(buf, &used, headers[i], strlen(headers[i]));
        append(buf, &used, ": ", 2);
        append(buf, &used, headers[i + 1], strlen(headers[i + 1]));
        append(buf, &used, "\r\n", 2);
    }
    memcpy(buf + used, "\r\n", 2);
    used += 2;
    memcpy(buf + used, body, len);
    used += len;
    /* Short when the client is gone, when it has taken no byte for
     * civetweb's write timeout (request_timeout_ms), or when the connection
     * table shut it (its answers were not taken for CONNTABLE_DRAIN_MS, or
     * few workers were free): each way the connection ends with this
     * answer. A client that pipelines requests and reads nothing, or a byte
     * now and then, once held its worker for a timeout per request - 2,000
     * GET /metrics, hours. Answers already that late are not written. */
    int64_t now = clock_mono_us();
    if (r->edge && conntable_write_begin(r->edge->conns, r->slot, now, used) != 0)
        http_close_after(r);
    else if (mg_write(r->conn, buf, used) != (int)used)
        http_close_after(r);
    if (r->edge)
        conntable_set(r->edge->conns, r->slot, CONN_WORKING, now);
    if (buf != stack)
        free(buf);
}

void http_send_internal(struct request *r)
{
    const char *body = apierr_default_json(APIERR_INTERNAL_ERROR);
    http_send(r, 500, body, strlen(body), NULL);
}

void http_send_json(struct request *r, int status, const cJSON *obj)
{
    char *body = cJSON_PrintUnformatted(obj);
    if (!body) {
        http_send_internal(r);
        return;
    }
    http_send(r, status, body, strlen(body), NULL);
    free(body);
}

void http_send_error(struct request *r, const struct apierr *e, const char *const *headers)
{
    char *body = apierr_json(e);
    if (!body) {
        http_send_internal(r);
        return;
    }
    if (r->status == 0)
        r->error_code = e->code;
    http_send(r, e->status, body, strlen(body), headers);
    free(body);
}

void http_fail(struct request *r, enum apierr_id id, const char *param, const char *fmt, ...)
{
    struct apierr e;
    char message[sizeof e.message];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    apierr_of(&e, id, param, "%s", message);
    http_send_error(r, &e, NULL);
}

enum http_body {
    HTTP_BODY_OK = 0,
    HTTP_BODY_TOO_LARGE, /* more than max bytes: 413 */
    HTTP_BODY_BROKEN,    /* the client went away or sent less than it announced */
    HTTP_BODY_TOO_SLOW,  /* not all there by HTTP_BODY_DEADLINE_MS: 408 */
};

#define HTTP_DISCARD_MAX (1024 * 1024)

/* Reads of this request's body end HTTP_BODY_DEADLINE_MS from now. */
static void arm_body_deadline(struct request *r, struct watch *w)
{
    /* The socket the connection table found when the connection opened.
     * Without civetweb's reads (the operator turned the limits off after a
     * failed check) a search here, in this worker and under no lock; with
     * them, no socket means the peer was gone at open: nothing to shut. */
    int fd = r->slot ? r->slot->fd : -1;
    if (fd < 0 && !civetweb_internals_on())
        fd = peer_socket_find(-1, r->ri->remote_addr, r->ri->remote_port, r->ri->server_port);
    watchdog_arm(r->edge->watchdog, w, fd, clock_mono_us() + (int64_t)HTTP_BODY_DEADLINE_MS * 1000);
}

/* Reads the whole body, at most max bytes, into a malloc'd NUL-terminated
 * buffer. *out is written only on HTTP_BODY_OK. */
static enum http_body read_body(struct request *r, size_t max, char **out, size_t *len)
{
    long long declared = r->ri->content_length;
    if (declared > (long long)max)
        return HTTP_BODY_TOO_LARGE;
    size_t cap = declared > 0 ? (size_t)declared + 1 : 4096;
    size_t n = 0;
    char *buf = malloc(cap);
    if (!buf)
        return HTTP_BODY_BROKEN;
    enum http_body rc = HTTP_BODY_OK;
    /* One mg_read() returns only when it has all it asked for, or after a
     * whole timeout without a byte: the watchdog ends a read still going at
     * the deadline. */
    struct watch w;
    arm_body_deadline(r, &w);
    conntable_set(r->edge->conns, r->slot, CONN_READING, clock_mono_us());
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max + 1) { /* chunked body longer than allowed */
                rc = HTTP_BODY_TOO_LARGE;
                break;
            }
            size_t ncap = cap * 2 > max + 2 ? max + 2 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = HTTP_BODY_BROKEN;
                break;
            }
            buf = nb;
            cap = ncap;
        }
        int got = mg_read(r->conn, buf + n, cap - n - 1);
        if (got < 0) {
            rc = HTTP_BODY_BROKEN;
            break;
        }
        if (got == 0)
            break;
        n += (size_t)got;
        if (n > max) {
            rc = HTTP_BODY_TOO_LARGE;
            break;
        }
    }
    /* (both calls always: the table's state and the watch end here) */
    int shed = conntable_set(r->edge->conns, r->slot, CONN_WORKING, clock_mono_us()) != 0;
    if (watchdog_disarm(r->edge->watchdog, &w) || shed) {
        /* Past its deadline, or shed while few workers were free: its
         * socket no longer reads; close after the 408. */
        rc = HTTP_BODY_TOO_SLOW;
        http_close_after(r);
    } else if (rc == HTTP_BODY_OK && declared >= 0 && (long long)n != declared) {
        rc = HTTP_BODY_BROKEN;
    }
    if (rc != HTTP_BODY_OK) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return HTTP_BODY_OK;
}

/* After an answer that refuses the body (413), reads and drops the rest of
 * it when the client announced at most HTTP_DISCARD_MAX bytes (or sends it
 * chunked, up to that much): closing with unread data makes the kernel reset
 * the connection, and a client still uploading would see the reset, not the
 * answer. A larger announced body is not waited for. */
static void discard_body(struct request *r)
{
    /* A client that waits for 100 Continue sends nothing after the 413 (it
     * was not sent the 100: see send_continue()). */
    const char *expect = mg_get_header(r->conn, "Expect");
    if (r->ri->content_length > HTTP_DISCARD_MAX ||
        (expect && strcasecmp(expect, "100-continue") == 0))
        return;
    char buf[8192];
    size_t total = 0;
    int got;
    struct watch w;
    arm_body_deadline(r, &w); /* a trickled body is not waited for either */
    conntable_set(r->edge->conns, r->slot, CONN_READING, clock_mono_us());
    while (total < HTTP_DISCARD_MAX && (got = mg_read(r->conn, buf, sizeof buf)) > 0)
        total += (size_t)got;
    conntable_set(r->edge->conns, r->slot, CONN_WORKING, clock_mono_us());
    watchdog_disarm(r->edge->watchdog, &w);
}

static int all_digits(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (s[n] < '0' || s[n] > '9')
            return 0;
    return n >= 1 && n <= 18;
}

int http_check_framing(const struct mg_request_info *ri, const char **why)
{
    if (ri->num_headers >= CIVETWEB_INTERNALS_MAX_HEADERS) {
        *why = "more than 63 header fields";
        return 431;
    }
    for (int i = 0; i < ri->num_headers; i++)
        if (civetweb_spaces_before_colon(&ri->http_headers[i])) {
            *why = "whitespace between a header field name and its colon";
            return 400;
        }
    if (ri->num_headers > 0 &&
        !civetweb_header_block_ends_after(&ri->http_headers[ri->num_headers - 1])) {
        *why = "a header line that is not a field (obsolete line folding)";
        return 400;
    }
    int cl = http_header_count(ri, "Content-Length");
    int te = http_header_count(ri, "Transfer-Encoding");
    if (cl > 1) {
        *why = "more than one Content-Length";
        return 400;
    }
    if (cl && te) {
        *why = "Content-Length together with Transfer-Encoding";
        return 400;
    }
    for (int i = 0; i < ri->num_headers; i++) {
        const struct mg_header *h = &ri->http_headers[i];
        if (strcasecmp(h->name, "Content-Length") == 0 && !all_digits(h->value)) {
            *why = "Content-Length is not a decimal number";
            return 400;
        }
        if (strcasecmp(h->name, "Transfer-Encoding") == 0 &&
            (te > 1 || strcasecmp(h->value, "chunked") != 0)) {
            *why = "a transfer coding other than chunked";
            return 400;
        }
    }
    if (ri->http_version && strcmp(ri->http_version, "1.1") == 0 &&
        http_header_count(ri, "Host") != 1) {
        *why = "an HTTP/1.1 request needs exactly one Host header";
        return 400;
    }
    return 0;
}

int http_header_count(const struct mg_request_info *ri, const char *name)
{
    int n = 0;
    for (int i = 0; i < ri->num_headers; i++)
        if (strcasecmp(ri->http_headers[i].name, name) == 0)
            n++;
    return n;
}

/* Whether a Content-Type value is application/json, parameters allowed. */
static int is_json(const char *ct)
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
    cJSON *line = log_begin(r->svc->log, LOG_ERROR, "store call failed");
    cJSON_AddStringToObject(line, "op", op);
    cJSON_AddStringToObject(line, "store_status", store_status_name(st));
    cJSON_AddStringToObject(line, "error", err);
    if (r->key[0])
        cJSON_AddStringToObject(line, "key", r->key);
    log_end(r->svc->log, line);
}

void http_fail_store(struct request *r, const char *op, enum store_status st, const char *err)
{
    struct apierr e;
    const char *headers[] = {"Retry-After", "1", NULL};
    http_log_store_error(r, op, st, err);
    apierr_store(&e, st == STORE_UNAVAILABLE, strcmp(r->ri->request_method, "POST") == 0);
    http_send_error(r, &e, st == STORE_UNAVAILABLE ? headers : NULL);
}

void http_send_found(struct request *r, const char *op, enum store_status st, const char *err,
                     enum apierr_id not_found, cJSON *obj)
{
    if (st == STORE_NOT_FOUND)
        http_fail(r, not_found, NULL, "%s", apierr_row(not_found)->message);
    else if (st != STORE_OK)
        http_fail_store(r, op, st, err);
    else if (obj)
        http_send_json(r, 200, obj);
    else
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    cJSON_Delete(obj);
}

const char *http_method(const struct request *r)
{
    return r->ri->request_method;
}

/* RFC 9110 10.1.1: a client that sent "Expect: 100-continue" waits for an
 * interim 100 before it sends the body (curl waits 1 s, then sends anyway;
 * others wait longer). civetweb 1.15 sends it only on its CGI and PUT
 * paths, not from mg_read(), so it is sent here, once the headers passed
 * every check and the body will be read. A body announced too large gets
 * its 413 without the 100, and the client then sends nothing. */
static void send_continue(struct request *r, size_t max_body)
{
    const char *expect = mg_get_header(r->conn, "Expect");
    if (!expect || strcasecmp(expect, "100-continue") != 0 || !r->ri->http_version ||
        strcmp(r->ri->http_version, "1.1") != 0 || r->ri->content_length > (long long)max_body)
        return;
    static const char CONTINUE[] = "HTTP/1.1 100 Continue\r\n\r\n";
    /* (counted with the answers: the drain deadline sees every byte) */
    if (conntable_write_begin(r->edge->conns, r->slot, clock_mono_us(), sizeof CONTINUE - 1) == 0)
        mg_write(r->conn, CONTINUE, sizeof CONTINUE - 1);
    conntable_set(r->edge->conns, r->slot, CONN_WORKING, clock_mono_us());
}

int http_read_idempotent_post(struct request *r, size_t max_body, int require_key,
                              enum idemkey_status *key_status, char **body, size_t *len)
{
    enum idemkey_status ks = http_header_count(r->ri, "Idempotency-Key") > 1
                                 ? IDEMKEY_INVALID
                                 : idemkey_parse(mg_get_header(r->conn, "Idempotency-Key"), r->key);
    if (ks == IDEMKEY_MISSING && require_key) {
        http_fail(r, APIERR_IDEMPOTENCY_KEY_MISSING, NULL,
                  "the Idempotency-Key header is required");
        return -1;
    }
    if (ks == IDEMKEY_INVALID) {
        r->key[0] = '\0';
        http_fail(r, APIERR_IDEMPOTENCY_KEY_INVALID, NULL,
                  "the Idempotency-Key header must be sent once, as 1-%d visible ASCII "
                  "characters, bare or as a quoted string",
                  HTTP_KEY_MAX);
        return -1;
    }
    if (http_read_json_body(r, max_body, body, len) != 0)
        return -1;
    *key_status = ks;
    return 0;
}

int http_read_json_body(struct request *r, size_t max_body, char **body, size_t *len)
{
    struct apierr e;
    const char *close[] = {"Connection", "close", NULL};
    if (!is_json(mg_get_header(r->conn, "Content-Type"))) {
        http_fail(r, APIERR_UNSUPPORTED_MEDIA_TYPE, NULL,
                  "the body must be sent as Content-Type: application/json");
        return -1;
    }
    send_continue(r, max_body);
    switch (read_body(r, max_body, body, len)) {
    case HTTP_BODY_OK:
        return 0;
    case HTTP_BODY_TOO_LARGE:
        apierr_of(&e, APIERR_BODY_TOO_LARGE, NULL, "the body is larger than %zu bytes", max_body);
        http_send_error(r, &e, close);
        discard_body(r);
        return -1;
    case HTTP_BODY_TOO_SLOW:
        apierr_of(&e, APIERR_REQUEST_TIMEOUT, NULL, "the body did not arrive within %d s",
                  HTTP_BODY_DEADLINE_MS / 1000);
        http_send_error(r, &e, close);
        return -1;
    case HTTP_BODY_BROKEN:
        break;
    }
    apierr_of(&e, APIERR_INVALID_BODY, NULL,
              "the body could not be read: shorter than Content-Length, or too slow");
    http_send_error(r, &e, close);
    return -1;
}
