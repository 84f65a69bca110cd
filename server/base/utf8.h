/* utf8.h - UTF-8 checks for what comes in and repairs for what goes out
 *
 * Everything the server echoes (error bodies, log lines) must be valid
 * UTF-8: input is checked with utf8_valid(), text cut to a size is cut at a
 * character boundary with utf8_clip(), and text from elsewhere (civetweb's
 * messages, decoded paths) is repaired with utf8_repair(). Reentrant.
 */
#ifndef MOCKERY_UTF8_H
#define MOCKERY_UTF8_H

#include <stddef.h>

/* The length of the well-formed UTF-8 sequence (no overlong form, no
 * surrogate, at most U+10FFFF) at s[0..len), or 0 when there is none. A NUL
 * byte is a sequence of length 1. */
size_t utf8_sequence(const char *s, size_t len);

/* Whether s[0..len) is well-formed UTF-8 with no NUL byte. */
int utf8_valid(const char *s, size_t len);

/* The longest prefix of the NUL-terminated s of at most max bytes that ends
 * on a character boundary: its length. */
size_t utf8_clip(const char *s, size_t max);

/* Copies src into dst (dstlen > 0) cut at a character boundary so that it
 * fits with its NUL. Returns the length copied. */
size_t utf8_copy(char *dst, size_t dstlen, const char *src);

/* A malloc'd NUL-terminated copy of s[0..len) in which every byte that is
 * not part of a well-formed sequence (and every NUL) is replaced by U+FFFD;
 * NULL on allocation failure. */
char *utf8_repair(const char *s, size_t len);

#endif
