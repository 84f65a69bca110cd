/* log.h - JSON lines on stderr
 *
 * Every line is one JSON object with at least "time", "level" and "msg".
 * Thread-safe: a line is written whole under the logger's mutex.
 */
#ifndef MOCKERY_LOG_H
#define MOCKERY_LOG_H

#include <stdio.h>

struct cJSON;

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };

struct logger;

/* A logger writing to out at or above level; NULL on allocation failure. */
struct logger *log_new(FILE *out, enum log_level level);
void log_free(struct logger *l);

/* Parses "debug", "info", "warn" or "error"; returns 0 or -1. */
int log_parse_level(const char *s, enum log_level *out);

/* Starts a line: an object holding time, level and msg, or NULL when the
 * level is filtered out (cJSON's add functions accept NULL and do nothing). */
struct cJSON *log_begin(const struct logger *l, enum log_level level, const char *msg);

/* Writes the line and frees it; log_end(l, NULL) does nothing. */
void log_end(struct logger *l, struct cJSON *line);

/* A line with one message and no other fields. */
void log_msg(struct logger *l, enum log_level level, const char *msg);

#endif
