/* webhook_delivery.h - sending the events' deliveries to their endpoints
 *
 * A pass claims a batch of due deliveries from the store
 * (store_claim_deliveries: counted and leased, so no other server sends
 * them meanwhile), POSTs each event to its endpoint - all of the batch at
 * once, over connections kept alive between passes - signed
 * (webhook_signature.h), and writes what came of each: delivered on a 2xx
 * within the timeout; else due again after a backoff that doubles with
 * each attempt, with jitter; failed once max_attempts have been made. A
 * server that dies mid-pass writes nothing: when the lease ends the
 * deliveries are due again, and sent again (at least once; a receiver
 * dedupes by Mockery-Event-Id).
 *
 * Without allow_private the address every connection goes to is checked
 * again as it is opened (webhook_address_public): the endpoint's name may
 * resolve elsewhere now than when it was made.
 *
 * The server runs passes on threads of their own (app.c): never on a
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
};

/* Deliveries claimed at most a pass. */
#define WEBHOOK_BATCH 32
/* Connections a sender keeps open to one host at most: as many as a pass
 * claims, so that no attempt waits for a connection while its timeout runs
 * (libcurl counts the timeout from when the transfer is added). */
#define WEBHOOK_HOST_CONNECTIONS WEBHOOK_BATCH
/* The longest wait between two attempts, however many came before. */
#define WEBHOOK_BACKOFF_CAP_MS (6LL * 3600 * 1000)

/* What a pass did. */
struct webhook_pass {
    int claimed;
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

/* One pass (above). */
void webhook_deliver_due(struct webhook_sender *w, struct store *s, struct webhook_pass *out);

/* Ends a pass in progress soon, from another thread: its deliveries are
 * left claimed (sent again after the lease). Every later pass returns at
 * once. */
void webhook_sender_stop(struct webhook_sender *w);

/* The wait before the retry that follows attempt (1: the first), from a
 * uniform draw in [0, 1): backoff_ms * 2^(attempt-1), capped, times 0.5 to
 * 1.5. */
int64_t webhook_retry_delay_ms(int backoff_ms, int attempt, double draw);

#endif
