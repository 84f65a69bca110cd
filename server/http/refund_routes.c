/* refund_routes.c - POST /api/v1/payments/{id}/refunds as an operation of
 * the idempotency layer; listing and reading refunds */
#define _POSIX_C_SOURCE 200809L
#include "routes.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acquirer.h"
#include "clock.h"
#include "event.h"
#include "ids.h"
#include "service.h"
#include "log.h"
#include "money.h"
#include "paging.h"
#include "payment.h"
#include "post_route.h"
#include "refund.h"
#include "utc_text.h"

/* ---- POST /api/v1/payments/{id}/refunds, as an idempotent operation ----- */

static int refund_parse_req(const char *body, size_t len, const char *path_id, void **req,
                            struct apierr *err)
{
    struct refund_request *rr = calloc(1, sizeof *rr);
    if (!rr)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    if (refund_parse(body, len, path_id, rr, err) != 0) {
        free(rr);
        return -1;
    }
    *req = rr;
    return 0;
}

static char *refund_canonical_req(const void *req, size_t *len)
{
    return refund_canonical(req, len);
}

static void refund_log_fields(const void *vreq, struct log_line *line)
{
    const struct refund_request *req = vreq;
    log_line_str(line, "transaction_id", req->transaction_id);
}

static void refund_free_rows(struct store_rows *rows)
{
    struct store_refund *r = (struct store_refund *)rows->refund;
    if (r) {
        store_refund_clear(r);
        free(r);
    }
    rows->refund = NULL;
    event_free((struct store_event *)rows->event);
    rows->event = NULL;
}

/* What a refund needs of the service. */
struct refund_ctx {
    struct store *store;
    const char *tenant;
    int delay_ms;              /* the simulated gateway's */
    struct acquirer *acquirer; /* NULL: the simulated gateway */
};

/* The answer to an unknown outcome at the acquirer: 503 outcome_pending
 * with the refund id, which a retry will complete. */
static int refund_pending(void *vctx, const void *vreq, const struct idem_call *call,
                          struct idem_result *out, struct apierr *err)
{
    (void)vctx;
    (void)vreq;
    char id[REFUND_ID_LEN + 1];
    if (refund_id_for(call->downstream_key, id) != 0)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the record has no key downstream");
    return post_route_error_result(
        out, APIERR_OUTCOME_PENDING, "refund_id", id, 0, err,
        "the acquirer's answer was lost: the money may have moved; retry with the same "
        "idempotency key to learn the refund's outcome");
}

/* A failure before any money moved: 502, the key released for the retry. */
static int refund_gateway_error(struct idem_result *out, const char *why, struct apierr *err)
{
    return post_route_error_result(out, APIERR_GATEWAY_ERROR, NULL, NULL, 1, err,
                                   "%s; no money moved: retry with the same idempotency key", why);
}

/* 422 refund_exceeds_payment for payment transaction_id. */
static int refund_exceeds(struct idem_result *out, const char *transaction_id, struct apierr *err)
{
    struct apierr e;
    apierr_of(&e, APIERR_REFUND_EXCEEDS_PAYMENT, "amount",
              "the refunds of payment %s would add up to more than its amount", transaction_id);
    out->status = 422;
    out->body = apierr_json(&e);
    if (!out->body)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    out->body_len = strlen(out->body);
    return 0;
}

/* Asks the acquirer to refund amount of payment p's charge under the
 * record's downstream key. Returns 1 with the acquirer's refund id when
 * the money moved; 0 when *out is answered already (nothing moved: 502;
 * unknown: 503 pending), with *rc what the run returns. */
static int refund_ask(const struct refund_ctx *ctx, const struct store_payment *p, int64_t amount,
                      const struct idem_call *call, const char *id, char acquirer_id[65],
                      struct idem_result *out, int *rc, struct apierr *err)
{
    if (!p->charge_id) {
        *rc = refund_gateway_error(out, "the payment was made before charge ids were kept", err);
        return 0;
    }
    struct acquirer_refund rq = {p->charge_id, amount, id};
    struct acquirer_answer a;
    acquirer_refund(ctx->acquirer, call->downstream_key, &rq, &a);
    if (a.verdict == ACQUIRER_MOVED) {
        snprintf(acquirer_id, 65, "%s", a.id);
        out->outside = 1;
        return 1;
    }
    if (acquirer_nothing_moved(&a, call->again) && a.status == 422 &&
        strcmp(a.detail, "refund_exceeds_charge") == 0) {
        /* another refund of the same charge got there first (two racing
         * past this server's check of what is left): refused as the
         * store would refuse it, not cached */
        *rc = refund_exceeds(out, p->transaction_id, err);
        out->retryable = 1;
        return 0;
    }
    if (acquirer_nothing_moved(&a, call->again)) {
        *rc = refund_gateway_error(out, "the acquirer refused the refund or could not be reached",
                                   err);
        return 0;
    }
    /* unknown (a declined refund is no answer the contract knows); or
     * unreachable now, after an earlier ask that may have refunded */
    out->pending = 1; /* before: should the answer fail, the record is still kept */
    *rc = refund_pending(NULL, NULL, call, out, err);
    return 0;
}

