/* money.c - ISO 4217 table and exact conversion to minor units */
#define _POSIX_C_SOURCE 200809L
#include "money.h"

#include <stdio.h>
#include <string.h>

#include "decimal.h"

struct currency {
    char code[4];
    int digits;
};

/* Active ISO 4217 codes with their minor units (sorted, for bsearch). */
static const struct currency CURRENCIES[] = {
    {"AED", 2}, {"AFN", 2}, {"ALL", 2}, {"AMD", 2}, {"ANG", 2}, {"AOA", 2}, {"ARS", 2}, {"AUD", 2},
    {"AWG", 2}, {"AZN", 2}, {"BAM", 2}, {"BBD", 2}, {"BDT", 2}, {"BGN", 2}, {"BHD", 3}, {"BIF", 0},
    {"BMD", 2}, {"BND", 2}, {"BOB", 2}, {"BRL", 2}, {"BSD", 2}, {"BTN", 2}, {"BWP", 2}, {"BYN", 2},
    {"BZD", 2}, {"CAD", 2}, {"CDF", 2}, {"CHF", 2}, {"CLF", 4}, {"CLP", 0}, {"CNY", 2}, {"COP", 2},
    {"CRC", 2}, {"CUP", 2}, {"CVE", 2}, {"CZK", 2}, {"DJF", 0}, {"DKK", 2}, {"DOP", 2}, {"DZD", 2},
    {"EGP", 2}, {"ERN", 2}, {"ETB", 2}, {"EUR", 2}, {"FJD", 2}, {"FKP", 2}, {"GBP", 2}, {"GEL", 2},
    {"GHS", 2}, {"GIP", 2}, {"GMD", 2}, {"GNF", 0}, {"GTQ", 2}, {"GYD", 2}, {"HKD", 2}, {"HNL", 2},
    {"HTG", 2}, {"HUF", 2}, {"IDR", 2}, {"ILS", 2}, {"INR", 2}, {"IQD", 3}, {"IRR", 2}, {"ISK", 0},
    {"JMD", 2}, {"JOD", 3}, {"JPY", 0}, {"KES", 2}, {"KGS", 2}, {"KHR", 2}, {"KMF", 0}, {"KPW", 2},
    {"KRW", 0}, {"KWD", 3}, {"KYD", 2}, {"KZT", 2}, {"LAK", 2}, {"LBP", 2}, {"LKR", 2}, {"LRD", 2},
    {"LSL", 2}, {"LYD", 3}, {"MAD", 2}, {"MDL", 2}, {"MGA", 2}, {"MKD", 2}, {"MMK", 2}, {"MNT", 2},
    {"MOP", 2}, {"MRU", 2}, {"MUR", 2}, {"MVR", 2}, {"MWK", 2}, {"MXN", 2}, {"MYR", 2}, {"MZN", 2},
    {"NAD", 2}, {"NGN", 2}, {"NIO", 2}, {"NOK", 2}, {"NPR", 2}, {"NZD", 2}, {"OMR", 3}, {"PAB", 2},
    {"PEN", 2}, {"PGK", 2}, {"PHP", 2}, {"PKR", 2}, {"PLN", 2}, {"PYG", 0}, {"QAR", 2}, {"RON", 2},
    {"RSD", 2}, {"RUB", 2}, {"RWF", 0}, {"SAR", 2}, {"SBD", 2}, {"SCR", 2}, {"SDG", 2}, {"SEK", 2},
    {"SGD", 2}, {"SHP", 2}, {"SLE", 2}, {"SOS", 2}, {"SRD", 2}, {"SSP", 2}, {"STN", 2}, {"SVC", 2},
    {"SYP", 2}, {"SZL", 2}, {"THB", 2}, {"TJS", 2}, {"TMT", 2}, {"TND", 3}, {"TOP", 2}, {"TRY", 2},
    {"TTD", 2}, {"TWD", 2}, {"TZS", 2}, {"UAH", 2}, {"UGX", 0}, {"USD", 2}, {"UYU", 2}, {"UZS", 2},
    {"VES", 2}, {"VND", 0}, {"VUV", 0}, {"WST", 2}, {"XAF", 0}, {"XCD", 2}, {"XOF", 0}, {"XPF", 0},
    {"YER", 2}, {"ZAR", 2}, {"ZMW", 2}, {"ZWL", 2},
};

