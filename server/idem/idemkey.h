/* idemkey.h - Idempotency-Key parsing and request fingerprints */
#ifndef MOCKERY_IDEMKEY_H
#define MOCKERY_IDEMKEY_H

#include <stddef.h>

#define IDEMKEY_MAX 255

enum idemkey_status {
    IDEMKEY_OK = 0,
    IDEMKEY_MISSING,
    IDEMKEY_INVALID, /* empty, too long, a character outside 0x21-0x7E, bad quoting */
};

/* Parses an Idempotency-Key header value, bare or as an RFC 8941 string
 * ("abc", quotes stripped). out receives the key (IDEMKEY_MAX + 1 bytes). */
enum idemkey_status idemkey_parse(const char *value, char out[IDEMKEY_MAX + 1]);

/* SHA-256 over method, route and canonical request bytes, as 64 hex digits. */
void idemkey_fingerprint(const char *method, const char *route, const char *canonical, size_t len,
                         char out[65]);

#endif
