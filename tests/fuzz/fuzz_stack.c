/* fuzz_stack.c - run a fuzz target's entry point on a thread with a
 * civetweb worker's stack
 *
 * The server parses on civetweb's worker threads, whose stacks are 100 KiB
 * (Debian's build); a fuzzer on the main thread's 8 MiB never sees what
 * overflows them (an 810-byte body nested 800 deep did).
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdlib.h>

#include "fuzz.h"

struct job {
    int (*fn)(const uint8_t *, size_t);
    const uint8_t *data;
    size_t size;
    int rc;
};

static void *run(void *arg)
{
    struct job *j = arg;
    j->rc = j->fn(j->data, j->size);
    return NULL;
}

int fuzz_on_worker_stack(int (*fn)(const uint8_t *, size_t), const uint8_t *data, size_t size)
{
    struct job j = {fn, data, size, 0};
    pthread_attr_t a;
    pthread_t t;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, FUZZ_WORKER_STACK);
    if (pthread_create(&t, &a, run, &j) != 0)
        abort();
    pthread_join(t, NULL);
    pthread_attr_destroy(&a);
    return j.rc;
}
