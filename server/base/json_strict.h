/* json_strict.h - a strict RFC 8259 check of a request body, run before
 * cJSON sees it
 *
 * cJSON accepts more than RFC 8259 allows (trailing bytes, raw control
 * characters, leading zeros, \u0000 that cuts its C strings) and recurses
 * once per nesting level, up to 1000 levels: on a worker's 100 KiB stack
 * that is a crash. This check walks the text with no recursion, refuses all
 * of that and any nesting deeper than JSON_STRICT_MAX_DEPTH, and records
 * where the values of the top-level object's members are, so that a number
 * can be read from its decimal text rather than from cJSON's double.
 * Reentrant.
 */
#ifndef MOCKERY_JSON_STRICT_H
#define MOCKERY_JSON_STRICT_H

#include <stddef.h>

/* Arrays and objects nest at most this deep (the top-level value is level
 * 1); the request schemas need 1. */
#define JSON_STRICT_MAX_DEPTH 4

/* Members of the top-level object whose value text is recorded. */
#define JSON_STRICT_MEMBERS 16

struct json_span {
    size_t off, len;
};

/* The values of a top-level object's members, in document order (the
 * order of cJSON's children). */
struct json_top {
    size_t count; /* members of the top-level object (0 when it is not one) */
    struct json_span value[JSON_STRICT_MEMBERS]; /* the first JSON_STRICT_MEMBERS */
};

enum json_strict_status {
    JSON_STRICT_OK = 0,
    JSON_STRICT_SYNTAX,   /* not one RFC 8259 JSON text of UTF-8 */
    JSON_STRICT_TOO_DEEP, /* nested deeper than JSON_STRICT_MAX_DEPTH */
};

/* Checks s[0..len). On JSON_STRICT_OK *top is filled (top may be NULL); on
 * failure *where (may be NULL) is the byte offset of the fault. */
enum json_strict_status json_strict_check(const char *s, size_t len, struct json_top *top,
                                          size_t *where);

#endif
