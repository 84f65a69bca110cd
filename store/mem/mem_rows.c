/* mem_rows.c - the memory store's ordered tables (mem_rows.h) */
#define _POSIX_C_SOURCE 200809L
#include "mem_rows.h"

#include <stdlib.h>
#include <string.h>

static const char *tenant_of(const void *row)
{
    return *(char *const *)row;
}

/* Whether row belongs to tenant; a NULL tenant matches every row. */
static int of_tenant(const void *row, const char *tenant)
{
    return !tenant || strcmp(tenant_of(row), tenant) == 0;
}

int mem_rows_reserve(struct mem_rows *t)
{
    return mem_rows_reserve_n(t, 1);
}

int mem_rows_reserve_n(struct mem_rows *t, size_t k)
{
    if (t->n + k <= t->cap)
        return 0;
    size_t cap = t->cap ? t->cap * 2 : 64;
    while (cap < t->n + k)
        cap *= 2;
    char *d = realloc(t->data, cap * t->size);
    if (!d)
        return -1;
    t->data = d;
    t->cap = cap;
    return 0;
}

void mem_rows_insert(struct mem_rows *t, const void *row)
{
    size_t at = t->n;
    while (at > 0 && t->newer_first(mem_rows_at(t, at - 1), row) < 0)
        at--;
    memmove(mem_rows_at(t, at + 1), mem_rows_at(t, at), (t->n - at) * t->size);
    memcpy(mem_rows_at(t, at), row, t->size);
    t->n++;
}

size_t mem_rows_find(const struct mem_rows *t, const char *tenant,
                     int (*same)(const void *row, const void *key), const void *key)
{
    for (size_t i = 0; i < t->n; i++) {
        const void *row = mem_rows_at(t, i);
        if (same(row, key) && of_tenant(row, tenant))
            return i;
    }
    return t->n;
}

int mem_rows_page(const struct mem_rows *t, size_t start, const char *tenant,
                  int (*keep)(const void *row, const void *arg), const void *arg,
                  int (*copy)(void *item, const void *row), void (*clear)(void *item),
                  size_t item_size, int limit, void **items, size_t *count, int *has_more)
{
    char *out = calloc(limit > 0 ? (size_t)limit : 1, item_size);
    size_t n = 0;
    int more = 0;
    if (!out)
        return -1;
    for (size_t i = start; i-- > 0;) {
        const void *row = mem_rows_at(t, i);
        if (!of_tenant(row, tenant) || (keep && !keep(row, arg)))
            continue;
        if (n == (size_t)limit) {
            more = 1;
            break;
        }
        if (copy(out + n * item_size, row) != 0) {
            for (size_t j = 0; j < n; j++)
                clear(out + j * item_size);
            free(out);
            return -1;
        }
        n++;
    }
    *items = out;
    *count = n;
    *has_more = more;
    return 0;
}

int mem_rows_oldest(const struct mem_rows *t, const char *tenant,
                    int (*keep)(const void *row, const void *arg), const void *arg,
                    int (*copy)(void *item, const void *row), void (*clear)(void *item),
                    size_t item_size, size_t limit, void **items, size_t *count)
{
    char *out = calloc(limit > 0 ? limit : 1, item_size);
    size_t n = 0;
    if (!out)
        return -1;
    for (size_t i = 0; i < t->n && n < limit; i++) {
        const void *row = mem_rows_at(t, i);
        if (!of_tenant(row, tenant) || (keep && !keep(row, arg)))
            continue;
        if (copy(out + n * item_size, row) != 0) {
            for (size_t j = 0; j < n; j++)
                clear(out + j * item_size);
            free(out);
            return -1;
        }
        n++;
    }
    *items = out;
    *count = n;
    return 0;
}

void mem_rows_drop_oldest(struct mem_rows *t, size_t k, void (*clear_row)(void *row))
{
    if (k > t->n)
        k = t->n;
    if (k == 0)
        return; /* t->data may be NULL: not even a memmove of nothing */
    for (size_t i = 0; i < k; i++)
        clear_row(mem_rows_at(t, i));
    memmove(t->data, t->data + k * t->size, (t->n - k) * t->size);
    t->n -= k;
}

void mem_rows_remove(struct mem_rows *t, size_t i, void (*clear_row)(void *row))
{
    clear_row(mem_rows_at(t, i));
    memmove(t->data + i * t->size, t->data + (i + 1) * t->size, (t->n - i - 1) * t->size);
    t->n--;
}

void mem_rows_free(struct mem_rows *t, void (*clear_row)(void *row))
{
    for (size_t i = 0; i < t->n; i++)
        clear_row(mem_rows_at(t, i));
    free(t->data);
    memset(t, 0, sizeof *t);
}
