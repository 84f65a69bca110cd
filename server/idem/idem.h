/* idem.h - the idempotency layer: runs an operation at most once per
 * (tenant, Idempotency-Key) and gives every retry the first answer
 * (docs/design.md: claim, lease, fencing, completion)
 *
 * It knows no HTTP and no business. The caller gives it the tenant, the key,
 * what identifies the request (method, route template and the operation's
 * canonical fields: the fingerprint) and an operation; it gives back the
 * answer to send and what it did (enum outcome). An operation knows nothing
 * of keys: it runs, and returns its answer and the rows (struct store_rows)
 * the layer writes with the completion, in one transaction. Reentrant: all
 * state is in the store and the replay cache.
 */
#ifndef MOCKERY_IDEM_H
#define MOCKERY_IDEM_H

#include <stddef.h>
#include <stdint.h>

#include "apierr.h"
#include "outcome.h"
#include "replay_cache.h"
#include "store.h"

/* Who asks, as an operation sees it. */
struct idem_call {
    const char *key; /* the client's Idempotency-Key; NULL without one */
    /* The record's key downstream (store.h): the same for every run of one
     * record - a retry's takeover, another server's - so that an acquirer
     * asked again answers its first outcome. Without a key: a new one. */
    const char *downstream_key;
    /* An earlier run of this record may have asked outside (a takeover of
     * a record that kept its request; recovery): no ask of this run that
     * failed to connect says nothing moved, since the earlier one may have
     * moved it. */
    int again;
};

/* What an operation answered. The layer frees it with idem_result_clear(). */
struct idem_result {
    int status;
    char *body; /* malloc'd */
    size_t body_len;
    char *location; /* malloc'd, or NULL: sent as the Location header */
    int retryable;  /* failed before any effect: release the key, do not cache */
    /* The outcome is unknown: money may have moved outside (an acquirer's
     * answer was lost). Answered as it is; the record stays processing
     * with its lease ended - never cached, never released - so that the
     * next retry takes it over at once and asks again with the same
     * downstream key. */
    int pending;
    /* Money moved outside (or may have): from here the record is never
     * released. Should the completion fail in the store, the answer is the
     * operation's pending one (idem_op.pending) and the record waits, as
     * with pending, for a retry to ask again. */
    int outside;
    struct store_rows rows; /* written with the completion, in its transaction */
    void (*free_rows)(struct store_rows *rows); /* the operation's; NULL: nothing to free */
    int effect; /* the operation's code for what its rows were (0: none), passed on once
                   they are written: the layer does not read it */
};

void idem_result_clear(struct idem_result *r);

struct idem_op {
    const char *route; /* the route template, part of the fingerprint */
    /* Runs the operation for req, as call says.
     * Returns 0 with *out filled, or -1 with err: answered as it is, the
     * claim released (the failure is not cached) - so a run fails only
     * before anything moved outside. */
    int (*run)(void *ctx, const void *req, const struct idem_call *call, struct idem_result *out,
               struct apierr *err);
    /* The answer when the store refused the rows (STORE_REJECTED: a
     * condition checked as they are written no longer held, such as money
     * taken back beyond what is left). Like a failed run it is not cached: the claim
     * is released, and a retry runs (and is refused) again. NULL for an
     * operation whose rows are never refused. */
    int (*rejected)(void *ctx, const void *req, struct idem_result *out, struct apierr *err);
    /* The answer when money may have moved outside (a run that said
     * outside) and the completion could not be written: what a client is
     * told of an unknown outcome. NULL: the store's failure is answered. */
    int (*pending)(void *ctx, const void *req, const struct idem_call *call,
                   struct idem_result *out, struct apierr *err);
};

/* What the layer needs of the service; borrowed. */
struct idem {
    struct store *store;
    struct replay_cache *replays; /* may be NULL */
    int64_t lease_ms, ttl_ms;
};

/* One request, as the layer sees it. */
struct idem_request {
    const char *tenant;
    const char *key; /* NULL: no key (run once, no record) */
    const char *method;
    const char *canonical; /* the operation's canonical fields */
    size_t canonical_len;
    const void *req; /* the parsed request, for the operation */
    void *ctx;       /* the operation's context */
    /* The request as text, kept with the record until it completes so that
     * recovery can finish it without its client (idem_recover_one): for an
     * operation that asks outside; NULL for one that does not. A record
     * that kept it is never released once taken over (an earlier run may
     * have asked), unless its operation says that nothing ever moved
     * (retryable). */
    const char *kept;
};

/* A store call that failed on the way, for the caller's log. */
struct idem_store_failure {
    const char *op; /* "claim", "complete", "release", "abandon", "write_rows" */
    enum store_status status;
    char err[256];
};

/* What to answer, and what happened. */
struct idem_answer {
    int status;
    char *body; /* malloc'd */
    size_t body_len;
    char *location;  /* malloc'd, or NULL */
    int replayed;    /* the first answer, sent again: marked as a replay */
    int retry_after; /* seconds for a Retry-After header; 0: none */
    enum outcome outcome;
    int duplicate;          /* a duplicate was prevented (replay, 409, 422) */
    int64_t first_seen_us;  /* with duplicate: when the key was first used */
    int effect;             /* the operation's effect code, when its rows were written; else 0 */
    int from_cache;         /* a replay answered from this server's replay cache */
    const char *error_code; /* an error answered now (not a replay): its code, a static string */
    struct idem_store_failure failures[2];
    int nfailures;
};

void idem_answer_clear(struct idem_answer *a);

/* Runs rq through op: replay, 409, 422, or claim, run, and complete (or
 * release). Always fills *out with an answer (a 500 if even that cannot be
 * allocated has an empty body). */
void idem_execute(const struct idem *layer, const struct idem_op *op, const struct idem_request *rq,
                  struct idem_answer *out);

/* Recovery without the client (docs/design.md): the caller that wrote a
 * kept request makes it back into its operation and request. */
struct idem_revive {
    /* 0 with *op and rq's method, canonical, canonical_len, req and ctx
     * filled from the request the record kept; -1 when it cannot be read;
     * 1 when the caller wants no more records now (its lease ends again,
     * untouched). */
    int (*revive)(void *arg, const struct store_recovery *record, const struct idem_op **op,
                  struct idem_request *rq);
    /* Frees what revive made of rq. */
    void (*done)(void *arg, struct idem_request *rq);
    void *arg;
};

/* One record recovered: the record, and what its retry would have been
 * answered (answer.outcome: OUTCOME_TAKEOVER when completed, with the
 * effect; OUTCOME_PENDING when the outcome is still unknown, the record
 * kept; OUTCOME_RELEASED when nothing moved). */
struct idem_recovered {
    struct store_recovery record;
    struct idem_answer answer;
    int unreadable; /* the kept request could not be revived, or no longer has the
                       record's fingerprint: the record is kept, its lease ended */
};

void idem_recovered_clear(struct idem_recovered *r);

/* Takes over the record waiting for recovery longest (store_recover) and
 * finishes it as its client's retry would: asks again under its key
 * downstream, then completes, keeps or releases it. Returns 1 with *out
 * filled, 0 when no record waits (or revive wanted none), -1 when the store failed
 * (out->answer.failures says how). Records taken by other servers at the
 * same time are skipped: one record, one recovery at a time. */
int idem_recover_one(const struct idem *layer, const struct idem_revive *rv,
                     struct idem_recovered *out);

#endif
