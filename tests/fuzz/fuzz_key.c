/* fuzz_key.c - Idempotency-Key header parsing on any bytes
 *
 * Invariants: an accepted key is 1-255 visible ASCII characters without a
 * quote, and parses to itself again.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "idemkey.h"

int fuzz_key_one(const uint8_t *data, size_t size)
{
    char *value = malloc(size + 1);
    if (!value)
        return 0;
    memcpy(value, data, size);
    value[size] = '\0'; /* a header value is a C string: it ends at the first NUL */
    char key[IDEMKEY_MAX + 1], again[IDEMKEY_MAX + 1];
    if (idemkey_parse(value, key) == IDEMKEY_OK) {
        size_t n = strlen(key);
        if (n < 1 || n > IDEMKEY_MAX)
            abort();
        for (size_t i = 0; i < n; i++)
            if (key[i] < 0x21 || key[i] > 0x7E || key[i] == '"')
                abort();
        if (idemkey_parse(key, again) != IDEMKEY_OK || strcmp(key, again) != 0)
            abort();
    }
    free(value);
    return 0;
}

#ifdef MOCKERY_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_on_worker_stack(fuzz_key_one, data, size);
}
#endif
