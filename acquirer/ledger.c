/* ledger.c - mockery-acquirer's charge and refund operations (ledger.h) */
#define _POSIX_C_SOURCE 200809L
#include "ledger.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "ids.h"
#include "money.h"
#include "payment.h"
#include "request_json.h"
#include "utc_text.h"

int ledger_error(struct apierr *e, int status, const char *code, const char *message)
{
    memset(e, 0, sizeof *e);
    e->status = status;
    e->type = status >= 500 ? APIERR_TYPE_API : APIERR_TYPE_INVALID;
    e->code = code;
    snprintf(e->message, sizeof e->message, "%s", message);
    return -1;
}

/* ---- parsing ------------------------------------------------------------- */

/* The index of member name in root (its value's text is at that index of
 * top), or -1. */
static int member_at(const cJSON *root, const char *name, const cJSON **item)
{
    int i = 0;
    for (const cJSON *m = root->child; m; m = m->next, i++)
        if (strcmp(m->string, name) == 0) {
            *item = m;
            return i;
        }
    return -1;
}

/* amount_minor: a JSON integer, 1 to 15 digits, no sign, fraction or
 * exponent - read from its text, never through a double. */
static int parse_minor(const cJSON *root, const char *body, const struct json_top *top,
                       int64_t *out, struct apierr *err)
{
    const cJSON *m = NULL;
    int at = member_at(root, "amount_minor", &m);
    if (at < 0)
        return ledger_error(err, 422, "invalid_amount", "amount_minor is required");
    if (at >= JSON_STRICT_MEMBERS || !cJSON_IsNumber(m))
        return ledger_error(err, 422, "invalid_amount", "amount_minor must be an integer");
    const char *s = body + top->value[at].off;
    size_t n = top->value[at].len;
    if (n == 0 || n > 15 || s[0] == '0')
        return ledger_error(err, 422, "invalid_amount",
                            "amount_minor must be an integer from 1 to 999999999999999");
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return ledger_error(err, 422, "invalid_amount",
                                "amount_minor must be an integer, without fraction or exponent");
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

/* A text member: 1-LEDGER_TEXT_MAX characters; url_safe: of [A-Za-z0-9_-],
 * else printable ASCII. */
static int parse_text(const cJSON *root, const char *name, int url_safe, char *out,
                      struct apierr *err)
{
    const cJSON *m = NULL;
    char msg[128];
    snprintf(msg, sizeof msg, "%s must be 1-%d characters of %s", name, LEDGER_TEXT_MAX,
             url_safe ? "A-Z, a-z, 0-9, _ and -" : "printable ASCII");
    if (member_at(root, name, &m) < 0 || !cJSON_IsString(m))
        return ledger_error(err, 422, "invalid_request", msg);
    const char *s = m->valuestring;
    size_t n = strlen(s);
    int ok = n >= 1 && n <= LEDGER_TEXT_MAX;
    if (ok && url_safe)
        ok = ids_url_safe_len(s) == n;
    for (size_t i = 0; ok && !url_safe && i < n; i++)
        ok = s[i] >= 0x20 && s[i] < 0x7f;
    if (!ok)
        return ledger_error(err, 422, "invalid_request", msg);
    memcpy(out, s, n + 1);
    return 0;
}

/* The strict object (request_json.h), with its errors. */
static cJSON *object_of(const char *body, size_t len, const char *const *fields, size_t n,
                        struct json_top *top, struct apierr *err)
{
    return request_json_object(body, len, fields, n, top, err);
}

int ledger_parse_charge(const char *body, size_t len, struct charge_request *out,
                        struct apierr *err)
{
    static const char *const fields[] = {"amount_minor", "currency", "customer_id", "merchant",
                                         "reference"};
    struct json_top top;
    struct charge_request r = {0};
    cJSON *root = object_of(body, len, fields, 5, &top, err);
    if (!root)
        return -1;
    int rc = -1;
    const cJSON *cur = NULL;
    if (parse_minor(root, body, &top, &r.amount_minor, err) != 0)
        goto out;
    if (member_at(root, "currency", &cur) < 0 || !cJSON_IsString(cur) ||
        strlen(cur->valuestring) != 3 || money_currency_digits(cur->valuestring) < 0) {
        ledger_error(err, 422, "invalid_currency", "currency must be a supported ISO 4217 code");
        goto out;
    }
    memcpy(r.currency, cur->valuestring, 4);
    if (parse_text(root, "customer_id", 1, r.customer_id, err) != 0 ||
        parse_text(root, "merchant", 0, r.merchant, err) != 0 ||
        parse_text(root, "reference", 1, r.reference, err) != 0)
        goto out;
    *out = r;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

int ledger_parse_refund(const char *body, size_t len, struct refund_request *out,
                        struct apierr *err)
{
    static const char *const fields[] = {"charge_id", "amount_minor", "reference"};
    struct json_top top;
    struct refund_request r = {0};
    cJSON *root = object_of(body, len, fields, 3, &top, err);
    if (!root)
        return -1;
    int rc = -1;
    if (parse_text(root, "charge_id", 1, r.charge_id, err) != 0 ||
        parse_minor(root, body, &top, &r.amount_minor, err) != 0 ||
        parse_text(root, "reference", 1, r.reference, err) != 0)
        goto out;
    *out = r;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* Fixed order, every field length-prefixed: no two requests share one. */
char *ledger_charge_canonical(const struct charge_request *r, size_t *len)
{
    char *buf = malloc(512);
    if (!buf)
        return NULL;
    int n =
        snprintf(buf, 512,
                 "amount_minor=%lld\ncurrency=%s\ncustomer_id=%zu:%s\nmerchant=%zu:%s\n"
                 "reference=%zu:%s",
                 (long long)r->amount_minor, r->currency, strlen(r->customer_id), r->customer_id,
                 strlen(r->merchant), r->merchant, strlen(r->reference), r->reference);
    *len = (size_t)n;
    return buf;
}

char *ledger_refund_canonical(const struct refund_request *r, size_t *len)
{
    char *buf = malloc(256);
    if (!buf)
        return NULL;
    int n = snprintf(buf, 256, "charge_id=%zu:%s\namount_minor=%lld\nreference=%zu:%s",
                     strlen(r->charge_id), r->charge_id, (long long)r->amount_minor,
                     strlen(r->reference), r->reference);
    *len = (size_t)n;
    return buf;
}

/* ---- JSON ---------------------------------------------------------------- */

cJSON *ledger_charge_to_cjson(const struct store_charge *c)
{
    char when[28];
    utc_iso_micro(c->created_at_us, when);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "charge_id", c->charge_id) ||
        !cJSON_AddStringToObject(o, "status", c->status) ||
        (c->decline_code && !cJSON_AddStringToObject(o, "decline_code", c->decline_code)) ||
        !cJSON_AddNumberToObject(o, "amount_minor", (double)c->amount_minor) ||
        !cJSON_AddStringToObject(o, "currency", c->currency) ||
        !cJSON_AddNumberToObject(o, "amount_refunded_minor", (double)c->amount_refunded_minor) ||
        !cJSON_AddStringToObject(o, "customer_id", c->customer_id) ||
        !cJSON_AddStringToObject(o, "merchant", c->merchant) ||
        !cJSON_AddStringToObject(o, "reference", c->reference) ||
        !cJSON_AddStringToObject(o, "idempotency_key", c->idempotency_key) ||
        !cJSON_AddStringToObject(o, "created_at", when)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

cJSON *ledger_refund_to_cjson(const struct store_charge_refund *r)
{
    char when[28];
    utc_iso_micro(r->created_at_us, when);
    cJSON *o = cJSON_CreateObject();
    if (!o || !cJSON_AddStringToObject(o, "refund_id", r->refund_id) ||
        !cJSON_AddStringToObject(o, "status", "succeeded") ||
        !cJSON_AddStringToObject(o, "charge_id", r->charge_id) ||
        !cJSON_AddNumberToObject(o, "amount_minor", (double)r->amount_minor) ||
        !cJSON_AddStringToObject(o, "reference", r->reference) ||
        !cJSON_AddStringToObject(o, "idempotency_key", r->idempotency_key) ||
        !cJSON_AddStringToObject(o, "created_at", when)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* ---- the operations ------------------------------------------------------ */

/* out's body: obj's text (obj deleted). 0, or -1 when out of memory. */
static int set_body(struct idem_result *out, int status, cJSON *obj)
{
    out->status = status;
    out->body = obj ? cJSON_PrintUnformatted(obj) : NULL;
    cJSON_Delete(obj);
    if (!out->body)
        return -1;
    out->body_len = strlen(out->body);
    return 0;
}

/* An answer that moved nothing: sent, not cached, the key released. */
static int refuse(struct idem_result *out, int status, const char *code, const char *message,
                  struct apierr *err)
{
    struct apierr e;
    ledger_error(&e, status, code, message);
    out->status = status;
    out->retryable = 1;
    out->body = apierr_json(&e);
    if (!out->body)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    out->body_len = strlen(out->body);
    return 0;
}

static void charge_free_rows(struct store_rows *rows)
{
    struct store_charge *c = (struct store_charge *)rows->charge;
    if (c) {
        store_charge_clear(c);
        free(c);
    }
    rows->charge = NULL;
}

static int charge_run(void *ctx, const void *vreq, const struct idem_call *call,
                      struct idem_result *out, struct apierr *err)
{
    (void)ctx;
    const struct charge_request *req = vreq;
    struct payment_request sim = {.amount_minor = req->amount_minor};
    memcpy(sim.currency, req->currency, sizeof sim.currency);
    memcpy(sim.customer_id, req->customer_id, sizeof sim.customer_id);
    enum payment_outcome po = payment_process(&sim, 0);
    if (po == PAYMENT_GATEWAY_ERROR)
        return refuse(out, 422, "processing_error",
                      "the card network refused the request before charging", err);

    char id[IDS_MAX + 1];
    if (ids_new("ch_", id) != 0)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
    struct store_charge c = {
        .charge_id = id,
        .merchant = (char *)req->merchant,
        .customer_id = (char *)req->customer_id,
        .amount_minor = req->amount_minor,
        .status = po == PAYMENT_APPROVED ? "succeeded" : "declined",
        .decline_code = po == PAYMENT_APPROVED ? NULL : "card_declined",
        .reference = (char *)req->reference,
        .idempotency_key = (char *)call->key,
        .created_at_us = clock_wall_us(),
    };
    memcpy(c.currency, req->currency, sizeof c.currency);
    struct store_charge *row = calloc(1, sizeof *row);
    if (!row || store_charge_copy(row, &c) != 0) {
        free(row);
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    }
    out->rows.charge = row;
    out->free_rows = charge_free_rows;
    if (set_body(out, po == PAYMENT_APPROVED ? 201 : 402, ledger_charge_to_cjson(&c)) != 0) {
        idem_result_clear(out);
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    }
    return 0;
}

static void refund_free_rows(struct store_rows *rows)
{
    struct store_charge_refund *r = (struct store_charge_refund *)rows->charge_refund;
    if (r) {
        store_charge_refund_clear(r);
        free(r);
    }
    rows->charge_refund = NULL;
}

static int refund_rejected(void *ctx, const void *req, struct idem_result *out, struct apierr *err)
{
    (void)ctx;
    (void)req;
    return refuse(out, 422, "refund_exceeds_charge",
                  "the refund is more than what is left of the charge", err);
}

static int refund_run(void *vctx, const void *vreq, const struct idem_call *call,
                      struct idem_result *out, struct apierr *err)
{
    const struct ledger *ledger = vctx;
    const struct refund_request *req = vreq;
    struct store_charge c = {0};
    char serr[256] = "";
    enum store_status st = store_get_charge(ledger->store, req->charge_id, &c, serr, sizeof serr);
    if (st == STORE_NOT_FOUND)
        return refuse(out, 404, "charge_not_found", "no charge with that id", err);
    if (st != STORE_OK) {
        apierr_store(err, st == STORE_UNAVAILABLE, 1);
        return -1;
    }
    int declined = strcmp(c.status, "succeeded") != 0;
    int over = req->amount_minor > c.amount_minor - c.amount_refunded_minor;
    if (!declined)
        payment_simulated_wait(c.customer_id, 0);
    store_charge_clear(&c);
    if (declined)
        return refuse(out, 422, "charge_not_refundable", "a declined charge moved no money", err);
    if (over)
        return refund_rejected(NULL, NULL, out, err);

    char id[IDS_MAX + 1];
    if (ids_new("rf_", id) != 0)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
    struct store_charge_refund r = {
        .refund_id = id,
        .charge_id = (char *)req->charge_id,
        .amount_minor = req->amount_minor,
        .reference = (char *)req->reference,
        .idempotency_key = (char *)call->key,
        .created_at_us = clock_wall_us(),
    };
    struct store_charge_refund *row = calloc(1, sizeof *row);
    if (!row || store_charge_refund_copy(row, &r) != 0) {
        free(row);
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    }
    out->rows.charge_refund = row;
    out->free_rows = refund_free_rows;
    if (set_body(out, 201, ledger_refund_to_cjson(&r)) != 0) {
        idem_result_clear(out);
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    }
    return 0;
}

const struct idem_op LEDGER_CHARGE_OP = {.route = "/v1/charges", .run = charge_run};
const struct idem_op LEDGER_REFUND_OP = {
    .route = "/v1/refunds", .run = refund_run, .rejected = refund_rejected};
