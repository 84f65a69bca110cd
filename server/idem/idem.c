/* idem.c - the idempotency layer: fingerprint, replay cache, claim, then run
 * and complete (or release), or replay / 409 / 422 (idem.h) */
#define _POSIX_C_SOURCE 200809L
#include "idem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "idemkey.h"
#include "ids.h"
#include "utc_text.h"

#define IDEMPOTENCY "idempotency_error"

void idem_result_clear(struct idem_result *r)
{
    free(r->body);
    free(r->location);
    if (r->free_rows)
        r->free_rows(&r->rows);
    memset(r, 0, sizeof *r);
}

void idem_answer_clear(struct idem_answer *a)
{
    free(a->body);
    free(a->location);
    memset(a, 0, sizeof *a);
}

/* Copies an answer into *out (status, body, location); on allocation
 * failure a 500 with no body. */
static void answer_with(struct idem_answer *out, int status, const char *body, size_t len,
                        const char *location)
{
    free(out->body);
    free(out->location);
    out->status = status;
    out->body_len = len;
    out->body = malloc(len + 1);
    out->location = location ? strdup(location) : NULL;
    if (!out->body || (location && !out->location)) {
        free(out->body);
        free(out->location);
        out->body = NULL;
        out->location = NULL;
        out->body_len = 0;
        out->status = 500;
        return;
    }
    memcpy(out->body, body, len);
    out->body[len] = '\0';
}

static void answer_error(struct idem_answer *out, const struct apierr *e)
{
    char *body = apierr_json(e);
    answer_with(out, e->status, body ? body : "", body ? strlen(body) : 0, NULL);
    free(body);
    out->retry_after = e->status == 503 ? 1 : 0;
    out->error_code = e->code;
}

static void note_failure(struct idem_answer *out, const char *op, enum store_status st,
                         const char *err)
{
    if (out->nfailures >= 2)
        return;
    struct idem_store_failure *f = &out->failures[out->nfailures++];
    f->op = op;
    f->status = st;
    snprintf(f->err, sizeof f->err, "%s", err);
}

/* A store failure as the answer: nothing was recorded, the client retries. */
static void answer_store_failure(struct idem_answer *out, const char *op, enum store_status st,
                                 const char *err)
{
    struct apierr e;
    note_failure(out, op, st, err);
    apierr_store(&e, st == STORE_UNAVAILABLE, 1);
    answer_error(out, &e);
}

static void answer_duplicate(struct idem_answer *out, enum outcome o, int64_t first_seen_us)
{
    out->outcome = o;
    out->duplicate = 1;
    out->first_seen_us = first_seen_us;
}

/* The first answer, again, byte for byte (a 201 is replayed as 200). */
static void answer_replay(struct idem_answer *out, const struct replay_entry *e)
{
    answer_with(out, e->status >= 200 && e->status < 300 ? 200 : e->status, e->body, e->body_len,
                e->location);
    out->replayed = 1;
    answer_duplicate(out, OUTCOME_REPLAY, e->created_at_us);
}

static void answer_mismatch(struct idem_answer *out, int64_t first_seen_us)
{
    struct apierr e;
    apierr_of(&e, APIERR_IDEMPOTENCY_KEY_REUSED, NULL,
              "this idempotency key was used with a different request; use a new key for a new "
              "request");
    answer_error(out, &e);
    answer_duplicate(out, OUTCOME_MISMATCH, first_seen_us);
}

static void answer_in_use(struct idem_answer *out, const char *why)
{
    struct apierr e;
    apierr_of(&e, APIERR_IDEMPOTENCY_KEY_IN_USE, NULL, "%s", why);
    answer_error(out, &e);
    out->retry_after = 1;
}

static void answer_result(struct idem_answer *out, const struct idem_result *res)
{
    answer_with(out, res->status, res->body ? res->body : "", res->body ? res->body_len : 0,
                res->location);
    out->retry_after = out->status == 503 ? 1 : 0;
}

/* Keeps a completed answer for retries, until its record expires. */
static void remember(const struct idem *l, const struct idem_request *rq, const char *fp,
                     const struct replay_entry *e)
{
    replay_cache_put(l->replays, rq->tenant, rq->key, fp, e, e->created_at_us + l->ttl_ms * 1000);
}

