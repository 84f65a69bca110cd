/* test_base.c - the base layer: UTC text, decimals, the keyed hash, the error table, strict JSON */
#define _POSIX_C_SOURCE 200809L
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "apierr.h"
#include "decimal.h"
#include "hash.h"
#include "hashtab.h"
#include "json_strict.h"
#include "utc_text.h"

/* ---- UTC text ------------------------------------------------------------------ */

Test(utc_text, seconds_dates_and_fractions)
{
    char iso[20], date[30], when[28];
    utc_iso_second(0, iso);
    cr_assert_str_eq(iso, "1970-01-01T00:00:00");
    utc_http_date(784111777, date);
    cr_assert_str_eq(date, "Sun, 06 Nov 1994 08:49:37 GMT");
    utc_iso_second(784111777, iso);
    cr_assert_str_eq(iso, "1994-11-06T08:49:37");
    utc_iso_second(784111778, iso);
    cr_assert_str_eq(iso, "1994-11-06T08:49:38");
    utc_iso_micro(784111777000001LL, when);
    cr_assert_str_eq(when, "1994-11-06T08:49:37.000001Z");
    utc_iso_micro(-1, when);
    cr_assert_str_eq(when, "1969-12-31T23:59:59.999999Z");
    utc_iso_micro(253402300800000000LL, when); /* year 10000 */
    cr_assert_str_eq(when, "");
}

/* The arithmetic against gmtime_r + strftime over the years glibc's %Y
 * writes with four digits, leap days and the turns of centuries included;
 * below 1000 strftime writes fewer digits, RFC 3339 four. */
Test(utc_text, agrees_with_gmtime_from_year_1000_to_9999)
{
    const long long first = -30610224000LL, last = 253402300799LL; /* 1000-01-01, 9999-12-31 */
    long long edges[] = {first,
                         last,
                         -1,
                         0,
                         951782400LL /* 2000-02-29 */,
                         4107456000LL /* 2100-02-28 */,
                         4107542400LL /* 2100-03-01 */,
                         68256000LL /* 1972-02-29 */};
    int n = 0;
    for (long long t = first, i = 0; t <= last; t += 7919LL * 86 + 3607, i++) {
        long long secs = i < 8 ? edges[i] : t;
        char iso[20], date[30], want_iso[32], want_date[40];
        time_t tt = (time_t)secs;
        struct tm tm;
        cr_assert_not_null(gmtime_r(&tt, &tm));
        strftime(want_iso, sizeof want_iso, "%Y-%m-%dT%H:%M:%S", &tm);
        strftime(want_date, sizeof want_date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
        utc_iso_second(tt, iso);
        utc_http_date(tt, date);
        cr_assert_str_eq(iso, want_iso, "at %lld", secs);
        cr_assert_str_eq(date, want_date, "at %lld", secs);
        n++;
    }
    cr_assert_gt(n, 300000);
    char iso[20], date[30];
    utc_iso_second((time_t)(last + 1), iso); /* year 10000 */
    cr_assert_str_eq(iso, "");
    utc_iso_second((time_t)-62167219200LL, iso);
    cr_assert_str_eq(iso, "0000-01-01T00:00:00");
    utc_http_date((time_t)-62167219200LL, date);
    cr_assert_str_eq(date, "Sat, 01 Jan 0000 00:00:00 GMT");
}

/* ---- decimals ------------------------------------------------------------------ */

Test(decimal, digits_and_fixed_points)
{
    char out[48];
    out[decimal_digits(out, 7, 3)] = '\0';
    cr_assert_str_eq(out, "007");
    out[decimal_digits(out, 0, 1)] = '\0';
    cr_assert_str_eq(out, "0");
    out[decimal_digits(out, ULLONG_MAX, 1)] = '\0';
    cr_assert_str_eq(out, "18446744073709551615");
    out[decimal_fixed(out, 1050, 2)] = '\0';
    cr_assert_str_eq(out, "10.50");
    out[decimal_fixed(out, -5, 2)] = '\0';
    cr_assert_str_eq(out, "-0.05");
    out[decimal_fixed(out, -3, 0)] = '\0';
    cr_assert_str_eq(out, "-3");
    out[decimal_fixed(out, LLONG_MIN, 0)] = '\0';
    cr_assert_str_eq(out, "-9223372036854775808");
    out[decimal_fixed(out, 1, 4)] = '\0';
    cr_assert_str_eq(out, "0.0001");
}

/* Every outcome has its own word, the one logs and metrics print. */

/* ---- the keyed hash of the in-memory tables ---------------------------------- */

/* Keyed at random per process: the same (tenant, key) lands in other
 * buckets in another process, so no client can find colliding keys
 * offline. (With FNV-1a, which it was, every process agrees.) The child is
 * forked before this process draws its key (each Criterion test is a
 * process of its own, and nothing hashed in it before). */
Test(key_hash, differs_between_processes_and_separates_its_parts)
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        size_t there = hash_pair("tenant", "key-1");
        _exit(write(fds[1], &there, sizeof there) == (ssize_t)sizeof there ? 0 : 1);
    }
    size_t there = 0;
    cr_assert_eq(read(fds[0], &there, sizeof there), (ssize_t)sizeof there);
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    close(fds[0]);
    close(fds[1]);
    size_t here = hash_pair("tenant", "key-1");
    cr_assert_eq(here, hash_pair("tenant", "key-1"), "not stable within a process");
    cr_assert_neq(here, there, "two processes hash (tenant, key) alike: the hash is not keyed");
    cr_assert_neq(hash_pair("t1", "k"), hash_pair("t", "1k"));
}

