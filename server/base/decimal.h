/* decimal.h - integers as decimal text, without printf
 *
 * Every request writes numbers: the log line's status, duration and amount,
 * the response head's status and length, times' fractions. snprintf was a
 * tenth of a replay's instructions; these are a few per digit. Pure
 * functions: thread-safe.
 */
#ifndef MOCKERY_DECIMAL_H
#define MOCKERY_DECIMAL_H

/* value as decimal digits, at least width of them (zero-padded); returns the
 * length written to out (at most 20, no NUL) */
int decimal_digits(char *out, unsigned long long value, int width);

/* value in units of 10^-decimals, written with that many digits after a
 * point ("10.50" for 1050 and 2, "-3" for -3 and 0); returns the length
 * written to out (at most 42, no NUL). decimals: 0 to 18. */
int decimal_fixed(char *out, long long value, int decimals);

#endif
