/* webhook_lookback.c - how far back a sender's claim looks
 * (webhook_lookback.h) */
#define _POSIX_C_SOURCE 200809L
#include "webhook_lookback.h"

#include <stdlib.h>
#include <string.h>

int64_t webhook_lookback_ms(const struct webhook_lookback *lb,
                            const struct store_endpoint_busy *busy, size_t n, int64_t now_us,
                            int statement_wait_ms)
{
    if (lb->nbusy == 0 || lb->looked_all_us == 0 ||
        now_us - lb->looked_all_us >= WEBHOOK_LOOK_ALL_MS * 1000LL)
        return 0;
    /* One of them no longer busy: its backlog may be taken now. */
    for (size_t i = 0; i < lb->nbusy; i++)
        if (!store_endpoint_in(busy, n, lb->busy[i].tenant, lb->busy[i].endpoint_id))
            return 0;
    return (now_us - lb->looked_all_us) / 1000 + statement_wait_ms + WEBHOOK_LOOKBACK_MARGIN_MS;
}

void webhook_lookback_forget(struct webhook_lookback *lb)
{
    for (size_t i = 0; i < lb->nbusy; i++) {
        free((char *)lb->busy[i].tenant);
        free((char *)lb->busy[i].endpoint_id);
    }
    free(lb->busy);
    *lb = (struct webhook_lookback){0};
}

void webhook_lookback_looked_all(struct webhook_lookback *lb, int64_t began_us, int left_some,
                                 const struct store_endpoint_busy *busy, size_t n)
{
    webhook_lookback_forget(lb);
    if (!left_some || n == 0)
        return;
    lb->busy = calloc(n, sizeof *lb->busy);
    if (!lb->busy)
        return;
    for (size_t i = 0; i < n; i++) {
        char *tenant = strdup(busy[i].tenant), *endpoint_id = strdup(busy[i].endpoint_id);
        lb->busy[lb->nbusy++] =
            (struct store_endpoint_busy){.tenant = tenant, .endpoint_id = endpoint_id};
        if (!tenant || !endpoint_id) {
            webhook_lookback_forget(lb);
            return;
        }
    }
    lb->looked_all_us = began_us;
}
