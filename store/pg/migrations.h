/* migrations.h - the numbered SQL migrations of sql/, embedded at build time */
#ifndef MOCKERY_MIGRATIONS_H
#define MOCKERY_MIGRATIONS_H

#include <stddef.h>

struct store_migration {
    int version;      /* the number the file name starts with */
    const char *name; /* the file name */
    const char *sql;  /* its text, NUL-terminated */
};

/* In ascending version order. The first, version 0, creates the table
 * that records the others (schema_migrations): it runs on every start and
 * is never recorded itself. */
extern const struct store_migration store_migrations[];
extern const size_t store_migrations_count;

#endif