static int refund_run(void *vctx, const void *vreq, const struct idem_call *call,
                      struct idem_result *out, struct apierr *err)
{
    const struct refund_ctx *ctx = vctx;
    const struct refund_request *req = vreq;
    struct store_payment p = {0};
    char serr[256] = "", acquirer_id[65] = "";
    int rc = -1;

    enum store_status st =
        store_get_payment(ctx->store, ctx->tenant, req->transaction_id, &p, serr, sizeof serr);
    if (st == STORE_NOT_FOUND)
        return apierr_of(err, APIERR_PAYMENT_NOT_FOUND, NULL, "no payment with that id");
    if (st != STORE_OK) {
        apierr_store(err, st == STORE_UNAVAILABLE, 1);
        return -1;
    }
    if (strcmp(p.status, "completed") != 0) {
        apierr_of(err, APIERR_PAYMENT_NOT_REFUNDABLE, NULL,
                  "payment %s was %s: there is nothing to refund", p.transaction_id, p.status);
        goto out;
    }
    int digits = money_currency_digits(p.currency);
    int64_t left = p.amount_minor - p.amount_refunded_minor, amount = left;
    if (req->has_amount &&
        refund_amount_minor(req, digits < 0 ? 2 : digits, p.currency, &amount, err) != 0)
        goto out;
    if (amount <= 0 || amount > left) {
        char want[32], rest[32];
        money_format(amount, digits < 0 ? 2 : digits, want, sizeof want);
        money_format(left, digits < 0 ? 2 : digits, rest, sizeof rest);
        if (left <= 0)
            apierr_of(err, APIERR_REFUND_EXCEEDS_PAYMENT, "amount",
                      "payment %s is already fully refunded", p.transaction_id);
        else
            apierr_of(err, APIERR_REFUND_EXCEEDS_PAYMENT, "amount",
                      "a refund of %s %s is more than the %s left of payment %s", want, p.currency,
                      rest, p.transaction_id);
        goto out;
    }
    char id[REFUND_ID_LEN + 1];
    if (refund_id_for(call->downstream_key, id) != 0) {
        apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the record has no key downstream");
        goto out;
    }
    if (ctx->acquirer) {
        if (!refund_ask(ctx, &p, amount, call, id, acquirer_id, out, &rc, err))
            goto out;
    } else {
        payment_simulated_wait(p.customer_id, ctx->delay_ms);
        if (refund_gateway_fails(&p)) {
            rc = refund_gateway_error(out, "the refund gateway failed before any money moved", err);
            goto out;
        }
        if (ids_new("rf_", acquirer_id) != 0) {
            apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
            goto out;
        }
    }

    struct store_refund row = {
        .refund_id = id,
        .transaction_id = p.transaction_id,
        .idempotency_key = (char *)call->key,
        .amount_minor = amount,
        .reason = (char *)req->reason,
        .status = "succeeded",
        .created_at_us = clock_wall_us(),
        .acquirer_refund_id = acquirer_id,
    };
    memcpy(row.currency, p.currency, sizeof row.currency);
    struct store_refund *copy = calloc(1, sizeof *copy);
    if (copy && store_refund_copy(copy, &row) != 0) {
        free(copy);
        copy = NULL;
    }
    if (!copy)
        goto oom;
    out->rows.refund = copy;
    out->effect = EFFECT_REFUND;
    out->free_rows = refund_free_rows;
    out->status = 201;
    out->body = refund_json(&row); /* the refund as GET shows it: its event's object too */
    size_t n = sizeof ROUTES_REFUNDS + 1 + REFUND_ID_LEN;
    out->location = malloc(n);
    if (!out->body || !out->location)
        goto oom;
    out->rows.event = event_new(EVENT_REFUND_SUCCEEDED, call->downstream_key, row.created_at_us,
                                out->body, strlen(out->body));
    if (!out->rows.event)
        goto oom;
    snprintf(out->location, n, "%s/%s", ROUTES_REFUNDS, id);
    out->body_len = strlen(out->body);
    rc = 0;
    goto out;
oom:
    if (out->outside) {
        /* The money moved: never a failure that releases the key. */
        idem_result_clear(out);
        out->pending = 1;
        rc = refund_pending(NULL, NULL, call, out, err);
        goto out;
    }
    idem_result_clear(out);
    apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
out:
    store_payment_clear(&p);
    return rc;
}

