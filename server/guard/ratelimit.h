/* ratelimit.h - a token bucket per tenant
 *
 * Each tenant may spend `rate` tokens a second, with up to one second's
 * worth saved up; a request costs one token (a large list page more). A
 * request that finds too few tokens is refused with the seconds until
 * enough are back. Thread-safe (one mutex, held for a few instructions).
 */
#ifndef MOCKERY_RATELIMIT_H
#define MOCKERY_RATELIMIT_H

#include <stdint.h>

struct ratelimit;

/* rate tokens a second per tenant, 0: no limit. NULL on allocation failure. */
struct ratelimit *ratelimit_new(int rate);

/* The same, per client address, for requests without a valid API key: the
 * addresses are the clients' to choose, so their buckets live in a fixed
 * table (RATELIMIT_ADDRESS_SLOTS, picked by the keyed hash) whatever
 * addresses come. An address whose slot another holds takes it over once
 * that bucket is full again (idle), else shares it until then. */
struct ratelimit *ratelimit_new_per_address(int rate);
#define RATELIMIT_ADDRESS_SLOTS 4096
void ratelimit_free(struct ratelimit *rl);

/* Takes cost tokens from tenant's (or the address's) bucket at now_us (a monotonic clock):
 * 0, or -1 with *retry_after_s (1 or more) when the bucket holds too few
 * (nothing is taken then). Out of memory counts as allowed. */
int ratelimit_take(struct ratelimit *rl, const char *tenant, double cost, int64_t now_us,
                   int *retry_after_s);

#endif
