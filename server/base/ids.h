/* ids.h - the ids the service hands out: a prefix ("txn_", "re_") and 24
 * URL-safe characters from the CSPRNG (144 random bits) */
#ifndef MOCKERY_IDS_H
#define MOCKERY_IDS_H

#include <stddef.h>

#define IDS_RANDOM_LEN 24
#define IDS_MAX 64 /* room for any id a client may send us: prefix + 60 */

/* A new id into out (strlen(prefix) + IDS_RANDOM_LEN + 1 bytes). Returns
 * 0, or -1 if the random source failed. Thread-safe. */
int ids_new(const char *prefix, char *out);

/* The id with this prefix that follows from key, an id of another prefix
 * (key_prefix and IDS_RANDOM_LEN URL-safe characters): the same random
 * characters, so one record's key downstream always names one payment or
 * refund. 0, or -1 when key has another shape (never a random id instead:
 * two runs of one record would name two transactions). */
int ids_from(const char *prefix, const char *key_prefix, const char *key, char *out);

/* Whether s has the shape of an id with this prefix: the prefix and 1-60
 * of [A-Za-z0-9_-]. Anything else names nothing and never reaches a store. */
int ids_valid(const char *prefix, const char *s);

/* The length of s if it is all [A-Za-z0-9_-], else 0. */
size_t ids_url_safe_len(const char *s);

#endif
