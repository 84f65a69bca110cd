/* payment.h - payment requests: validation, fingerprint material, the
 * simulated processor, and the payment object's JSON
 *
 * Plain functions over plain structs: no socket, no database. Reentrant.
 */
#ifndef MOCKERY_PAYMENT_H
#define MOCKERY_PAYMENT_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "store.h"

#define PAYMENT_MAX_BODY (64 * 1024)
#define PAYMENT_CUSTOMER_MAX 64
#define PAYMENT_DESCRIPTION_MAX 255
#define PAYMENT_ID_LEN 28 /* "txn_" + 24 URL-safe characters */

/* A validated, normalized payment request. */
struct payment_request {
    int64_t amount_minor;
    int digits; /* the currency's minor-unit digits */
    char currency[4];
    char customer_id[PAYMENT_CUSTOMER_MAX + 1];
    char *description; /* malloc'd; NULL when absent or null */
};

enum payment_outcome {
    PAYMENT_APPROVED = 0,
    PAYMENT_DECLINED,      /* simulated card decline */
    PAYMENT_GATEWAY_ERROR, /* simulated processor failure, before any charge */
};

/* Parses and validates a request body. Returns 0 and fills *out, or -1 with
 * *err set (400 invalid_json, 422 invalid_<field> / unknown_field) and *out
 * untouched. Free *out with payment_request_clear(). */
int payment_parse(const char *body, size_t len, struct payment_request *out, struct apierr *err);

void payment_request_clear(struct payment_request *r);

/* The canonical bytes that identify a request for the idempotency
 * fingerprint: equal for requests that mean the same payment (10.5 and 10.50,
 * absent and null description, any key order or whitespace). malloc'd; NULL
 * on allocation failure. */
char *payment_canonical(const struct payment_request *r, size_t *len);

/* Whether a customer id is 1-64 of [A-Za-z0-9_-]. */
int payment_customer_valid(const char *s);

/* Whether s has the shape of a transaction id ("txn_" and 1-60 URL-safe
 * characters): anything else names no payment and never reaches a store. */
int payment_id_valid(const char *s);

/* A new transaction id from the CSPRNG into out (PAYMENT_ID_LEN + 1 bytes).
 * Returns 0, or -1 if the random source failed. */
int payment_new_id(char out[PAYMENT_ID_LEN + 1]);

/* The transaction id of the record whose downstream key is downstream_key
 * (store.h: "dk_" and 24 random characters): "txn_" and the same 24, so
 * that every run of one record - the retry that takes it over, another
 * server's - names the same transaction, at the acquirer (its reference)
 * and to the client. 0, or -1 when the key has another shape. */
int payment_id_for(const char *downstream_key, char out[PAYMENT_ID_LEN + 1]);

/* A customer whose id starts with "cust-slow" is a slow one: the simulated
 * processor takes PAYMENT_SLOW_MS longer for their payments, and the
 * simulated gateway for their refunds. The walkthrough uses them for a lost
 * answer and for overlapping duplicates, so that the servers need no
 * --processing-delay-ms (which slows every payment). */
#define PAYMENT_SLOW_PREFIX "cust-slow"
#define PAYMENT_SLOW_MS 1500

/* Waits as the simulated processor or gateway does for this customer:
 * delay_ms, plus PAYMENT_SLOW_MS for a slow customer. */
void payment_simulated_wait(const char *customer_id, int delay_ms);

/* The simulated processor: waits (payment_simulated_wait), then answers by
 * customer id (prefix "cust-declined" declines, "cust-gateway-error" fails). */
enum payment_outcome payment_process(const struct payment_request *r, int delay_ms);

/* The payment object as a new cJSON tree; NULL on allocation failure. */
struct cJSON *payment_to_cjson(const struct store_payment *p);

/* The payment object as JSON, malloc'd; NULL on allocation failure. */
char *payment_json(const struct store_payment *p);

/* The 402 body of a declined payment, malloc'd; NULL on allocation failure. */
char *payment_declined_json(const struct store_payment *p);

#endif
