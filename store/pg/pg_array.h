/* pg_array.h - PostgreSQL array literals built element by element, for
 * statements that take many rows at once as arrays of parameters
 * (unnest($1::text[], ...)): {"a","b\"c",NULL} */
#ifndef MOCKERY_PG_ARRAY_H
#define MOCKERY_PG_ARRAY_H

#include <stddef.h>

struct pg_array {
    char *p;
    size_t len, cap;
    int n;      /* elements added */
    int failed; /* out of memory: pg_array_end() returns NULL */
};

/* Adds one element: v quoted, or NULL for SQL NULL. Start from a zeroed
 * struct. */
void pg_array_add(struct pg_array *a, const char *v);

/* Closes the literal: the text to send as the parameter, owned by a (NULL
 * when memory ran out). */
const char *pg_array_end(struct pg_array *a);

void pg_array_free(struct pg_array *a);

#endif
