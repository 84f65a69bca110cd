/* paging.c - list parameters, list slots and the page envelope (paging.h) */
#define _POSIX_C_SOURCE 200809L
#include "paging.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "service.h"

/* Answers 400 and returns -1: the route stops here. */
static int bad_param(struct request *r, const char *param, const char *msg)
{
    http_fail(r, APIERR_INVALID_PARAMETER, param, "%s", msg);
    return -1;
}

int paging_read(struct request *r, int (*valid)(const char *), const char *what, struct paging *out)
{
    const char *qs = r->ri->query_string ? r->ri->query_string : "";
    size_t qlen = strlen(qs);
    char limit_s[16];
    memset(out, 0, sizeof *out);
    out->limit = PAGING_DEFAULT_LIMIT;
    int n = mg_get_var(qs, qlen, "limit", limit_s, sizeof limit_s);
    if (n != -1) {
        char *end;
        long v = n > 0 ? strtol(limit_s, &end, 10) : 0;
        if (n <= 0 || *end || v < 1 || v > PAGING_MAX_LIMIT)
            return bad_param(r, "limit", "limit must be a whole number from 1 to 500");
        out->limit = (int)v;
    }
    n = mg_get_var(qs, qlen, "starting_after", out->after, sizeof out->after);
    if (n != -1) {
        if (n <= 0 || !valid(out->after)) {
            http_fail(r, APIERR_INVALID_PARAMETER, "starting_after",
                      "starting_after must be a %s id", what);
            return -1;
        }
        out->has_after = 1;
    }
    return 0;
}

void paging_unknown_cursor(struct request *r, const char *what)
{
    http_fail(r, APIERR_INVALID_PARAMETER, "starting_after", "starting_after names no %s of yours",
              what);
}

int paging_take_slot(struct request *r, const char *op)
{
    struct timespec until;
    clock_deadline_in(&until, 5000);
    int waited;
    while ((waited = sem_timedwait(&r->svc->list_slots, &until)) != 0 && errno == EINTR)
        ;
    if (waited != 0) {
        http_fail_store(r, op, STORE_UNAVAILABLE, "every list slot stayed busy for 5 s");
        return -1;
    }
    return 0;
}

void paging_done(struct request *r)
{
    sem_post(&r->svc->list_slots);
}

void paging_send(struct request *r, const char *name, const void *items, size_t count,
                 size_t item_size, cJSON *(*to_cjson)(const void *item), int has_more,
                 const char *last_id)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *array = root ? cJSON_AddArrayToObject(root, name) : NULL;
    int ok = array != NULL;
    for (size_t i = 0; ok && i < count; i++) {
        cJSON *o = to_cjson((const char *)items + i * item_size);
        ok = o && cJSON_AddItemToArray(array, o);
        if (!ok)
            cJSON_Delete(o);
    }
    ok = ok && cJSON_AddNumberToObject(root, "count", (double)count) &&
         cJSON_AddBoolToObject(root, "has_more", has_more);
    if (ok)
        ok = has_more && last_id ? cJSON_AddStringToObject(root, "next_cursor", last_id) != NULL
                                 : cJSON_AddNullToObject(root, "next_cursor") != NULL;
    if (ok)
        http_send_json(r, 200, root);
    else
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    cJSON_Delete(root);
}
