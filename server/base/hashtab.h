/* hashtab.h - the one hash table of the in-memory tables (the memory
 * store's records, the replay cache, the connections per address)
 *
 * Chained and intrusive: an entry embeds a struct hashtab_link, and the
 * table holds links (hashtab_entry() turns one back into its entry). Keyed
 * by a pair of strings through hash.h's hash_pair, whose hash each link
 * keeps, so a lookup compares strings only on equal hashes and growing
 * hashes nothing again. No lock of its own: the owner's mutex guards it.
 */
#ifndef MOCKERY_HASHTAB_H
#define MOCKERY_HASHTAB_H

#include <stddef.h>

struct hashtab_link {
    struct hashtab_link *next;
    size_t hash;
};

struct hashtab {
    struct hashtab_link **buckets;
    size_t nbuckets;
    size_t count;
    int grows; /* doubles its buckets when count passes twice their number */
};

/* The entry of type that embeds link as member. */
#define hashtab_entry(link, type, member) ((type *)((char *)(link)-offsetof(type, member)))

/* An empty table of nbuckets buckets (at least 1). 0, or -1 out of memory. */
int hashtab_init(struct hashtab *t, size_t nbuckets, int grows);

/* Frees the buckets (not the entries: the caller walks them first). */
void hashtab_destroy(struct hashtab *t);

/* Whether the entry of link is the pair (a, b); given to hashtab_find. */
typedef int (*hashtab_same)(const struct hashtab_link *link, const char *a, const char *b);

/* The link that points at the entry of the pair (a, b) in its bucket:
 * *result is that entry's link, or NULL when there is none. The pair's
 * hash goes to *hash (may be NULL), for hashtab_add. */
struct hashtab_link **hashtab_find(struct hashtab *t, const char *a, const char *b, size_t *hash,
                                   hashtab_same same);

/* Adds link, not in the table, with the hash hashtab_find gave its pair;
 * may grow the table. */
void hashtab_add(struct hashtab *t, struct hashtab_link *link, size_t hash);

/* Removes the entry *at points to (at from hashtab_find, or a walk of the
 * buckets): *at then points to the next one in the bucket. */
void hashtab_remove(struct hashtab *t, struct hashtab_link **at);

/* Removes link, which is in the table (its bucket is walked for it). */
void hashtab_unlink(struct hashtab *t, struct hashtab_link *link);

#endif
