/* clock.h - the one place the process reads the time and does deadline
 * arithmetic
 *
 * Durations and deadlines inside the process use the monotonic clock (it
 * never goes back); times written into records and logs use the wall
 * clock. pthread_cond_timedwait() and sem_timedwait() take CLOCK_REALTIME
 * timespecs: clock_deadline_in() makes them, normalised; a condition
 * variable set to CLOCK_MONOTONIC (pthread_condattr_setclock) takes
 * clock_mono_deadline_in()'s, which no step of the wall clock moves.
 * Reentrant.
 */
#ifndef MOCKERY_CLOCK_H
#define MOCKERY_CLOCK_H

#include <stdint.h>
#include <time.h>

/* Microseconds on the monotonic clock (CLOCK_MONOTONIC). */
int64_t clock_mono_us(void);

/* Microseconds since the epoch (CLOCK_REALTIME). */
int64_t clock_wall_us(void);

/* Adds ms milliseconds to t, keeping tv_nsec below a second. */
void clock_add_ms(struct timespec *t, int64_t ms);

/* *out = the wall clock now plus ms: a deadline for a timed wait. */
void clock_deadline_in(struct timespec *out, int64_t ms);

/* *out = the monotonic clock now plus ms: a deadline for a timed wait on
 * a condition variable of CLOCK_MONOTONIC. */
void clock_mono_deadline_in(struct timespec *out, int64_t ms);

/* Whether a comes before b. */
int clock_before(const struct timespec *a, const struct timespec *b);

/* Whether the wall clock has reached deadline. */
int clock_passed(const struct timespec *deadline);

/* Sleeps ms milliseconds (resumed after signals). */
void clock_sleep_ms(int64_t ms);

#endif
