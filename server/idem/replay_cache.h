/* replay_cache.h - completed answers kept in memory, so a retry of a
 * completed key is answered without a database round trip
 *
 * A completed record never changes until it expires, so a copy of it stays
 * true on every server until then. Bounded (least recently used entries go
 * first); entries expire with their record. Thread-safe (one mutex; every
 * operation is a hash lookup and a copy).
 */
#ifndef MOCKERY_REPLAY_CACHE_H
#define MOCKERY_REPLAY_CACHE_H

#include <stddef.h>
#include <stdint.h>

struct replay_cache;

/* A cache of at most capacity answers; NULL on allocation failure or when
 * capacity is 0 (no cache: every call below accepts NULL and misses). */
struct replay_cache *replay_cache_new(size_t capacity);
void replay_cache_free(struct replay_cache *c);

enum replay_lookup { REPLAY_MISS = 0, REPLAY_HIT, REPLAY_MISMATCH };

/* A cached answer, owned by the caller after a hit (free with
 * replay_entry_clear()). */
struct replay_entry {
    int status;
    char *body;
    size_t body_len;
    char *location; /* may be NULL */
    int64_t created_at_us;
};

/* Looks up (tenant, key) at now_us. REPLAY_HIT fills *out; REPLAY_MISMATCH
 * says the key completed with another fingerprint (fills created_at_us). */
enum replay_lookup replay_cache_get(struct replay_cache *c, const char *tenant, const char *key,
                                    const char *fingerprint, int64_t now_us,
                                    struct replay_entry *out);

/* Remembers a completed answer until expires_at_us (copied; a failure to
 * allocate just leaves it out). */
void replay_cache_put(struct replay_cache *c, const char *tenant, const char *key,
                      const char *fingerprint, const struct replay_entry *e, int64_t expires_at_us);

void replay_entry_clear(struct replay_entry *e);

/* Entries held now (for the metrics). */
size_t replay_cache_size(struct replay_cache *c);

#endif
