/* fuzz.h - the fuzz targets' entry points, shared by the libFuzzer builds
 * (scripts/dev fuzz) and the regression test that replays the corpus */
#ifndef MOCKERY_FUZZ_H
#define MOCKERY_FUZZ_H

#include <stddef.h>
#include <stdint.h>

/* Each checks its own invariants and abort()s when one breaks. */
int fuzz_body_one(const uint8_t *data, size_t size);
int fuzz_key_one(const uint8_t *data, size_t size);
int fuzz_fingerprint_one(const uint8_t *data, size_t size);

/* A civetweb worker thread's stack (Debian 12's libcivetweb: 100 KiB). */
#define FUZZ_WORKER_STACK (100 * 1024)

/* Runs fn(data, size) on a new thread with a FUZZ_WORKER_STACK stack, as
 * the server would: returns what fn returns (fuzz_stack.c). */
int fuzz_on_worker_stack(int (*fn)(const uint8_t *, size_t), const uint8_t *data, size_t size);

#endif
