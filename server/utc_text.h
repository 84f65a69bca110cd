/* utc_text.h - a Unix second as UTC text, cached per thread
 *
 * Each thread asks for the same second over and over (the time of its log
 * lines, the Date header, the records it replays), and gmtime_r + strftime
 * cost more than the rest of a log line: one conversion per thread and
 * second instead of one per use.
 */
#ifndef MOCKERY_UTC_TEXT_H
#define MOCKERY_UTC_TEXT_H

#include <time.h>

/* "YYYY-MM-DDTHH:MM:SS" (19 characters and a NUL) */
void utc_iso_second(time_t secs, char out[20]);
/* RFC 9110's IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT" (29 and a NUL) */
void utc_http_date(time_t secs, char out[30]);
/* value as decimal digits, at least width of them (zero-padded); returns the
 * length written to out (at most 20, no NUL) */
int utc_digits(char *out, unsigned long long value, int width);

#endif
