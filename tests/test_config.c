/* test_config.c - what the server reads at start: flags and environment, API keys, log lines */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth.h"
#include "config.h"
#include "log.h"

/* ---- configuration ------------------------------------------------------------ */

Test(config, flags_win_over_environment)
{
    struct config c;
    char err[256];
    setenv("PORT", "9000", 1);
    setenv("MOCKERY_POOL_SIZE", "3", 1);
    setenv("MOCKERY_STORE", "memory", 1);
    char *argv[] = {"mockery-server", "--port=9100", "--lease", "5", "--require-key=false", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 5, argv, err, sizeof err), CONFIG_OK, "%s", err);
    cr_assert_eq(c.port, 9100);
    cr_assert_eq(c.pool_size, 3);
    cr_assert_eq(c.store, STORE_KIND_MEMORY);
    cr_assert_eq(c.lease_s, 5);
    cr_assert_eq(c.require_key, 0);
}

Test(config, bad_values_name_the_flag)
{
    struct config c;
    char err[256];
    char *a1[] = {"s", "--threads=0", NULL};
    char *a2[] = {"s", "--store=mysql", NULL};
    char *a3[] = {"s", "--bogus", NULL};
    char *a4[] = {"s", "--port", NULL};
    char *a5[] = {"s", "--log-level=loud", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 2, a1, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--threads"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a2, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--store"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a3, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--bogus"), "%s", err);
    cr_assert_eq(config_parse(&c, 2, a4, err, sizeof err), CONFIG_INVALID);
    cr_assert_eq(config_parse(&c, 2, a5, err, sizeof err), CONFIG_INVALID);
    setenv("MOCKERY_LEASE", "soon", 1);
    char *a6[] = {"s", NULL};
    cr_assert_eq(config_parse(&c, 1, a6, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "MOCKERY_LEASE"), "%s", err);
}

/* Recovery's flags: by default a pass a second, 100 records at most; 0
 * records a pass or an interval under 10 ms is refused. */
Test(config, recovery_flags_have_defaults_and_bounds)
{
    struct config c;
    char err[256];
    config_defaults(&c);
    cr_assert_eq(c.recovery_interval_ms, 1000);
    cr_assert_eq(c.recovery_batch, 100);
    char *ok[] = {"s", "--recovery-interval-ms", "250", "--recovery-batch", "7", NULL};
    cr_assert_eq(config_parse(&c, 5, ok, err, sizeof err), CONFIG_OK, "%s", err);
    cr_assert_eq(c.recovery_interval_ms, 250);
    cr_assert_eq(c.recovery_batch, 7);
    char *bad_batch[] = {"s", "--recovery-batch", "0", NULL};
    config_defaults(&c);
    cr_assert_neq(config_parse(&c, 3, bad_batch, err, sizeof err), CONFIG_OK);
    cr_assert_not_null(strstr(err, "recovery-batch"), "%s", err);
    char *bad_interval[] = {"s", "--recovery-interval-ms", "5", NULL};
    config_defaults(&c);
    cr_assert_neq(config_parse(&c, 3, bad_interval, err, sizeof err), CONFIG_OK);
    cr_assert_not_null(strstr(err, "recovery-interval-ms"), "%s", err);
}

/* The acquirer's flags: an ask ends within the lease, an answer outlives
 * it, every payment has a key to be asked again under, and no flag of the
 * in-process simulator is taken and then ignored. */
Test(config, acquirer_flags_are_checked_together)
{
    struct config c;
    char err[256];
    char *ok[] = {"s", "--acquirer-url", "http://127.0.0.1:8090", "--acquirer-timeout-ms", "2000",
                  NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 5, ok, err, sizeof err), CONFIG_OK, "%s", err);
    cr_assert_str_eq(c.acquirer_url, "http://127.0.0.1:8090");
    cr_assert_eq(c.acquirer_timeout_ms, 2000);
    struct {
        char *argv[8];
        int argc;
        const char *names;
    } bad[] = {
        {{"s", "--acquirer-url", "http://a", "--acquirer-timeout-ms", "30000", NULL},
         5,
         "--acquirer-timeout-ms"},
        {{"s", "--acquirer-url", "http://a", "--idempotency-ttl", "30", NULL},
         5,
         "--idempotency-ttl"},
        {{"s", "--acquirer-url", "http://a", "--require-key", "false", NULL}, 5, "--require-key"},
        {{"s", "--acquirer-url", "ftp://a", NULL}, 3, "--acquirer-url"},
        {{"s", "--acquirer-url", "http://a", "--processing-delay-ms", "100", NULL},
         5,
         "--processing-delay-ms"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        config_defaults(&c);
        cr_assert_eq(config_parse(&c, bad[i].argc, bad[i].argv, err, sizeof err), CONFIG_INVALID,
                     "case %zu", i);
        cr_assert(strstr(err, bad[i].names), "case %zu: %s", i, err);
    }
    /* without an acquirer none of it applies */
    char *none[] = {"s",     "--acquirer-timeout-ms", "60000", "--require-key",
                    "false", "--processing-delay-ms", "100",   NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 7, none, err, sizeof err), CONFIG_OK, "%s", err);
}

/* Events are kept at least as long as their deliveries may be retried:
 * reaping an event takes its deliveries along. 16 attempts 10 s apart and
 * doubling (capped at 6 h), each wait up to 1.5 times as long with jitter:
 * 158,625 s; and 16 attempts and 3 after deaths, each its lease of 25.2 s
 * (the 10 s timeout, twice the pool's 5 s wait, a step and a margin). */
