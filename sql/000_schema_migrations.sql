-- 000_schema_migrations.sql - the record of which migrations have run
--
-- Version 0 is that record's own table: the server runs this file first on
-- every start, inside the migrations' transaction and under their advisory
-- lock (it changes nothing once the table exists), and records no row for
-- it. Every other file of sql/ runs once and gets a row here.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
