/* fuzz_fingerprint.c - fingerprints of any (method, route, canonical bytes)
 *
 * Invariants: 64 lower-case hex digits, the same twice, and different when
 * the bytes move between the method/route and the body.
 */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "idemkey.h"

int fuzz_fingerprint_one(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    /* First byte: where the route ends; the rest splits into three. */
    size_t cut = data[0] % size;
    char method[8] = "POST";
    char *route = malloc(cut + 1);
    if (!route)
        return 0;
    memcpy(route, data + 1, cut > 0 ? cut - 1 : 0);
    route[cut > 0 ? cut - 1 : 0] = '\0';
    const char *body = (const char *)data + cut;
    size_t blen = size - cut;
    char a[65], b[65];
    idemkey_fingerprint(method, route, body, blen, a);
    idemkey_fingerprint(method, route, body, blen, b);
    if (strlen(a) != 64 || strcmp(a, b) != 0)
        abort();
    for (int i = 0; i < 64; i++)
        if (!((a[i] >= '0' && a[i] <= '9') || (a[i] >= 'a' && a[i] <= 'f')))
            abort();
    /* The route's bytes are separated from the body's: "ab" + "c" != "a" + "bc". */
    if (strlen(route) > 0 && !memchr(route, '\0', strlen(route))) {
        size_t rl = strlen(route);
        char *shorter = malloc(rl);
        char *longer = malloc(blen + 1);
        if (shorter && longer) {
            memcpy(shorter, route, rl - 1);
            shorter[rl - 1] = '\0';
            longer[0] = route[rl - 1];
            memcpy(longer + 1, body, blen);
            idemkey_fingerprint(method, shorter, longer, blen + 1, b);
            if (strcmp(a, b) == 0)
                abort();
        }
        free(shorter);
        free(longer);
    }
    free(route);
    return 0;
}

#ifdef MOCKERY_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    return fuzz_on_worker_stack(fuzz_fingerprint_one, data, size);
}
#endif
