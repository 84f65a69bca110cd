/* fuzz_body.c - request-body validation: payment_parse() on any bytes
 *
 * Invariants: no crash or leak; an accepted body is normalized within the
 * documented bounds and fingerprints the same way twice; a refused body
 * names a known status.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "idemkey.h"
#include "money.h"
#include "payment.h"
#include "utf8.h"

int fuzz_body_one(const uint8_t *data, size_t size)
{
    struct payment_request r;
    struct apierr e;
    if (payment_parse((const char *)data, size, &r, &e) != 0) {
        if (e.status != 400 && e.status != 422 && e.status != 500)
            abort();
        return 0;
    }
    int digits = money_currency_digits(r.currency);
    if (digits < 0 || digits != r.digits || r.amount_minor <= 0 ||
        !payment_customer_valid(r.customer_id))
        abort();
    if (r.description && (strlen(r.description) > PAYMENT_DESCRIPTION_MAX ||
                          !utf8_valid(r.description, strlen(r.description))))
        abort();
    char amount[32];
    if (money_format(r.amount_minor, r.digits, amount, sizeof amount) < 0)
        abort();
    size_t n1 = 0, n2 = 0;
    char *c1 = payment_canonical(&r, &n1);
    char *c2 = payment_canonical(&r, &n2);
    if (c1 && c2) {
        char f1[65], f2[65];
        idemkey_fingerprint("POST", "/api/v1/payments", c1, n1, f1);
        idemkey_fingerprint("POST", "/api/v1/payments", c2, n2, f2);
        if (strcmp(f1, f2) != 0)
            abort();
    }
    free(c1);
    free(c2);
    payment_request_clear(&r);
    return 0;
}

#ifdef MOCKERY_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_on_worker_stack(fuzz_body_one, data, size);
}
#endif
