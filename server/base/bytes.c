/* bytes.c - copies of byte strings (bytes.h) */
#include "bytes.h"

#include <stdlib.h>
#include <string.h>

char *bytes_dup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}