/* Runs the operation. Returns 0; or -1 with *out holding the error to
 * answer; or -2 the same, when the operation had said that money may have
 * moved outside (pending, outside) before it failed: the record is kept. */
static int run_op(const struct idem_op *op, const struct idem_request *rq,
                  const struct idem_call *call, struct idem_result *res, struct idem_answer *out)
{
    struct apierr e;
    if (op->run(rq->ctx, rq->req, call, res, &e) == 0)
        return 0;
    int moved = res->pending || res->outside;
    idem_result_clear(res);
    answer_error(out, &e);
    return moved ? -2 : -1;
}

/* The operation's answer when the store refused its rows, in *res (with no
 * rows). Returns 0, or -1: with *out holding the error to answer when the
 * operation has such an answer and failed to give it. */
static int run_rejected(const struct idem_op *op, const struct idem_request *rq,
                        struct idem_result *res, struct idem_answer *out)
{
    struct apierr e;
    idem_result_clear(res);
    if (op->rejected && op->rejected(rq->ctx, rq->req, res, &e) == 0)
        return 0;
    idem_result_clear(res);
    if (op->rejected)
        answer_error(out, &e);
    return -1;
}

/* The operation's answer to an unknown outcome, in place of res (whose
 * rows could not be written): op->pending's, or the store's failure when it
 * has none or cannot build it. */
static void answer_pending(const struct idem_op *op, const struct idem_request *rq,
                           const struct idem_call *call, struct idem_result *res,
                           struct idem_answer *out)
{
    struct apierr e;
    idem_result_clear(res);
    if (op->pending && op->pending(rq->ctx, rq->req, call, res, &e) == 0) {
        answer_result(out, res);
        return;
    }
    idem_result_clear(res);
    if (!op->pending)
        apierr_store(&e, 1, 1);
    answer_error(out, &e);
}

/* A request without a key (--require-key=false): run once, write its
 * rows, no record. */