/* ---- the one hash table -------------------------------------------------- */

struct pair {
    struct hashtab_link link;
    char a[16], b[16];
};

static int same_pair(const struct hashtab_link *l, const char *a, const char *b)
{
    const struct pair *p = hashtab_entry(l, struct pair, link);
    return strcmp(p->a, a) == 0 && strcmp(p->b, b) == 0;
}

static struct pair *find_pair(struct hashtab *t, const char *a, const char *b)
{
    struct hashtab_link *l = *hashtab_find(t, a, b, NULL, same_pair);
    return l ? hashtab_entry(l, struct pair, link) : NULL;
}

/* 1,000 pairs in a table of 2 buckets that grows (and one that does not):
 * each is found, by both parts; removed ones are gone, the rest stay. */
Test(hashtab, finds_removes_and_grows_without_losing_an_entry)
{
    for (int grows = 0; grows <= 1; grows++) {
        struct hashtab t;
        cr_assert_eq(hashtab_init(&t, 2, grows), 0);
        static struct pair pairs[1000];
        for (int i = 0; i < 1000; i++) {
            snprintf(pairs[i].a, sizeof pairs[i].a, "t%d", i % 7);
            snprintf(pairs[i].b, sizeof pairs[i].b, "k%d", i);
            size_t hash;
            cr_assert_null(*hashtab_find(&t, pairs[i].a, pairs[i].b, &hash, same_pair));
            hashtab_add(&t, &pairs[i].link, hash);
        }
        cr_assert_eq(t.count, 1000);
        cr_assert(grows ? t.nbuckets >= 500 : t.nbuckets == 2, "%zu buckets", t.nbuckets);
        for (int i = 0; i < 1000; i++)
            cr_assert_eq(find_pair(&t, pairs[i].a, pairs[i].b), &pairs[i], "pair %d", i);
        cr_assert_null(find_pair(&t, "t1", "k0"), "a pair of another's parts");
        for (int i = 0; i < 1000; i += 2) {
            if (i % 4 == 0)
                hashtab_remove(&t, hashtab_find(&t, pairs[i].a, pairs[i].b, NULL, same_pair));
            else
                hashtab_unlink(&t, &pairs[i].link);
        }
        cr_assert_eq(t.count, 500);
        for (int i = 0; i < 1000; i++)
            cr_assert_eq(find_pair(&t, pairs[i].a, pairs[i].b), i % 2 ? &pairs[i] : NULL, "pair %d",
                         i);
        hashtab_destroy(&t);
    }
}

