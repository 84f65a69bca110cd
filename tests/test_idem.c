/* test_idem.c - the idempotency layer's state machine, without sockets:
 * idem_execute over the memory store, and over the faulty store where the
 * database fails at each step */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "faulty_store.h"
#include "idem.h"
#include "idemkey.h"
#include "replay_cache.h"
#include "store.h"
#include "store_mem.h"
#include "support.h"

/* A made-up operation: answers what the test tells it, counts its runs. */
struct fake {
    int runs;
    int fail;                    /* run returns -1 (a 404 of its own) */
    int retryable;               /* run answers a 502 that must not be cached */
    int rejected;                /* calls of the rejected hook */
    int pending;                 /* run answers an unknown outcome (503) */
    int outside;                 /* run says money moved outside */
    int fail_outside;            /* run says so, then fails (out of memory after the charge) */
    int pending_calls;           /* calls of the pending hook */
    char downstream[8][72];      /* the downstream key of each run */
    int again[8];                /* call->again of each run */
    struct store_payment row;    /* written with the answer when it has an id */
    struct store_refund *refund; /* written with the answer when set */
};

static void free_rows(struct store_rows *rows)
{
    rows->payment = NULL; /* borrowed from struct fake */
    rows->refund = NULL;
}

static int fake_run(void *ctx, const void *req, const struct idem_call *call,
                    struct idem_result *out, struct apierr *err)
{
    struct fake *f = ctx;
    (void)req;
    if (f->runs < 8) {
        snprintf(f->downstream[f->runs], sizeof f->downstream[0], "%s", call->downstream_key);
        f->again[f->runs] = call->again;
    }
    f->runs++;
    if (f->fail_outside) {
        out->outside = 1;
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    }
    if (f->fail)
        return apierr_of(err, APIERR_PAYMENT_NOT_FOUND, NULL, "none");
    char body[64];
    snprintf(body, sizeof body, "{\"run\":%d}", f->runs);
    out->status = f->retryable ? 502 : f->pending ? 503 : 201;
    out->retryable = f->retryable;
    out->pending = f->pending;
    out->outside = f->outside;
    out->body = strdup(body);
    out->body_len = strlen(body);
    out->location = strdup("/things/1");
    out->rows.payment = f->row.transaction_id ? &f->row : NULL;
    out->rows.refund = f->refund;
    out->free_rows = free_rows;
    out->effect = 7;
    return 0;
}

static int fake_rejected(void *ctx, const void *req, struct idem_result *out, struct apierr *err)
{
    struct fake *f = ctx;
    (void)req;
    (void)err;
    f->rejected++;
    out->status = 422;
    out->body = strdup("{\"rejected\":true}");
    out->body_len = strlen(out->body);
    return 0;
}

static int fake_pending(void *ctx, const void *req, const struct idem_call *call,
                        struct idem_result *out, struct apierr *err)
{
    struct fake *f = ctx;
    (void)req;
    (void)err;
    f->pending_calls++;
    char body[128];
    snprintf(body, sizeof body, "{\"pending\":\"%s\"}", call->downstream_key);
    out->status = 503;
    out->body = strdup(body);
    out->body_len = strlen(body);
    return 0;
}

static const struct idem_op OP = {
    .route = "/things", .run = fake_run, .rejected = fake_rejected, .pending = fake_pending};
static const struct idem_op OTHER_ROUTE = {.route = "/things/{id}/other", .run = fake_run};

static struct store *store, *faulty;
static struct replay_cache *cache;
static struct idem layer;

static void setup(void)
{
    faulty = faulty_store_new(store_mem_new());
    store = faulty;
    cache = replay_cache_new(64);
    layer = (struct idem){store, cache, 60000, 86400000};
}

static void teardown(void)
{
    store_free(faulty);
    replay_cache_free(cache);
}

/* A request whose record keeps kept (NULL: keeps nothing) for recovery. */
static struct idem_answer exec_kept(const struct idem_op *op, const char *key, const char *canon,
                                    const char *kept, struct fake *f)
{
    struct idem_answer a;
    struct idem_request rq = {.tenant = "t",
                              .key = key,
                              .method = "POST",
                              .canonical = canon,
                              .canonical_len = strlen(canon),
                              .ctx = f,
                              .kept = kept};
    idem_execute(&layer, op, &rq, &a);
    return a;
}

static struct idem_answer exec(const struct idem_op *op, const char *key, const char *canon,
                               struct fake *f)
{
    return exec_kept(op, key, canon, NULL, f);
}

