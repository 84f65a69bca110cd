/* webhook_delivery.h - sending the events' deliveries to their endpoints
 *
 * A sender runs in steps. A step claims due deliveries from the store for
 * its free slots (store_claim_deliveries: counted and leased, so no other
 * server sends them meanwhile; WEBHOOK_CLAIM at most, and none to an
 * endpoint it has attempts under way to), POSTs each event to its endpoint
 * - all at once, over connections kept alive between steps - signed
 * (webhook_signature.h), runs the attempts under way until as many ended
 * as began, none is under way, or WEBHOOK_STEP_MS passed, and writes what
 * came of each that ended: delivered on a 2xx within the
 * timeout; else due again after a backoff that doubles with each attempt,
 * with jitter; failed once max_attempts have been made. An attempt still
 * under way carries on into the next step: an endpoint that hangs holds
 * its own slots until the timeout, not the others' deliveries. A server
 * that dies mid-attempt writes nothing: when the lease ends the delivery
 * is due again, and sent again (at least once; a receiver dedupes by
 * Mockery-Event-Id), after the last allowed attempt too
 * (WEBHOOK_ATTEMPTS_AFTER_DEATHS).
 *
 * Without allow_private the address every connection goes to is checked
 * again as it is opened (webhook_address_public): the endpoint's name may
 * resolve elsewhere now than when it was made.
 *
 * The server runs steps on threads of their own (app.c): never on a
 * request's. One sender per thread.
 */
#ifndef MOCKERY_WEBHOOK_DELIVERY_H
#define MOCKERY_WEBHOOK_DELIVERY_H

#include <stdint.h>

#include "store.h"

struct webhook_options {
    int timeout_ms;    /* an attempt's bound, connecting included */
    int max_attempts;  /* the first counts */
    int backoff_ms;    /* before the first retry; doubled for each further one */
    int allow_private; /* endpoints on loopback and private addresses too */
    int statement_wait_ms; /* the longest a statement waits for a pooled connection */
};

/* Attempts under way at most, a sender's slots. */
#define WEBHOOK_SLOTS 128
/* Deliveries a claim takes at most; and since an endpoint with attempts
 * under way gets no more until they all ended, attempts under way to one
 * endpoint at most: three that hang leave a quarter of the slots free for
 * everyone else's. */
#define WEBHOOK_CLAIM 32
/* A step's longest run before it writes the results that came and claims
 * again. */
#define WEBHOOK_STEP_MS 200
/* Connections a sender keeps open to one host at most: as many as it has
 * slots, so that no attempt waits for a connection while its timeout runs
 * (libcurl counts the timeout from when the transfer is added). */
#define WEBHOOK_HOST_CONNECTIONS WEBHOOK_SLOTS
/* The longest wait between two attempts, however many came before. */
#define WEBHOOK_BACKOFF_CAP_MS (6LL * 3600 * 1000)
/* A server that dies mid-attempt writes nothing, and its claim still
 * counted the attempt (so does a claim that came back too late to begin
 * it); claimed again after the last allowed one, the delivery is sent
 * anyway - such an attempt is not one the endpoint failed - up to this
 * many times more, so that a delivery whose every sender dies is failed
 * at last. */
#define WEBHOOK_ATTEMPTS_AFTER_DEATHS 3

/* What a step did. */
struct webhook_pass {
    int claimed;
    int in_flight; /* attempts still under way, to be run by the next step */
    int stalled;   /* libcurl failed: the attempts under way were left claimed */
    int late;      /* claimed by a claim too slow to begin them: left to their lease */
    int delivered;
    int retried;
    int failed;
    enum store_status store; /* STORE_OK, or why claiming or writing failed */
    char error[256];         /* the store's error, or the last attempt's that failed */
};

struct webhook_sender;

/* NULL when out of memory or libcurl could not start. */
struct webhook_sender *webhook_sender_new(const struct webhook_options *o);
void webhook_sender_free(struct webhook_sender *w);

/* One step (above). */
void webhook_deliver_due(struct webhook_sender *w, struct store *s, struct webhook_pass *out);

/* Ends a step in progress soon, from another thread: the attempts under
 * way are left claimed (sent again after the lease). Every later step
 * returns at once. */
void webhook_sender_stop(struct webhook_sender *w);

/* The wait before the retry that follows attempt (1: the first), from a
 * uniform draw in [0, 1): backoff_ms * 2^(attempt-1), capped, times 0.5 to
 * 1.5. */
int64_t webhook_retry_delay_ms(int backoff_ms, int attempt, double draw);

/* A claim's lease: how long an attempt may hold its delivery (see
 * LEASE_MARGIN_MS in webhook_delivery.c). */
int64_t webhook_lease_ms(const struct webhook_options *o);

/* The longest a delivery's retries last after its event: every wait at its
 * longest draw, and each attempt - those after deaths included - its whole
 * lease. What an event must be kept for, since reaping it takes its
 * deliveries along (a backlog of due deliveries can still delay one). */
int64_t webhook_retry_span_ms(const struct webhook_options *o);

#endif