/* Every row of the error table has a default body that is the documented
 * shape, valid JSON, with the row's type, code and message (they are
 * written without escaping: a quote or backslash in a message would break
 * it here). */
Test(apierr, every_row_has_a_valid_default_body)
{
    for (int i = 0; i < APIERR_COUNT; i++) {
        const struct apierr_row *row = apierr_row((enum apierr_id)i);
        cJSON *doc = cJSON_Parse(apierr_default_json((enum apierr_id)i));
        cr_assert_not_null(doc, "row %d (%s): not JSON", i, row->code);
        cJSON *err = cJSON_GetObjectItemCaseSensitive(doc, "error");
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "type")->valuestring, row->type);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "code")->valuestring, row->code);
        cr_assert_str_eq(cJSON_GetObjectItemCaseSensitive(err, "message")->valuestring,
                         row->message);
        cr_assert(row->status >= 400 && row->status <= 599, "row %s: status %d", row->code,
                  row->status);
        cJSON_Delete(doc);
    }
}

/* ---- strict JSON (json_strict.h) ------------------------------------------------ */

/* json_strict_check over the whole NUL-terminated s. */
static enum json_strict_status strict(const char *s)
{
    return json_strict_check(s, strlen(s), NULL, NULL);
}

static void expect_syntax(const char *s, size_t len)
{
    size_t where = (size_t)-1;
    cr_assert_eq(json_strict_check(s, len, NULL, &where), JSON_STRICT_SYNTAX, "accepted: %.*s",
                 (int)len, s);
    cr_assert_leq(where, len, "%.*s: fault at %zu", (int)len, s, where);
}

static void expect_ok(const char *s)
{
    size_t where = 0;
    cr_assert_eq(json_strict_check(s, strlen(s), NULL, &where), JSON_STRICT_OK,
                 "refused at byte %zu: %s", where, s);
}

/* Whether a member's recorded value is exactly the text want. */
static void expect_span(const char *s, struct json_span v, const char *want)
{
    cr_assert_eq(v.len, strlen(want), "%.*s is not %s", (int)v.len, s + v.off, want);
    cr_assert_eq(memcmp(s + v.off, want, v.len), 0, "%.*s is not %s", (int)v.len, s + v.off, want);
}

/* One JSON text of any kind is accepted, whitespace around and inside it
 * included (RFC 8259 section 2: any value is a JSON text). */
