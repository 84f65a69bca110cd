/* mem_rows.h - the memory store's tables: rows of one kind, oldest first,
 * each a struct that begins with its tenant (internal to store/)
 *
 * A table of rows that belong to no tenant (the acquirer's ledger) keeps
 * NULL there; a NULL tenant passed to a function below matches every row.
 *
 * Kept in the order of newer_first, reversed (new rows nearly always go at
 * the end), so that a page newest first is a walk back from the end. Not
 * thread-safe: the memory store's mutex guards every call.
 */
#ifndef MOCKERY_MEM_ROWS_H
#define MOCKERY_MEM_ROWS_H

#include <stddef.h>

struct mem_rows {
    char *data; /* n rows of size bytes */
    size_t n, cap;
    size_t size; /* of one row; a row begins with `char *tenant` (may be NULL) */
    /* < 0 when a is newer than b (lists are newest first) */
    int (*newer_first)(const void *a, const void *b);
};

static inline void *mem_rows_at(const struct mem_rows *t, size_t i)
{
    return t->data + i * t->size;
}

/* Room for one more row, so that mem_rows_insert() cannot fail: 0 or -1. */
int mem_rows_reserve(struct mem_rows *t);
/* Room for k more. */
int mem_rows_reserve_n(struct mem_rows *t, size_t k);
/* Copies row (its pointers are taken over) to where it belongs; after a
 * successful mem_rows_reserve(). */
void mem_rows_insert(struct mem_rows *t, const void *row);

/* The index of the first row of tenant that same() finds equal to key, or
 * t->n. */
size_t mem_rows_find(const struct mem_rows *t, const char *tenant,
                     int (*same)(const void *row, const void *key), const void *key);

/* A page, walking back from index start: the rows of tenant that keep()
 * accepts (keep may be NULL), copied by copy() into a new array of limit
 * items of item_size (freed by clear() on failure). Returns 0 with *items,
 * *count and *has_more, or -1 when out of memory. */
int mem_rows_page(const struct mem_rows *t, size_t start, const char *tenant,
                  int (*keep)(const void *row, const void *arg), const void *arg,
                  int (*copy)(void *item, const void *row), void (*clear)(void *item),
                  size_t item_size, int limit, void **items, size_t *count, int *has_more);

/* Every row of tenant that keep() accepts, oldest first, at most limit of
 * them: copied as by mem_rows_page(). Returns 0 with *items and *count, or
 * -1 when out of memory. */
int mem_rows_oldest(const struct mem_rows *t, const char *tenant,
                    int (*keep)(const void *row, const void *arg), const void *arg,
                    int (*copy)(void *item, const void *row), void (*clear)(void *item),
                    size_t item_size, size_t limit, void **items, size_t *count);

/* Frees the k oldest rows (the first k) with clear_row() and closes the
 * gap. */
void mem_rows_drop_oldest(struct mem_rows *t, size_t k, void (*clear_row)(void *row));

/* Frees row i with clear_row() and closes the gap. */
void mem_rows_remove(struct mem_rows *t, size_t i, void (*clear_row)(void *row));

/* Frees every row with clear_row() and the table. */
void mem_rows_free(struct mem_rows *t, void (*clear_row)(void *row));

#endif
