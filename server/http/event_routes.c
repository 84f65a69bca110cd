/* event_routes.c - GET /api/v1/events and /api/v1/events/{id}: the events
 * the tenant's completed payments and refunds left (routes.h) */
#define _POSIX_C_SOURCE 200809L
#include "routes.h"

#include <civetweb.h>
#include <cjson/cJSON.h>
#include <string.h>

#include "event.h"
#include "paging.h"
#include "service.h"

/* An event is sent as stored: the bytes every reader (and, later, every
 * webhook) gets are the ones its completion wrote. */
static cJSON *event_item(const void *e)
{
    return cJSON_CreateRaw(((const struct store_event *)e)->body);
}

/* ---- GET /api/v1/events ------------------------------------------------- */

void routes_list_events(struct request *r)
{
    const char *qs = r->ri->query_string ? r->ri->query_string : "";
    char type[32];
    struct paging pg;
    struct store_event_list list = {0};
    char err[256] = "";

    if (paging_read(r, event_id_valid, "event", &pg) != 0)
        return;
    struct store_event_query q = {.limit = pg.limit,
                                  .starting_after = pg.has_after ? pg.after : NULL};
    int n = mg_get_var(qs, strlen(qs), "type", type, sizeof type);
    if (n != -1) {
        if (n < 0 || !event_type_valid(type)) {
            http_fail(r, APIERR_INVALID_PARAMETER, "type",
                      "type must be payment.succeeded, payment.declined or refund.succeeded");
            return;
        }
        q.type = type;
    }
    if (paging_take_slot(r, "list_events") != 0)
        return;
    enum store_status st = store_list_events(r->svc->store, r->tenant, &q, &list, err, sizeof err);
    if (st == STORE_NOT_FOUND) {
        paging_unknown_cursor(r, "event");
    } else if (st != STORE_OK) {
        http_fail_store(r, "list_events", st, err);
    } else {
        paging_send(r, "events", list.items, list.count, sizeof *list.items, event_item,
                    list.has_more, list.count ? list.items[list.count - 1].event_id : NULL);
    }
    paging_done(r);
    store_event_list_clear(&list);
}

/* ---- GET /api/v1/events/{id} -------------------------------------------- */

void routes_get_event(struct request *r, const char *id)
{
    struct store_event e = {0};
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (event_id_valid(id))
        st = store_get_event(r->svc->store, r->tenant, id, &e, err, sizeof err);
    http_send_found(r, "get_event", st, err, APIERR_EVENT_NOT_FOUND,
                    st == STORE_OK ? cJSON_CreateRaw(e.body) : NULL);
    store_event_clear(&e);
}
