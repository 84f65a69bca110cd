/* outcome.c - the names of the idempotency outcomes (outcome.h) */
#include "outcome.h"

#include <stddef.h>

static const char *const NAMES[OUTCOME_COUNT] = {
    [OUTCOME_NONE] = NULL,
    [OUTCOME_NEW] = "new",
    [OUTCOME_REPLAY] = "replay",
    [OUTCOME_CONFLICT] = "conflict",
    [OUTCOME_MISMATCH] = "mismatch",
    [OUTCOME_TAKEOVER] = "takeover",
    [OUTCOME_RELEASED] = "released",
    [OUTCOME_NO_KEY] = "no_key",
    [OUTCOME_LEASE_LOST] = "lease_lost",
    [OUTCOME_RELEASE_FAILED] = "release_failed",
    [OUTCOME_PENDING] = "pending",
};

const char *outcome_name(enum outcome o)
{
    return (int)o >= 0 && o < OUTCOME_COUNT ? NAMES[o] : NULL;
}
