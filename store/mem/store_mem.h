/* store_mem.h - the store kept in this process's memory (store.h's
 * interface): for the quick start, the tests, and a single server that may
 * lose its records when it stops
 */
#ifndef MOCKERY_STORE_MEM_H
#define MOCKERY_STORE_MEM_H

#include "store.h"

/* An empty store; NULL when out of memory. */
struct store *store_mem_new(void);

#endif
