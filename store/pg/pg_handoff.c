/* pg_handoff.c - deliveries handed from a payment's completion to this
 * server's dispatchers in memory (pg_handoff.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_handoff.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "pg_pool.h"

struct pg_handoff_item {
    struct pg_handoff_item *next;
    int64_t began_us;    /* when the completion that handed it off began */
    int64_t deadline_us; /* begun by then, or dropped */
    struct store_delivery d;
};

void pg_handoff_init(struct pg_handoff *h, void (*wake)(void *), void *wake_arg)
{
    memset(h, 0, sizeof *h);
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->more, NULL);
    h->wake = wake;
    h->wake_arg = wake_arg;
}

static void item_free(struct pg_handoff_item *it)
{
    store_delivery_clear(&it->d);
    free(it);
}

void pg_handoff_free(struct pg_handoff *h)
{
    for (struct pg_handoff_item *it = h->head, *next; it; it = next) {
        next = it->next;
        item_free(it);
    }
    h->head = h->tail = NULL;
    h->count = 0;
    pthread_cond_destroy(&h->more);
    pthread_mutex_destroy(&h->mu);
}

int64_t pg_handoff_lease(struct pg_handoff *h, int64_t now_us)
{
    pthread_mutex_lock(&h->mu);
    int live = h->lease_ms > 0 && now_us - h->claimed_us < HANDOFF_LIVE_MS * 1000LL &&
               h->count < HANDOFF_MAX;
    int64_t lease = live ? h->lease_ms + HANDOFF_WAIT_MS : 0;
    pthread_mutex_unlock(&h->mu);
    return lease;
}

/* A delivery row of res, with its event's body: NULL when out of memory
 * or when the body is not among the n. */
static struct pg_handoff_item *item_of(const PGresult *res, int row, const char *const *event_ids,
                                       const char *const *bodies, int n, int64_t began_us)
{
    const char *event_id = PQgetvalue(res, row, 2), *body = NULL;
    for (int i = 0; i < n && !body; i++)
        if (event_ids[i] && strcmp(event_ids[i], event_id) == 0)
            body = bodies[i];
    struct pg_handoff_item *it = body ? calloc(1, sizeof *it) : NULL;
    if (!it)
        return NULL;
    it->began_us = began_us;
    it->deadline_us = began_us + HANDOFF_WAIT_MS * 1000LL;
    it->d = (struct store_delivery){
        .tenant = pg_dup_value(res, row, 0),
        .event_id = pg_dup_value(res, row, 2),
        .endpoint_id = pg_dup_value(res, row, 3),
        .attempt = 1,
        .url = pg_dup_value(res, row, 4),
        .secret = pg_dup_value(res, row, 5),
        .body = strdup(body),
        .body_len = strlen(body),
    };
    if (!it->d.tenant || !it->d.event_id || !it->d.endpoint_id || !it->d.url || !it->d.secret ||
        !it->d.body) {
        item_free(it);
        return NULL;
    }
    return it;
}

void pg_handoff_push(struct pg_handoff *h, const PGresult *res, const char *const *event_ids,
                     const char *const *bodies, int n, int64_t began_us)
{
    struct pg_handoff_item *head = NULL, *tail = NULL;
    size_t count = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        if (!PQgetisnull(res, r, 1))
            continue; /* a completed record's row */
        struct pg_handoff_item *it = item_of(res, r, event_ids, bodies, n, began_us);
        if (!it)
            continue; /* left to its lease */
        if (tail)
            tail->next = it;
        else
            head = it;
        tail = it;
        count++;
    }
    if (!head)
        return;
    pthread_mutex_lock(&h->mu);
    if (h->tail)
        h->tail->next = head;
    else
        h->head = head;
    h->tail = tail;
    h->count += count;
    h->pushed_us = began_us;
    pthread_cond_broadcast(&h->more);
    pthread_mutex_unlock(&h->mu);
    if (h->wake)
        h->wake(h->wake_arg);
}

/* Which items a walk moves out: those pick accepts. */
typedef int (*item_pick)(const struct pg_handoff_item *it, const void *arg);

/* With h->mu held: up to max items that pick accepts, oldest first, moved
 * into out (owned by the caller now); the others stay, in order. */
