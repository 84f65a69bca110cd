/* httpc.h - a small HTTP client over libcurl, for mockery-demo and the tests
 *
 * Reentrant: every call uses its own curl handle.
 */
#ifndef MOCKERY_HTTPC_H
#define MOCKERY_HTTPC_H

#include <stddef.h>

struct httpc_response {
    long status; /* 0 when no HTTP answer came back (see error) */
    char *body;  /* malloc'd, NUL-terminated ("" when empty) */
    size_t len;
    char error[256];
    /* The headers the API defines, "" when absent. */
    char location[256];
    char replay[16];   /* X-Idempotent-Replay */
    char replayed[16]; /* Idempotent-Replayed */
    char retry_after[16];
    char allow[64];
    char content_type[128];
};

/* Sends one request and waits at most timeout_ms. headers: NULL-terminated
 * "Name: value" strings, or NULL; body may be NULL. Returns 0 when an HTTP
 * answer came back, -1 otherwise (out->error says why). Free out with
 * httpc_response_free() either way. */
int httpc_request(const char *method, const char *url, const char *const *headers, const char *body,
                  size_t body_len, long timeout_ms, struct httpc_response *out);

void httpc_response_free(struct httpc_response *r);

#endif
