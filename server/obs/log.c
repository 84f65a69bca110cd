/* log.c - JSON lines on stderr, written by a thread of their own
 *
 * A line is formatted by its caller into a buffer on the caller's stack
 * (log_line_*), JSON-escaped as it goes, and copied whole into a shared
 * buffer under a mutex held for that copy alone; the writer thread hands
 * whatever has gathered to one write. No request waits on the sink: when
 * the sink is slower than the lines (stderr to a pipe nobody reads), the
 * buffer fills and further lines are dropped and counted until it drains.
 */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "decimal.h"
#include "utc_text.h"
#include "utf8.h"

/* What may wait for the sink; past it lines are dropped. */
#define LOG_BUFFER (1024 * 1024)
/* The writer looks every LOG_TICK_MS, or at once when this much waits:
 * woken per line, it cost a thread wake-up per request. */
#define LOG_WAKE_AT (LOG_BUFFER / 4)
#define LOG_TICK_MS 2

struct logger {
    FILE *out;
    enum log_level level;
    pthread_mutex_t mu;
    pthread_cond_t wake;    /* the writer: lines are waiting, or stop */
    pthread_cond_t drained; /* log_flush: everything is written */
    char *buf;              /* LOG_BUFFER bytes of whole lines */
    size_t used;
    int writing; /* the writer holds a batch outside the mutex */
    int stopping;
    unsigned long long dropped;
    pthread_t writer;
};

static const char *const NAMES[] = {"debug", "info", "warn", "error"};

static void *writer_main(void *arg)
{
    struct logger *l = arg;
    char *batch = malloc(LOG_BUFFER); /* the buffer being written, swapped with l->buf */
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->used && !l->stopping) {
            struct timespec until;
            clock_deadline_in(&until, LOG_TICK_MS);
            pthread_cond_timedwait(&l->wake, &l->mu, &until);
        }
        if (!l->used && l->stopping)
            break;
        size_t n = l->used;
        if (batch) { /* the lines gathered become the batch: no copy under the mutex */
            char *gathered = l->buf;
            l->buf = batch;
            batch = gathered;
            l->used = 0;
            l->writing = 1;
            pthread_mutex_unlock(&l->mu);
            fwrite(batch, 1, n, l->out);
            fflush(l->out);
            pthread_mutex_lock(&l->mu);
            l->writing = 0;
        } else { /* no second buffer: write under the mutex */
            fwrite(l->buf, 1, n, l->out);
            fflush(l->out);
            l->used = 0;
        }
        if (!l->used)
            pthread_cond_broadcast(&l->drained);
    }
    pthread_cond_broadcast(&l->drained);
    pthread_mutex_unlock(&l->mu);
    free(batch);
    return NULL;
}

struct logger *log_new(FILE *out, enum log_level level)
{
    struct logger *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->buf = malloc(LOG_BUFFER);
    if (!l->buf) {
        free(l);
        return NULL;
    }
    l->out = out;
    l->level = level;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->wake, NULL);
    pthread_cond_init(&l->drained, NULL);
    if (pthread_create(&l->writer, NULL, writer_main, l) != 0) {
        pthread_cond_destroy(&l->drained);
        pthread_cond_destroy(&l->wake);
        pthread_mutex_destroy(&l->mu);
        free(l->buf);
        free(l);
        return NULL;
    }
    return l;
}

void log_flush(struct logger *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    pthread_cond_signal(&l->wake);
    while ((l->used || l->writing) && !l->stopping)
        pthread_cond_wait(&l->drained, &l->mu);
    pthread_mutex_unlock(&l->mu);
}

void log_free(struct logger *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = 1; /* the writer writes what is left, then ends */
    pthread_cond_signal(&l->wake);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->writer, NULL);
    pthread_cond_destroy(&l->drained);
    pthread_cond_destroy(&l->wake);
    pthread_mutex_destroy(&l->mu);
    free(l->buf);
    free(l);
}

unsigned long long log_dropped(struct logger *l)
{
    pthread_mutex_lock(&l->mu);
    unsigned long long n = l->dropped;
    pthread_mutex_unlock(&l->mu);
    return n;
}

