/* request_json.h - a request body as a JSON object of known fields, and its
 * amount read exactly from its decimal text
 *
 * What every POST body goes through before its own fields are looked at:
 * the strict RFC 8259 check (json_strict.h), cJSON, an object, no unknown
 * field and no field twice. Errors are the API's (400 invalid_json, 422
 * unknown_field / invalid_amount). Reentrant.
 */
#ifndef MOCKERY_REQUEST_JSON_H
#define MOCKERY_REQUEST_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "json_strict.h"

struct cJSON;

/* The parsed object (free with cJSON_Delete), or NULL with err set. *top
 * says where the members' values are in body. */
struct cJSON *request_json_object(const char *body, size_t len, const char *const *fields,
                                  size_t nfields, struct json_top *top, struct apierr *err);

/* The "amount" member in minor units of a currency with `digits` decimals
 * (named in messages by currency, which may be NULL). Returns 1 and
 * *minor, 0 when there is no amount member, or -1 with err (422
 * invalid_amount: not a number, not above 0, too large, too precise). */
int request_json_amount(const struct cJSON *root, const char *body, const struct json_top *top,
                        int digits, const char *currency, int64_t *minor, struct apierr *err);

#endif
