/* refund.h - refund requests: validation, fingerprint material, the
 * simulated refund gateway, and the refund object's JSON
 *
 * Plain functions over plain structs: no socket, no database. Reentrant.
 */
#ifndef MOCKERY_REFUND_H
#define MOCKERY_REFUND_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "ids.h"
#include "store.h"

#define REFUND_MAX_BODY (4 * 1024)
#define REFUND_ID_LEN 27 /* "re_" + 24 URL-safe characters */
/* A refund's amount is read with this many decimals (the most any currency
 * has) before the payment, and so its currency, is known. */
#define REFUND_PARSE_DIGITS 4

/* A validated, normalized refund request. */
struct refund_request {
    char transaction_id[IDS_MAX + 1]; /* the payment, from the path */
    int has_amount;                   /* 0: the rest of the payment */
    int64_t amount_e4;                /* with has_amount: in units of 10^-4 */
    const char *reason;               /* a static string, or NULL */
};

/* Parses a body for a refund of transaction_id (already checked to have
 * the shape of a payment id). Returns 0 and fills *out, or -1 with *err
 * (400 invalid_json, 422 invalid_amount / invalid_reason / unknown_field). */
int refund_parse(const char *body, size_t len, const char *transaction_id,
                 struct refund_request *out, struct apierr *err);

/* The canonical bytes that identify a request (same rules as payments:
 * 10.5 and 10.50 are one amount, an absent reason and null are one). */
char *refund_canonical(const struct refund_request *r, size_t *len);

/* The amount in minor units of a currency with `digits` decimals: 0, or
 * -1 with err (422 invalid_amount) when it has more decimals than that. */
int refund_amount_minor(const struct refund_request *r, int digits, const char *currency,
                        int64_t *minor, struct apierr *err);

/* The simulated refund gateway: fails (before any money moves) for a
 * payment whose customer id starts with "cust-refund-error". */
int refund_gateway_fails(const struct store_payment *p);

/* Whether s has the shape of a refund id ("re_" and 1-60 URL-safe characters). */
int refund_id_valid(const char *s);

/* A new refund id into out (REFUND_ID_LEN + 1 bytes); 0, or -1 if the
 * random source failed. */
int refund_new_id(char out[REFUND_ID_LEN + 1]);

/* The refund id of the record whose downstream key is downstream_key: "re_"
 * and its random characters, as payment_id_for() (payment.h). */
int refund_id_for(const char *downstream_key, char out[REFUND_ID_LEN + 1]);

/* The refund object as a new cJSON tree; NULL on allocation failure. */
struct cJSON *refund_to_cjson(const struct store_refund *r);

/* The refund object as JSON, malloc'd; NULL on allocation failure. */
char *refund_json(const struct store_refund *r);

#endif
