/* event.c - the event a completed payment or refund leaves (event.h) */
#define _POSIX_C_SOURCE 200809L
#include "event.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "utc_text.h"

static const char *const TYPE_NAMES[EVENT_TYPES] = {
    [EVENT_PAYMENT_SUCCEEDED] = "payment.succeeded",
    [EVENT_PAYMENT_DECLINED] = "payment.declined",
    [EVENT_REFUND_SUCCEEDED] = "refund.succeeded",
};

const char *event_type_name(enum event_type t)
{
    return TYPE_NAMES[t];
}

int event_type_valid(const char *s)
{
    for (int t = 0; t < EVENT_TYPES; t++)
        if (strcmp(s, TYPE_NAMES[t]) == 0)
            return 1;
    return 0;
}

int event_id_valid(const char *s)
{
    return ids_valid("evt_", s);
}

struct store_event *event_new(enum event_type t, const char *downstream_key, int64_t created_us,
                              const char *object, size_t object_len)
{
    char id[EVENT_ID_LEN + 1], created[28];
    struct store_event *e = calloc(1, sizeof *e);
    utc_iso_micro(created_us, created);
    if (!e || !object || ids_from("evt_", STORE_DOWNSTREAM_PREFIX, downstream_key, id) != 0)
        goto fail;
    /* What cJSON would print for {"id", "type", "created", "data":
     * {"object"}}: the id, the type and the time need no escaping (URL-safe
     * characters, a fixed name, digits), and the object is JSON already. */
    static const char FORMAT[] = "{\"id\":\"%s\",\"type\":\"%s\",\"created\":\"%s\","
                                 "\"data\":{\"object\":%.*s}}";
    size_t cap = sizeof FORMAT + sizeof id + strlen(TYPE_NAMES[t]) + sizeof created + object_len;
    e->body = malloc(cap);
    e->event_id = strdup(id);
    e->type = strdup(TYPE_NAMES[t]);
    if (!e->body || !e->event_id || !e->type || object_len > INT_MAX)
        goto fail;
    int n = snprintf(e->body, cap, FORMAT, id, TYPE_NAMES[t], created, (int)object_len, object);
    if (n < 0 || (size_t)n >= cap)
        goto fail;
    e->body_len = (size_t)n;
    e->created_at_us = created_us;
    return e;
fail:
    event_free(e);
    return NULL;
}

void event_free(struct store_event *e)
{
    if (!e)
        return;
    store_event_clear(e);
    free(e);
}
