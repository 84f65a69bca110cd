/* payment_routes.c - POST /api/v1/payments as an operation of the
 * idempotency layer; listing and reading payments */
#define _POSIX_C_SOURCE 200809L
#include "routes.h"

#include <civetweb.h>
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
#include "utc_text.h"

/* ---- POST /api/v1/payments, as an idempotent operation ------------------ */

static int pay_parse(const char *body, size_t len, const char *path_id, void **req,
                     struct apierr *err)
{
    (void)path_id;
    struct payment_request *pr = calloc(1, sizeof *pr);
    if (!pr)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    if (payment_parse(body, len, pr, err) != 0) {
        free(pr);
        return -1;
    }
    *req = pr;
    return 0;
}

static char *pay_canonical(const void *req, size_t *len)
{
    return payment_canonical(req, len);
}

static const char *pay_customer(const void *req)
{
    return ((const struct payment_request *)req)->customer_id;
}

static void pay_log_fields(const void *vreq, struct log_line *line)
{
    const struct payment_request *req = vreq;
    char amount[32];
    if (money_format(req->amount_minor, req->digits, amount, sizeof amount) > 0)
        log_line_raw(line, "amount", amount);
    log_line_str(line, "currency", req->currency);
}

static void pay_free(void *req)
{
    payment_request_clear(req);
    free(req);
}

static void pay_free_rows(struct store_rows *rows)
{
    struct store_payment *p = (struct store_payment *)rows->payment;
    if (p) {
        store_payment_clear(p);
        free(p);
    }
    rows->payment = NULL;
    event_free((struct store_event *)rows->event);
    rows->event = NULL;
}

/* What a payment needs of the service. */
struct pay_ctx {
    int delay_ms;              /* the simulated processor's */
    struct acquirer *acquirer; /* NULL: the simulator */
    const char *tenant;        /* the merchant, for the acquirer */
};

/* The answer to an unknown outcome at the acquirer: 503 outcome_pending
 * with the transaction id, which a retry (or recovery) will complete. */
static int pay_pending(void *vctx, const void *vreq, const struct idem_call *call,
                       struct idem_result *out, struct apierr *err)
{
    (void)vctx;
    (void)vreq;
    char id[PAYMENT_ID_LEN + 1];
    if (payment_id_for(call->downstream_key, id) != 0)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the record has no key downstream");
    return post_route_error_result(out, APIERR_OUTCOME_PENDING, "transaction_id", id, 0, err, NULL);
}

/* A failure before any charge: 502, the key released for the retry. */
static int pay_gateway_error(struct idem_result *out, const char *why, struct apierr *err)
{
    return post_route_error_result(out, APIERR_GATEWAY_ERROR, NULL, NULL, 1, err,
                                   "%s; nothing was charged: retry with the same idempotency key",
                                   why);
}

/* Asks the acquirer to charge, under the record's downstream key. Returns
 * 1 with *po and charge_id when the money moved or was declined; 0 when
 * *out is answered already (nothing moved: 502; unknown: 503 pending). */
static int pay_ask(const struct pay_ctx *ctx, const struct payment_request *req,
                   const struct idem_call *call, const char *id, enum payment_outcome *po,
                   char charge_id[65], struct idem_result *out, int *rc, struct apierr *err)
{
    struct acquirer_charge ch = {req->amount_minor, req->currency, req->customer_id, ctx->tenant,
                                 id};
    struct acquirer_answer a;
    acquirer_charge(ctx->acquirer, call->downstream_key, &ch, &a);
    if (a.verdict == ACQUIRER_MOVED || a.verdict == ACQUIRER_DECLINED) {
        *po = a.verdict == ACQUIRER_MOVED ? PAYMENT_APPROVED : PAYMENT_DECLINED;
        snprintf(charge_id, 65, "%s", a.id);
        out->outside = 1;
        return 1;
    }
    if (acquirer_nothing_moved(&a, call->again)) {
        *rc =
            pay_gateway_error(out, "the acquirer refused the payment or could not be reached", err);
        return 0;
    }
    /* unknown; or unreachable now, after an earlier ask that may have charged */
    out->pending = 1; /* before: should the answer fail, the layer still keeps the record */
    *rc = pay_pending(NULL, req, call, out, err);
    return 0;
}

static int pay_run(void *vctx, const void *vreq, const struct idem_call *call,
                   struct idem_result *out, struct apierr *err)
{
    const struct pay_ctx *ctx = vctx;
    const struct payment_request *req = vreq;
    char id[PAYMENT_ID_LEN + 1], charge_id[65];
    enum payment_outcome po;