Test(json_strict, every_kind_of_value_is_one_json_text)
{
    const char *ok[] = {
        "{}",
        "[]",
        "0",
        "\"s\"",
        "true",
        "false",
        "null",
        "\"\"",
        "{\"\":1}",
        " \t\r\n{ \"a\" : [ 1 , \"b\" , true , false , null , { } , [ ] ] }\n\r\t ",
        "{\"a\":{\"b\":[1,{\"c\":null}]},\"d\":[]}",
        "[1,\"x\",[2],{\"y\":3}]",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        expect_ok(ok[i]);
    const char *bad[] = {"", " ", "\n\t", "True", "FALSE", "nul", "tru", "nulll", "undefined"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
}

/* Numbers by RFC 8259's grammar exactly: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
 * Their size is not this check's business: 1e400 is a number (the reader of
 * its decimal text decides what it means). */
Test(json_strict, numbers_follow_the_grammar)
{
    const char *ok[] = {"0",
                        "-0",
                        "0.0",
                        "-0.0",
                        "1.0",
                        "10.50",
                        "1e400",
                        "-1e400",
                        "1e-400",
                        "1E+2",
                        "1.5e1",
                        "-0.0e-0",
                        "1000E-2",
                        "9007199254740993",
                        "123456789012345678901234567890.123456789"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        expect_ok(ok[i]);
        char body[200];
        snprintf(body, sizeof body, "{\"amount\":%s}", ok[i]);
        expect_ok(body);
    }
    const char *bad[] = {"01",    "-01",   "00",    "00012", "-",           "+1",
                         "1.",    ".5",    "1.e5",  "1e",    "1e+",         "1E-",
                         "--1",   "0x5a",  "NaN",   "-NaN",  "Infinity",    "-Infinity",
                         "1_000", "1 000", "1.2.3", "1e5.0", "\xef\xbc\x91"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        expect_syntax(bad[i], strlen(bad[i]));
        char body[200];
        snprintf(body, sizeof body, "{\"amount\":%s}", bad[i]);
        expect_syntax(body, strlen(body));
        snprintf(body, sizeof body, "[%s]", bad[i]);
        expect_syntax(body, strlen(body));
    }
}

/* Commas only between members or elements, a colon after every name, names
 * only as double-quoted strings, every container closed. */
Test(json_strict, separators_and_names_are_exact)
{
    const char *bad[] = {
        "[1,]",
        "{\"a\":1,}",
        "[,1]",
        "{,}",
        "[,]",
        "[1,,2]",
        "{\"a\":1,,\"b\":2}",
        "[1 2]",
        "{\"a\" 1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":}",
        "{\"a\"}",
        "{a:1}",
        "{'a':1}",
        "['a']",
        "{1:1}",
        "{null:1}",
        "{\"a\"::1}",
        "{\"a\":1",
        "[1",
        "[1}",
        "{\"a\":1]",
        "]",
        "}",
        "{\"a\":1}}",
        "[[1]]]",
        "/* c */{}",
        "{}// c",
        "{\"a\":1;\"b\":2}",
        "[1;2]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
}

/* Exactly one value: nothing but whitespace may follow it - not a second
 * value, not garbage, not a NUL. Only s[0..len) is read. */
Test(json_strict, nothing_may_follow_the_value)
{
    const char *bad[] = {"{} x",      "{}{}",       "{\"amount\":1}{\"amount\":999}",
                         "1 2",       "[] []",      "[],",
                         "null null", "\"a\"\"b\"", "{}]",
                         "truex"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
    expect_syntax("{}\0", 3);
    expect_syntax("{\"a\":1}\0garbage", 15);
    expect_syntax("{\"a\":1}\n\0", 9);
    size_t where = 0;
    cr_assert_eq(json_strict_check("{} x", 4, NULL, &where), JSON_STRICT_SYNTAX);
    cr_assert_eq(where, 3, "the fault is the x, not %zu", where);
    expect_ok("{}\n");
    /* Bytes past len are not part of the text. */
    cr_assert_eq(json_strict_check("[1]xyz", 3, NULL, NULL), JSON_STRICT_OK);
    cr_assert_eq(json_strict_check("12", 1, NULL, NULL), JSON_STRICT_OK);
    cr_assert_eq(json_strict_check("{\"a\":1}", 6, NULL, NULL), JSON_STRICT_SYNTAX);
    cr_assert_eq(json_strict_check("\"abc\"", 4, NULL, NULL), JSON_STRICT_SYNTAX);
    cr_assert_eq(json_strict_check("", 0, NULL, NULL), JSON_STRICT_SYNTAX);
}

/* Whitespace is space, tab, line feed and carriage return (RFC 8259 section
 * 2), and nothing else: not a form feed, a vertical tab, a no-break space or a
 * byte order mark. */
Test(json_strict, only_four_whitespace_characters)
{
    expect_ok(
        " \t\n\r[ \t\n\r1 \t\n\r, \t\n\r{ \t\n\r\"a\" \t\n\r: \t\n\r2 \t\n\r} \t\n\r] \t\n\r");
    const char *bad[] = {"\f{}",       "{}\f",       "\v{}",           "{\"a\":\v1}",     "[1,\f2]",
                         "\xc2\xa0{}", "{}\xc2\xa0", "\xef\xbb\xbf{}", "[1\xe2\x80\x83]", "\x1c{}"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
}

/* Inside a string: no raw control character (U+0000-U+001F), and only the
 * escapes RFC 8259 names; DEL and escaped controls other than U+0000 are
 * fine. The same rules hold for names. */
Test(json_strict, strings_refuse_controls_and_unknown_escapes)
{
    const char *bad[] = {
        "\"a\nb\"",    "\"a\tb\"",  "\"a\rb\"",    "\"\x1b[2J\"",  "\"\x01\"",
        "\"\x1f\"",    "\"\\x41\"", "\"\\a\"",     "\"\\'\"",      "\"\\0\"",
        "\"\\U0041\"", "\"\\u12\"", "\"\\u12G4\"", "\"\\u 123\"",  "\"\\\"",
        "\"abc",       "\"",        "\"\\",        "{\"a\nb\":1}", "{\"\\x41\":1}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
    expect_syntax("\"a\0b\"", 5); /* a raw NUL */
    expect_ok("\"\\\" \\\\ \\/ \\b \\f \\n \\r \\t\"");
    expect_ok("\"\\u0001 \\u001f \\u001F \\u0041 \\uFFFF \\uabcd \\u00e9\"");
    expect_ok("\"\x7f ~ ' caf\xc3\xa9\"");
    expect_ok("{\"am\\u006funt\":1,\"a\\tb\":2}");
}

/* \u0000 would cut cJSON's C strings (c1\u0000; DROP... read as c1): it is
 * refused in values and names alike. */
Test(json_strict, escaped_nul_is_refused)
{
    const char *bad[] = {
        "\"\\u0000\"",
        "\"c1\\u0000; DROP TABLE x\"",
        "{\"customer_id\":\"c1\\u0000x\"}",
        "{\"amount\\u0000junk\":1}",
        "[\"a\",\"\\u0000\"]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
    expect_ok("\"\\u0001\"");
    expect_ok("\"\\u0100\"");
}

/* A \u escape of a UTF-16 surrogate must be a high one followed at once by
 * a low one: no lone surrogate is ever decoded. */
Test(json_strict, surrogates_only_in_pairs)
{
    const char *bad[] = {
        "\"\\ud800\"",         "\"\\udbff\"",
        "\"\\udc00\"",         "\"\\udfff\"",
        "\"\\ud800x\"",        "\"\\udc00x\"",
        "\"\\ud800\\u0041\"",  "\"\\udc00\\ud800\"",
        "\"\\ud800\\ud800\"",  "\"\\ud83d\\n\"",
        "\"\\ud83d \\udcb8\"", "\"\\ud83d\\udcb\"",
        "\"\\ud83d\\\"",       "\"\\ud83d",
        "{\"\\ud800\":1}",     "{\"d\":\"\\ud83d\\udcb8\\udcb8\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        expect_syntax(bad[i], strlen(bad[i]));
    expect_ok("\"\\ud83d\\udcb8\"");
    expect_ok("\"\\uD800\\uDC00\"");
    expect_ok("\"\\udbff\\udfff\"");
    expect_ok("\"\\ud7ff \\ue000\"");
    expect_ok("{\"\\ud83d\\udcb8\":\"a\\ud83d\\udcb8b\"}");
}

/* The whole text is UTF-8 (RFC 8259 section 8.1): no overlong form, no
 * encoded surrogate, nothing above U+10FFFF, no cut sequence, no stray byte. */
Test(json_strict, invalid_utf8_is_refused)
{
    const char *bad_in_string[] = {
        "\xff",
        "\xfe",
        "\x80",
        "\xbf",
        "\xc0\xaf",
        "\xc1\xbf",
        "\xe0\x80\xaf",
        "\xe0\x9f\xbf",
        "\xf0\x80\x80\xaf",
        "\xed\xa0\x80",
        "\xed\xbf\xbf",
        "\xf4\x90\x80\x80",
        "\xf5\x80\x80\x80",
        "\xe2\x82",
        "\xc3",
        "\xf0\x9f\x92",
        "\xc3\x28",
        "a\xe9"
        "b",
    };
    for (size_t i = 0; i < sizeof bad_in_string / sizeof bad_in_string[0]; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"description\":\"%s\"}", bad_in_string[i]);
        expect_syntax(body, strlen(body));
        snprintf(body, sizeof body, "{\"%s\":1}", bad_in_string[i]);
        expect_syntax(body, strlen(body));
    }
    /* Cut at the end of the input. */
    expect_syntax("\"\xf0\x9f\x92", 4);
    /* Outside a string, non-ASCII is no token at all. */
    expect_syntax("[\xc3\xa9]", 4);
    expect_syntax("{\"a\":1\xc3\xa9}", 9);
    /* The edges of what is well formed. */
    const char *ok[] = {
        "\xc2\x80",         "\xdf\xbf",         "\xe0\xa0\x80",
        "\xed\x9f\xbf",     "\xee\x80\x80",     "\xef\xbf\xbf",
        "\xf0\x90\x80\x80", "\xf4\x8f\xbf\xbf", "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x92\xb8"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        char body[64];
        snprintf(body, sizeof body, "{\"%s\":\"%s\"}", ok[i], ok[i]);
        expect_ok(body);
    }
}

/* Arrays and objects nest at most JSON_STRICT_MAX_DEPTH levels (the
 * top-level value is level 1); one level more is JSON_STRICT_TOO_DEEP,
 * however it is made, however deep it goes, with no recursion to run out of
 * stack. */
Test(json_strict, depth_is_bounded)
{
    for (int depth = 1; depth <= JSON_STRICT_MAX_DEPTH + 1; depth++) {
        for (int obj = 0; obj < 2; obj++) {
            char s[256] = "";
            for (int i = 0; i < depth; i++)
                strcat(s, obj ? "{\"a\":" : "[");
            strcat(s, "1");
            for (int i = 0; i < depth; i++)
                strcat(s, obj ? "}" : "]");
            enum json_strict_status want =
                depth <= JSON_STRICT_MAX_DEPTH ? JSON_STRICT_OK : JSON_STRICT_TOO_DEEP;
            cr_assert_eq(strict(s), want, "%s", s);
        }
    }
    cr_assert_eq(JSON_STRICT_MAX_DEPTH, 4);
    cr_assert_eq(strict("[{\"a\":[{}]}]"), JSON_STRICT_OK);
    cr_assert_eq(strict("[[[[1]]],[[[2]]],{\"b\":[[3]]}]"), JSON_STRICT_OK, "siblings add none");
    cr_assert_eq(strict("[[[[[]]]]]"), JSON_STRICT_TOO_DEEP, "an empty container is a level");
    cr_assert_eq(strict("{\"a\":[[[{}]]]}"), JSON_STRICT_TOO_DEEP);
    cr_assert_eq(strict("{\"a\":1,\"b\":[[[[2]]]]}"), JSON_STRICT_TOO_DEEP);
    cr_assert_eq(strict("[[[["), JSON_STRICT_SYNTAX, "unclosed, not deeper than 4");
    size_t where = 0;
    cr_assert_eq(json_strict_check("[[[[[1]]]]]", 11, NULL, &where), JSON_STRICT_TOO_DEEP);
    cr_assert_eq(where, 4, "the fault is the fifth [, not byte %zu", where);
    for (int obj = 0; obj < 2; obj++) {
        size_t n = 1000000;
        char *deep = malloc(n);
        cr_assert_not_null(deep);
        for (size_t i = 0; i < n; i++)
            deep[i] = '[';
        if (obj)
            for (size_t i = 0; i + 5 <= n; i += 5)
                memcpy(deep + i, "{\"a\":", 5);
        cr_assert_eq(json_strict_check(deep, n, NULL, NULL), JSON_STRICT_TOO_DEEP);
        free(deep);
    }
}

/* The top-level object's members: their count, and the exact text of each
 * value (no whitespace around it), in document order - the order of cJSON's
 * children, a repeated name included (refusing it is the caller's business). */
Test(json_strict, top_level_values_are_recorded)
{
    const char *s = " { \"amount\" : 10.50 , \"s\":\"x\\\"y\\u00e9\",\n\"arr\":[1, {\"k\":2}],"
                    "\"o\":{ },\"n\":null,\"t\":true,\"e\":1E+400,\"amount\":-0 }\n";
    struct json_top top;
    memset(&top, 0xab, sizeof top);
    cr_assert_eq(json_strict_check(s, strlen(s), &top, NULL), JSON_STRICT_OK);
    cr_assert_eq(top.count, 8);
    const char *want[] = {
        "10.50", "\"x\\\"y\\u00e9\"", "[1, {\"k\":2}]", "{ }", "null", "true", "1E+400", "-0"};
    for (size_t i = 0; i < 8; i++)
        expect_span(s, top.value[i], want[i]);
    cJSON *root = cJSON_ParseWithLength(s, strlen(s));
    cr_assert_not_null(root);
    size_t children = 0;
    for (cJSON *c = root->child; c; c = c->next)
        children++;
    cr_assert_eq(children, top.count);
    cr_assert_str_eq(root->child->string, "amount");
    cr_assert_str_eq(root->child->next->next->next->next->next->next->next->string, "amount");
    cJSON_Delete(root);

    /* Not an object at the top: no members. */
    const char *others[] = {"[1,{\"a\":2}]", "1", "\"{\\\"a\\\":1}\"", "null", "{}", "{ }"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        memset(&top, 0xab, sizeof top);
        cr_assert_eq(json_strict_check(others[i], strlen(others[i]), &top, NULL), JSON_STRICT_OK);
        cr_assert_eq(top.count, 0, "%s", others[i]);
    }
}

/* Past JSON_STRICT_MEMBERS members the count goes on and only the first
 * JSON_STRICT_MEMBERS values are recorded. */
Test(json_strict, members_beyond_the_recorded_ones_are_counted)
{
    char s[1024] = "{";
    for (int i = 0; i < JSON_STRICT_MEMBERS + 4; i++) {
        char m[32];
        snprintf(m, sizeof m, "%s\"m%d\":%d", i ? "," : "", i, 1000 + i);
        strcat(s, m);
    }
    strcat(s, "}");
    struct json_top top;
    cr_assert_eq(json_strict_check(s, strlen(s), &top, NULL), JSON_STRICT_OK);
    cr_assert_eq(top.count, (size_t)JSON_STRICT_MEMBERS + 4);
    for (int i = 0; i < JSON_STRICT_MEMBERS; i++) {
        char want[16];
        snprintf(want, sizeof want, "%d", 1000 + i);
        expect_span(s, top.value[i], want);
    }
}

/* *where is the byte offset of the fault: the first byte that cannot be
 * part of one JSON text. */
Test(json_strict, where_names_the_faulty_byte)
{
    static const struct {
        const char *s;
        size_t at;
    } cases[] = {
        {"[1,]", 3},  {"{\"a\":1,}", 7}, {"{\"a\":01}", 6}, {"{\"a\" 1}", 5},
        {"[1 2]", 3}, {"{} x", 3},       {"{'a':1}", 1},    {"[NaN]", 1},
        {"  x", 2},   {"[1,2", 4},       {"{\"a\":[1}", 7}, {"\xef\xbb\xbf{}", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t where = (size_t)-1;
        cr_assert_eq(json_strict_check(cases[i].s, strlen(cases[i].s), NULL, &where),
                     JSON_STRICT_SYNTAX, "%s", cases[i].s);
        cr_assert_eq(where, cases[i].at, "%s: fault at %zu, not %zu", cases[i].s, where,
                     cases[i].at);
    }
}
