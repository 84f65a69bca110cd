/* apierr.c - API errors and their JSON encoding */
#define _POSIX_C_SOURCE 200809L
#include "apierr.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

/* Makes buf (of size len) valid UTF-8: stray bytes replaced, cut at a
 * character boundary. */
static void make_utf8(char *buf, size_t len)
{
    size_t n = strlen(buf);
    if (utf8_valid(buf, n))
        return;
    char *fixed = utf8_repair(buf, n);
    if (!fixed) {
        buf[0] = '\0';
        return;
    }
    utf8_copy(buf, len, fixed);
    free(fixed);
}

static const struct apierr_row ROWS[APIERR_COUNT] = {
#define APIERR_ROW(name, status, type, code, message) {status, type, code, message},
    APIERR_TABLE(APIERR_ROW)
#undef APIERR_ROW
};

const struct apierr_row *apierr_row(enum apierr_id id)
{
    return &ROWS[id];
}

int apierr_of(struct apierr *e, enum apierr_id id, const char *param, const char *fmt, ...)
{
    const struct apierr_row *row = &ROWS[id];
    e->status = row->status;
    e->type = row->type;
    e->code = row->code;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->message, sizeof e->message, fmt, ap);
        va_end(ap);
    } else {
        snprintf(e->message, sizeof e->message, "%s", row->message);
    }
    utf8_copy(e->param, sizeof e->param, param ? param : "");
    make_utf8(e->message, sizeof e->message);
    make_utf8(e->param, sizeof e->param);
    return -1;
}

void apierr_store(struct apierr *e, int unavailable, int idempotent)
{
    const char *retry =
        idempotent ? "nothing was recorded, retry with the same idempotency key" : "retry later";
    if (unavailable)
        apierr_of(e, APIERR_STORE_UNAVAILABLE, NULL, "the payment store is unavailable; %s", retry);
    else
        apierr_of(e, APIERR_INTERNAL_ERROR, NULL, "the payment store failed; %s", retry);
}

char *apierr_json_with(const struct apierr *e, const char *name, const char *value)
{
    char *out = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    if (!err || !cJSON_AddStringToObject(err, "type", e->type) ||
        !cJSON_AddStringToObject(err, "code", e->code) ||
        !cJSON_AddStringToObject(err, "message", e->message))
        goto out;
    if (e->param[0] && !cJSON_AddStringToObject(err, "param", e->param))
        goto out;
    if (name && !cJSON_AddStringToObject(root, name, value))
        goto out;
    out = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return out;
}

char *apierr_json(const struct apierr *e)
{
    return apierr_json_with(e, NULL, NULL);
}

/* The default bodies, written once (the messages need no escaping). */
static char defaults[APIERR_COUNT][320];
static pthread_once_t defaults_once = PTHREAD_ONCE_INIT;

static void write_defaults(void)
{
    for (int i = 0; i < APIERR_COUNT; i++)
        snprintf(defaults[i], sizeof defaults[i],
                 "{\"error\":{\"type\":\"%s\",\"code\":\"%s\",\"message\":\"%s\"}}", ROWS[i].type,
                 ROWS[i].code, ROWS[i].message);
}

const char *apierr_default_json(enum apierr_id id)
{
    pthread_once(&defaults_once, write_defaults);
    return defaults[id];
}
