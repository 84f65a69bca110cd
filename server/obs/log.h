/* log.h - JSON lines on stderr
 *
 * Every line is one JSON object with at least "time", "level" and "msg",
 * valid UTF-8, written whole. Lines go through a bounded buffer to a writer
 * thread: a caller never waits on the sink; when the buffer is full a line
 * is dropped and counted (log_dropped). Thread-safe.
 *
 * Frequent lines (the access log, duplicate events) are built in place with
 * log_line_*: no allocation, escaped as they are written. Rare ones may use
 * a cJSON tree (log_begin / log_end).
 */
#ifndef MOCKERY_LOG_H
#define MOCKERY_LOG_H

#include <stddef.h>
#include <stdio.h>

struct cJSON;

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

struct logger;

/* A logger writing to out at or above level, with its writer thread; NULL
 * on failure. */
struct logger *log_new(FILE *out, enum log_level level);
/* Writes what is buffered, stops the thread, frees; log_free(NULL) does
 * nothing. */
void log_free(struct logger *l);

/* Waits until every line submitted so far has been written to out. */
void log_flush(struct logger *l);

/* Lines dropped because the buffer was full (a slow sink). */
unsigned long long log_dropped(struct logger *l);

/* Parses "debug", "info", "warn" or "error"; returns 0 or -1. */
int log_parse_level(const char *s, enum log_level *out);

/* Whether lines of this level are written. */
int log_enabled(const struct logger *l, enum log_level level);

/* A line being built in place (on the caller's stack). */
#define LOG_LINE_MAX 4096
struct log_line {
    char text[LOG_LINE_MAX];
    size_t len;
    int on;        /* the level is enabled */
    int truncated; /* a value did not fit: cut at a character, marked */
};

/* Starts a line with time, level and msg: 1, or 0 when the level is
 * filtered out (the other calls then do nothing). */
int log_line_begin(const struct logger *l, enum log_level level, const char *msg,
                   struct log_line *b);
/* A string field (NULL: none), escaped, bytes that are not UTF-8 replaced. */
void log_line_str(struct log_line *b, const char *key, const char *value);
/* A field whose value is already JSON (a number's text). */
void log_line_raw(struct log_line *b, const char *key, const char *json);
void log_line_int(struct log_line *b, const char *key, long long value);
/* Milliseconds, to the microsecond. */
void log_line_ms(struct log_line *b, const char *key, double ms);
/* Closes the line and hands it to the writer. */
void log_line_end(struct logger *l, struct log_line *b);

/* Starts a line as a cJSON object holding time, level and msg, or NULL when
 * the level is filtered out (cJSON's add functions accept NULL). */
struct cJSON *log_begin(const struct logger *l, enum log_level level, const char *msg);

/* Writes the line and frees it; log_end(l, NULL) does nothing. */
void log_end(struct logger *l, struct cJSON *line);

/* A line with one message and no other fields. */
void log_msg(struct logger *l, enum log_level level, const char *msg);

#endif
