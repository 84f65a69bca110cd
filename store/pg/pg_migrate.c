/* pg_migrate.c - the embedded sql/ migrations, applied once each
 * (pg_migrate.h) */
#define _POSIX_C_SOURCE 200809L
#include "pg_migrate.h"

#include <stdio.h>
#include <string.h>

#include "migrations.h"
#include "pg_pool.h"

static const char SQL_MIGRATE_LOCK[] = "SELECT pg_advisory_xact_lock(7243117001)";
static const char SQL_MIGRATE_HAS[] = "SELECT 1 FROM schema_migrations WHERE version = $1";
static const char SQL_MIGRATE_RECORD[] =
    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";

static int exec_ok(PGconn *conn, const char *sql, ExecStatusType want, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    int ok = PQresultStatus(res) == want;
    if (!ok)
        pg_first_line(err, errlen, "migration failed", PQerrorMessage(conn));
    PQclear(res);
    return ok;
}

/* Applies the embedded migrations in one transaction under an advisory
 * lock, so servers starting together apply each exactly once. Version 0
 * (sql/000_schema_migrations.sql) is the record's own table: run every
 * time, before anything reads the record, and never recorded. */
int pg_migrate(PGconn *conn, char *err, size_t errlen)
{
    if (!exec_ok(conn, "BEGIN", PGRES_COMMAND_OK, err, errlen))
        return -1;
    if (!exec_ok(conn, SQL_MIGRATE_LOCK, PGRES_TUPLES_OK, err, errlen))
        goto fail;
    for (size_t i = 0; i < store_migrations_count; i++) {
        const struct store_migration *m = &store_migrations[i];
        if (m->version == 0) {
            if (!exec_ok(conn, m->sql, PGRES_COMMAND_OK, err, errlen))
                goto fail;
            continue;
        }
        char version[16];
        snprintf(version, sizeof version, "%d", m->version);
        const char *vals[] = {version, m->name};
        PGresult *res = PQexecParams(conn, SQL_MIGRATE_HAS, 1, NULL, vals, NULL, NULL, 0);
        int ok = PQresultStatus(res) == PGRES_TUPLES_OK;
        int applied = ok && PQntuples(res) == 1;
        if (!ok)
            pg_first_line(err, errlen, "migration failed", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            goto fail;
        if (applied)
            continue;
        if (!exec_ok(conn, m->sql, PGRES_COMMAND_OK, err, errlen)) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, " (in %s)", m->name);
            goto fail;
        }
        res = PQexecParams(conn, SQL_MIGRATE_RECORD, 2, NULL, vals, NULL, NULL, 0);
        ok = PQresultStatus(res) == PGRES_COMMAND_OK;
        if (!ok)
            pg_first_line(err, errlen, "migration failed", PQerrorMessage(conn));
        PQclear(res);
        if (!ok)
            goto fail;
    }
    if (!exec_ok(conn, "COMMIT", PGRES_COMMAND_OK, err, errlen))
        return -1;
    return 0;
fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return -1;
}
