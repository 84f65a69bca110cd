/* utf8.c - UTF-8 checks, character-boundary cuts and repair */
#define _POSIX_C_SOURCE 200809L
#include "utf8.h"

#include <stdlib.h>
#include <string.h>

size_t utf8_sequence(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    if (len == 0)
        return 0;
    unsigned c = p[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0)
        n = 2, min = 0x80, c &= 0x1F;
    else if ((c & 0xF0) == 0xE0)
        n = 3, min = 0x800, c &= 0x0F;
    else if ((c & 0xF8) == 0xF0)
        n = 4, min = 0x10000, c &= 0x07;
    else
        return 0;
    if (len < n)
        return 0;
    for (size_t k = 1; k < n; k++) {
        if ((p[k] & 0xC0) != 0x80)
            return 0;
        c = (c << 6) | (p[k] & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    return n;
}

int utf8_valid(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_sequence(s + i, len - i);
        if (n == 0 || s[i] == '\0')
            return 0;
        i += n;
    }
    return 1;
}

size_t utf8_clip(const char *s, size_t max)
{
    size_t i = 0, len = strlen(s);
    while (i < len) {
        size_t n = utf8_sequence(s + i, len - i);
        if (n == 0)
            n = 1; /* a stray byte counts alone; utf8_repair deals with it */
        if (i + n > max)
            break;
        i += n;
    }
    return i;
}

size_t utf8_copy(char *dst, size_t dstlen, const char *src)
{
    size_t n = utf8_clip(src, dstlen - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

char *utf8_repair(const char *s, size_t len)
{
    /* Each bad byte becomes three: at most 3 * len + 1. */
    char *out = malloc(3 * len + 1);
    if (!out)
        return NULL;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t n = utf8_sequence(s + i, len - i);
        if (n == 0 || s[i] == '\0') {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            continue;
        }
        memcpy(out + o, s + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    return out;
}
