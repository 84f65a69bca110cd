/* idem.c - the idempotency layer: key, fingerprint, claim, then run and
 * complete, or replay / 409 / 422 */
#define _POSIX_C_SOURCE 200809L
#include "idem.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app.h"
#include "log.h"
#include "payment.h"

#define IDEMPOTENCY "idempotency_error"

void idem_result_clear(struct idem_result *r)
{
    free(r->body);
    free(r->location);
    if (r->payment) {
        store_payment_clear(r->payment);
        free(r->payment);
    }
    memset(r, 0, sizeof *r);
}

/* One line per prevented duplicate: which key, whose, first seen when. */
static void log_duplicate(struct request *r, const struct idem_op *op, const void *req,
                          int64_t original_us)
{
    char when[40];
    struct log_line line;
    if (!log_line_begin(r->app->log, LOG_INFO, "duplicate prevented", &line))
        return;
    payment_format_time(original_us, when, sizeof when);
    log_line_str(&line, "event", "duplicate_prevented");
    log_line_str(&line, "outcome", outcome_name(r->outcome));
    log_line_str(&line, "tenant", r->tenant);
    log_line_str(&line, "key", r->key);
    log_line_str(&line, "customer", r->customer);
    if (op->log_fields)
        op->log_fields(req, &line);
    log_line_str(&line, "original_time", when);
    log_line_end(r->app->log, &line);
}

/* A static copy of a stored payment's status (the result is freed before
 * the request is counted). */
static const char *payment_status_word(const struct store_payment *p)
{
    return strcmp(p->status, "completed") == 0 ? "completed" : "declined";
}

static void send_result(struct request *r, const struct idem_result *res)
{
    const char *headers[] = {"Location", res->location, NULL};
    http_send(r, res->status, res->body, res->body_len, res->location ? headers : NULL);
}

/* Sends a completed answer again, as it was, byte for byte. */
static void replay(struct request *r, const struct idem_op *op, const void *req,
                   const struct replay_entry *c)
{
    int status = c->status >= 200 && c->status < 300 ? 200 : c->status;
    /* Idempotent-Replayed is Stripe's name, which clients written for
     * Stripe look for */
    const char *headers[7] = {"X-Idempotent-Replay", "true", "Idempotent-Replayed", "true", NULL};
    if (c->location) {
        headers[4] = "Location";
        headers[5] = c->location;
    }
    r->outcome = OUTCOME_REPLAY;
    log_duplicate(r, op, req, c->created_at_us);
    http_send(r, status, c->body, c->body_len, headers);
}

static void mismatch(struct request *r, const struct idem_op *op, const void *req,
                     int64_t created_at_us)
{
    r->outcome = OUTCOME_MISMATCH;
    log_duplicate(r, op, req, created_at_us);
    http_fail(r, 422, IDEMPOTENCY, "idempotency_key_reused", NULL,
              "this idempotency key was used with a different request; use a new key for "
              "a new payment");
}

/* Keeps a completed answer for retries, until its record expires. */
static void remember(struct request *r, const char *fp, const struct replay_entry *e)
{
    replay_cache_put(r->app->replays, r->tenant, r->key, fp, e,
                     e->created_at_us + r->app->ttl_ms * 1000);
}

/* A request without a key (--require-key=false): run once, store the
 * payment, no record. */
static void run_without_key(struct request *r, const struct idem_op *op, const void *req)
{
    struct idem_result res = {0};
    struct apierr e;
    char err[256] = "";
    r->outcome = OUTCOME_NO_KEY;
    if (op->run(r->app, req, NULL, &res, &e) != 0) {
        http_send_error(r, &e, NULL);
        goto out;
    }
    if (!res.retryable && res.payment) {
        enum store_status st =
            store_insert_payment(r->app->store, r->tenant, res.payment, err, sizeof err);
        if (st != STORE_OK) {
            http_fail_store(r, "insert_payment", st, err);
            goto out;
        }
        r->payment_status = payment_status_word(res.payment);
    }
    send_result(r, &res);
out:
    idem_result_clear(&res);
}

/* Deletes our claim so that a retry runs again; on failure (the database is
 * away too) the lease runs out instead. Sets the outcome for the log. */
static void release_claim(struct request *r, int64_t token)
{
    char err[256] = "";
    enum store_status st = store_release(r->app->store, r->tenant, r->key, token, err, sizeof err);
    if (st != STORE_OK)
        http_log_store_error(r, "release", st, err);
    r->outcome = st == STORE_OK ? OUTCOME_RELEASED : OUTCOME_RELEASE_FAILED;
}

