/* pg_sql.h - the statements the PostgreSQL store prepares on every pooled
 * connection (internal to store/)
 *
 * Each has a name the operations run it by (PQexecPrepared) and the text in
 * pg_sql.c, where the comments say what each statement guarantees.
 */
#ifndef MOCKERY_PG_SQL_H
#define MOCKERY_PG_SQL_H

#include <stddef.h>

/* Unix microseconds out of a timestamptz column, and into one from a
 * bigint parameter. */
#define US_OF(col) "(extract(epoch from " col ") * 1000000)::bigint"
#define TS_OF(param) "(timestamptz 'epoch' + " param "::bigint * interval '1 microsecond')"

struct pg_prepared {
    const char *name;
    const char *sql;
    int nparams;
};

extern const struct pg_prepared PG_PREPARED[];
extern const size_t PG_PREPARED_COUNT;

#endif
