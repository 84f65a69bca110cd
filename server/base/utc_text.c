/* utc_text.c - a Unix second as UTC text, by arithmetic (utc_text.h) */
#define _POSIX_C_SOURCE 200809L
#include "utc_text.h"

#include <string.h>

#include "decimal.h"

void utc_iso_micro(int64_t us, char out[28])
{
    int64_t secs = us / 1000000, frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    utc_iso_second((time_t)secs, out);
    if (!out[0])
        return;
    size_t n = 19;
    out[n++] = '.';
    n += (size_t)decimal_digits(out + n, (unsigned long long)frac, 6);
    out[n++] = 'Z';
    out[n] = '\0';
}

/* The civil date of a day count since 1970-01-01 (proleptic Gregorian, as
 * gmtime_r): Howard Hinnant's civil_from_days. */
static void civil_from_days(long long z, long long *y, int *m, int *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long doe = z - era * 146097;                                      /* [0, 146096] */
    long long yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* [0, 399] */
    long long doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* [0, 365] */
    long long mp = (5 * doy + 2) / 153;                                    /* [0, 11], from March */
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* The parts of secs; 0, or -1 for a year outside 0000-9999. */
static int split(time_t secs, long long *y, int *mon, int *day, int *hms, int *wday)
{
    long long s = (long long)secs;
    long long days = s / 86400, sod = s % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    civil_from_days(days, y, mon, day);
    *hms = (int)sod;
    *wday = (int)(((days % 7) + 11) % 7); /* 1970-01-01 was a Thursday (4) */
    return *y >= 0 && *y <= 9999 ? 0 : -1;
}

static void two(char *out, int v)
{
    out[0] = (char)('0' + v / 10);
    out[1] = (char)('0' + v % 10);
}

void utc_iso_second(time_t secs, char out[20])
{
    long long y;
    int mon, day, hms, wday;
    if (split(secs, &y, &mon, &day, &hms, &wday) != 0) {
        out[0] = '\0';
        return;
    }
    memcpy(out, "0000-00-00T00:00:00", 20);
    two(out, (int)(y / 100));
    two(out + 2, (int)(y % 100));
    two(out + 5, mon);
    two(out + 8, day);
    two(out + 11, hms / 3600);
    two(out + 14, hms / 60 % 60);
    two(out + 17, hms % 60);
}

void utc_http_date(time_t secs, char out[30])
{
    static const char DAYS[] = "SunMonTueWedThuFriSat";
    static const char MONTHS[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    long long y;
    int mon, day, hms, wday;
    if (split(secs, &y, &mon, &day, &hms, &wday) != 0) {
        out[0] = '\0';
        return;
    }
    memcpy(out, "Sun, 00 Jan 0000 00:00:00 GMT", 30);
    memcpy(out, DAYS + 3 * wday, 3);
    two(out + 5, day);
    memcpy(out + 8, MONTHS + 3 * (mon - 1), 3);
    two(out + 12, (int)(y / 100));
    two(out + 14, (int)(y % 100));
    two(out + 17, hms / 3600);
    two(out + 20, hms / 60 % 60);
    two(out + 23, hms % 60);
}
