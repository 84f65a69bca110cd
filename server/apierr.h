/* apierr.h - API errors: what went wrong, and their JSON shape
 *
 * {"error": {"type": "...", "code": "...", "message": "...", "param": "..."}}
 */
#ifndef MOCKERY_APIERR_H
#define MOCKERY_APIERR_H

#include <stddef.h>

/* The type of every error a client's request caused (4xx). */
#define APIERR_INVALID_REQUEST "invalid_request_error"

struct apierr {
    int status;       /* HTTP status */
    const char *type; /* e.g. "invalid_request_error" (a static string) */
    const char *code; /* e.g. "invalid_amount" (a static string) */
    char message[256];
    char param[64]; /* empty when no single field is at fault */
};

/* Fills e; param may be NULL. Returns -1 so that callers can `return apierr_set(...)`. */
int apierr_set(struct apierr *e, int status, const char *type, const char *code, const char *param,
               const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The answer to a store call that failed: 503 store_unavailable when the
 * database did not answer (worth a retry), else 500 internal_error.
 * idempotent: the request was a POST, and nothing of it was recorded. */
void apierr_store(struct apierr *e, int unavailable, int idempotent);

/* The error body, malloc'd, NUL-terminated; NULL on allocation failure. */
char *apierr_json(const struct apierr *e);

#endif
