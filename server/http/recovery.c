/* recovery.c - the kept request, revived, and the recovery pass
 * (recovery.h) */
#define _POSIX_C_SOURCE 200809L
#include "recovery.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "idem.h"
#include "log.h"
#include "post_route.h"
#include "routes.h"
#include "service.h"

/* The routes whose requests are kept, by their route template. */
static const struct post_route *const ROUTES[] = {&ROUTES_PAYMENT_POST, &ROUTES_REFUND_POST};

char *recovery_keep(const struct post_route *route, const char *path_id, const char *body,
                    size_t len)
{
    char *text = malloc(len + 1);
    cJSON *o = cJSON_CreateObject();
    char *out = NULL;
    if (!text || !o)
        goto out;
    memcpy(text, body, len);
    text[len] = '\0';
    if (!cJSON_AddStringToObject(o, "route", route->op->route) ||
        !(path_id ? cJSON_AddStringToObject(o, "path_id", path_id)
                  : cJSON_AddNullToObject(o, "path_id")) ||
        !cJSON_AddStringToObject(o, "body", text))
        goto out;
    out = cJSON_PrintUnformatted(o);
out:
    cJSON_Delete(o);
    free(text);
    return out;
}

/* What revive made of a kept request, freed by done. */
struct revived {
    const struct post_route *route;
    void *req;
    char *canonical;
    void *ctx;
};

/* A pass: the records it took, by (tenant, key). A record asked again
 * and kept goes to the back of the line: met again, every waiting record
 * has had its turn this pass. */
struct reviver {
    const struct service *svc;
    struct revived r;
    char *(*seen)[2];
    int nseen;
};

static int seen_before(const struct reviver *rv, const struct store_recovery *rec)
{
    for (int i = 0; i < rv->nseen; i++)
        if (strcmp(rv->seen[i][0], rec->tenant) == 0 && strcmp(rv->seen[i][1], rec->key) == 0)
            return 1;
    return 0;
}

static int revive(void *arg, const struct store_recovery *rec, const struct idem_op **op,
                  struct idem_request *rq)
{
    struct reviver *rv = arg;
    struct revived *r = &rv->r;
    struct apierr e;
    memset(r, 0, sizeof *r);
    if (seen_before(rv, rec))
        return 1;
    cJSON *o = cJSON_Parse(rec->request);
    const cJSON *route = cJSON_GetObjectItemCaseSensitive(o, "route");
    const cJSON *path_id = cJSON_GetObjectItemCaseSensitive(o, "path_id");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(o, "body");
    int rc = -1;
    if (!cJSON_IsString(route) || !cJSON_IsString(body) ||
        !(cJSON_IsString(path_id) || cJSON_IsNull(path_id)))
        goto out;
    for (size_t i = 0; i < sizeof ROUTES / sizeof ROUTES[0]; i++)
        if (strcmp(ROUTES[i]->op->route, route->valuestring) == 0)
            r->route = ROUTES[i];
    if (!r->route)
        goto out;
    const char *id = cJSON_IsString(path_id) ? path_id->valuestring : NULL;
    if (r->route->parse(body->valuestring, strlen(body->valuestring), id, &r->req, &e) != 0) {
        r->req = NULL;
        goto out;
    }
    size_t clen = 0;
    r->canonical = r->route->canonical(r->req, &clen);
    r->ctx = r->route->context(rv->svc, rec->tenant);
    if (!r->canonical || !r->ctx)
        goto out;
    *op = r->route->op;
    rq->method = "POST";
    rq->canonical = r->canonical;
    rq->canonical_len = clen;
    rq->req = r->req;
    rq->ctx = r->ctx;
    rc = 0;
out:
    cJSON_Delete(o);
    if (rc != 0 && r->req)
        r->route->free_req(r->req);
    if (rc != 0) {
        free(r->canonical);
        free(r->ctx);
        memset(r, 0, sizeof *r);
    }
    return rc;
}

static void done(void *arg, struct idem_request *rq)
{
    struct reviver *rv = arg;
    (void)rq;
    if (rv->r.req)
        rv->r.route->free_req(rv->r.req);
    free(rv->r.canonical);
    free(rv->r.ctx);
    memset(&rv->r, 0, sizeof rv->r);
}

static const char *result_of(const struct idem_recovered *rec)
{
    if (rec->unreadable)
        return "unreadable";
    switch (rec->answer.outcome) {
    case OUTCOME_TAKEOVER:
        return "completed";
    case OUTCOME_PENDING:
        return "pending";
    case OUTCOME_RELEASED:
        return "released";
    default: /* lease_lost, release_failed */
        return "lost";
    }
}

/* One line per record recovered: whose, how old, what came of it. */
static void log_recovered(const struct service *svc, const struct idem_recovered *rec,
                          const char *result)
{
    struct log_line line;
    if (!log_line_begin(svc->log, rec->unreadable ? LOG_ERROR : LOG_INFO, "record recovered",
                        &line))
        return;
    log_line_str(&line, "event", "recovered");
    log_line_str(&line, "result", result);
    log_line_str(&line, "tenant", rec->record.tenant);
    log_line_str(&line, "key", rec->record.key);
    log_line_str(&line, "downstream_key", rec->record.downstream_key);
    log_line_int(&line, "status", rec->answer.status);
    log_line_ms(&line, "age_ms", (double)(clock_wall_us() - rec->record.created_at_us) / 1000.0);
    for (int i = 0; i < rec->answer.nfailures; i++) {
        log_line_str(&line, "store_op", rec->answer.failures[i].op);
        log_line_str(&line, "error", rec->answer.failures[i].err);
    }
    log_line_end(svc->log, &line);
}

void recovery_run(const struct service *svc, int max, struct recovery_pass *out)
{
    struct idem layer = {svc->store, svc->replays, svc->lease_ms, svc->ttl_ms};
    struct reviver rv = {.svc = svc, .seen = calloc((size_t)max, sizeof *rv.seen)};
    struct idem_revive hooks = {revive, done, &rv};
    memset(out, 0, sizeof *out);
    for (int i = 0; i < max && rv.seen; i++) {
        struct idem_recovered rec;
        int got = idem_recover_one(&layer, &hooks, &rec);
        if (got <= 0) {
            if (got < 0) {
                out->failed++;
                struct log_line line;
                if (log_line_begin(svc->log, LOG_WARN, "recovery pass failed", &line)) {
                    log_line_str(&line, "error", rec.answer.failures[0].err);
                    log_line_end(svc->log, &line);
                }
            }
            idem_recovered_clear(&rec);
            break;
        }
        const char *result = result_of(&rec);
        if (strcmp(result, "completed") == 0)
            out->completed++;
        else if (strcmp(result, "pending") == 0)
            out->pending++;
        else if (strcmp(result, "released") == 0)
            out->released++;
        else if (strcmp(result, "unreadable") == 0)
            out->unreadable++;
        else
            out->lost++;
        log_recovered(svc, &rec, result);
        rv.seen[rv.nseen][0] = rec.record.tenant; /* kept in seen */
        rv.seen[rv.nseen][1] = rec.record.key;
        rv.nseen++;
        rec.record.tenant = rec.record.key = NULL;
        idem_recovered_clear(&rec);
    }
    for (int i = 0; i < rv.nseen; i++) {
        free(rv.seen[i][0]);
        free(rv.seen[i][1]);
    }
    free(rv.seen);
}
