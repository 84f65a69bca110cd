/* idemkey.c - Idempotency-Key parsing and request fingerprints: pure
 * functions, no HTTP or store (the fuzzers build this file alone) */
#define _POSIX_C_SOURCE 200809L
#include "idemkey.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

enum idemkey_status idemkey_parse(const char *value, char out[IDEMKEY_MAX + 1])
{
    if (!value)
        return IDEMKEY_MISSING;
    size_t len = strlen(value);
    const char *start = value;
    /* Optional white space around a field value is not part of it (RFC 9110). */
    while (len && (*start == ' ' || *start == '\t'))
        start++, len--;
    while (len && (start[len - 1] == ' ' || start[len - 1] == '\t'))
        len--;
    if (len >= 2 && start[0] == '"' && start[len - 1] == '"') {
        /* An RFC 8941 string: the key is what stands between the quotes.
         * Escapes are refused rather than guessed at. */
        start++;
        len -= 2;
        for (size_t i = 0; i < len; i++)
            if (start[i] == '"' || start[i] == '\\')
                return IDEMKEY_INVALID;
    }
    if (len == 0 || len > IDEMKEY_MAX)
        return IDEMKEY_INVALID;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)start[i];
        if (c < 0x21 || c > 0x7E || c == '"')
            return IDEMKEY_INVALID;
    }
    memcpy(out, start, len);
    out[len] = '\0';
    return IDEMKEY_OK;
}

/* SHA-256 looked up once: EVP_sha256() in every call would fetch it from
 * the provider each time, a cost the size of the hash itself. */
static EVP_MD *sha256;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void idemkey_fingerprint(const char *method, const char *route, const char *canonical, size_t len,
                         char out[65])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[32];
    unsigned int n = sizeof d;
    pthread_once(&sha256_once, sha256_fetch);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* Each part ends with a byte none of them contains. */
    if (!ctx || !sha256 || EVP_DigestInit_ex(ctx, sha256, NULL) != 1 ||
        EVP_DigestUpdate(ctx, method, strlen(method) + 1) != 1 ||
        EVP_DigestUpdate(ctx, route, strlen(route) + 1) != 1 ||
        EVP_DigestUpdate(ctx, canonical, len) != 1 || EVP_DigestFinal_ex(ctx, d, &n) != 1)
        memset(d, 0, sizeof d); /* cannot happen with the default provider */
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[64] = '\0';
}
