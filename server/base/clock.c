/* clock.c - reading the time, and deadlines (clock.h) */
#define _POSIX_C_SOURCE 200809L
#include "clock.h"

#include <errno.h>

static int64_t us_of(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t clock_mono_us(void)
{
    return us_of(CLOCK_MONOTONIC);
}

int64_t clock_wall_us(void)
{
    return us_of(CLOCK_REALTIME);
}

void clock_add_ms(struct timespec *t, int64_t ms)
{
    t->tv_sec += (time_t)(ms / 1000);
    t->tv_nsec += (long)(ms % 1000) * 1000000L;
    while (t->tv_nsec >= 1000000000L) {
        t->tv_sec++;
        t->tv_nsec -= 1000000000L;
    }
}

void clock_deadline_in(struct timespec *out, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, out);
    clock_add_ms(out, ms);
}

void clock_mono_deadline_in(struct timespec *out, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, out);
    clock_add_ms(out, ms);
}

int clock_before(const struct timespec *a, const struct timespec *b)
{
    return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

int clock_passed(const struct timespec *deadline)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return !clock_before(&now, deadline);
}

void clock_sleep_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}
