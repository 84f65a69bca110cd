/* faulty_store.h - a store for tests that passes every call to another store,
 * except the ones it is told to fail (as a database that went away would) */
#ifndef MOCKERY_FAULTY_STORE_H
#define MOCKERY_FAULTY_STORE_H

#include "store.h"

enum faulty_op {
    FAULTY_CLAIM = 0,
    FAULTY_COMPLETE,
    FAULTY_RELEASE,
    FAULTY_ABANDON,
    FAULTY_WRITE_ROWS,
    FAULTY_OPS
};

/* Wraps inner (owned: freed with the faulty store). */
struct store *faulty_store_new(struct store *inner);

/* The next `times` calls of op answer `status` without reaching inner. */
void faulty_store_fail(struct store *s, enum faulty_op op, int times, enum store_status status);

/* How many calls of op reached the faulty store, failed or not. */
int faulty_store_calls(struct store *s, enum faulty_op op);

#endif
