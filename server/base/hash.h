/* hash.h - the one hash of the in-memory tables whose keys come from
 * clients (the memory store, the replay cache, the limits per address and
 * per tenant)
 */
#ifndef MOCKERY_HASH_H
#define MOCKERY_HASH_H

#include <stddef.h>

/* The hash of the pair (tenant, key): "t1"+"k" and "t"+"1k" differ. Keyed
 * at random once per process (SipHash-2-4 from libcrypto), so no client can
 * choose keys that share a bucket. Thread-safe. */
size_t hash_pair(const char *tenant, const char *key);

#endif