Test(config, event_retention_outlasts_the_retries)
{
    struct config c;
    char err[512];
    char *short_retention[] = {"s", "--event-retention", "159103", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 3, short_retention, err, sizeof err), CONFIG_INVALID);
    cr_assert(strstr(err, "--event-retention"), "%s", err);
    cr_assert(strstr(err, "at least 159104 s"), "%s", err);
    char *enough[] = {"s", "--event-retention", "159104", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 3, enough, err, sizeof err), CONFIG_OK, "%s", err);
    /* an hour is enough for fewer, quicker retries: 5 s, 10 s, ..., 80 s,
     * 1.5 times each, and 9 leases */
    char *quick[] = {"s", "--event-retention",    "3600", "--webhook-max-attempts",
                     "6", "--webhook-backoff-ms", "5000", NULL};
    config_defaults(&c);
    cr_assert_eq(config_parse(&c, 7, quick, err, sizeof err), CONFIG_OK, "%s", err);
}

/* ---- API keys ------------------------------------------------------------------- */

Test(auth, keys_map_to_tenants)
{
    char err[256];
    struct auth *a = auth_new("acme:key-acme-123,globex:key-globex-456", err, sizeof err);
    cr_assert_not_null(a, "%s", err);
    cr_assert(auth_enabled(a));
    cr_assert_str_eq(auth_tenant(a, "Bearer key-acme-123"), "acme");
    cr_assert_str_eq(auth_tenant(a, "bearer key-globex-456"), "globex");
    cr_assert_null(auth_tenant(a, "Bearer key-acme-12"));
    cr_assert_null(auth_tenant(a, "key-acme-123"));
    cr_assert_null(auth_tenant(a, NULL));
    auth_free(a);
    a = auth_new("", err, sizeof err);
    cr_assert_not(auth_enabled(a));
    cr_assert_str_eq(auth_tenant(a, NULL), AUTH_OPEN_TENANT);
    auth_free(a);
    cr_assert_null(auth_new("nocolon", err, sizeof err));
    cr_assert_null(auth_new("t:short", err, sizeof err));
    cr_assert_null(auth_new("@/nonexistent/file", err, sizeof err));
}

Test(auth, keys_from_a_file)
{
    char path[] = "/tmp/mockery-keys-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    FILE *f = fdopen(fd, "w");
    fputs("# tenants of the staging cluster\n"
          "acme:key-acme-123   # the first\n"
          "\n"
          "globex:key-globex-456, initech:key-initech-789\n",
          f);
    fclose(f);
    char spec[64], err[256];
    snprintf(spec, sizeof spec, "@%s", path);
    struct auth *a = auth_new(spec, err, sizeof err);
    cr_assert_not_null(a, "%s", err);
    cr_assert_str_eq(auth_tenant(a, "Bearer key-acme-123"), "acme");
    cr_assert_str_eq(auth_tenant(a, "Bearer key-globex-456"), "globex");
    cr_assert_str_eq(auth_tenant(a, "Bearer key-initech-789"), "initech");
    cr_assert_null(auth_tenant(a, "Bearer # the first"));
    auth_free(a);
    f = fopen(path, "w");
    fputs("# nothing but comments\n", f);
    fclose(f);
    cr_assert_null(auth_new(spec, err, sizeof err), "a file without keys must be refused");
    unlink(path);
}

/* ---- logger --------------------------------------------------------------------- */

Test(log, lines_are_json_and_levels_filter)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct logger *l = log_new(f, LOG_WARN);
    log_msg(l, LOG_INFO, "hidden");
    cJSON *line = log_begin(l, LOG_ERROR, "shown \"quoted\"\nnewline");
    cJSON_AddStringToObject(line, "key", "k1");
    log_end(l, line);
    cr_assert_null(log_begin(l, LOG_DEBUG, "filtered"));
    log_flush(l);
    fflush(f);
    cr_assert_null(strstr(buf, "hidden"));
    cr_assert_eq(strchr(buf, '\n'), buf + len - 1, "exactly one line: %s", buf);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s", buf);
    cr_assert_str_eq(cJSON_GetObjectItem(o, "level")->valuestring, "error");
    cr_assert_str_eq(cJSON_GetObjectItem(o, "msg")->valuestring, "shown \"quoted\"\nnewline");
    cr_assert_str_eq(cJSON_GetObjectItem(o, "key")->valuestring, "k1");
    cJSON_Delete(o);
    log_free(l);
    fclose(f);
    free(buf);
}

Test(log, numbers_and_time_are_written_exactly)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    struct logger *l = log_new(f, LOG_INFO);
    struct log_line line;
    cr_assert(log_line_begin(l, LOG_INFO, "numbers", &line));
    log_line_int(&line, "zero", 0);
    log_line_int(&line, "neg", -9223372036854775807LL - 1);
    log_line_int(&line, "big", 9223372036854775807LL);
    log_line_ms(&line, "ms", 1.2345);
    log_line_ms(&line, "small", 0.0004);
    log_line_ms(&line, "whole", 12.0);
    log_line_end(l, &line);
    log_flush(l);
    fflush(f);
    cr_assert_not_null(strstr(buf, "\"zero\":0,\"neg\":-9223372036854775808,"
                                   "\"big\":9223372036854775807,\"ms\":1.235,"
                                   "\"small\":0.000,\"whole\":12.000}"),
                       "%s", buf);
    cJSON *o = cJSON_Parse(buf);
    cr_assert_not_null(o, "%s", buf);
    const char *t = cJSON_GetObjectItem(o, "time")->valuestring;
    /* YYYY-MM-DDTHH:MM:SS.mmmZ */
    cr_assert_eq(strlen(t), 24, "%s", t);
    cr_assert(t[4] == '-' && t[10] == 'T' && t[19] == '.' && t[23] == 'Z', "%s", t);
    cJSON_Delete(o);
    log_free(l);
    fclose(f);
    free(buf);
}
