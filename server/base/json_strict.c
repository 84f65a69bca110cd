/* json_strict.c - RFC 8259 checked iteratively, with a depth bound */
#define _POSIX_C_SOURCE 200809L
#include "json_strict.h"

#include <string.h>

#include "utf8.h"

struct scan {
    const char *s;
    size_t len, pos;
};

static void skip_ws(struct scan *c)
{
    while (c->pos < c->len) {
        char ch = c->s[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r')
            return;
        c->pos++;
    }
}

static int peek(const struct scan *c)
{
    return c->pos < c->len ? (unsigned char)c->s[c->pos] : -1;
}

static int hex4(const struct scan *c, size_t at, unsigned *out)
{
    unsigned v = 0;
    if (at + 4 > c->len)
        return -1;
    for (size_t i = at; i < at + 4; i++) {
        char h = c->s[i];
        v <<= 4;
        if (h >= '0' && h <= '9')
            v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f')
            v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F')
            v |= (unsigned)(h - 'A' + 10);
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* A string starting at the opening quote: no raw control character, valid
 * UTF-8, known escapes only, no \u0000, surrogates only in pairs. */
static int string(struct scan *c)
{
    c->pos++; /* the quote */
    while (c->pos < c->len) {
        unsigned char ch = (unsigned char)c->s[c->pos];
        if (ch == '"') {
            c->pos++;
            return 0;
        }
        if (ch < 0x20)
            return -1;
        if (ch >= 0x80) {
            size_t n = utf8_sequence(c->s + c->pos, c->len - c->pos);
            if (n == 0)
                return -1;
            c->pos += n;
            continue;
        }
        if (ch != '\\') {
            c->pos++;
            continue;
        }
        if (c->pos + 1 >= c->len)
            return -1;
        char e = c->s[c->pos + 1];
        if (strchr("\"\\/bfnrt", e) && e) {
            c->pos += 2;
            continue;
        }
        unsigned u;
        if (e != 'u' || hex4(c, c->pos + 2, &u) != 0 || u == 0 || (u >= 0xDC00 && u <= 0xDFFF))
            return -1;
        c->pos += 6;
        if (u >= 0xD800 && u <= 0xDBFF) {
            unsigned lo;
            if (c->pos + 1 >= c->len || c->s[c->pos] != '\\' || c->s[c->pos + 1] != 'u' ||
                hex4(c, c->pos + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                return -1;
            c->pos += 6;
        }
    }
    return -1;
}

static int is_digit(int ch)
{
    return ch >= '0' && ch <= '9';
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int number(struct scan *c)
{
    if (peek(c) == '-')
        c->pos++;
    if (peek(c) == '0') {
        c->pos++;
    } else if (is_digit(peek(c))) {
        while (is_digit(peek(c)))
            c->pos++;
    } else {
        return -1;
    }
    if (peek(c) == '.') {
        c->pos++;
        if (!is_digit(peek(c)))
            return -1;
        while (is_digit(peek(c)))
            c->pos++;
    }
    if (peek(c) == 'e' || peek(c) == 'E') {
        c->pos++;
        if (peek(c) == '+' || peek(c) == '-')
            c->pos++;
        if (!is_digit(peek(c)))
            return -1;
        while (is_digit(peek(c)))
            c->pos++;
    }
    return 0;
}

static int literal(struct scan *c, const char *word)
{
    size_t n = strlen(word);
    if (c->len - c->pos < n || memcmp(c->s + c->pos, word, n) != 0)
        return -1;
    c->pos += n;
    return 0;
}

enum json_strict_status json_strict_check(const char *s, size_t len, struct json_top *top,
                                          size_t *where)
{
    struct scan c = {s, len, 0};
    char stack[JSON_STRICT_MAX_DEPTH]; /* '{' or '[' per open level */
    int depth = 0;
    size_t value_start = 0;
    struct json_top t;
    enum json_strict_status st = JSON_STRICT_SYNTAX;
    enum { VALUE, KEY, AFTER } state = VALUE;
    memset(&t, 0, sizeof t);

    skip_ws(&c);
    for (;;) {
        if (state == KEY) {
            if (peek(&c) != '"' || string(&c) != 0)
                goto fail;
            skip_ws(&c);
            if (peek(&c) != ':')
                goto fail;
            c.pos++;
            skip_ws(&c);
            state = VALUE;
            continue;
        }
        if (state == VALUE) {
            if (depth == 1 && stack[0] == '{')
                value_start = c.pos;
            int ch = peek(&c);
            if (ch == '{' || ch == '[') {
                if (depth == JSON_STRICT_MAX_DEPTH) {
                    st = JSON_STRICT_TOO_DEEP;
                    goto fail;
                }
                stack[depth++] = (char)ch;
                c.pos++;
                skip_ws(&c);
                if (peek(&c) == (ch == '{' ? '}' : ']')) {
                    c.pos++;
                    depth--;
                    state = AFTER;
                } else {
                    state = ch == '{' ? KEY : VALUE;
                }
                continue;
            }
            int bad;
            if (ch == '"')
                bad = string(&c);
            else if (ch == '-' || is_digit(ch))
                bad = number(&c);
            else if (ch == 't')
                bad = literal(&c, "true");
            else if (ch == 'f')
                bad = literal(&c, "false");
            else if (ch == 'n')
                bad = literal(&c, "null");
            else
                bad = -1;
            if (bad)
                goto fail;
            state = AFTER;
            continue;
        }
        /* AFTER: a value just ended at this depth. */
        if (depth == 1 && stack[0] == '{') {
            if (t.count < JSON_STRICT_MEMBERS) {
                t.value[t.count].off = value_start;
                t.value[t.count].len = c.pos - value_start;
            }
            t.count++;
        }
        skip_ws(&c);
        if (depth == 0)
            break;
        int ch = peek(&c);
        if (ch == ',') {
            c.pos++;
            skip_ws(&c);
            state = stack[depth - 1] == '{' ? KEY : VALUE;
        } else if (ch == (stack[depth - 1] == '{' ? '}' : ']')) {
            c.pos++;
            depth--;
        } else {
            goto fail;
        }
    }
    if (c.pos != len)
        goto fail; /* trailing bytes: a second value, garbage, a NUL */
    if (top)
        *top = t;
    return JSON_STRICT_OK;
fail:
    if (where)
        *where = c.pos;
    return st;
}
