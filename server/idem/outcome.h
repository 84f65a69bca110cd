/* outcome.h - what the idempotency layer did with a request
 *
 * One enum, and the one table of its names: the access log, the duplicate
 * events and the metrics all name an outcome from here, so none of them
 * turns words back into values. Constant data: thread-safe.
 */
#ifndef MOCKERY_OUTCOME_H
#define MOCKERY_OUTCOME_H

enum outcome {
    OUTCOME_NONE = 0, /* no idempotency took part (GETs, answers before the key) */
    OUTCOME_NEW,
    OUTCOME_REPLAY,
    OUTCOME_CONFLICT,
    OUTCOME_MISMATCH,
    OUTCOME_TAKEOVER,
    OUTCOME_RELEASED,
    OUTCOME_NO_KEY,
    OUTCOME_LEASE_LOST,
    OUTCOME_RELEASE_FAILED,
    OUTCOME_PENDING, /* unknown outside: the record kept, its lease ended */
    OUTCOME_COUNT
};

/* The outcome's word ("new", "replay", ...); NULL for OUTCOME_NONE or a
 * value out of range. */
const char *outcome_name(enum outcome o);

#endif
