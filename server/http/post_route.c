/* post_route.c - an idempotent POST route: read, parse, run through the
 * idempotency layer, answer, log (post_route.h) */
#define _POSIX_C_SOURCE 200809L
#include "post_route.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "service.h"
#include "log.h"
#include "recovery.h"
#include "utc_text.h"

/* One line per prevented duplicate: which key, whose, first seen when. */
static void log_duplicate(struct request *r, const struct post_route *route, const void *req,
                          int64_t first_seen_us)
{
    char when[28];
    struct log_line line;
    if (!log_line_begin(r->svc->log, LOG_INFO, "duplicate prevented", &line))
        return;
    utc_iso_micro(first_seen_us, when);
    log_line_str(&line, "event", "duplicate_prevented");
    log_line_str(&line, "outcome", outcome_name(r->outcome));
    log_line_str(&line, "tenant", r->tenant);
    log_line_str(&line, "route", route->op->route);
    log_line_str(&line, "key", r->key);
    if (r->customer[0])
        log_line_str(&line, "customer", r->customer);
    if (route->log_fields)
        route->log_fields(req, &line);
    log_line_str(&line, "original_time", when);
    log_line_end(r->svc->log, &line);
}

/* Sends what the layer answered, with the headers it calls for. */
static void send_answer(struct request *r, const struct idem_answer *a)
{
    const char *headers[9];
    char secs[16];
    int n = 0;
    if (a->replayed) {
        /* Idempotent-Replayed is Stripe's name, which clients written for
         * Stripe look for */
        headers[n++] = "X-Idempotent-Replay";
        headers[n++] = "true";
        headers[n++] = "Idempotent-Replayed";
        headers[n++] = "true";
    }
    if (a->location) {
        headers[n++] = "Location";
        headers[n++] = a->location;
    }
    if (a->retry_after > 0) {
        snprintf(secs, sizeof secs, "%d", a->retry_after);
        headers[n++] = "Retry-After";
        headers[n++] = secs;
    }
    headers[n] = NULL;
    if (a->body)
        http_send(r, a->status, a->body, a->body_len, n ? headers : NULL);
    else
        http_send_internal(r);
}

void post_route_serve(struct request *r, const struct post_route *route, const char *path_id,
                      void *ctx)
{
    const struct service *svc = r->svc;
    char *body = NULL, *canon = NULL, *kept = NULL;
    void *req = NULL;
    size_t len = 0, clen = 0;
    struct apierr e;
    struct idem_answer ans = {0};

    enum idemkey_status ks;
    if (http_read_idempotent_post(r, route->max_body, svc->require_key, &ks, &body, &len) != 0)
        goto out;
    if (route->parse(body, len, path_id, &req, &e) != 0) {
        http_send_error(r, &e, NULL);
        goto out;
    }
    const char *customer = route->customer ? route->customer(req) : NULL;
    if (customer)
        snprintf(r->customer, sizeof r->customer, "%s", customer);
    canon = route->canonical(req, &clen);
    if (!canon) {
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "out of memory");
        goto out;
    }
    /* An operation that asks outside keeps its request for recovery. */
    if (svc->acquirer && ks != IDEMKEY_MISSING &&
        !(kept = recovery_keep(route, path_id, body, len))) {
        http_fail(r, APIERR_INTERNAL_ERROR, NULL, "out of memory");
        goto out;
    }
    struct idem layer = {svc->store, svc->replays, svc->lease_ms, svc->ttl_ms};
    struct idem_request rq = {.tenant = r->tenant,
                              .key = ks == IDEMKEY_MISSING ? NULL : r->key,
                              .method = http_method(r),
                              .canonical = canon,
                              .canonical_len = clen,
                              .req = req,
                              .ctx = ctx,
                              .kept = kept};
    idem_execute(&layer, route->op, &rq, &ans);
    for (int i = 0; i < ans.nfailures; i++)
        http_log_store_error(r, ans.failures[i].op, ans.failures[i].status, ans.failures[i].err);
    r->outcome = ans.outcome;
    r->effect = (enum effect)ans.effect;
    r->replay_cached = ans.from_cache;
    r->error_code = ans.error_code;
    if (ans.duplicate)
        log_duplicate(r, route, req, ans.first_seen_us);
    send_answer(r, &ans);
out:
    idem_answer_clear(&ans);
    if (req)
        route->free_req(req);
    free(canon);
    free(kept);
    free(body);
}

int post_route_error_result(struct idem_result *out, enum apierr_id row, const char *name,
                            const char *id, int retryable, struct apierr *err, const char *fmt, ...)
{
    struct apierr e;
    char message[256];
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(message, sizeof message, fmt, ap);
        va_end(ap);
    }
    apierr_of(&e, row, NULL, fmt ? "%s" : NULL, message);
    out->status = e.status;
    out->retryable = retryable;
    out->body = apierr_json_with(&e, name, id);
    if (!out->body)
        return apierr_of(err, APIERR_INTERNAL_ERROR, NULL, "out of memory");
    out->body_len = strlen(out->body);
    return 0;
}
