/* conntable.c - the open connections, their answers' deadline, shedding */
#define _POSIX_C_SOURCE 200809L
#include "conntable.h"

#include <linux/sockios.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

struct conntable {
    pthread_mutex_t mu;
    int nslots, reserve, open;
    struct conn_slot *slots;
    int *free_list; /* indices of free slots; nfree of them */
    int nfree;
    unsigned long long shed, drained;
};

struct conntable *conntable_new(int slots, int reserve)
{
    struct conntable *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->slots = calloc((size_t)slots, sizeof *t->slots);
    t->free_list = calloc((size_t)slots, sizeof *t->free_list);
    if (!t->slots || !t->free_list) {
        conntable_free(t);
        return NULL;
    }
    t->nslots = slots;
    t->reserve = reserve;
    for (int i = 0; i < slots; i++)
        t->free_list[t->nfree++] = slots - 1 - i;
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void conntable_free(struct conntable *t)
{
    if (!t)
        return;
    if (t->slots)
        pthread_mutex_destroy(&t->mu);
    free(t->slots);
    free(t->free_list);
    free(t);
}

struct conn_slot *conntable_enter(struct conntable *t, int fd, int64_t now_us)
{
    struct conn_slot *s = NULL;
    pthread_mutex_lock(&t->mu);
    if (t->nfree > 0) {
        s = &t->slots[t->free_list[--t->nfree]];
        *s = (struct conn_slot){.fd = fd, .state = CONN_WAITING, .since_us = now_us, .in_use = 1};
        t->open++;
    }
    pthread_mutex_unlock(&t->mu);
    return s;
}

void conntable_leave(struct conntable *t, struct conn_slot *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&t->mu);
    s->in_use = 0;
    s->fd = -1;
    t->free_list[t->nfree++] = (int)(s - t->slots);
    t->open--;
    pthread_mutex_unlock(&t->mu);
}

int conntable_set(struct conntable *t, struct conn_slot *s, enum conn_state state, int64_t now_us)
{
    if (!s)
        return 0;
    pthread_mutex_lock(&t->mu);
    s->state = state;
    s->since_us = now_us;
    int shut = s->shut;
    pthread_mutex_unlock(&t->mu);
    return shut ? -1 : 0;
}

/* Under the mutex: the connection is open (its slot in use), so its socket
 * is still its own. */
static void shut(struct conn_slot *s, int how)
{
    if (s->fd >= 0)
        shutdown(s->fd, how);
    s->shut = 1;
    s->shut_wr |= how != SHUT_RD;
}

int conntable_write_begin(struct conntable *t, struct conn_slot *s, int64_t now_us, size_t len)
{
    if (!s)
        return 0;
    /* Bytes written and not yet acknowledged by the client. Everything
     * written before the previous answer acknowledged: the client keeps up
     * (at most one answer behind - one in flight on a real link, even when
     * it pipelines), and a new backlog starts here. */
    int queued = 0;
    if (s->fd < 0 || ioctl(s->fd, SIOCOUTQ, &queued) != 0)
        queued = 0;
    pthread_mutex_lock(&t->mu);
    uint64_t acked = (uint64_t)queued < s->written ? s->written - (uint64_t)queued : 0;
    if (!s->backlogged || acked >= s->written_before)
        s->backlog_us = now_us;
    s->backlogged = 1;
    s->written_before = s->written;
    s->written += len;
    s->state = CONN_WRITING;
    s->since_us = now_us;
    int late = now_us - s->backlog_us >= (int64_t)CONNTABLE_DRAIN_MS * 1000;
    if (late && !s->shut_wr) {
        t->drained++;
        shut(s, SHUT_RDWR);
    }
    int rc = s->shut_wr ? -1 : 0;
    pthread_mutex_unlock(&t->mu);
    return rc;
}

/* Whether s's worker has waited on its client long enough to be shed. */
static int may_shed(const struct conn_slot *s, int64_t now_us)
{
    return s->in_use && !s->shut && s->fd >= 0 && s->state != CONN_WORKING &&
           now_us - s->since_us >= (int64_t)CONNTABLE_SHED_MIN_MS * 1000;
}

/* Bytes the client sent that its worker has not read yet. */
static int unread(const struct conn_slot *s)
{
    int n = 0;
    return ioctl(s->fd, FIONREAD, &n) == 0 && n > 0;
}

int conntable_check(struct conntable *t, int64_t now_us)
{
    int done = 0;
    pthread_mutex_lock(&t->mu);
    int busy = 0;
    for (int i = 0; i < t->nslots; i++) {
        struct conn_slot *s = &t->slots[i];
        if (!s->in_use)
            continue;
        if (!s->shut_wr && s->state == CONN_WRITING && s->fd >= 0 && s->backlogged &&
            now_us - s->backlog_us >= (int64_t)CONNTABLE_DRAIN_MS * 1000) {
            shut(s, SHUT_RDWR);
            t->drained++;
            done++;
            continue;
        }
        busy += !s->shut; /* a shut one is as good as free: its worker is ending it */
    }
    /* Free slots now: the shut ones are as good as free. A connection with
     * a request waiting unread is passed over (at most a few: each costs a
     * system call, and a pass runs on every new connection under
     * pressure). */
    int passed = 0;
    while (t->nslots - busy < t->reserve && passed < 4) {
        struct conn_slot *oldest = NULL;
        for (int i = 0; i < t->nslots; i++) {
            struct conn_slot *s = &t->slots[i];
            if (may_shed(s, now_us) && !s->passed_over &&
                (!oldest || s->since_us < oldest->since_us))
                oldest = s;
        }
        if (!oldest)
            break;
        if (oldest->state == CONN_WAITING && unread(oldest)) {
            oldest->passed_over = 1;
            passed++;
            continue;
        }
        /* Waiting for a request or reading a body: shut for reading only,
         * so that a request that has just arrived (503 server_busy) or the
         * body (408) can still be answered; an answer: both ways. */
        shut(oldest, oldest->state == CONN_WRITING ? SHUT_RDWR : SHUT_RD);
        t->shed++;
        busy--;
        done++;
    }
    for (int i = 0; passed && i < t->nslots; i++)
        t->slots[i].passed_over = 0;
    pthread_mutex_unlock(&t->mu);
    return done;
}

int conntable_shut_idle(struct conntable *t, int served_only)
{
    int done = 0;
    pthread_mutex_lock(&t->mu);
    for (int i = 0; i < t->nslots; i++) {
        struct conn_slot *s = &t->slots[i];
        if (s->in_use && !s->shut && s->fd >= 0 && s->state == CONN_WAITING &&
            (s->written > 0 || !served_only)) {
            shut(s, SHUT_RD);
            done++;
        }
    }
    pthread_mutex_unlock(&t->mu);
    return done;
}

void conntable_counts(struct conntable *t, struct conntable_counts *out)
{
    pthread_mutex_lock(&t->mu);
    out->shed = t->shed;
    out->drained = t->drained;
    pthread_mutex_unlock(&t->mu);
}

int conntable_open(struct conntable *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->open;
    pthread_mutex_unlock(&t->mu);
    return n;
}
