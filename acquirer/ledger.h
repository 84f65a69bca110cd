/* ledger.h - mockery-acquirer's two operations, charge and refund, run
 * through the idempotency layer, and the JSON of its ledger's rows
 *
 * The acquirer is the second service on the idempotency layer (idem.h):
 * the same claim, lease, fencing and completion as the payment service's,
 * with its own rows (store.h: struct store_charge, struct
 * store_charge_refund) written in the completion's transaction - so its
 * ledger holds one charge per downstream Idempotency-Key. Outcomes are
 * simulated from the customer id as the service's in-process simulator
 * does (payment.h): "cust-declined..." is declined (402, a record, no
 * money), "cust-gateway-error..." is refused before anything moved (422
 * processing_error), "cust-slow..." takes PAYMENT_SLOW_MS longer.
 * Reentrant.
 */
#ifndef MOCKERY_LEDGER_H
#define MOCKERY_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "idem.h"
#include "store.h"

#define LEDGER_MAX_BODY (16 * 1024)
#define LEDGER_TEXT_MAX 64 /* customer ids, merchants, references, charge ids */

struct charge_request {
    int64_t amount_minor;
    char currency[4];
    char customer_id[LEDGER_TEXT_MAX + 1];
    char merchant[LEDGER_TEXT_MAX + 1];
    char reference[LEDGER_TEXT_MAX + 1];
};

struct refund_request {
    char charge_id[LEDGER_TEXT_MAX + 1];
    int64_t amount_minor;
    char reference[LEDGER_TEXT_MAX + 1];
};

/* Parse a body, strictly: every field required, none unknown or twice,
 * amount_minor an integer of 1 to 15 digits, the texts 1-64 of
 * [A-Za-z0-9_-] (the merchant: 1-64 printable ASCII), the currency a
 * supported ISO 4217 code. 0, or -1 with err (400 invalid_json, 422). */
int ledger_parse_charge(const char *body, size_t len, struct charge_request *out,
                        struct apierr *err);
int ledger_parse_refund(const char *body, size_t len, struct refund_request *out,
                        struct apierr *err);

/* The canonical bytes of a request, for its fingerprint; malloc'd, NULL
 * when out of memory. */
char *ledger_charge_canonical(const struct charge_request *r, size_t *len);
char *ledger_refund_canonical(const struct refund_request *r, size_t *len);

/* The operations' context. */
struct ledger {
    struct store *store;
};

/* The operations for idem_execute() (ctx: struct ledger; req: the parsed
 * request). A charge answers 201 (succeeded) or 402 (declined), both
 * recorded with their charge row; 422 processing_error, released. A refund
 * answers 201; 404 charge_not_found, 422 charge_not_refundable or
 * refund_exceeds_charge (also when a racing refund took what was left as
 * the row was written), released. */
extern const struct idem_op LEDGER_CHARGE_OP;
extern const struct idem_op LEDGER_REFUND_OP;

/* A row as the API's JSON object; malloc'd, NULL when out of memory. */
struct cJSON *ledger_charge_to_cjson(const struct store_charge *c);
struct cJSON *ledger_refund_to_cjson(const struct store_charge_refund *r);

/* Fills e with an error of the acquirer's own (a code the service's table
 * does not have): status, code, message. Returns -1. */
int ledger_error(struct apierr *e, int status, const char *code, const char *message);

#endif
