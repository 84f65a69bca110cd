/* faults.c - the failures mockery-acquirer acts out on purpose (faults.h) */
#define _POSIX_C_SOURCE 200809L
#include "faults.h"

#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

static const char *const NAMES[FAULT_KINDS] = {"latency", "hold", "500", "close", "503"};

const char *fault_name(enum fault_kind k)
{
    return k < FAULT_KINDS ? NAMES[k] : "?";
}

int faults_add(struct faults *f, const char *spec, char *err, size_t errlen)
{
    char buf[160];
    if (f->n >= FAULTS_MAX) {
        snprintf(err, errlen, "at most %d --fault rules", FAULTS_MAX);
        return -1;
    }
    if (snprintf(buf, sizeof buf, "%s", spec) >= (int)sizeof buf) {
        snprintf(err, errlen, "--fault %s: too long", spec);
        return -1;
    }
    struct fault_rule r = {.kind = FAULT_KINDS};
    /* Split at every ':' - an empty field is an error, not skipped. */
    char *field[4] = {buf, NULL, NULL, NULL};
    int nfields = 1;
    for (char *c = buf; *c; c++)
        if (*c == ':') {
            if (nfields == 4)
                goto bad;
            *c = '\0';
            field[nfields++] = c + 1;
        }
    for (int i = 0; i < nfields; i++)
        if (!*field[i])
            goto bad;
    char *kind = field[0], *sel = field[1], *ms = field[2];
    if (nfields > 3)
        goto bad;
    for (int k = 0; kind && k < FAULT_KINDS; k++)
        if (strcmp(kind, NAMES[k]) == 0)
            r.kind = (enum fault_kind)k;
    if (r.kind == FAULT_KINDS || !sel)
        goto bad;
    if (strncmp(sel, "rate=", 5) == 0) {
        char *end = NULL;
        r.rate = strtod(sel + 5, &end);
        if (end == sel + 5 || *end || !(r.rate > 0 && r.rate <= 1))
            goto bad;
    } else if (strncmp(sel, "prefix=", 7) == 0) {
        size_t n = strlen(sel + 7);
        if (n == 0 || n >= sizeof r.prefix)
            goto bad;
        memcpy(r.prefix, sel + 7, n + 1);
    } else {
        goto bad;
    }
    r.ms = r.kind == FAULT_HOLD ? 5000 : 1000;
    if (ms) {
        char *end = NULL;
        long v = strncmp(ms, "ms=", 3) == 0 && ms[3] ? strtol(ms + 3, &end, 10) : -1;
        if (!end || *end || v < 0 || v > 600000 ||
            (r.kind != FAULT_LATENCY && r.kind != FAULT_HOLD))
            goto bad;
        r.ms = (int)v;
    }
    f->rules[f->n++] = r;
    return 0;
bad:
    snprintf(err, errlen,
             "--fault %s: expected KIND:rate=R or KIND:prefix=P (KIND latency, hold, 500, "
             "close or 503; latency and hold may add :ms=N)",
             spec);
    return -1;
}

int faults_by_prefix(const struct faults *f)
{
    for (int i = 0; i < f->n; i++)
        if (f->rules[i].prefix[0])
            return 1;
    return 0;
}

/* A uniform draw in [0, 1) from the CSPRNG (a fault path only). */
static double draw(void)
{
    uint32_t v = 0;
    if (RAND_bytes((unsigned char *)&v, sizeof v) != 1)
        return 1.0; /* no draw: no fault */
    return v / 4294967296.0;
}

void faults_pick(const struct faults *f, const char *customer_id, struct fault_pick *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < f->n; i++) {
        const struct fault_rule *r = &f->rules[i];
        int hit = r->prefix[0]
                      ? customer_id && strncmp(customer_id, r->prefix, strlen(r->prefix)) == 0
                      : draw() < r->rate;
        if (!hit)
            continue;
        out->on[r->kind] = 1;
        if (r->kind == FAULT_LATENCY)
            out->latency_ms += r->ms;
        if (r->kind == FAULT_HOLD && r->ms > out->hold_ms)
            out->hold_ms = r->ms;
    }
}

/* Releases so far: a hold ends when the count moves. Lock-free, so a
 * signal handler may add to it. */
static atomic_uint releases;

void faults_release_holds(void)
{
    atomic_fetch_add(&releases, 1);
}

void faults_hold(int ms)
{
    unsigned seen = atomic_load(&releases);
    int64_t end = clock_mono_us() + (int64_t)ms * 1000;
    for (int64_t left; (left = end - clock_mono_us()) > 0 && atomic_load(&releases) == seen;)
        clock_sleep_ms(left < 10000 ? (left + 999) / 1000 : 10);
}
