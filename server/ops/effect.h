/* effect.h - what an operation's rows were, once written: what the metrics
 * count (payments by status, refunds)
 *
 * The operations set it in their result (idem.h's int effect); the
 * idempotency layer passes it on without reading it, so it names no
 * business itself. Constant data: thread-safe.
 */
#ifndef MOCKERY_EFFECT_H
#define MOCKERY_EFFECT_H

enum effect {
    EFFECT_NONE = 0,
    EFFECT_PAYMENT_COMPLETED,
    EFFECT_PAYMENT_DECLINED,
    EFFECT_REFUND,
};

#endif
