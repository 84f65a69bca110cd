/* refund.c - refund validation, fingerprint material, the simulated refund
 * gateway and JSON encoding (refund.h) */
#define _POSIX_C_SOURCE 200809L
#include "refund.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ids.h"
#include "money.h"
#include "request_json.h"
#include "utc_text.h"

static const char *const FIELDS[] = {"amount", "reason"};
static const char *const REASONS[] = {"requested_by_customer", "duplicate", "fraudulent"};

int refund_parse(const char *body, size_t len, const char *transaction_id,
                 struct refund_request *out, struct apierr *err)
{
    struct refund_request r = {0};
    struct json_top top;
    int rc = -1;
    snprintf(r.transaction_id, sizeof r.transaction_id, "%s", transaction_id);
    cJSON *root =
        request_json_object(body, len, FIELDS, sizeof FIELDS / sizeof FIELDS[0], &top, err);
    if (!root)
        return -1;
    int has = request_json_amount(root, body, &top, REFUND_PARSE_DIGITS, NULL, &r.amount_e4, err);
    if (has < 0)
        goto out;
    r.has_amount = has;
    cJSON *reason = cJSON_GetObjectItemCaseSensitive(root, "reason");
    if (reason && !cJSON_IsNull(reason)) {
        for (size_t i = 0; cJSON_IsString(reason) && i < sizeof REASONS / sizeof REASONS[0]; i++)
            if (strcmp(reason->valuestring, REASONS[i]) == 0)
                r.reason = REASONS[i];
        if (!r.reason) {
            apierr_of(err, APIERR_INVALID_REASON, "reason",
                      "reason must be requested_by_customer, duplicate or fraudulent");
            goto out;
        }
    }
    *out = r;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

char *refund_canonical(const struct refund_request *r, size_t *len)
{
    size_t cap = 64 + sizeof r->transaction_id;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    char amount[24] = "-";
    if (r->has_amount)
        snprintf(amount, sizeof amount, "%lld", (long long)r->amount_e4);
    int n = snprintf(buf, cap, "transaction_id=%s\namount_e4=%s\nreason=%s", r->transaction_id,
                     amount, r->reason ? r->reason : "-");
    if (n < 0 || (size_t)n >= cap) {
        free(buf);
        return NULL;
    }
    *len = (size_t)n;
    return buf;
}

int refund_amount_minor(const struct refund_request *r, int digits, const char *currency,
                        int64_t *minor, struct apierr *err)
{
    int64_t unit = 1;
    for (int i = digits; i < REFUND_PARSE_DIGITS; i++)
        unit *= 10;
    if (r->amount_e4 % unit != 0)
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount",
                         "amount has more than %d decimals for %s", digits, currency);
    *minor = r->amount_e4 / unit;
    return 0;
}

int refund_gateway_fails(const struct store_payment *p)
{
    return strncmp(p->customer_id, "cust-refund-error", 17) == 0;
}

int refund_id_valid(const char *s)
{
    return ids_valid("re_", s);
}

int refund_new_id(char out[REFUND_ID_LEN + 1])
{
    return ids_new("re_", out);
}

int refund_id_for(const char *downstream_key, char out[REFUND_ID_LEN + 1])
{
    return ids_from("re_", STORE_DOWNSTREAM_PREFIX, downstream_key, out);
}

cJSON *refund_to_cjson(const struct store_refund *r)
{
    char amount[32], when[28];
    int digits = money_currency_digits(r->currency);
    cJSON *obj = cJSON_CreateObject();
    if (!obj || money_format(r->amount_minor, digits < 0 ? 2 : digits, amount, sizeof amount) < 0)
        goto fail;
    utc_iso_micro(r->created_at_us, when);
    if (!cJSON_AddStringToObject(obj, "refund_id", r->refund_id) ||
        !cJSON_AddStringToObject(obj, "transaction_id", r->transaction_id) ||
        !cJSON_AddRawToObject(obj, "amount", amount) ||
        !cJSON_AddStringToObject(obj, "currency", r->currency) ||
        !cJSON_AddStringToObject(obj, "status", r->status) ||
        !(r->reason ? cJSON_AddStringToObject(obj, "reason", r->reason)
                    : cJSON_AddNullToObject(obj, "reason")) ||
        !cJSON_AddStringToObject(obj, "created_at", when) ||
        !(r->acquirer_refund_id
              ? cJSON_AddStringToObject(obj, "acquirer_refund_id", r->acquirer_refund_id)
              : cJSON_AddNullToObject(obj, "acquirer_refund_id")) ||
        !(r->idempotency_key ? cJSON_AddStringToObject(obj, "idempotency_key", r->idempotency_key)
                             : cJSON_AddNullToObject(obj, "idempotency_key")))
        goto fail;
    return obj;
fail:
    cJSON_Delete(obj);
    return NULL;
}

char *refund_json(const struct store_refund *r)
{
    cJSON *obj = refund_to_cjson(r);
    char *out = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return out;
}
