/* hash.c - the one keyed hash of the in-memory tables (hash.h) */
#define _POSIX_C_SOURCE 200809L
#include "hash.h"

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The in-memory tables (the memory store, the replay cache, the connection
 * count per address) are keyed by what clients send: with an unkeyed hash
 * (FNV-1a, once), keys that share a bucket can be found offline and sent
 * to make every lookup walk one long chain (9,000 such keys made a replay
 * cost 4x the CPU). SipHash-2-4 from libcrypto, under a key drawn at random
 * once per process, makes the buckets unguessable from outside. */
static EVP_MAC_CTX *hash_keyed; /* initialised, never updated: each call works on a copy */
static pthread_once_t hash_once = PTHREAD_ONCE_INIT;

static void hash_init(void)
{
    unsigned char key[16];
    size_t size = 8;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
                           OSSL_PARAM_construct_end()};
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
    hash_keyed = mac ? EVP_MAC_CTX_new(mac) : NULL;
    EVP_MAC_free(mac); /* the context holds its own reference */
    if (!hash_keyed || RAND_bytes(key, sizeof key) != 1 ||
        !EVP_MAC_init(hash_keyed, key, sizeof key, params)) {
        /* without it every table would be open to collisions: fail loudly */
        fputs("{\"level\":\"error\",\"msg\":\"libcrypto's SipHash or random bytes are not "
              "available\"}\n",
              stderr);
        abort();
    }
}

size_t hash_pair(const char *tenant, const char *key)
{
    pthread_once(&hash_once, hash_init);
    static const unsigned char SEP = 0xff; /* a byte no tenant (UTF-8 text) holds */
    unsigned char out[8];
    size_t outlen = 0;
    EVP_MAC_CTX *c = EVP_MAC_CTX_dup(hash_keyed);
    if (!c || !EVP_MAC_update(c, (const unsigned char *)tenant, strlen(tenant)) ||
        !EVP_MAC_update(c, &SEP, 1) ||
        !EVP_MAC_update(c, (const unsigned char *)key, strlen(key)) ||
        !EVP_MAC_final(c, out, &outlen, sizeof out) || outlen != sizeof out) {
        EVP_MAC_CTX_free(c);
        abort(); /* only out of memory: the tables cannot work without it */
    }
    EVP_MAC_CTX_free(c);
    uint64_t h;
    memcpy(&h, out, sizeof h);
    return (size_t)h;
}
