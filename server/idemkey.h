/* idemkey.h - Idempotency-Key parsing and request fingerprints */
#ifndef MOCKERY_IDEMKEY_H
#define MOCKERY_IDEMKEY_H

#include <stddef.h>

#define IDEM_KEY_MAX 255

enum idem_key_status {
    IDEM_KEY_OK = 0,
    IDEM_KEY_MISSING,
    IDEM_KEY_INVALID, /* empty, too long, a character outside 0x21-0x7E, bad quoting */
};

/* Parses an Idempotency-Key header value, bare or as an RFC 8941 string
 * ("abc", quotes stripped). out receives the key (IDEM_KEY_MAX + 1 bytes). */
enum idem_key_status idem_parse_key(const char *value, char out[IDEM_KEY_MAX + 1]);

/* SHA-256 over method, route and canonical request bytes, as 64 hex digits. */
void idem_fingerprint(const char *method, const char *route, const char *canonical, size_t len,
                      char out[65]);

#endif
