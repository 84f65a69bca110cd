/* paging.h - what every list route shares: its limit and starting_after
 * parameters, its turn at a list slot, and its page envelope
 *
 * {"<items>": [...], "count": n, "has_more": bool, "next_cursor": id|null}
 */
#ifndef MOCKERY_PAGING_H
#define MOCKERY_PAGING_H

#include <stddef.h>

#include "http.h"
#include "ids.h"

struct cJSON;

#define PAGING_DEFAULT_LIMIT 50
#define PAGING_MAX_LIMIT 500

struct paging {
    int limit;
    char after[IDS_MAX + 1];
    int has_after;
};

/* Reads limit and starting_after (an id for which valid() holds, named
 * `what` in the error) from the query string. Returns 0, or -1 after
 * answering 400 invalid_parameter. */
int paging_read(struct request *r, int (*valid)(const char *), const char *what,
                struct paging *out);

/* The error for a starting_after that names nothing of the caller's. */
void paging_unknown_cursor(struct request *r, const char *what);

/* Waits for a list slot (lists take turns for a few: service.h), up to 5 s;
 * returns 0, or -1 after answering 503. Give it back with paging_done(). */
int paging_take_slot(struct request *r, const char *op);
void paging_done(struct request *r);

/* Sends a page of count items (an array of item_size structs, each
 * rendered by to_cjson), has_more, and the cursor to the next page (last_id,
 * when has_more). */
void paging_send(struct request *r, const char *name, const void *items, size_t count,
                 size_t item_size, struct cJSON *(*to_cjson)(const void *item), int has_more,
                 const char *last_id);

#endif
