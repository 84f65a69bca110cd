/* utc_text.c - a Unix second as UTC text, cached per thread (utc_text.h) */
#define _POSIX_C_SOURCE 200809L
#include "utc_text.h"

#include <string.h>

struct cached {
    int valid;
    time_t secs;
    char text[32];
};

static void convert(struct cached *c, time_t secs, const char *format)
{
    if (c->valid && c->secs == secs)
        return;
    struct tm tm;
    if (!gmtime_r(&secs, &tm) || strftime(c->text, sizeof c->text, format, &tm) == 0) {
        c->text[0] = '\0';
        c->valid = 0;
        return;
    }
    c->secs = secs;
    c->valid = 1;
}

void utc_iso_second(time_t secs, char out[20])
{
    static _Thread_local struct cached c;
    convert(&c, secs, "%Y-%m-%dT%H:%M:%S");
    memcpy(out, c.text, 20);
    out[19] = '\0';
}

void utc_http_date(time_t secs, char out[30])
{
    static _Thread_local struct cached c;
    convert(&c, secs, "%a, %d %b %Y %H:%M:%S GMT");
    memcpy(out, c.text, 30);
    out[29] = '\0';
}

int utc_digits(char *out, unsigned long long value, int width)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    while (n < width && n < (int)sizeof tmp)
        tmp[n++] = '0';
    for (int i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}
