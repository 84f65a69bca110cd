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
void ratelimit_free(struct ratelimit *rl);

/* Takes cost tokens from tenant's bucket at now_us (a monotonic clock):
 * 0, or -1 with *retry_after_s (1 or more) when the bucket holds too few
 * (nothing is taken then). Out of memory counts as allowed. */
int ratelimit_take(struct ratelimit *rl, const char *tenant, double cost, int64_t now_us,
                   int *retry_after_s);

#endif
