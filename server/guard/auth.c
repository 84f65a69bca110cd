/* auth.c - API keys, compared as SHA-256 digests in constant time */
#define _POSIX_C_SOURCE 200809L
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct entry {
    char tenant[65];
    unsigned char digest[32];
};

struct auth {
    struct entry *entries;
    size_t n;
};

static void digest(const char *s, size_t len, unsigned char out[32])
{
    unsigned int n = 32;
    EVP_Digest(s, len, out, &n, EVP_sha256(), NULL);
}

static int tenant_valid(const char *s, size_t n)
{
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* Adds every pair of a comma/whitespace-separated list. */
static int add_pairs(struct auth *a, char *list, char *err, size_t errlen)
{
    char *save = NULL;
    for (char *tok = strtok_r(list, ", \t\r\n", &save); tok;
         tok = strtok_r(NULL, ", \t\r\n", &save)) {
        char *colon = strchr(tok, ':');
        if (!colon || !tenant_valid(tok, (size_t)(colon - tok)) || strlen(colon + 1) < 8) {
            snprintf(err, errlen,
                     "invalid --api-keys entry: want tenant:key (tenant of A-Z a-z 0-9 _ - ., key "
                     "of 8 or more characters)");
            return -1;
        }
        struct entry *e = realloc(a->entries, (a->n + 1) * sizeof *e);
        if (!e) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        a->entries = e;
        e = &a->entries[a->n++];
        snprintf(e->tenant, sizeof e->tenant, "%.*s", (int)(colon - tok), tok);
        digest(colon + 1, strlen(colon + 1), e->digest);
    }
    return 0;
}

struct auth *auth_new(const char *spec, char *err, size_t errlen)
{
    struct auth *a = calloc(1, sizeof *a);
    char *text = NULL;
    FILE *f = NULL;
    if (!a)
        goto oom;
    if (spec[0] == '@') {
        f = fopen(spec + 1, "r");
        if (!f) {
            snprintf(err, errlen, "could not read --api-keys file %.200s", spec + 1);
            goto fail;
        }
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            char *hash = strchr(line, '#');
            if (hash)
                *hash = '\0';
            if (add_pairs(a, line, err, errlen) != 0)
                goto fail;
        }
        if (a->n == 0) {
            snprintf(err, errlen, "--api-keys file %.200s holds no keys", spec + 1);
            goto fail;
        }
    } else if (spec[0]) {
        text = strdup(spec);
        if (!text)
            goto oom;
        if (add_pairs(a, text, err, errlen) != 0)
            goto fail;
    }
    free(text);
    if (f)
        fclose(f);
    return a;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    free(text);
    if (f)
        fclose(f);
    auth_free(a);
    return NULL;
}

void auth_free(struct auth *a)
{
    if (!a)
        return;
    free(a->entries);
    free(a);
}

int auth_enabled(const struct auth *a)
{
    return a->n > 0;
}

const char *auth_tenant(const struct auth *a, const char *authorization)
{
    if (!a->n)
        return AUTH_OPEN_TENANT;
    if (!authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *key = authorization + 7;
    while (*key == ' ')
        key++;
    unsigned char d[32];
    digest(key, strlen(key), d);
    const char *found = NULL;
    /* Look at every entry whatever matches, so timing tells nothing. */
    for (size_t i = 0; i < a->n; i++)
        if (CRYPTO_memcmp(d, a->entries[i].digest, sizeof d) == 0)
            found = a->entries[i].tenant;
    return found;
}