int money_currency_digits(const char *code)
{
    size_t lo = 0, hi = sizeof CURRENCIES / sizeof CURRENCIES[0];
    if (!code || strlen(code) != 3)
        return -1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(code, CURRENCIES[mid].code);
        if (c == 0)
            return CURRENCIES[mid].digits;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

static int64_t pow10i(int n)
{
    int64_t p = 1;
    while (n-- > 0)
        p *= 10;
    return p;
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

enum money_status money_parse(const char *s, size_t len, int digits, int64_t *minor)
{
    size_t i = 0;
    int negative = 0;
    if (i < len && s[i] == '-') {
        negative = 1;
        i++;
    }
    /* The digits of the integer and fraction parts, as one sequence: where
     * it starts, where the fraction starts, and its first and last nonzero
     * digit. */
    size_t int_start = i, int_end, frac_start = 0, frac_end = 0;
    while (i < len && is_digit(s[i]))
        i++;
    int_end = i;
    if (int_end == int_start || (s[int_start] == '0' && int_end - int_start > 1))
        return MONEY_NOT_NUMBER;
    if (i < len && s[i] == '.') {
        frac_start = ++i;
        while (i < len && is_digit(s[i]))
            i++;
        frac_end = i;
        if (frac_end == frac_start)
            return MONEY_NOT_NUMBER;
    }
    long long exp10 = 0; /* saturated: far beyond any amount either way */
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        int eneg = 0;
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-'))
            eneg = s[i++] == '-';
        if (i >= len || !is_digit(s[i]))
            return MONEY_NOT_NUMBER;
        for (; i < len && is_digit(s[i]); i++)
            if (exp10 < 1000000000LL)
                exp10 = exp10 * 10 + (s[i] - '0');
        if (eneg)
            exp10 = -exp10;
    }
    if (i != len)
        return MONEY_NOT_NUMBER;

    /* Position k of the sequence: integer digits first, then fraction. */
    size_t ni = int_end - int_start, nf = frac_end - frac_start;
#define DIGIT(k) (s[(k) < ni ? int_start + (k) : frac_start + (k)-ni] - '0')
    size_t first = ni + nf, last = 0;
    for (size_t k = 0; k < ni + nf; k++)
        if (DIGIT(k) != 0) {
            if (first == ni + nf)
                first = k;
            last = k;
        }
    if (first == ni + nf || negative)
        return MONEY_NOT_POSITIVE;
    /* value = digits[first..last] * 10^e, with e the power of the last one */
    long long e = (long long)ni - 1 - (long long)last + exp10;
    long long magnitude = (long long)(last - first + 1) + e; /* integer digits */
    if (magnitude > 7)
        return MONEY_TOO_LARGE; /* 10,000,000 or more */
    if (e + digits < 0)
        return MONEY_TOO_PRECISE; /* a nonzero digit below the minor unit */
    /* At most 7 + 4 digits: exact in an int64. */
    int64_t m = 0;
    for (size_t k = first; k <= last; k++)
        m = m * 10 + DIGIT(k);
#undef DIGIT
    m *= pow10i((int)(e + digits));
    /* value <= 999999.99  <=>  m * 100 <= 99999999 * 10^digits */
    if (m * 100 > 99999999LL * pow10i(digits))
        return MONEY_TOO_LARGE;
    *minor = m;
    return MONEY_OK;
}

int money_format(int64_t minor, int digits, char *buf, size_t len)
{
    char text[48];
    size_t n = (size_t)decimal_fixed(text, (long long)minor, digits);
    if (n >= len)
        return -1;
    memcpy(buf, text, n);
    buf[n] = '\0';
    return (int)n;
}