static size_t move_out(struct pg_handoff *h, item_pick pick, const void *arg,
                       struct store_delivery *out, size_t max)
{
    size_t n = 0;
    struct pg_handoff_item **link = &h->head, *prev = NULL;
    while (*link && n < max) {
        struct pg_handoff_item *it = *link;
        if (!pick(it, arg)) {
            prev = it;
            link = &it->next;
            continue;
        }
        *link = it->next;
        if (h->tail == it)
            h->tail = prev;
        h->count--;
        out[n++] = it->d;
        free(it);
    }
    return n;
}

static int past_deadline(const struct pg_handoff_item *it, const void *now_us)
{
    return *(const int64_t *)now_us > it->deadline_us;
}

int pg_handoff_begin_claim(struct pg_handoff *h, int64_t now_us, int can_read,
                           struct store_delivery *out, size_t max, size_t *nlate, size_t *waiting)
{
    int64_t every_us = HANDOFF_READ_EVERY_MS * 1000LL;
    pthread_mutex_lock(&h->mu);
    size_t live = 0;
    for (const struct pg_handoff_item *it = h->head; it; it = it->next)
        live += now_us <= it->deadline_us;
    int read = can_read && (h->read_full || now_us - h->read_us >= every_us ||
                            (live == 0 && now_us - h->pushed_us >= every_us));
    size_t n = 0;
    if (live < h->count && !(read && h->put_back_last))
        n = move_out(h, past_deadline, &now_us, out, max);
    h->expired += n;
    h->put_back_last = n > 0;
    pthread_mutex_unlock(&h->mu);
    *nlate = n;
    *waiting = live;
    return n ? 0 : read;
}

void pg_handoff_read_done(struct pg_handoff *h, int64_t now_us, int full)
{
    pthread_mutex_lock(&h->mu);
    h->read_us = now_us;
    h->read_full = full;
    pthread_mutex_unlock(&h->mu);
}

struct take_arg {
    int64_t now_us;
    const struct store_delivery_claim *c;
};

/* Not past its deadline, and not to one of the claim's busy endpoints. */
static int takeable(const struct pg_handoff_item *it, const void *arg)
{
    const struct take_arg *t = arg;
    return t->now_us <= it->deadline_us &&
           !store_endpoint_in(t->c->busy, t->c->nbusy, it->d.tenant, it->d.endpoint_id);
}

size_t pg_handoff_take(struct pg_handoff *h, const struct store_delivery_claim *c, size_t max,
                       struct store_delivery *out)
{
    int64_t now_us = clock_mono_us();
    pthread_mutex_lock(&h->mu);
    h->lease_ms = c->lease_ms;
    h->claimed_us = now_us;
    /* under load, linger for a fuller claim (busy endpoints' items count
     * too: rarely more than a few wait here, and the wait is short) */
    if (h->head && h->count < max && c->nbusy == 0 &&
        now_us - h->took_us < HANDOFF_LINGER_MS * 1000LL) {
        int64_t left_us = h->head->began_us + HANDOFF_LINGER_MS * 1000LL - now_us;
        if (left_us > 0) {
            struct timespec until;
            clock_deadline_in(&until, (left_us + 999) / 1000);
            while (h->count < max && !clock_passed(&until) &&
                   pthread_cond_timedwait(&h->more, &h->mu, &until) == 0)
                ;
            now_us = clock_mono_us();
        }
    }
    /* Taken now, and begun at once by the caller: none past its deadline
     * (those wait for the next claim to put them back). */
    struct take_arg arg = {.now_us = now_us, .c = c};
    size_t n = move_out(h, takeable, &arg, out, max);
    h->taken += n;
    if (n)
        h->took_us = now_us;
    pthread_mutex_unlock(&h->mu);
    return n;
}

static int any(const struct pg_handoff_item *it, const void *arg)
{
    (void)it;
    (void)arg;
    return 1;
}

size_t pg_handoff_drain(struct pg_handoff *h, struct store_delivery *out, size_t max)
{
    pthread_mutex_lock(&h->mu);
    size_t n = move_out(h, any, NULL, out, max);
    pthread_mutex_unlock(&h->mu);
    return n;
}