static void run_without_key(const struct idem *l, const struct idem_op *op,
                            const struct idem_request *rq, struct idem_answer *out)
{
    struct idem_result res = {0};
    char err[256] = "", downstream[IDS_MAX + 1];
    out->outcome = OUTCOME_NO_KEY;
    if (ids_new(STORE_DOWNSTREAM_PREFIX, downstream) != 0) {
        struct apierr e;
        apierr_of(&e, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
        answer_error(out, &e);
        return;
    }
    struct idem_call call = {NULL, downstream, 0};
    if (run_op(op, rq, &call, &res, out) != 0)
        return;
    if (!res.retryable && !res.pending) {
        enum store_status st = store_write_rows(l->store, rq->tenant, &res.rows, err, sizeof err);
        if (st == STORE_REJECTED && op->rejected) {
            if (run_rejected(op, rq, &res, out) == 0)
                answer_result(out, &res);
            goto out;
        }
        if (st != STORE_OK && res.outside && op->pending) {
            /* Nothing to keep: no record. Told as unknown all the same. */
            note_failure(out, "write_rows", st, err);
            answer_pending(op, rq, &call, &res, out);
            goto out;
        }
        if (st != STORE_OK) {
            answer_store_failure(out, "write_rows", st, err);
            goto out;
        }
        out->effect = res.effect;
    }
    answer_result(out, &res);
out:
    idem_result_clear(&res);
}

/* Deletes our claim so that a retry runs again; on failure (the database is
 * away too) the lease runs out instead. */
static void release_claim(const struct idem *l, const struct idem_request *rq, int64_t token,
                          struct idem_answer *out)
{
    char err[256] = "";
    enum store_status st = store_release(l->store, rq->tenant, rq->key, token, err, sizeof err);
    if (st != STORE_OK)
        note_failure(out, "release", st, err);
    out->outcome = st == STORE_OK ? OUTCOME_RELEASED : OUTCOME_RELEASE_FAILED;
}

/* Ends our lease now, the record kept processing (an unknown outcome); on
 * failure the lease runs out instead. */
static void abandon_claim(const struct idem *l, const struct idem_request *rq, int64_t token,
                          struct idem_answer *out)
{
    char err[256] = "";
    enum store_status st = store_abandon(l->store, rq->tenant, rq->key, token, err, sizeof err);
    if (st != STORE_OK)
        note_failure(out, "abandon", st, err);
    out->outcome = OUTCOME_PENDING;
}

/* Releases the claim after a failure of this run - unless an earlier run
 * of the record may have asked outside (call->again): then the record is
 * kept, its lease ended, and the answer is the operation's pending one. */
static void release_unless_asked(const struct idem *l, const struct idem_op *op,
                                 const struct idem_request *rq, const struct idem_call *call,
                                 int64_t token, struct idem_result *res, struct idem_answer *out)
{
    if (!call->again) {
        release_claim(l, rq, token, out);
        return;
    }
    abandon_claim(l, rq, token, out);
    answer_pending(op, rq, call, res, out);
}

/* Runs the operation under the lease just won, then completes or releases
 * (or, the outcome unknown, keeps the record for a retry to ask again). */
static void run_claimed(const struct idem *l, const struct idem_op *op,
                        const struct idem_request *rq, const char *fp,
                        const struct store_claim_result *claim, struct idem_answer *out)
{
    int64_t token = claim->lease_token;
    struct idem_result res = {0};
    char err[256] = "";
    struct idem_call call = {rq->key, claim->downstream_key,
                             claim->outcome == CLAIM_TAKEOVER && rq->kept};

    int rc = run_op(op, rq, &call, &res, out);
    if (rc == -2)
        abandon_claim(l, rq, token, out);
    else if (rc != 0)
        release_unless_asked(l, op, rq, &call, token, &res, out);
    if (rc != 0)
        goto out;
    if (res.retryable) {
        /* Nothing moved, says the operation, under this record's key
         * downstream ever: forget the claim so a retry runs again. */
        release_claim(l, rq, token, out);
        answer_result(out, &res);
        goto out;
    }
    if (res.pending) {
        abandon_claim(l, rq, token, out);
        answer_result(out, &res);
        goto out;
    }
    struct store_response resp = {res.status, res.body, res.body_len, res.location};
    enum store_status st =
        store_complete(l->store, rq->tenant, rq->key, token, &resp, &res.rows, err, sizeof err);
    if (st == STORE_REJECTED && res.outside) {
        /* Money moved outside, and our rows do not fit: never released;
         * the record waits, as for an unknown outcome. */
        note_failure(out, "complete", st, err);
        abandon_claim(l, rq, token, out);
        answer_pending(op, rq, &call, &res, out);
        goto out;
    }
    if (st == STORE_REJECTED) {
        /* The rows no longer fit (the condition the run checked changed
         * since): refused as the run would have refused it, not cached. */
        if (run_rejected(op, rq, &res, out) == 0)
            answer_result(out, &res);
        else if (!op->rejected) /* rows no operation said could be refused */
            answer_store_failure(out, "complete", st, err);
        release_claim(l, rq, token, out);
        goto out;
    }
    if (st == STORE_OK) {
        out->effect = res.effect;
        struct replay_entry done = {res.status, res.body, res.body_len, res.location,
                                    claim->created_at_us};
        remember(l, rq, fp, &done);
        answer_result(out, &res);
    } else if (st == STORE_LEASE_LOST) {
        /* Our lease ran out and another request took the key over: nothing
         * of ours was written; its answer is the one a retry will get. */
        note_failure(out, "complete", st, err);
        out->outcome = OUTCOME_LEASE_LOST;
        answer_in_use(out, "another request with this idempotency key took over; retry to get "
                           "its result");
    } else if (res.outside) {
        /* Money moved outside and the store did not take it down: never
         * released (a new record would ask with a new downstream key). The
         * retry takes the record over and asks again with the same one. */
        note_failure(out, "complete", st, err);
        abandon_claim(l, rq, token, out);
        answer_pending(op, rq, &call, &res, out);
    } else if (call.again) {
        /* Nothing was stored, and an earlier run may have asked outside. */
        note_failure(out, "complete", st, err);
        release_unless_asked(l, op, rq, &call, token, &res, out);
    } else {
        /* Nothing was stored: a retry must run again. */
        answer_store_failure(out, "complete", st, err);
        release_claim(l, rq, token, out);
    }
out:
    idem_result_clear(&res);
}

void idem_execute(const struct idem *l, const struct idem_op *op, const struct idem_request *rq,
                  struct idem_answer *out)
{
    struct store_claim_result claim = {0};
    char err[256] = "";
    memset(out, 0, sizeof *out);

    if (!rq->key) {
        run_without_key(l, op, rq, out);
        return;
    }
    char fp[65];
    idemkey_fingerprint(rq->method, op->route, rq->canonical, rq->canonical_len, fp);

    /* A retry of a completed key: answered from memory when this server has
     * seen the answer (a completed record never changes until it expires). */
    struct replay_entry cached;
    switch (replay_cache_get(l->replays, rq->tenant, rq->key, fp, clock_wall_us(), &cached)) {
    case REPLAY_HIT:
        answer_replay(out, &cached);
        out->from_cache = 1;
        replay_entry_clear(&cached);
        return;
    case REPLAY_MISMATCH:
        answer_mismatch(out, cached.created_at_us);
        return;
    case REPLAY_MISS:
        break;
    }

    enum store_status st = store_claim(l->store, rq->tenant, rq->key, fp, rq->kept, l->lease_ms,
                                       l->ttl_ms, &claim, err, sizeof err);
    if (st != STORE_OK) {
        answer_store_failure(out, "claim", st, err);
        return;
    }
    switch (claim.outcome) {
    case CLAIM_NEW:
    case CLAIM_TAKEOVER:
        out->outcome = claim.outcome == CLAIM_NEW ? OUTCOME_NEW : OUTCOME_TAKEOVER;
        run_claimed(l, op, rq, fp, &claim, out);
        break;
    case CLAIM_COMPLETED: {
        struct replay_entry found = {claim.response_status, claim.response_body,
                                     claim.response_body_len, claim.response_location,
                                     claim.created_at_us};
        remember(l, rq, fp, &found);
        answer_replay(out, &found);
        break;
    }
    case CLAIM_IN_PROGRESS:
        answer_in_use(out, "a request with this idempotency key is still being processed; retry "
                           "later");
        answer_duplicate(out, OUTCOME_CONFLICT, claim.created_at_us);
        break;
    case CLAIM_MISMATCH:
        answer_mismatch(out, claim.created_at_us);
        break;
    }
    store_claim_result_clear(&claim);
}

void idem_recovered_clear(struct idem_recovered *r)
{
    store_recovery_clear(&r->record);
    idem_answer_clear(&r->answer);
    r->unreadable = 0;
}

int idem_recover_one(const struct idem *l, const struct idem_revive *rv, struct idem_recovered *out)
{
    char err[256] = "";
    memset(out, 0, sizeof *out);
    struct store_recovery *rec = &out->record;
    enum store_status st = store_recover(l->store, l->lease_ms, rec, err, sizeof err);
    if (st == STORE_NOT_FOUND)
        return 0;
    if (st != STORE_OK) {
        note_failure(&out->answer, "recover", st, err);
        return -1;
    }
    const struct idem_op *op = NULL;
    struct idem_request rq = {0};
    char fp[65];
    int revived = rv->revive(rv->arg, rec, &op, &rq);
    if (revived == 1) {
        struct idem_request who = {.tenant = rec->tenant, .key = rec->key};
        abandon_claim(l, &who, rec->lease_token, &out->answer);
        idem_recovered_clear(out);
        return 0;
    }
    if (revived != 0) {
        out->unreadable = 1;
    } else {
        /* Its fingerprint, again: the request kept is the one the record
         * was claimed for (and this build reads it as that one did). */
        idemkey_fingerprint(rq.method, op->route, rq.canonical, rq.canonical_len, fp);
        out->unreadable = strcmp(fp, rec->fingerprint) != 0;
    }
    if (out->unreadable) {
        /* Kept for an operator (and for a build that reads it): its lease
         * ended, as for an unknown outcome. */
        struct idem_request who = {.tenant = rec->tenant, .key = rec->key};
        abandon_claim(l, &who, rec->lease_token, &out->answer);
        if (op)
            rv->done(rv->arg, &rq);
        return 1;
    }
    rq.tenant = rec->tenant;
    rq.key = rec->key;
    rq.kept = rec->request;
    struct store_claim_result claim = {.outcome = CLAIM_TAKEOVER,
                                       .lease_token = rec->lease_token,
                                       .created_at_us = rec->created_at_us};
    snprintf(claim.downstream_key, sizeof claim.downstream_key, "%s", rec->downstream_key);
    out->answer.outcome = OUTCOME_TAKEOVER;
    run_claimed(l, op, &rq, fp, &claim, &out->answer);
    rv->done(rv->arg, &rq);
    return 1;
}
