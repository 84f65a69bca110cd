/* pg_migrate.h - the schema, brought up to date at start-up (internal to
 * store/) */
#ifndef MOCKERY_PG_MIGRATE_H
#define MOCKERY_PG_MIGRATE_H

#include <libpq-fe.h>
#include <stddef.h>

/* Applies the migrations of sql/ (embedded at build time) not yet recorded
 * in schema_migrations, in one transaction under an advisory lock, so that
 * servers starting together apply each exactly once. 0, or -1 with err. */
int pg_migrate(PGconn *conn, char *err, size_t errlen);

#endif
