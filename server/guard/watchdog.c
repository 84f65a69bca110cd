/* watchdog.c - a thread that ends reads past their deadline */
#define _POSIX_C_SOURCE 200809L
#include "watchdog.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "clock.h"

#define TICK_MS 50

struct watchdog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    int stopping;
    TAILQ_HEAD(, watch) armed;
    void (*tick)(void *arg, int64_t now_us);
    void *tick_arg;
};

static void *watchdog_main(void *arg)
{
    struct watchdog *wd = arg;
    pthread_mutex_lock(&wd->mu);
    while (!wd->stopping) {
        struct timespec until;
        clock_deadline_in(&until, TICK_MS);
        pthread_cond_timedwait(&wd->cv, &wd->mu, &until);
        int64_t now = clock_mono_us();
        /* Under the mutex: an armed read is still in progress, so its
         * connection (and socket) is still open. */
        struct watch *w;
        TAILQ_FOREACH(w, &wd->armed, link)
            if (!w->fired && now >= w->deadline_us) {
                if (w->fd >= 0)
                    shutdown(w->fd, SHUT_RD);
                w->fired = 1;
            }
        if (wd->tick) {
            pthread_mutex_unlock(&wd->mu);
            wd->tick(wd->tick_arg, now);
            pthread_mutex_lock(&wd->mu);
        }
    }
    pthread_mutex_unlock(&wd->mu);
    return NULL;
}

struct watchdog *watchdog_new(void (*tick)(void *arg, int64_t now_us), void *tick_arg)
{
    struct watchdog *wd = calloc(1, sizeof *wd);
    if (!wd)
        return NULL;
    wd->tick = tick;
    wd->tick_arg = tick_arg;
    TAILQ_INIT(&wd->armed);
    pthread_mutex_init(&wd->mu, NULL);
    pthread_cond_init(&wd->cv, NULL);
    if (pthread_create(&wd->thread, NULL, watchdog_main, wd) != 0) {
        pthread_cond_destroy(&wd->cv);
        pthread_mutex_destroy(&wd->mu);
        free(wd);
        return NULL;
    }
    return wd;
}

void watchdog_free(struct watchdog *wd)
{
    if (!wd)
        return;
    pthread_mutex_lock(&wd->mu);
    wd->stopping = 1;
    pthread_cond_signal(&wd->cv);
    pthread_mutex_unlock(&wd->mu);
    pthread_join(wd->thread, NULL);
    pthread_cond_destroy(&wd->cv);
    pthread_mutex_destroy(&wd->mu);
    free(wd);
}

void watchdog_arm(struct watchdog *wd, struct watch *w, int fd, int64_t deadline_us)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    w->deadline_us = deadline_us;
    pthread_mutex_lock(&wd->mu);
    TAILQ_INSERT_HEAD(&wd->armed, w, link);
    pthread_mutex_unlock(&wd->mu);
}

int watchdog_disarm(struct watchdog *wd, struct watch *w)
{
    pthread_mutex_lock(&wd->mu);
    TAILQ_REMOVE(&wd->armed, w, link);
    int fired = w->fired;
    pthread_mutex_unlock(&wd->mu);
    return fired;
}
