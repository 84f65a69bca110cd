/* money.h - ISO 4217 currencies and amounts as integer minor units
 *
 * Amounts are never held as floats: the decimal text of a JSON number is
 * turned into minor units once, exactly, or refused.
 */
#ifndef MOCKERY_MONEY_H
#define MOCKERY_MONEY_H

#include <stddef.h>
#include <stdint.h>

enum money_status {
    MONEY_OK = 0,
    MONEY_NOT_NUMBER,   /* not the text of a JSON number */
    MONEY_NOT_POSITIVE, /* zero or negative */
    MONEY_TOO_LARGE,    /* above MONEY_MAX_TEXT */
    MONEY_TOO_PRECISE,  /* more decimals than the currency has */
};

#define MONEY_MAX_TEXT "999999.99"

/* Minor-unit digits of a supported upper-case ISO 4217 code (0, 2, 3 or 4),
 * or -1 when the code is not in the table. */
int money_currency_digits(const char *code);

/* Converts the text of a JSON number (s[0..len), RFC 8259 syntax, exponent
 * allowed) to minor units for a currency with `digits` decimals, exactly:
 * no binary floating point is involved, and a digit below the minor unit,
 * however far down, is MONEY_TOO_PRECISE rather than rounded away. *minor is
 * written only on MONEY_OK. */
enum money_status money_parse(const char *s, size_t len, int digits, int64_t *minor);

/* Writes minor units as a decimal with exactly `digits` decimals ("10.50",
 * "1000"). Returns the length, or -1 if buf is too small. */
int money_format(int64_t minor, int digits, char *buf, size_t len);

#endif
