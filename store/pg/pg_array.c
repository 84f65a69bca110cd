/* pg_array.c - PostgreSQL array literals (pg_array.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_array.h"

#include <stdlib.h>
#include <string.h>

static void put(struct pg_array *a, const char *text, size_t n)
{
    if (a->failed)
        return;
    if (a->len + n + 1 > a->cap) {
        size_t cap = a->cap ? a->cap : 256;
        while (a->len + n + 1 > cap)
            cap *= 2;
        char *p = realloc(a->p, cap);
        if (!p) {
            a->failed = 1;
            return;
        }
        a->p = p;
        a->cap = cap;
    }
    memcpy(a->p + a->len, text, n);
    a->len += n;
    a->p[a->len] = '\0';
}

void pg_array_add(struct pg_array *a, const char *v)
{
    put(a, a->n++ ? "," : "{", 1);
    if (!v) {
        put(a, "NULL", 4);
        return;
    }
    /* Inside double quotes only " and \ need a backslash. */
    put(a, "\"", 1);
    for (const char *q = v; *q; q++) {
        size_t run = strcspn(q, "\"\\");
        put(a, q, run);
        q += run;
        if (!*q)
            break;
        put(a, "\\", 1);
        put(a, q, 1);
    }
    put(a, "\"", 1);
}

const char *pg_array_end(struct pg_array *a)
{
    put(a, a->n ? "}" : "{}", a->n ? 1 : 2);
    return a->failed ? NULL : a->p;
}

void pg_array_free(struct pg_array *a)
{
    free(a->p);
    memset(a, 0, sizeof *a);
}
