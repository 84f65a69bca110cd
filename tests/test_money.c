/* test_money.c - amounts: currency digits, decimal text to exact minor units, formatting */
#define _POSIX_C_SOURCE 200809L
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "money.h"

/* ---- money ---------------------------------------------------------------------- */

Test(money, currency_table)
{
    cr_assert_eq(money_currency_digits("USD"), 2);
    cr_assert_eq(money_currency_digits("EUR"), 2);
    cr_assert_eq(money_currency_digits("JPY"), 0);
    cr_assert_eq(money_currency_digits("KWD"), 3);
    cr_assert_eq(money_currency_digits("CLF"), 4);
    cr_assert_eq(money_currency_digits("usd"), -1);
    cr_assert_eq(money_currency_digits("XXX"), -1);
    cr_assert_eq(money_currency_digits("US"), -1);
    cr_assert_eq(money_currency_digits("USDD"), -1);
}

static enum money_status parse(const char *text, int digits, int64_t *m)
{
    return money_parse(text, strlen(text), digits, m);
}

Test(money, amounts_become_exact_minor_units)
{
    int64_t m = 0;
    cr_assert_eq(parse("10.5", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1050);
    cr_assert_eq(parse("0.01", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1);
    cr_assert_eq(parse("0.30", 2, &m), MONEY_OK);
    cr_assert_eq(m, 30);
    cr_assert_eq(parse("999999.99", 2, &m), MONEY_OK);
    cr_assert_eq(m, 99999999);
    cr_assert_eq(parse("1000", 0, &m), MONEY_OK);
    cr_assert_eq(m, 1000);
    cr_assert_eq(parse("1.234", 3, &m), MONEY_OK);
    cr_assert_eq(m, 1234);
    cr_assert_eq(parse("1.5e1", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1500);
    cr_assert_eq(parse("1000E-2", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1000);
    cr_assert_eq(parse("1.0e-2", 2, &m), MONEY_OK);
    cr_assert_eq(m, 1);
    cr_assert_eq(parse("12.3400000000", 2, &m), MONEY_OK); /* zeros below the unit are exact */
    cr_assert_eq(m, 1234);
    cr_assert_eq(parse("0.0001", 4, &m), MONEY_OK);
    cr_assert_eq(m, 1);
}

/* No binary floating point decides what is charged: a digit below the minor
 * unit, however far down, is refused rather than rounded away. */
Test(money, edges_are_refused_not_rounded)
{
    int64_t m = 77;
    cr_assert_eq(parse("0", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("-0", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("0.000", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("-5", 2, &m), MONEY_NOT_POSITIVE);
    cr_assert_eq(parse("1e999", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("1e300", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("1000000", 2, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("999999.991", 3, &m), MONEY_TOO_LARGE);
    cr_assert_eq(parse("10.001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("0.001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("10.5", 0, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1.2345", 3, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("12.3400000001", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("999999.9899999", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("100.00000001", 0, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1.00000000001", 4, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("1e-999999999999999999999", 2, &m), MONEY_TOO_PRECISE);
    cr_assert_eq(parse("00012", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("1.", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse(".5", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("1e", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("0x5a", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(parse("", 2, &m), MONEY_NOT_NUMBER);
    cr_assert_eq(m, 77, "out-parameter written on failure");
}

Test(money, format_uses_the_currency_digits)
{
    char b[32];
    cr_assert_eq(money_format(1050, 2, b, sizeof b), 5);
    cr_assert_str_eq(b, "10.50");
    money_format(5, 2, b, sizeof b);
    cr_assert_str_eq(b, "0.05");
    money_format(1000, 0, b, sizeof b);
    cr_assert_str_eq(b, "1000");
    money_format(1234, 3, b, sizeof b);
    cr_assert_str_eq(b, "1.234");
    cr_assert_eq(money_format(1050, 2, b, 3), -1);
    cr_assert_eq(money_format(99999999, 2, b, sizeof b), 9);
    cr_assert_str_eq(b, "999999.99");
    money_format(1, 4, b, sizeof b);
    cr_assert_str_eq(b, "0.0001");
    cr_assert_eq(money_format(1050, 2, b, 6), 5); /* exactly room for the NUL */
    cr_assert_str_eq(b, "10.50");
}
