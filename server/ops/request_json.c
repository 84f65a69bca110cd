/* request_json.c - the checks every JSON request body goes through
 * (request_json.h) */
#define _POSIX_C_SOURCE 200809L
#include "request_json.h"

#include <cjson/cJSON.h>
#include <string.h>

#include "money.h"
#include "utf8.h"

cJSON *request_json_object(const char *body, size_t len, const char *const *fields, size_t nfields,
                           struct json_top *top, struct apierr *err)
{
    size_t at = 0;
    /* Strictly first (RFC 8259, shallow): cJSON recurses and is lenient. */
    switch (json_strict_check(body, len, top, &at)) {
    case JSON_STRICT_OK:
        break;
    case JSON_STRICT_TOO_DEEP:
        apierr_of(err, APIERR_INVALID_JSON, NULL,
                  "the body nests arrays or objects more than %d levels deep",
                  JSON_STRICT_MAX_DEPTH);
        return NULL;
    case JSON_STRICT_SYNTAX:
        apierr_of(err, APIERR_INVALID_JSON, NULL,
                  "the body is not valid JSON (RFC 8259, UTF-8): fault at byte %zu", at);
        return NULL;
    }
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (!root) {
        apierr_of(err, APIERR_INVALID_JSON, NULL, "the body is not valid JSON");
        return NULL;
    }
    if (!cJSON_IsObject(root)) {
        apierr_of(err, APIERR_INVALID_JSON, NULL, "the body must be a JSON object");
        goto fail;
    }
    /* Unknown and repeated fields first: nothing ambiguous is looked at. */
    for (cJSON *f = root->child; f; f = f->next) {
        int known = 0;
        for (size_t i = 0; i < nfields; i++)
            known |= strcmp(f->string, fields[i]) == 0;
        if (!known) {
            char name[65];
            utf8_copy(name, sizeof name, f->string);
            apierr_of(err, APIERR_UNKNOWN_FIELD, name, "unknown field '%s'", name);
            goto fail;
        }
        for (cJSON *g = f->next; g; g = g->next)
            if (strcmp(f->string, g->string) == 0) {
                apierr_of(err, APIERR_INVALID_JSON, f->string, "field '%s' appears more than once",
                          f->string); /* a known name */
                goto fail;
            }
    }
    return root;
fail:
    cJSON_Delete(root);
    return NULL;
}

int request_json_amount(const cJSON *root, const char *body, const struct json_top *top, int digits,
                        const char *currency, int64_t *minor, struct apierr *err)
{
    /* The amount's index among the members: its decimal text is at the same
     * index of top. */
    const cJSON *amount = root->child;
    size_t amount_at = 0;
    while (amount && strcmp(amount->string, "amount") != 0) {
        amount = amount->next;
        amount_at++;
    }
    if (!amount)
        return 0;
    if (!cJSON_IsNumber(amount))
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount", "amount must be a number");
    if (amount_at >= JSON_STRICT_MEMBERS)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "amount text not found");
    switch (
        money_parse(body + top->value[amount_at].off, top->value[amount_at].len, digits, minor)) {
    case MONEY_OK:
        return 1;
    case MONEY_NOT_NUMBER:
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount", "amount must be a number");
    case MONEY_NOT_POSITIVE:
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount", "amount must be greater than 0");
    case MONEY_TOO_LARGE:
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount",
                         "amount must be at most " MONEY_MAX_TEXT);
    case MONEY_TOO_PRECISE:
        break;
    }
    if (currency)
        return apierr_of(err, APIERR_INVALID_AMOUNT, "amount",
                         "amount has more than %d decimals for %s", digits, currency);
    return apierr_of(err, APIERR_INVALID_AMOUNT, "amount", "amount has more than %d decimals",
                     digits);
}
