/* payment.c - payment validation, fingerprint material, simulated processor
 * and JSON encoding */
#define _POSIX_C_SOURCE 200809L
#include "payment.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_strict.h"
#include "money.h"
#include "decimal.h"
#include "utc_text.h"
#include "utf8.h"

/* The length of s if it is all [A-Za-z0-9_-], else 0. */
static size_t url_safe_len(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n;
}

int payment_customer_valid(const char *s)
{
    size_t n = url_safe_len(s);
    return n >= 1 && n <= PAYMENT_CUSTOMER_MAX;
}

int payment_id_valid(const char *s)
{
    if (strncmp(s, "txn_", 4) != 0)
        return 0;
    size_t n = url_safe_len(s + 4);
    return n >= 1 && n <= 60;
}

static const char *const FIELDS[] = {"amount", "currency", "customer_id", "description"};

int payment_parse(const char *body, size_t len, struct payment_request *out, struct apierr *err)
{
    struct payment_request r = {0};
    int rc = -1;
    struct json_top top;
    size_t at = 0;
    cJSON *root = NULL;
    /* Strictly first (RFC 8259, shallow): cJSON recurses and is lenient. */
    switch (json_strict_check(body, len, &top, &at)) {
    case JSON_STRICT_OK:
        break;
    case JSON_STRICT_TOO_DEEP:
        apierr_set(err, 400, APIERR_INVALID_REQUEST, "invalid_json", NULL,
                   "the body nests arrays or objects more than %d levels deep",
                   JSON_STRICT_MAX_DEPTH);
        goto out;
    case JSON_STRICT_SYNTAX:
        apierr_set(err, 400, APIERR_INVALID_REQUEST, "invalid_json", NULL,
                   "the body is not valid JSON (RFC 8259, UTF-8): fault at byte %zu", at);
        goto out;
    }
    root = cJSON_ParseWithLength(body, len);
    if (!root) {
        apierr_set(err, 400, APIERR_INVALID_REQUEST, "invalid_json", NULL,
                   "the body is not valid JSON");
        goto out;
    }
    if (!cJSON_IsObject(root)) {
        apierr_set(err, 400, APIERR_INVALID_REQUEST, "invalid_json", NULL,
                   "the body must be a JSON object");
        goto out;
    }
    /* Unknown and repeated fields first: nothing ambiguous is looked at. */
    for (cJSON *f = root->child; f; f = f->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof FIELDS / sizeof FIELDS[0]; i++)
            known |= strcmp(f->string, FIELDS[i]) == 0;
        if (!known) {
            char name[65];
            utf8_copy(name, sizeof name, f->string);
            apierr_set(err, 422, APIERR_INVALID_REQUEST, "unknown_field", name,
                       "unknown field '%s'", name);
            goto out;
        }
        for (cJSON *g = f->next; g; g = g->next)
            if (strcmp(f->string, g->string) == 0) {
                apierr_set(err, 400, APIERR_INVALID_REQUEST, "invalid_json", f->string,
                           "field '%s' appears more than once", f->string); /* a known name */
                goto out;
            }
    }

    cJSON *cur = cJSON_GetObjectItemCaseSensitive(root, "currency");
    if (!cur) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_currency", "currency",
                   "currency is required");
        goto out;
    }
    if (!cJSON_IsString(cur) || (r.digits = money_currency_digits(cur->valuestring)) < 0) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_currency", "currency",
                   "currency must be a supported upper-case ISO 4217 code");
        goto out;
    }
    memcpy(r.currency, cur->valuestring, 4);

    /* The amount's index among the members: its decimal text is at the same
     * index of top (a valid body has at most four members). */
    cJSON *amount = root->child;
    size_t amount_at = 0;
    while (amount && strcmp(amount->string, "amount") != 0) {
        amount = amount->next;
        amount_at++;
    }
    if (!amount) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount is required");
        goto out;
    }
    if (!cJSON_IsNumber(amount)) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount must be a number");
        goto out;
    }
    if (amount_at >= JSON_STRICT_MEMBERS) {
        apierr_set(err, 500, "api_error", "internal_error", NULL, "amount text not found");
        goto out;
    }
    switch (money_parse(body + top.value[amount_at].off, top.value[amount_at].len, r.digits,
                        &r.amount_minor)) {
    case MONEY_OK:
        break;
    case MONEY_NOT_NUMBER:
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount must be a number");
        goto out;
    case MONEY_NOT_POSITIVE:
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount must be greater than 0");
        goto out;
    case MONEY_TOO_LARGE:
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount must be at most " MONEY_MAX_TEXT);
        goto out;
    case MONEY_TOO_PRECISE:
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_amount", "amount",
                   "amount has more than %d decimals for %s", r.digits, r.currency);
        goto out;
    }

    cJSON *cust = cJSON_GetObjectItemCaseSensitive(root, "customer_id");
    if (!cust) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_customer_id", "customer_id",
                   "customer_id is required");
        goto out;
    }
    if (!cJSON_IsString(cust) || !payment_customer_valid(cust->valuestring)) {
        apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_customer_id", "customer_id",
                   "customer_id must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
        goto out;
    }
    memcpy(r.customer_id, cust->valuestring, strlen(cust->valuestring) + 1);

    cJSON *desc = cJSON_GetObjectItemCaseSensitive(root, "description");
    if (desc && !cJSON_IsNull(desc)) {
        size_t n = cJSON_IsString(desc) ? strlen(desc->valuestring) : 0;
        if (!cJSON_IsString(desc) || n > PAYMENT_DESCRIPTION_MAX ||
            !utf8_valid(desc->valuestring, n)) {
            apierr_set(err, 422, APIERR_INVALID_REQUEST, "invalid_description", "description",
                       "description must be a string of at most %d bytes of UTF-8",
                       PAYMENT_DESCRIPTION_MAX);
            goto out;
        }
        r.description = strdup(desc->valuestring);
        if (!r.description) {
            apierr_set(err, 500, "api_error", "internal_error", NULL, "out of memory");
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
    /* RAND_bytes costs about as much per call as per kilobyte: each thread
     * draws 1 KiB at a time and spends it 18 bytes per id. */
    static _Thread_local unsigned char pool[18 * 56];
    static _Thread_local size_t left;
    unsigned char raw[18];
    unsigned char b64[25];
    if (left < sizeof raw) {
        if (RAND_bytes(pool, sizeof pool) != 1)
            return -1;
        left = sizeof pool;
    }
    left -= sizeof raw;
    memcpy(raw, pool + left, sizeof raw);
    OPENSSL_cleanse(pool + left, sizeof raw);
    EVP_EncodeBlock(b64, raw, sizeof raw); /* 18 bytes: 24 characters, no padding */
    memcpy(out, "txn_", 4);
    for (int i = 0; i < 24; i++) {
        char c = (char)b64[i];
        out[4 + i] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    out[PAYMENT_ID_LEN] = '\0';
    return 0;
}

enum payment_outcome payment_process(const struct payment_request *r, int delay_ms)
{
    if (delay_ms > 0) {
        struct timespec ts = {delay_ms / 1000, (long)(delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
    if (strncmp(r->customer_id, "cust-declined", 13) == 0)
        return PAYMENT_DECLINED;
    if (strncmp(r->customer_id, "cust-gateway-error", 18) == 0)
        return PAYMENT_GATEWAY_ERROR;
    return PAYMENT_APPROVED;
}

int64_t payment_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void payment_format_time(int64_t us, char *buf, size_t len)
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    char text[32];
    utc_iso_second((time_t)secs, text);
    size_t n = 19;
    text[n++] = '.';
    n += (size_t)decimal_digits(text + n, (unsigned long long)frac, 6);
    text[n++] = 'Z';
    text[n] = '\0';
    if (len)
        snprintf(buf, len, "%s", text);
}

/* Adds the payment object's fields to obj; returns 0 or -1. */
static int add_payment_fields(cJSON *obj, const struct store_payment *p)
{
    char amount[32], when[40];
    int digits = money_currency_digits(p->currency);
    if (money_format(p->amount_minor, digits < 0 ? 2 : digits, amount, sizeof amount) < 0)
        return -1;
    payment_format_time(p->processed_at_us, when, sizeof when);
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
    if (!(p->idempotency_key ? cJSON_AddStringToObject(obj, "idempotency_key", p->idempotency_key)
                             : cJSON_AddNullToObject(obj, "idempotency_key")))
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
    if (!err || !cJSON_AddStringToObject(err, "type", "card_error") ||
        !cJSON_AddStringToObject(err, "code", "card_declined") ||
        !cJSON_AddStringToObject(err, "message", "the card was declined") ||
        !cJSON_AddStringToObject(root, "transaction_id", p->transaction_id) ||
        !cJSON_AddStringToObject(root, "status", "declined"))
        goto out;
    out = cJSON_PrintUnformatted(root);
out:
    cJSON_Delete(root);
    return out;
}
