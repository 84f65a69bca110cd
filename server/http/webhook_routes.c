/* webhook_routes.c - /api/v1/webhook_endpoints: where a tenant wants its
 * events sent - made (the secret shown once), listed, removed (routes.h) */
#define _POSIX_C_SOURCE 200809L
#include "routes.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "ids.h"
#include "service.h"
#include "webhook_endpoint.h"

/* ---- POST /api/v1/webhook_endpoints -------------------------------------- */

void routes_create_endpoint(struct request *r)
{
    char *body = NULL, err[256] = "";
    size_t len = 0;
    struct webhook_endpoint_request req = {0};
    struct apierr e;
    if (http_read_json_body(r, WEBHOOK_ENDPOINT_MAX_BODY, &body, &len) != 0)
        return;
    if (webhook_endpoint_parse(body, len, &req, &e) != 0 ||
        webhook_url_check(req.url, r->svc->webhook_allow_private, r->tenant, &e) != 0) {
        const char *retry[] = {"Retry-After", "1", NULL};
        http_send_error(r, &e, e.status == 503 ? retry : NULL);
        goto out;
    }
    char id[WEBHOOK_ENDPOINT_ID_LEN + 1], secret[WEBHOOK_SECRET_LEN + 1];
    if (ids_new("we_", id) != 0 || ids_new("whsec_", secret) != 0) {
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
        goto out;
    }
    struct store_endpoint ep = {id, req.url, req.events, secret, clock_wall_us()};
    enum store_status st = store_create_endpoint(r->svc->store, r->tenant, &ep,
                                                 r->svc->webhook_max_endpoints, err, sizeof err);
    if (st == STORE_REJECTED) {
        http_fail(r, APIERR_ENDPOINT_LIMIT_REACHED, NULL,
                  "a tenant has at most %d webhook endpoints: delete one first",
                  r->svc->webhook_max_endpoints);
    } else if (st != STORE_OK) {
        http_fail_store(r, "create_endpoint", st, err);
    } else {
        cJSON *obj = webhook_endpoint_to_cjson(&ep, 1);
        if (obj)
            http_send_json(r, 201, obj);
        else
            http_send_internal(r);
        cJSON_Delete(obj);
    }
out:
    webhook_endpoint_request_clear(&req);
    free(body);
}

/* ---- GET /api/v1/webhook_endpoints --------------------------------------- */

void routes_list_endpoints(struct request *r)
{
    struct store_endpoint_list list = {0};
    char err[256] = "";
    enum store_status st = store_list_endpoints(r->svc->store, r->tenant, &list, err, sizeof err);
    if (st != STORE_OK) {
        http_fail_store(r, "list_endpoints", st, err);
        return;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *items = root ? cJSON_AddArrayToObject(root, "webhook_endpoints") : NULL;
    int ok = items != NULL;
    for (size_t i = 0; ok && i < list.count; i++)
        ok = cJSON_AddItemToArray(items, webhook_endpoint_to_cjson(&list.items[i], 0));
    if (ok && cJSON_AddNumberToObject(root, "count", (double)list.count))
        http_send_json(r, 200, root);
    else
        http_send_internal(r);
    cJSON_Delete(root);
    store_endpoint_list_clear(&list);
}

/* ---- DELETE /api/v1/webhook_endpoints/{id} ------------------------------- */

void routes_delete_endpoint(struct request *r, const char *id)
{
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (webhook_endpoint_id_valid(id))
        st = store_delete_endpoint(r->svc->store, r->tenant, id, err, sizeof err);
    cJSON *obj = NULL;
    if (st == STORE_OK && (obj = cJSON_CreateObject()) &&
        (!cJSON_AddStringToObject(obj, "id", id) || !cJSON_AddTrueToObject(obj, "deleted"))) {
        cJSON_Delete(obj);
        obj = NULL;
    }
    http_send_found(r, "delete_endpoint", st, err, APIERR_WEBHOOK_ENDPOINT_NOT_FOUND, obj);
}