int log_parse_level(const char *s, enum log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, NAMES[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    return -1;
}

int log_enabled(const struct logger *l, enum log_level level)
{
    return l && level >= l->level;
}

/* Hands one whole line (with its newline) to the writer, or drops it. */
static void submit(struct logger *l, const char *text, size_t n)
{
    pthread_mutex_lock(&l->mu);
    if (l->used + n > LOG_BUFFER) {
        l->dropped++;
    } else {
        memcpy(l->buf + l->used, text, n);
        if (l->used < LOG_WAKE_AT && l->used + n >= LOG_WAKE_AT)
            pthread_cond_signal(&l->wake);
        l->used += n;
    }
    pthread_mutex_unlock(&l->mu);
}

/* ---- lines built in place ----------------------------------------------- */

static void put(struct log_line *b, const char *s, size_t n)
{
    if (b->len + n > sizeof b->text - 2) { /* room for "}\n" */
        b->truncated = 1;
        return;
    }
    memcpy(b->text + b->len, s, n);
    b->len += n;
}

/* Bytes that go into a JSON string as they are: ASCII from the space up,
 * but the quote and the backslash. */
static const unsigned char PLAIN[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 00 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 10 */
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 20 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 30 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 40 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, /* 50 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 60 */
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, /* 70 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 80 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* 90 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* a0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* b0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* c0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* d0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* e0 */
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, /* f0 */
};

/* s as the inside of a JSON string: escaped, bytes that are not UTF-8
 * replaced by U+FFFD, cut at a character when the line is full. */
static void put_escaped(struct log_line *b, const char *s, size_t n)
{
    static const char HEX[] = "0123456789abcdef";
    size_t i = 0;
    while (i < n && !b->truncated) {
        unsigned char c = (unsigned char)s[i];
        char esc[8];
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c;
            put(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            const char *named = c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : NULL;
            if (named) {
                put(b, named, 2);
            } else {
                memcpy(esc, "\\u00", 4);
                esc[4] = HEX[c >> 4], esc[5] = HEX[c & 15];
                put(b, esc, 6);
            }
            i++;
        } else if (c < 0x80) {
            size_t run = i; /* plain ASCII goes in one copy */
            while (run < n && PLAIN[(unsigned char)s[run]])
                run++;
            put(b, s + i, run - i);
            i = run;
        } else {
            size_t k = utf8_sequence(s + i, n - i);
            if (k)
                put(b, s + i, k);
            else
                put(b, "\xEF\xBF\xBD", 3);
            i += k ? k : 1;
        }
    }
}

static void put_key(struct log_line *b, const char *key)
{
    put(b, ",\"", 2);
    put(b, key, strlen(key)); /* keys are the program's own words */
    put(b, "\":", 2);
}

int log_line_begin(const struct logger *l, enum log_level level, const char *msg,
                   struct log_line *b)
{
    b->len = 0;
    b->truncated = 0;
    b->on = log_enabled(l, level);
    if (!b->on)
        return 0;
    int64_t now = clock_wall_us();
    char when[48] = "{\"time\":\"";
    size_t n = 9;
    utc_iso_second(now / 1000000, when + n);
    n += 19;
    when[n++] = '.';
    n += (size_t)decimal_digits(when + n, (unsigned long long)(now % 1000000 / 1000), 3);
    memcpy(when + n, "Z\"", 2);
    put(b, when, n + 2);
    put(b, ",\"level\":\"", 10);
    put(b, NAMES[level], strlen(NAMES[level]));
    put(b, "\"", 1);
    log_line_str(b, "msg", msg);
    return 1;
}

void log_line_str(struct log_line *b, const char *key, const char *value)
{
    if (!b->on || !value)
        return;
    /* The usual value, plain ASCII with room to spare, in one pass. */
    size_t klen = strlen(key), vlen = 0;
    while (PLAIN[(unsigned char)value[vlen]])
        vlen++;
    if (!value[vlen] && b->len + klen + vlen + 8 <= sizeof b->text - 2) {
        char *at = b->text + b->len;
        *at++ = ',';
        *at++ = '"';
        memcpy(at, key, klen);
        at += klen;
        memcpy(at, "\":\"", 3);
        at += 3;
        memcpy(at, value, vlen);
        at += vlen;
        *at++ = '"';
        b->len = (size_t)(at - b->text);
        return;
    }
    put_key(b, key);
    put(b, "\"", 1);
    put_escaped(b, value, strlen(value));
    put(b, "\"", 1);
}

void log_line_raw(struct log_line *b, const char *key, const char *json)
{
    if (!b->on)
        return;
    put_key(b, key);
    put(b, json, strlen(json));
}

void log_line_int(struct log_line *b, const char *key, long long value)
{
    if (!b->on)
        return;
    char num[24];
    size_t n = (size_t)decimal_fixed(num, value, 0);
    put_key(b, key);
    put(b, num, n);
}

void log_line_ms(struct log_line *b, const char *key, double ms)
{
    if (!b->on)
        return;
    if (!(ms >= 0 && ms < 1e15)) { /* not a duration: as it is */
        char num[40];
        snprintf(num, sizeof num, "%.3f", ms);
        log_line_raw(b, key, num);
        return;
    }
    unsigned long long us = (unsigned long long)(ms * 1000.0 + 0.5);
    char num[32];
    size_t n = (size_t)decimal_digits(num, us / 1000, 1);
    num[n++] = '.';
    n += (size_t)decimal_digits(num + n, us % 1000, 3);
    put_key(b, key);
    put(b, num, n);
}

void log_line_end(struct logger *l, struct log_line *b)
{
    if (!b->on)
        return;
    if (b->truncated) /* whatever was cut, the line stays one object */
        log_line_raw(b, "truncated", "true");
    memcpy(b->text + b->len, "}\n", 2);
    b->len += 2;
    submit(l, b->text, b->len);
    b->on = 0;
}

/* ---- lines built as cJSON trees (the rare ones) ----------------------------- */

cJSON *log_begin(const struct logger *l, enum log_level level, const char *msg)
{
    if (!log_enabled(l, level))
        return NULL;
    struct log_line head;
    log_line_begin(l, level, msg, &head);
    /* Reuse the in-place line's time, level and msg. */
    memcpy(head.text + head.len, "}", 2);
    cJSON *line = cJSON_Parse(head.text);
    return line;
}

void log_end(struct logger *l, cJSON *line)
{
    if (!line)
        return;
    char *text = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    if (!text)
        return;
    /* Values from outside (civetweb's messages, PostgreSQL's) may hold
     * bytes that are not UTF-8; cJSON copies them as they are. */
    size_t n = strlen(text);
    char *fixed = utf8_valid(text, n) ? NULL : utf8_repair(text, n);
    const char *out = fixed ? fixed : text;
    n = strlen(out);
    char *withnl = malloc(n + 1);
    if (withnl) {
        memcpy(withnl, out, n);
        withnl[n] = '\n';
        submit(l, withnl, n + 1);
        free(withnl);
    }
    free(fixed);
    free(text);
}

void log_msg(struct logger *l, enum log_level level, const char *msg)
{
    struct log_line b;
    if (log_line_begin(l, level, msg, &b))
        log_line_end(l, &b);
}
