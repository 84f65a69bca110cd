/* webhook_signature.c - Mockery-Signature, HMAC-SHA256 from libcrypto
 * (webhook_signature.h) */
#define _POSIX_C_SOURCE 200809L
#include "webhook_signature.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int webhook_signature(const char *secret, int64_t t, const char *body, size_t body_len,
                      char out[WEBHOOK_SIGNATURE_MAX])
{
    char stamp[24];
    int n = snprintf(stamp, sizeof stamp, "%" PRId64 ".", t);
    /* The signed text is "<t>.<body>": one buffer for HMAC()'s one call. */
    unsigned char *text = malloc((size_t)n + body_len);
    if (!text)
        return -1;
    memcpy(text, stamp, (size_t)n);
    memcpy(text + n, body, body_len);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    unsigned char *ok =
        HMAC(EVP_sha256(), secret, (int)strlen(secret), text, (size_t)n + body_len, mac, &mac_len);
    free(text);
    if (!ok)
        return -1;
    int at = snprintf(out, WEBHOOK_SIGNATURE_MAX, "t=%" PRId64 ",v1=", t);
    for (unsigned int i = 0; i < mac_len; i++)
        at += snprintf(out + at, WEBHOOK_SIGNATURE_MAX - (size_t)at, "%02x", mac[i]);
    return 0;
}