TestSuite(idem, .init = setup, .fini = teardown, .timeout = 30);

Test(idem, new_key_runs_once_and_every_retry_replays_it)
{
    struct fake f = {0};
    struct idem_answer a = exec(&OP, "k1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_NEW);
    cr_assert_eq(a.status, 201);
    cr_assert_str_eq(a.body, "{\"run\":1}");
    cr_assert_str_eq(a.location, "/things/1");
    cr_assert_not(a.replayed);
    cr_assert_eq(a.effect, 7, "passed on as it was");
    idem_answer_clear(&a);
    /* from the replay cache, then from the store (cache emptied) */
    for (int i = 0; i < 2; i++) {
        if (i == 1) {
            replay_cache_free(cache);
            cache = layer.replays = replay_cache_new(64);
        }
        a = exec(&OP, "k1", "x=1", &f);
        cr_assert_eq(a.outcome, OUTCOME_REPLAY);
        cr_assert(a.replayed);
        cr_assert(a.duplicate);
        cr_assert_eq(a.status, 200);
        cr_assert_str_eq(a.body, "{\"run\":1}");
        cr_assert_str_eq(a.location, "/things/1");
        cr_assert_eq(a.effect, 0);
        idem_answer_clear(&a);
    }
    cr_assert_eq(f.runs, 1);
}

Test(idem, same_key_with_another_request_or_route_is_a_mismatch)
{
    struct fake f = {0};
    struct idem_answer a = exec(&OP, "k2", "x=1", &f);
    idem_answer_clear(&a);
    a = exec(&OP, "k2", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH);
    cr_assert_eq(a.status, 422);
    cr_assert(strstr(a.body, "idempotency_key_reused"));
    idem_answer_clear(&a);
    a = exec(&OTHER_ROUTE, "k2", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH, "same fields, another route");
    idem_answer_clear(&a);
    cr_assert_eq(f.runs, 1);
}

Test(idem, a_key_still_running_is_a_409_with_retry_after)
{
    struct fake f = {0};
    struct store_claim_result c;
    char err[256], fp[65];
    idemkey_fingerprint("POST", "/things", "x=1", 3, fp);
    cr_assert_eq(store_claim(store, "t", "k3", fp, NULL, 60000, 86400000, &c, err, sizeof err),
                 STORE_OK);
    struct idem_answer a = exec(&OP, "k3", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_CONFLICT);
    cr_assert_eq(a.status, 409);
    cr_assert_eq(a.retry_after, 1);
    cr_assert_eq(f.runs, 0);
    idem_answer_clear(&a);
    store_claim_result_clear(&c);
}

Test(idem, a_failed_or_retryable_run_releases_the_key)
{
    struct fake f = {.fail = 1};
    struct idem_answer a = exec(&OP, "k4", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    cr_assert_eq(a.status, 404);
    idem_answer_clear(&a);
    f.fail = 0;
    f.retryable = 1;
    a = exec(&OP, "k4", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    cr_assert_eq(a.status, 502);
    idem_answer_clear(&a);
    f.retryable = 0;
    a = exec(&OP, "k4", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_NEW, "the key was free again");
    cr_assert_eq(a.status, 201);
    idem_answer_clear(&a);
    cr_assert_eq(f.runs, 3);
}

Test(idem, rows_the_store_rejects_get_the_operations_answer_uncached)
{
    /* a refund of a payment that does not exist: the store rejects it */
    struct store_refund bad = {.refund_id = "re_x",
                               .transaction_id = "txn_none",
                               .amount_minor = 1,
                               .currency = "USD",
                               .status = "succeeded"};
    struct fake f = {.refund = &bad};
    struct idem_answer a = exec(&OP, "k5", "x=1", &f);
    cr_assert_eq(f.rejected, 1);
    cr_assert_eq(a.status, 422);
    cr_assert_str_eq(a.body, "{\"rejected\":true}");
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    cr_assert_eq(a.effect, 0);
    idem_answer_clear(&a);
    /* not cached: the retry runs again */
    a = exec(&OP, "k5", "x=1", &f);
    cr_assert_eq(f.runs, 2);
    cr_assert_eq(a.status, 422);
    idem_answer_clear(&a);
    /* an operation with no answer for it: a 500, the key released */
    a = exec(&OTHER_ROUTE, "k5b", "x=1", &f);
    cr_assert_eq(a.status, 500);
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    idem_answer_clear(&a);
}

Test(idem, a_request_without_a_key_runs_each_time_and_writes_its_rows)
{
    struct fake f = {.row = {.transaction_id = "txn_nokey",
                             .customer_id = "c",
                             .amount_minor = 5,
                             .currency = "USD",
                             .status = "completed"}};
    for (int i = 1; i <= 2; i++) {
        struct idem_answer a = exec(&OP, NULL, "x=1", &f);
        cr_assert_eq(a.outcome, OUTCOME_NO_KEY);
        cr_assert_eq(a.status, 201);
        cr_assert_eq(f.runs, i);
        idem_answer_clear(&a);
        f.row.transaction_id = "txn_nokey2";
    }
    struct store_payment got;
    char err[256];
    cr_assert_eq(store_get_payment(store, "t", "txn_nokey", &got, err, sizeof err), STORE_OK);
    store_payment_clear(&got);
}

Test(idem, a_claim_the_store_cannot_make_is_a_503_and_nothing_runs)
{
    struct fake f = {0};
    faulty_store_fail(store, FAULTY_CLAIM, 1, STORE_UNAVAILABLE);
    struct idem_answer a = exec(&OP, "k6", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.retry_after, 1);
    cr_assert(strstr(a.body, "store_unavailable"));
    cr_assert_eq(a.nfailures, 1);
    cr_assert_str_eq(a.failures[0].op, "claim");
    cr_assert_eq(f.runs, 0);
    idem_answer_clear(&a);
}

Test(idem, a_completion_that_fails_releases_the_key_for_the_retry)
{
    struct fake f = {0};
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    struct idem_answer a = exec(&OP, "k7", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    idem_answer_clear(&a);
    a = exec(&OP, "k7", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_NEW);
    cr_assert_eq(a.status, 201);
    cr_assert_eq(f.runs, 2);
    idem_answer_clear(&a);
    /* and when the release fails too, the lease is what frees the key */
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    faulty_store_fail(store, FAULTY_RELEASE, 1, STORE_UNAVAILABLE);
    a = exec(&OP, "k8", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_RELEASE_FAILED);
    cr_assert_eq(a.nfailures, 2);
    idem_answer_clear(&a);
    a = exec(&OP, "k8", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_CONFLICT, "still held until its lease runs out");
    idem_answer_clear(&a);
}

Test(idem, a_lost_lease_is_a_409_and_writes_nothing)
{
    struct fake f = {0};
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_LEASE_LOST);
    struct idem_answer a = exec(&OP, "k9", "x=1", &f);
    cr_assert_eq(a.status, 409);
    cr_assert_eq(a.outcome, OUTCOME_LEASE_LOST);
    cr_assert_eq(a.retry_after, 1);
    cr_assert(strstr(a.body, "idempotency_key_in_use"));
    idem_answer_clear(&a);
}

/* An unknown outcome outside: answered as the operation says, neither
 * cached nor released, the lease ended - the retry takes the record over
 * at once and runs again with the same downstream key. */
Test(idem, an_unknown_outcome_keeps_the_record_for_a_retry_to_ask_again)
{
    struct fake f = {.pending = 1};
    struct idem_answer a = exec(&OP, "k10", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(a.retry_after, 1);
    cr_assert_eq(a.nfailures, 0);
    idem_answer_clear(&a);
    a = exec(&OP, "k10", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH, "not released: another body is refused");
    idem_answer_clear(&a);
    f.pending = 0;
    a = exec(&OP, "k10", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER, "the lease ended: taken over at once");
    cr_assert_eq(a.status, 201);
    cr_assert_eq(f.runs, 2);
    cr_assert_eq(strncmp(f.downstream[0], STORE_DOWNSTREAM_PREFIX, 3), 0, "%s", f.downstream[0]);
    cr_assert_str_eq(f.downstream[1], f.downstream[0], "the same key downstream");
    cr_assert_str_neq(f.downstream[0], "k10");
    idem_answer_clear(&a);
    a = exec(&OP, "k10", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_REPLAY);
    idem_answer_clear(&a);
}

/* Money moved outside and the completion failed: never released (a new
 * record would ask with a new downstream key); the operation's pending
 * answer; the retry asks again with the same key and completes. */
Test(idem, a_completion_that_fails_after_money_moved_is_pending_not_released)
{
    struct fake f = {.outside = 1};
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    struct idem_answer a = exec(&OP, "k11", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(f.pending_calls, 1);
    cr_assert(strstr(a.body, f.downstream[0]), "%s", a.body);
    cr_assert_eq(a.retry_after, 1);
    idem_answer_clear(&a);
    a = exec(&OP, "k11", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER);
    cr_assert_eq(a.status, 201);
    cr_assert_str_eq(f.downstream[1], f.downstream[0]);
    idem_answer_clear(&a);
    /* and when ending the lease fails too, the lease runs out instead:
     * still never released */
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    faulty_store_fail(store, FAULTY_ABANDON, 1, STORE_UNAVAILABLE);
    a = exec(&OP, "k12", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(a.nfailures, 2);
    idem_answer_clear(&a);
    a = exec(&OP, "k12", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_CONFLICT, "held until its lease runs out, not released");
    idem_answer_clear(&a);
    /* an operation without a pending answer: the store's 503, still kept */
    static const struct idem_op BARE = {.route = "/bare", .run = fake_run};
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    a = exec(&BARE, "k13", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert(strstr(a.body, "store_unavailable"), "%s", a.body);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    idem_answer_clear(&a);
    a = exec(&BARE, "k13", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER);
    idem_answer_clear(&a);
}

/* The record is kept, never released, on every other way out after money
 * moved outside: the run failing after it, the store refusing the rows,
 * and - without a key - the rows not written. */
Test(idem, every_failure_after_money_moved_keeps_the_record)
{
    struct fake f = {.fail_outside = 1};
    struct idem_answer a = exec(&OP, "k14", "x=1", &f);
    cr_assert_eq(a.status, 500);
    cr_assert_eq(a.outcome, OUTCOME_PENDING, "kept, not released");
    idem_answer_clear(&a);
    f.fail_outside = 0;
    f.outside = 1;
    a = exec(&OP, "k14", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER, "the same record, taken over at once");
    cr_assert_eq(a.status, 201);
    cr_assert_str_eq(f.downstream[1], f.downstream[0]);
    idem_answer_clear(&a);

    /* the store refuses the rows after money moved: pending, not released */
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_REJECTED);
    a = exec(&OP, "k15", "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(f.rejected, 0, "not answered as a refusal");
    idem_answer_clear(&a);
    a = exec(&OP, "k15", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH, "the key still holds its request");
    idem_answer_clear(&a);

    /* without a key: nothing to keep, told as unknown all the same */
    faulty_store_fail(store, FAULTY_WRITE_ROWS, 1, STORE_UNAVAILABLE);
    a = exec(&OP, NULL, "x=1", &f);
    cr_assert_eq(a.status, 503);
    cr_assert(strstr(a.body, "pending"), "%s", a.body);
    cr_assert_eq(a.outcome, OUTCOME_NO_KEY);
    idem_answer_clear(&a);
}

/* ---- a record that kept its request: taken over, and recovered ---------- */

/* The records waiting for recovery: this case's store holds its own alone. */
static int64_t waiting(void)
{
    struct store_unfinished u;
    char err[256] = "";
    cr_assert_eq(store_unfinished(store, &u, err, sizeof err), STORE_OK, "%s", err);
    return u.waiting;
}

/* A record that kept its request (here its canonical fields, as a server
 * keeps the body) left by a run whose outcome was unknown: processing, its
 * lease ended, waiting for its client's retry or for recovery. */
static void left_unknown(const char *key, struct fake *f)
{
    f->pending = 1;
    struct idem_answer a = exec_kept(&OP, key, "x=1", "x=1", f);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(f->again[f->runs - 1], 0, "the record's first run is not told it runs again");
    idem_answer_clear(&a);
    f->pending = 0;
    cr_assert_eq(waiting(), 1);
}

/* Taken over by its retry, a record that kept its request may have been
 * asked about outside by an earlier run: a run failing now proves nothing
 * stayed put, so the record is kept - its lease ended, the operation's
 * pending answer - never released (a new record would ask with a new
 * downstream key). The first run of a new record is released as ever. */
Test(idem, a_failed_run_after_a_takeover_of_a_kept_record_keeps_it)
{
    struct fake f = {.fail = 1};
    struct idem_answer a = exec_kept(&OP, "k20", "x=1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_RELEASED, "no earlier run: nothing was asked");
    cr_assert_eq(a.status, 404);
    cr_assert_eq(f.again[0], 0);
    idem_answer_clear(&a);
    f.fail = 0;
    left_unknown("k20", &f);
    f.fail = 1;
    a = exec_kept(&OP, "k20", "x=1", "x=1", &f);
    cr_assert_eq(f.runs, 3);
    cr_assert_eq(f.again[2], 1, "told it runs again");
    cr_assert_str_eq(f.downstream[2], f.downstream[1]);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(a.status, 503);
    cr_assert_eq(a.retry_after, 1);
    cr_assert_eq(f.pending_calls, 1);
    cr_assert(strstr(a.body, f.downstream[1]), "not the operation's pending answer: %s", a.body);
    idem_answer_clear(&a);
    cr_assert_eq(waiting(), 1, "kept for recovery, its lease ended");
    a = exec_kept(&OP, "k20", "x=2", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH, "not released: another request is refused");
    idem_answer_clear(&a);
}

/* ... unless the operation says that nothing ever moved under the record's
 * downstream key (retryable): then it is released, and runs anew. */
Test(idem, a_retryable_run_after_a_takeover_of_a_kept_record_releases_it)
{
    struct fake f = {0};
    left_unknown("k21", &f);
    f.retryable = 1;
    struct idem_answer a = exec_kept(&OP, "k21", "x=1", "x=1", &f);
    cr_assert_eq(f.again[1], 1, "told it runs again");
    cr_assert_eq(a.outcome, OUTCOME_RELEASED);
    cr_assert_eq(a.status, 502);
    cr_assert_eq(f.pending_calls, 0);
    idem_answer_clear(&a);
    cr_assert_eq(waiting(), 0);
    f.retryable = 0;
    a = exec_kept(&OP, "k21", "x=2", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_NEW, "the key was free again");
    cr_assert_eq(f.again[2], 0);
    idem_answer_clear(&a);
}

/* The same for a completion the store could not write after such a
 * takeover, though the run said nothing of money outside: kept, not
 * released, and the next retry completes it. */
Test(idem, a_completion_failing_after_a_takeover_of_a_kept_record_keeps_it)
{
    struct fake f = {0};
    left_unknown("k22", &f);
    faulty_store_fail(store, FAULTY_COMPLETE, 1, STORE_UNAVAILABLE);
    struct idem_answer a = exec_kept(&OP, "k22", "x=1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_PENDING);
    cr_assert_eq(a.status, 503);
    cr_assert(strstr(a.body, f.downstream[0]), "not the operation's pending answer: %s", a.body);
    cr_assert_eq(a.nfailures, 1);
    cr_assert_str_eq(a.failures[0].op, "complete");
    cr_assert_eq(faulty_store_calls(store, FAULTY_RELEASE), 0);
    idem_answer_clear(&a);
    cr_assert_eq(waiting(), 1, "kept for recovery, its lease ended");
    a = exec_kept(&OP, "k22", "x=1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER);
    cr_assert_eq(a.status, 201);
    cr_assert_str_eq(f.downstream[2], f.downstream[0]);
    idem_answer_clear(&a);
}

/* The server's side of recovery, made up: revives a kept request as this
 * file's requests (the text kept is their canonical fields) - or answers
 * what the test tells it. */
struct reviver {
    int answer;            /* revive's return: 0 revived, -1 unreadable, 1 no more now */
    const char *canonical; /* revived as this, not as the text kept (NULL: the text) */
    struct fake *f;
    int revives, dones;
    char request[64]; /* the request it was handed */
};

static int revive(void *arg, const struct store_recovery *rec, const struct idem_op **op,
                  struct idem_request *rq)
{
    struct reviver *rv = arg;
    rv->revives++;
    snprintf(rv->request, sizeof rv->request, "%s", rec->request);
    if (rv->answer != 0)
        return rv->answer;
    *op = &OP;
    rq->method = "POST";
    rq->canonical = rv->canonical ? rv->canonical : rec->request;
    rq->canonical_len = strlen(rq->canonical);
    rq->ctx = rv->f;
    return 0;
}

static void revive_done(void *arg, struct idem_request *rq)
{
    struct reviver *rv = arg;
    (void)rq;
    rv->dones++;
}

static int recover_one(struct reviver *rv, struct idem_recovered *out)
{
    struct idem_revive hooks = {revive, revive_done, rv};
    return idem_recover_one(&layer, &hooks, out);
}

/* Recovery finishes a kept record without its client, as the client's
 * retry would: the operation runs again under the record's downstream key,
 * told it runs again, and the record is completed; the client's retry,
 * however late, replays that answer. */
Test(idem, recovery_finishes_a_kept_record_as_its_retry_would)
{
    struct fake f = {0};
    struct reviver rv = {.f = &f};
    struct idem_recovered out;
    cr_assert_eq(recover_one(&rv, &out), 0, "nothing waits yet");
    cr_assert_eq(rv.revives, 0);
    left_unknown("k23", &f);
    cr_assert_eq(recover_one(&rv, &out), 1);
    cr_assert_str_eq(out.record.tenant, "t");
    cr_assert_str_eq(out.record.key, "k23");
    cr_assert_str_eq(rv.request, "x=1", "handed the request kept");
    cr_assert_not(out.unreadable);
    cr_assert_eq(out.answer.outcome, OUTCOME_TAKEOVER);
    cr_assert_eq(out.answer.status, 201);
    cr_assert_str_eq(out.answer.body, "{\"run\":2}");
    cr_assert_eq(out.answer.effect, 7);
    cr_assert_eq(f.runs, 2);
    cr_assert_eq(f.again[1], 1, "told it runs again");
    cr_assert_str_eq(f.downstream[1], f.downstream[0]);
    cr_assert_eq(rv.dones, 1);
    idem_recovered_clear(&out);
    cr_assert_eq(waiting(), 0);
    cr_assert_eq(recover_one(&rv, &out), 0, "completed: nothing waits");
    struct idem_answer a = exec_kept(&OP, "k23", "x=1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_REPLAY);
    cr_assert_str_eq(a.body, "{\"run\":2}");
    cr_assert_eq(f.runs, 2);
    idem_answer_clear(&a);
}

/* A kept request that cannot be read back is not guessed at: nothing runs,
 * and the record is kept - processing, its lease ended - marked unreadable,
 * for an operator (or a build that reads it); its client's retry can still
 * finish it. */
Test(idem, recovery_keeps_a_record_whose_request_cannot_be_revived)
{
    struct fake f = {0};
    struct reviver rv = {.answer = -1, .f = &f};
    struct idem_recovered out;
    left_unknown("k24", &f);
    cr_assert_eq(recover_one(&rv, &out), 1);
    cr_assert(out.unreadable);
    cr_assert_str_eq(out.record.key, "k24");
    cr_assert_eq(out.answer.outcome, OUTCOME_PENDING);
    cr_assert_eq(f.runs, 1, "nothing ran");
    cr_assert_eq(rv.dones, 0, "nothing revived to free");
    idem_recovered_clear(&out);
    cr_assert_eq(waiting(), 1, "kept, its lease ended");
    struct idem_answer a = exec_kept(&OP, "k24", "x=1", "x=1", &f);
    cr_assert_eq(a.outcome, OUTCOME_TAKEOVER);
    cr_assert_eq(a.status, 201);
    idem_answer_clear(&a);
}

/* Nor is a request revived as another one than its record was claimed for
 * (its fingerprint differs): not run, the record kept, marked unreadable. */
Test(idem, recovery_keeps_a_record_whose_revived_request_has_another_fingerprint)
{
    struct fake f = {0};
    struct reviver rv = {.canonical = "x=2", .f = &f};
    struct idem_recovered out;
    left_unknown("k25", &f);
    cr_assert_eq(recover_one(&rv, &out), 1);
    cr_assert(out.unreadable);
    cr_assert_eq(out.answer.outcome, OUTCOME_PENDING);
    cr_assert_eq(f.runs, 1, "nothing ran");
    cr_assert_eq(rv.dones, 1, "what was revived is freed");
    idem_recovered_clear(&out);
    cr_assert_eq(waiting(), 1, "kept, its lease ended");
    struct idem_answer a = exec_kept(&OP, "k25", "x=2", "x=2", &f);
    cr_assert_eq(a.outcome, OUTCOME_MISMATCH, "still the first request's record");
    idem_answer_clear(&a);
}

/* A record the caller declines (it wants no more now) is left as it was -
 * nothing runs, its lease ended again - and the next recovery takes it. */
Test(idem, a_record_recovery_declines_waits_for_the_next)
{
    struct fake f = {0};
    struct reviver rv = {.answer = 1, .f = &f};
    struct idem_recovered out;
    left_unknown("k26", &f);
    cr_assert_eq(recover_one(&rv, &out), 0);
    cr_assert_eq(rv.revives, 1);
    cr_assert_eq(rv.dones, 0);
    cr_assert_eq(f.runs, 1, "nothing ran");
    cr_assert_eq(waiting(), 1, "its lease ended again");
    rv.answer = 0;
    cr_assert_eq(recover_one(&rv, &out), 1);
    cr_assert_str_eq(out.record.key, "k26");
    cr_assert_eq(out.answer.outcome, OUTCOME_TAKEOVER);
    cr_assert_eq(f.runs, 2);
    idem_recovered_clear(&out);
}
