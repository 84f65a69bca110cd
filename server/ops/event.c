/* event.c - the event a completed payment or refund leaves (event.h) */
#define _POSIX_C_SOURCE 200809L
#include "event.h"

#include <cjson/cJSON.h>
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
                              cJSON *object)
{
    char id[EVENT_ID_LEN + 1], created[28];
    struct store_event *e = calloc(1, sizeof *e);
    cJSON *root = cJSON_CreateObject(), *data = NULL;
    utc_iso_micro(created_us, created);
    if (!e || !root || !object ||
        ids_from("evt_", STORE_DOWNSTREAM_PREFIX, downstream_key, id) != 0 ||
        !cJSON_AddStringToObject(root, "id", id) ||
        !cJSON_AddStringToObject(root, "type", TYPE_NAMES[t]) ||
        !cJSON_AddStringToObject(root, "created", created) ||
        !(data = cJSON_AddObjectToObject(root, "data")) ||
        !cJSON_AddItemToObject(data, "object", object)) {
        cJSON_Delete(object);
        goto fail;
    }
    e->body = cJSON_PrintUnformatted(root);
    e->event_id = strdup(id);
    e->type = strdup(TYPE_NAMES[t]);
    if (!e->body || !e->event_id || !e->type)
        goto fail;
    e->body_len = strlen(e->body);
    e->created_at_us = created_us;
    cJSON_Delete(root);
    return e;
fail:
    cJSON_Delete(root);
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
