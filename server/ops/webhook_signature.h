/* webhook_signature.h - the Mockery-Signature header of a webhook delivery
 *
 * "t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">", keyed with the
 * endpoint's whole secret ("whsec_..." as shown when it was made). The
 * receiver recomputes it over the body exactly as received and refuses a
 * t too far from its own clock (a replayed delivery).
 */
#ifndef MOCKERY_WEBHOOK_SIGNATURE_H
#define MOCKERY_WEBHOOK_SIGNATURE_H

#include <stddef.h>
#include <stdint.h>

/* "t=...,v1=" and 64 hex digits, with room to spare. */
#define WEBHOOK_SIGNATURE_MAX 128

/* The header's value into out: 0, or -1 when out of memory. */
int webhook_signature(const char *secret, int64_t t, const char *body, size_t body_len,
                      char out[WEBHOOK_SIGNATURE_MAX]);

#endif
