/* apierr.c - API errors and their JSON encoding */
#define _POSIX_C_SOURCE 200809L
#include "apierr.h"

#include <cjson/cJSON.h>
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

int apierr_set(struct apierr *e, int status, const char *type, const char *code, const char *param,
               const char *fmt, ...)
{
    va_list ap;
    e->status = status;
    e->type = type;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
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
        apierr_set(e, 503, "api_error", "store_unavailable", NULL,
                   "the payment store is unavailable; %s", retry);
    else
        apierr_set(e, 500, "api_error", "internal_error", NULL, "the payment store failed; %s",
                   retry);
}

char *apierr_json(const struct apierr *e)
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
    out = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return out;
}
