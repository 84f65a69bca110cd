/* bytes.h - copies of byte strings that may hold any byte */
#ifndef MOCKERY_BYTES_H
#define MOCKERY_BYTES_H

#include <stddef.h>

/* A malloc'd copy of the n bytes at s, NUL-terminated (a body may hold
 * bytes strndup() would stop at); NULL when out of memory. */
char *bytes_dup(const char *s, size_t n);

#endif
