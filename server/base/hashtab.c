/* hashtab.c - the one hash table of the in-memory tables (hashtab.h) */
#include "hashtab.h"

#include <stdlib.h>

#include "hash.h"

int hashtab_init(struct hashtab *t, size_t nbuckets, int grows)
{
    t->nbuckets = nbuckets ? nbuckets : 1;
    t->buckets = calloc(t->nbuckets, sizeof *t->buckets);
    t->count = 0;
    t->grows = grows;
    return t->buckets ? 0 : -1;
}

void hashtab_destroy(struct hashtab *t)
{
    free(t->buckets);
    t->buckets = NULL;
    t->nbuckets = t->count = 0;
}

struct hashtab_link **hashtab_find(struct hashtab *t, const char *a, const char *b, size_t *hash,
                                   hashtab_same same)
{
    size_t h = hash_pair(a, b);
    if (hash)
        *hash = h;
    struct hashtab_link **at = &t->buckets[h % t->nbuckets];
    while (*at && ((*at)->hash != h || !same(*at, a, b)))
        at = &(*at)->next;
    return at;
}

/* Twice the buckets, each link moved by the hash it keeps; on allocation
 * failure the table stays as it is (longer chains, still correct). */
static void grow(struct hashtab *t)
{
    size_t n = t->nbuckets * 2;
    struct hashtab_link **nb = calloc(n, sizeof *nb);
    if (!nb)
        return;
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct hashtab_link *l = t->buckets[i], *next; l; l = next) {
            next = l->next;
            l->next = nb[l->hash % n];
            nb[l->hash % n] = l;
        }
    free(t->buckets);
    t->buckets = nb;
    t->nbuckets = n;
}

void hashtab_add(struct hashtab *t, struct hashtab_link *link, size_t hash)
{
    struct hashtab_link **head = &t->buckets[hash % t->nbuckets];
    link->hash = hash;
    link->next = *head;
    *head = link;
    if (++t->count > t->nbuckets * 2 && t->grows)
        grow(t);
}

void hashtab_remove(struct hashtab *t, struct hashtab_link **at)
{
    *at = (*at)->next;
    t->count--;
}

void hashtab_unlink(struct hashtab *t, struct hashtab_link *link)
{
    struct hashtab_link **at = &t->buckets[link->hash % t->nbuckets];
    while (*at && *at != link)
        at = &(*at)->next;
    if (*at)
        hashtab_remove(t, at);
}
