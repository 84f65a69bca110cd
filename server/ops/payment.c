/* payment.c - payment validation, fingerprint material, simulated processor
 * and JSON encoding */
#define _POSIX_C_SOURCE 200809L
#include "payment.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "ids.h"
#include "request_json.h"
#include "money.h"
#include "decimal.h"
#include "utc_text.h"
#include "utf8.h"

int payment_customer_valid(const char *s)
{
    size_t n = ids_url_safe_len(s);
    return n >= 1 && n <= PAYMENT_CUSTOMER_MAX;
}

int payment_id_valid(const char *s)
{
    return ids_valid("txn_", s);
}

static const char *const FIELDS[] = {"amount", "currency", "customer_id", "description"};

int payment_parse(const char *body, size_t len, struct payment_request *out, struct apierr *err)
{
    struct payment_request r = {0};
    int rc = -1;
    struct json_top top;
    cJSON *root =
        request_json_object(body, len, FIELDS, sizeof FIELDS / sizeof FIELDS[0], &top, err);
    if (!root)
        goto out;

    cJSON *cur = cJSON_GetObjectItemCaseSensitive(root, "currency");
    if (!cur) {
        apierr_of(err, APIERR_INVALID_CURRENCY, "currency", "currency is required");
        goto out;
    }
    if (!cJSON_IsString(cur) || (r.digits = money_currency_digits(cur->valuestring)) < 0) {
        apierr_of(err, APIERR_INVALID_CURRENCY, "currency",
                  "currency must be a supported upper-case ISO 4217 code");
        goto out;
    }
    memcpy(r.currency, cur->valuestring, 4);

    int has = request_json_amount(root, body, &top, r.digits, r.currency, &r.amount_minor, err);
    if (has < 0)
        goto out;
    if (!has) {
        apierr_of(err, APIERR_INVALID_AMOUNT, "amount", "amount is required");
        goto out;
    }

    cJSON *cust = cJSON_GetObjectItemCaseSensitive(root, "customer_id");
    if (!cust) {
        apierr_of(err, APIERR_INVALID_CUSTOMER_ID, "customer_id", "customer_id is required");
        goto out;
    }
    if (!cJSON_IsString(cust) || !payment_customer_valid(cust->valuestring)) {
        apierr_of(err, APIERR_INVALID_CUSTOMER_ID, "customer_id",
                  "customer_id must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
        goto out;
    }
    memcpy(r.customer_id, cust->valuestring, strlen(cust->valuestring) + 1);

    cJSON *desc = cJSON_GetObjectItemCaseSensitive(root, "description");
    if (desc && !cJSON_IsNull(desc)) {
        size_t n = cJSON_IsString(desc) ? strlen(desc->valuestring) : 0;
        if (!cJSON_IsString(desc) || n > PAYMENT_DESCRIPTION_MAX ||
            !utf8_valid(desc->valuestring, n)) {
            apierr_of(err, APIERR_INVALID_DESCRIPTION, "description",
                      "description must be a string of at most %d bytes of UTF-8",
                      PAYMENT_DESCRIPTION_MAX);
            goto out;
        }
        r.description = strdup(desc->valuestring);
        if (!r.description) {
            apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
            goto out;
        }
    }
    *out = r;
    r.description = NULL;
    rc = 0;
out:
    free(r.description);
    cJSON_Delete(root);
    return rc;
}

void payment_request_clear(struct payment_request *r)
{
    free(r->description);
    memset(r, 0, sizeof *r);
}

char *payment_canonical(const struct payment_request *r, size_t *len)
{
    /* Fixed field order; the description last and length-prefixed, so no two
     * different requests share a canonical form. */
    size_t dlen = r->description ? strlen(r->description) : 0;
    size_t cap = 128 + PAYMENT_CUSTOMER_MAX + dlen;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    int n;
    if (r->description)
        n = snprintf(buf, cap, "amount_minor=%lld\ncurrency=%s\ncustomer_id=%s\ndescription=%zu:%s",
                     (long long)r->amount_minor, r->currency, r->customer_id, dlen, r->description);
    else
        n = snprintf(buf, cap, "amount_minor=%lld\ncurrency=%s\ncustomer_id=%s\ndescription=-",
                     (long long)r->amount_minor, r->currency, r->customer_id);
    if (n < 0 || (size_t)n >= cap) {
        free(buf);
        return NULL;
    }
    *len = (size_t)n;
    return buf;
}

int payment_new_id(char out[PAYMENT_ID_LEN + 1])
{
    return ids_new("txn_", out);
}

int payment_id_for(const char *downstream_key, char out[PAYMENT_ID_LEN + 1])
{
    return ids_from("txn_", STORE_DOWNSTREAM_PREFIX, downstream_key, out);
}

void payment_simulated_wait(const char *customer_id, int delay_ms)
{
    int ms = delay_ms;
    if (strncmp(customer_id, PAYMENT_SLOW_PREFIX, strlen(PAYMENT_SLOW_PREFIX)) == 0)
        ms += PAYMENT_SLOW_MS;
    if (ms > 0)
        clock_sleep_ms(ms);
}

enum payment_outcome payment_process(const struct payment_request *r, int delay_ms)
{
    payment_simulated_wait(r->customer_id, delay_ms);
    if (strncmp(r->customer_id, "cust-declined", 13) == 0)
        return PAYMENT_DECLINED;
    if (strncmp(r->customer_id, "cust-gateway-error", 18) == 0)
        return PAYMENT_GATEWAY_ERROR;
    return PAYMENT_APPROVED;
}

/* Adds the payment object's fields to obj; returns 0 or -1. */
static int add_payment_fields(cJSON *obj, const struct store_payment *p)
{
    char amount[32], refunded[32], when[28];
    int digits = money_currency_digits(p->currency);
    if (money_format(p->amount_minor, digits < 0 ? 2 : digits, amount, sizeof amount) < 0 ||
        money_format(p->amount_refunded_minor, digits < 0 ? 2 : digits, refunded, sizeof refunded) <
            0)
        return -1;
    utc_iso_micro(p->processed_at_us, when);
    if (!cJSON_AddStringToObject(obj, "transaction_id", p->transaction_id) ||
        !cJSON_AddStringToObject(obj, "status", p->status) ||
        !cJSON_AddRawToObject(obj, "amount", amount) ||
        !cJSON_AddStringToObject(obj, "currency", p->currency) ||
        !cJSON_AddStringToObject(obj, "customer_id", p->customer_id))
        return -1;
    if (!(p->description ? cJSON_AddStringToObject(obj, "description", p->description)
                         : cJSON_AddNullToObject(obj, "description")))
        return -1;
    if (!cJSON_AddStringToObject(obj, "processed_at", when))
        return -1;
    if (!(p->charge_id ? cJSON_AddStringToObject(obj, "charge_id", p->charge_id)
                       : cJSON_AddNullToObject(obj, "charge_id")))
        return -1;
    if (!(p->idempotency_key ? cJSON_AddStringToObject(obj, "idempotency_key", p->idempotency_key)
                             : cJSON_AddNullToObject(obj, "idempotency_key")))
        return -1;
    if (!cJSON_AddRawToObject(obj, "amount_refunded", refunded) ||
        !cJSON_AddBoolToObject(obj, "refunded",
                               p->amount_refunded_minor > 0 &&
                                   p->amount_refunded_minor >= p->amount_minor))
        return -1;
    return 0;
}

cJSON *payment_to_cjson(const struct store_payment *p)
{
    cJSON *obj = cJSON_CreateObject();
    if (obj && add_payment_fields(obj, p) != 0) {
        cJSON_Delete(obj);
        return NULL;
    }
    return obj;
}

char *payment_json(const struct store_payment *p)
{
    cJSON *obj = payment_to_cjson(p);
    char *out = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    return out;
}

char *payment_declined_json(const struct store_payment *p)
{
    char *out = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *err = cJSON_AddObjectToObject(root, "error");
    const struct apierr_row *row = apierr_row(APIERR_CARD_DECLINED);
    if (!err || !cJSON_AddStringToObject(err, "type", row->type) ||
        !cJSON_AddStringToObject(err, "code", row->code) ||
        !cJSON_AddStringToObject(err, "message", row->message) ||
        !cJSON_AddStringToObject(root, "transaction_id", p->transaction_id) ||
        !cJSON_AddStringToObject(root, "status", "declined") ||
        !(p->charge_id ? cJSON_AddStringToObject(root, "charge_id", p->charge_id)
                       : cJSON_AddNullToObject(root, "charge_id")))
        goto out;
    out = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return out;
}
