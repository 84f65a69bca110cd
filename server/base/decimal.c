/* decimal.c - integers as decimal text (decimal.h) */
#include "decimal.h"

int decimal_digits(char *out, unsigned long long value, int width)
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

int decimal_fixed(char *out, long long value, int decimals)
{
    int n = 0;
    unsigned long long u = (unsigned long long)value;
    if (value < 0) {
        out[n++] = '-';
        u = 0 - u;
    }
    unsigned long long p = 1;
    for (int i = 0; i < decimals; i++)
        p *= 10;
    n += decimal_digits(out + n, u / p, 1);
    if (decimals > 0) {
        out[n++] = '.';
        n += decimal_digits(out + n, u % p, decimals);
    }
    return n;
}