/* The refund did not fit when written: another refund of the same payment
 * got there first. */
static int refund_rejected(void *ctx, const void *vreq, struct idem_result *out, struct apierr *err)
{
    (void)ctx;
    const struct refund_request *req = vreq;
    return refund_exceeds(out, req->transaction_id, err);
}

static const struct idem_op REFUND_OP = {
    .route = ROUTES_PAYMENTS "/{id}/refunds",
    .run = refund_run,
    .rejected = refund_rejected,
    .pending = refund_pending,
};

static void *refund_context(const struct service *svc, const char *tenant)
{
    struct refund_ctx *ctx = malloc(sizeof *ctx);
    if (ctx)
        *ctx = (struct refund_ctx){svc->store, tenant, svc->processing_delay_ms, svc->acquirer};
    return ctx;
}

const struct post_route ROUTES_REFUND_POST = {
    .op = &REFUND_OP,
    .max_body = REFUND_MAX_BODY,
    .parse = refund_parse_req,
    .canonical = refund_canonical_req,
    .log_fields = refund_log_fields,
    .free_req = free,
    .context = refund_context,
};

static void payment_not_found(struct request *r)
{
    http_fail(r, APIERR_PAYMENT_NOT_FOUND, NULL, "no payment with that id");
}

void routes_create_refund(struct request *r, const char *payment_id)
{
    if (!payment_id_valid(payment_id)) {
        payment_not_found(r);
        return;
    }
    struct refund_ctx ctx = {r->svc->store, r->tenant, r->svc->processing_delay_ms,
                             r->svc->acquirer};
    post_route_serve(r, &ROUTES_REFUND_POST, payment_id, &ctx);
}

/* ---- GET /api/v1/payments/{id}/refunds ---------------------------------- */

static cJSON *refund_item(const void *r)
{
    return refund_to_cjson(r);
}

void routes_list_refunds(struct request *r, const char *payment_id)
{
    struct paging pg;
    struct store_payment p = {0};
    struct store_refund_list list = {0};
    char err[256] = "";

    if (paging_read(r, refund_id_valid, "refund", &pg) != 0)
        return;
    enum store_status st = STORE_NOT_FOUND;
    if (payment_id_valid(payment_id))
        st = store_get_payment(r->svc->store, r->tenant, payment_id, &p, err, sizeof err);
    store_payment_clear(&p);
    if (st == STORE_NOT_FOUND) {
        payment_not_found(r);
        return;
    }
    if (st != STORE_OK) {
        http_fail_store(r, "get_payment", st, err);
        return;
    }
    if (paging_take_slot(r, "list_refunds") != 0)
        return;
    struct store_refund_query q = {payment_id, pg.has_after ? pg.after : NULL, pg.limit};
    st = store_list_refunds(r->svc->store, r->tenant, &q, &list, err, sizeof err);
    if (st == STORE_NOT_FOUND) {
        paging_unknown_cursor(r, "refund of this payment");
    } else if (st != STORE_OK) {
        http_fail_store(r, "list_refunds", st, err);
    } else {
        paging_send(r, "refunds", list.items, list.count, sizeof *list.items, refund_item,
                    list.has_more, list.count ? list.items[list.count - 1].refund_id : NULL);
    }
    paging_done(r);
    store_refund_list_clear(&list);
}

/* ---- GET /api/v1/refunds/{id} ------------------------------------------- */

void routes_get_refund(struct request *r, const char *id)
{
    struct store_refund rf = {0};
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (refund_id_valid(id))
        st = store_get_refund(r->svc->store, r->tenant, id, &rf, err, sizeof err);
    http_send_found(r, "get_refund", st, err, APIERR_REFUND_NOT_FOUND,
                    st == STORE_OK ? refund_to_cjson(&rf) : NULL);
    store_refund_clear(&rf);
}
