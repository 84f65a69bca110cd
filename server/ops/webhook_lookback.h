/* webhook_lookback.h - how far back a sender's claim looks for due
 * deliveries (store_delivery_claim.lookback_ms)
 *
 * A claim steps over the deliveries of the endpoints the sender has
 * attempts under way to, row by row. While such an endpoint hangs, its
 * backlog would be stepped over on every step. A claim that looked at
 * every due row, stepped over some busy endpoint and took fewer than it
 * asked for took every row due then that it could see and lock; the rest
 * were those endpoints' or held by another claim or lease (such a row may
 * come free again: the next look at every row finds it). So while every
 * endpoint it stepped over is still busy, later claims look back only
 * over what came due since that claim, and for at most
 * WEBHOOK_LOOK_ALL_MS. A sender with nothing to step over always looks at
 * every row: nothing changes while no endpoint hangs. Pure bookkeeping:
 * the caller gives the times (a monotonic clock, microseconds).
 */
#ifndef MOCKERY_WEBHOOK_LOOKBACK_H
#define MOCKERY_WEBHOOK_LOOKBACK_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/* While an endpoint a claim stepped over is still busy, how often a claim
 * looks at every due row all the same: it finds a row whose lease ran out
 * (its server died; the row keeps the time it first came due) and one
 * whose event's transaction committed late. */
#define WEBHOOK_LOOK_ALL_MS 5000
/* Added to a lookback beyond the time since that claim and a statement's
 * longest wait for a connection (the two claims ran on PostgreSQL's clock,
 * each after such a wait). */
#define WEBHOOK_LOOKBACK_MARGIN_MS 1000

/* The last claim that looked at every due row, when it is remembered. */
struct webhook_lookback {
    int64_t looked_all_us;            /* when it began; 0: none remembered */
    struct store_endpoint_busy *busy; /* the endpoints it stepped over (copies) */
    size_t nbusy;
};

/* The lookback for a claim beginning at now_us that steps over busy's n
 * endpoints: 0 (every due row) unless a claim is remembered, it began less
 * than WEBHOOK_LOOK_ALL_MS ago and every endpoint it stepped over is among
 * busy; else the time since it began plus statement_wait_ms and
 * WEBHOOK_LOOKBACK_MARGIN_MS. */
int64_t webhook_lookback_ms(const struct webhook_lookback *lb,
                            const struct store_endpoint_busy *busy, size_t n, int64_t now_us,
                            int statement_wait_ms);

/* After a claim that looked at every due row, began at began_us and
 * stepped over busy's n endpoints: remembered when it took fewer than it
 * asked for (left_some) and stepped over any; else forgotten. Out of
 * memory, it is forgotten too (the next claim looks at every row). */
void webhook_lookback_looked_all(struct webhook_lookback *lb, int64_t began_us, int left_some,
                                 const struct store_endpoint_busy *busy, size_t n);

/* Forgets the remembered claim and frees its copies. */
void webhook_lookback_forget(struct webhook_lookback *lb);

#endif