/* Runs the operation under the lease just won, then completes or releases. */
static void run_claimed(struct request *r, const struct idem_op *op, const void *req,
                        const char *fp, const struct store_claim_result *claim)
{
    int64_t token = claim->lease_token;
    struct app *app = r->app;
    struct idem_result res = {0};
    struct apierr e;
    char err[256] = "";

    if (op->run(app, req, r->key, &res, &e) != 0) {
        release_claim(r, token);
        http_send_error(r, &e, NULL);
        goto out;
    }
    if (res.retryable) {
        /* Failed before any charge: forget the claim so a retry runs again. */
        release_claim(r, token);
        send_result(r, &res);
        goto out;
    }
    struct store_response resp = {res.status, res.body, res.body_len, res.location};
    enum store_status st =
        store_complete(app->store, r->tenant, r->key, token, &resp, res.payment, err, sizeof err);
    if (st == STORE_OK) {
        if (res.payment)
            r->payment_status = payment_status_word(res.payment);
        struct replay_entry done = {res.status, res.body, res.body_len, res.location,
                                    claim->created_at_us};
        remember(r, fp, &done);
        send_result(r, &res);
    } else if (st == STORE_LEASE_LOST) {
        /* Our lease ran out and another request took the key over: nothing
         * of ours was written; its answer is the one a retry will get. */
        http_log_store_error(r, "complete", st, err);
        r->outcome = OUTCOME_LEASE_LOST;
        const char *headers[] = {"Retry-After", "1", NULL};
        struct apierr le;
        apierr_set(&le, 409, IDEMPOTENCY, "idempotency_key_in_use", NULL,
                   "another request with this idempotency key took over; retry to get its "
                   "result");
        http_send_error(r, &le, headers);
    } else {
        /* Nothing was stored: a retry must run again. */
        release_claim(r, token);
        http_fail_store(r, "complete", st, err);
    }
out:
    idem_result_clear(&res);
}

void idem_handle(struct request *r, const struct idem_op *op)
{
    struct app *app = r->app;
    char *body = NULL, *canon = NULL;
    void *req = NULL;
    size_t len = 0, clen = 0;
    struct apierr e;
    struct store_claim_result claim = {0};
    char err[256] = "";

    enum idem_key_status ks;
    if (http_read_idempotent_post(r, op->max_body, app->cfg.require_key, &ks, &body, &len) != 0)
        goto out;
    if (op->parse(body, len, &req, &e) != 0) {
        http_send_error(r, &e, NULL);
        goto out;
    }
    snprintf(r->customer, sizeof r->customer, "%s", op->customer(req));

    if (ks == IDEM_KEY_MISSING) {
        run_without_key(r, op, req);
        goto out;
    }

    canon = op->canonical(req, &clen);
    if (!canon) {
        http_fail(r, 500, "api_error", "internal_error", NULL, "out of memory");
        goto out;
    }
    char fp[65];
    idem_fingerprint(http_method(r), op->route, canon, clen, fp);

    /* A retry of a completed key: answered from memory when this server has
     * seen the answer (a completed record never changes until it expires). */
    struct replay_entry cached;
    switch (replay_cache_get(app->replays, r->tenant, r->key, fp, payment_now_us(), &cached)) {
    case REPLAY_HIT:
        replay(r, op, req, &cached);
        replay_entry_clear(&cached);
        goto out;
    case REPLAY_MISMATCH:
        mismatch(r, op, req, cached.created_at_us);
        goto out;
    case REPLAY_MISS:
        break;
    }

    enum store_status st = store_claim(app->store, r->tenant, r->key, fp, app->lease_ms,
                                       app->ttl_ms, &claim, err, sizeof err);
    if (st != STORE_OK) {
        http_fail_store(r, "claim", st, err);
        goto out;
    }
    switch (claim.outcome) {
    case CLAIM_NEW:
    case CLAIM_TAKEOVER:
        r->outcome = claim.outcome == CLAIM_NEW ? OUTCOME_NEW : OUTCOME_TAKEOVER;
        run_claimed(r, op, req, fp, &claim);
        break;
    case CLAIM_COMPLETED: {
        struct replay_entry found = {claim.response_status, claim.response_body,
                                     claim.response_body_len, claim.response_location,
                                     claim.created_at_us};
        remember(r, fp, &found);
        replay(r, op, req, &found);
        break;
    }
    case CLAIM_IN_PROGRESS: {
        const char *headers[] = {"Retry-After", "1", NULL};
        r->outcome = OUTCOME_CONFLICT;
        apierr_set(&e, 409, IDEMPOTENCY, "idempotency_key_in_use", NULL,
                   "a request with this idempotency key is still being processed; retry later");
        log_duplicate(r, op, req, claim.created_at_us);
        http_send_error(r, &e, headers);
        break;
    }
    case CLAIM_MISMATCH:
        mismatch(r, op, req, claim.created_at_us);
        break;
    }
out:
    store_claim_result_clear(&claim);
    if (req)
        op->free_req(req);
    free(canon);
    free(body);
}
