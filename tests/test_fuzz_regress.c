/* test_fuzz_regress.c - every seed and every kept crash of the fuzzers,
 * replayed through the same entry points (under ASan in the sanitizer run),
 * each on a thread with a civetweb worker's stack */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

/* Feeds every file of FUZZ_DIR/<kind>/<target>/ to fn; returns how many. */
static int replay(const char *kind, const char *target, int (*fn)(const uint8_t *, size_t))
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s/%s", FUZZ_DIR, kind, target);
    DIR *d = opendir(dir);
    if (!d)
        return 0; /* no regressions kept for this target (yet) */
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        cr_assert_not_null(f, "%s", path);
        uint8_t buf[1 << 16];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        fuzz_on_worker_stack(fn, buf, len); /* as on a civetweb worker */
        n++;
    }
    closedir(d);
    return n;
}

static void replay_all(const char *target, int (*fn)(const uint8_t *, size_t))
{
    int seeds = replay("corpus", target, fn);
    cr_assert_gt(seeds, 0, "no seed corpus for %s", target);
    replay("regressions", target, fn);
}

Test(fuzz_regress, body_corpus)
{
    replay_all("body", fuzz_body_one);
}
Test(fuzz_regress, key_corpus)
{
    replay_all("key", fuzz_key_one);
}
Test(fuzz_regress, fingerprint_corpus)
{
    replay_all("fingerprint", fuzz_fingerprint_one);
}
