/* log.c - JSON lines on stderr */
#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include "utf8.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct logger {
    FILE *out;
    enum log_level level;
    pthread_mutex_t mu;
};

static const char *const NAMES[] = {"debug", "info", "warn", "error"};

struct logger *log_new(FILE *out, enum log_level level)
{
    struct logger *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->out = out;
    l->level = level;
    pthread_mutex_init(&l->mu, NULL);
    return l;
}

void log_free(struct logger *l)
{
    if (!l)
        return;
    pthread_mutex_destroy(&l->mu);
    free(l);
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

cJSON *log_begin(const struct logger *l, enum log_level level, const char *msg)
{
    if (!l || level < l->level)
        return NULL;
    struct timespec ts;
    struct tm tm;
    char date[32], when[48];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(when, sizeof when, "%s.%03ldZ", date, ts.tv_nsec / 1000000);

    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "time", when);
    cJSON_AddStringToObject(line, "level", NAMES[level]);
    cJSON_AddStringToObject(line, "msg", msg);
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
    /* Values from outside (a decoded path, civetweb's messages) may hold
     * bytes that are not UTF-8; cJSON copies them as they are. */
    size_t n = strlen(text);
    if (!utf8_valid(text, n)) {
        char *fixed = utf8_repair(text, n);
        free(text);
        if (!fixed)
            return;
        text = fixed;
    }
    pthread_mutex_lock(&l->mu);
    fputs(text, l->out);
    fputc('\n', l->out);
    fflush(l->out);
    pthread_mutex_unlock(&l->mu);
    free(text);
}

void log_msg(struct logger *l, enum log_level level, const char *msg)
{
    log_end(l, log_begin(l, level, msg));
}
