/* ids.c - random ids with a prefix (ids.h) */
#define _POSIX_C_SOURCE 200809L
#include "ids.h"

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <string.h>

size_t ids_url_safe_len(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return n;
}

int ids_valid(const char *prefix, const char *s)
{
    size_t p = strlen(prefix);
    if (strncmp(s, prefix, p) != 0)
        return 0;
    size_t n = ids_url_safe_len(s + p);
    return n >= 1 && n <= 60;
}

int ids_new(const char *prefix, char *out)
{
    /* RAND_bytes costs about as much per call as per kilobyte: each thread
     * draws 1 KiB at a time and spends it 18 bytes per id. */
    static _Thread_local unsigned char pool[18 * 56];
    static _Thread_local size_t left;
    unsigned char raw[18];
    unsigned char b64[25];
    if (left < sizeof raw) {
        if (RAND_bytes(pool, sizeof pool) != 1)
            return -1;
        left = sizeof pool;
    }
    left -= sizeof raw;
    memcpy(raw, pool + left, sizeof raw);
    OPENSSL_cleanse(pool + left, sizeof raw);
    EVP_EncodeBlock(b64, raw, sizeof raw); /* 18 bytes: 24 characters, no padding */
    size_t p = strlen(prefix);
    memcpy(out, prefix, p);
    for (int i = 0; i < IDS_RANDOM_LEN; i++) {
        char c = (char)b64[i];
        out[p + (size_t)i] = c == '+' ? '-' : c == '/' ? '_' : c;
    }
    out[p + IDS_RANDOM_LEN] = '\0';
    return 0;
}

int ids_from(const char *prefix, const char *key_prefix, const char *key, char *out)
{
    size_t kp = strlen(key_prefix);
    if (!key || strncmp(key, key_prefix, kp) != 0 || strlen(key) != kp + IDS_RANDOM_LEN ||
        ids_url_safe_len(key + kp) != IDS_RANDOM_LEN)
        return -1;
    memcpy(out, prefix, strlen(prefix));
    memcpy(out + strlen(prefix), key + kp, IDS_RANDOM_LEN + 1);
    return 0;
}