    if (payment_id_for(call->downstream_key, id) != 0)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the record has no key downstream");
    if (ctx->acquirer) {
        int rc = 0;
        if (!pay_ask(ctx, req, call, id, &po, charge_id, out, &rc, err))
            return rc;
    } else {
        po = payment_process(req, ctx->delay_ms);
        if (po == PAYMENT_GATEWAY_ERROR)
            return pay_gateway_error(out, "the payment gateway failed before charging", err);
        if (ids_new("ch_", charge_id) != 0)
            return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "the random source failed");
    }
    struct store_payment p = {
        .transaction_id = id,
        .idempotency_key = (char *)call->key,
        .customer_id = (char *)req->customer_id,
        .amount_minor = req->amount_minor,
        .description = req->description,
        .status = po == PAYMENT_APPROVED ? "completed" : "declined",
        .processed_at_us = clock_wall_us(),
        .charge_id = charge_id,
    };
    memcpy(p.currency, req->currency, sizeof p.currency);

    struct store_payment *row = calloc(1, sizeof *row);
    if (row && store_payment_copy(row, &p) != 0) {
        free(row);
        row = NULL;
    }
    if (!row)
        goto oom;
    out->rows.payment = row;
    out->free_rows = pay_free_rows;
    out->effect = po == PAYMENT_APPROVED ? EFFECT_PAYMENT_COMPLETED : EFFECT_PAYMENT_DECLINED;
    /* The payment as GET shows it: a 201's body, and its event's object. */
    char *object = payment_json(&p);
    if (!object)
        goto oom;
    out->rows.event =
        event_new(po == PAYMENT_APPROVED ? EVENT_PAYMENT_SUCCEEDED : EVENT_PAYMENT_DECLINED,
                  call->downstream_key, p.processed_at_us, object, strlen(object));
    if (po == PAYMENT_APPROVED) {
        out->status = 201;
        out->body = object;
        size_t n = sizeof ROUTES_PAYMENTS + 1 + PAYMENT_ID_LEN;
        out->location = malloc(n);
        if (!out->location)
            goto oom;
        snprintf(out->location, n, "%s/%s", ROUTES_PAYMENTS, id);
    } else {
        free(object);
        out->status = 402;
        out->body = payment_declined_json(&p);
    }
    if (!out->body || !out->rows.event)
        goto oom;
    out->body_len = strlen(out->body);
    return 0;
oom:
    if (out->outside) {
        /* The money moved: never a failure that releases the key. */
        idem_result_clear(out);
        out->pending = 1;
        return pay_pending(NULL, req, call, out, err);
    }
    idem_result_clear(out);
    return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
}

static const struct idem_op PAYMENT_OP = {
    .route = ROUTES_PAYMENTS,
    .run = pay_run,
    .pending = pay_pending,
};

static void *pay_context(const struct service *svc, const char *tenant)
{
    struct pay_ctx *ctx = malloc(sizeof *ctx);
    if (ctx)
        *ctx = (struct pay_ctx){svc->processing_delay_ms, svc->acquirer, tenant};
    return ctx;
}

const struct post_route ROUTES_PAYMENT_POST = {
    .op = &PAYMENT_OP,
    .max_body = PAYMENT_MAX_BODY,
    .parse = pay_parse,
    .canonical = pay_canonical,
    .customer = pay_customer,
    .log_fields = pay_log_fields,
    .free_req = pay_free,
    .context = pay_context,
};

void routes_create_payment(struct request *r)
{
    struct pay_ctx ctx = {r->svc->processing_delay_ms, r->svc->acquirer, r->tenant};
    post_route_serve(r, &ROUTES_PAYMENT_POST, NULL, &ctx);
}

/* ---- GET /api/v1/payments ----------------------------------------------- */

static cJSON *payment_item(const void *p)
{
    return payment_to_cjson(p);
}

void routes_list_payments(struct request *r)
{
    const char *qs = r->ri->query_string ? r->ri->query_string : "";
    char customer[PAYMENT_CUSTOMER_MAX + 2];
    struct paging pg;
    struct store_list list = {0};
    char err[256] = "";

    if (paging_read(r, payment_id_valid, "transaction", &pg) != 0)
        return;
    struct store_list_query q = {.limit = pg.limit,
                                 .starting_after = pg.has_after ? pg.after : NULL};
    int n = mg_get_var(qs, strlen(qs), "customer_id", customer, sizeof customer);
    if (n != -1) {
        if (n < 0 || !payment_customer_valid(customer)) {
            http_fail(r, APIERR_INVALID_PARAMETER, "customer_id",
                      "customer_id must be 1-64 characters of A-Z, a-z, 0-9, _ and -");
            return;
        }
        q.customer_id = customer;
    }
    /* The slot is held until the page is sent: rendering it costs as much
     * CPU as the query. */
    if (paging_take_slot(r, "list_payments") != 0)
        return;
    enum store_status st =
        store_list_payments(r->svc->store, r->tenant, &q, &list, err, sizeof err);
    if (st == STORE_NOT_FOUND) {
        paging_unknown_cursor(r, "payment");
    } else if (st != STORE_OK) {
        http_fail_store(r, "list_payments", st, err);
    } else {
        paging_send(r, "payments", list.items, list.count, sizeof *list.items, payment_item,
                    list.has_more, list.count ? list.items[list.count - 1].transaction_id : NULL);
    }
    paging_done(r);
    store_list_clear(&list);
}

/* ---- GET /api/v1/payments/{id} ------------------------------------------ */

void routes_get_payment(struct request *r, const char *id)
{
    struct store_payment p = {0};
    char err[256] = "";
    enum store_status st = STORE_NOT_FOUND;
    if (payment_id_valid(id))
        st = store_get_payment(r->svc->store, r->tenant, id, &p, err, sizeof err);
    http_send_found(r, "get_payment", st, err, APIERR_PAYMENT_NOT_FOUND,
                    st == STORE_OK ? payment_to_cjson(&p) : NULL);
    store_payment_clear(&p);
}
