/* utc_text.h - a Unix second as UTC text, by arithmetic
 *
 * Every log line, Date header and replayed record needs a time as text, and
 * gmtime_r + strftime cost more than the rest of a log line (a per-thread
 * cache of one second did not help: a replay's log lines alternate between
 * now and the record's own second). No locale, no time zone, no lock:
 * thread-safe.
 */
#ifndef MOCKERY_UTC_TEXT_H
#define MOCKERY_UTC_TEXT_H

#include <stdint.h>
#include <time.h>

/* Unix microseconds as RFC 3339 UTC, "2026-11-27T23:13:07.123456Z" (27
 * characters and a NUL); "" for a year outside 0000-9999. */
void utc_iso_micro(int64_t us, char out[28]);

/* "YYYY-MM-DDTHH:MM:SS" (19 characters and a NUL); "" for a year outside
 * 0000-9999 */
void utc_iso_second(time_t secs, char out[20]);
/* RFC 9110's IMF-fixdate, "Sun, 06 Nov 1994 08:49:37 GMT" (29 and a NUL);
 * "" for a year outside 0000-9999 */
void utc_http_date(time_t secs, char out[30]);

#endif
