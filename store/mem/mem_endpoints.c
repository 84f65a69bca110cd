/* mem_endpoints.c - the memory store's webhook endpoints: a tenant's few,
 * made, listed oldest first, removed with their deliveries
 */
#define _POSIX_C_SOURCE 200809L
#include "mem_store.h"

#include <stdio.h>
#include <string.h>

static void endpoint_item_clear(void *e)
{
    store_endpoint_clear(e);
}

enum store_status mem_create_endpoint(struct store *s, const char *tenant,
                                      const struct store_endpoint *e, int max, char *err,
                                      size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    struct mem_endpoint me = {0};
    pthread_mutex_lock(&m->mu);
    int have = 0;
    for (size_t i = 0; i < m->endpoints.n; i++)
        have += strcmp(((const struct mem_endpoint *)mem_rows_at(&m->endpoints, i))->tenant,
                       tenant) == 0;
    if (have >= max) {
        snprintf(err, errlen, "the tenant has %d endpoints already", max);
        st = STORE_REJECTED;
    } else if (mem_rows_reserve(&m->endpoints) != 0 || !(me.tenant = strdup(tenant)) ||
               store_endpoint_copy(&me.e, e) != 0) {
        mem_endpoint_row_clear(&me);
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        mem_rows_insert(&m->endpoints, &me);
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_list_endpoints(struct store *s, const char *tenant,
                                     struct store_endpoint_list *out, char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    void *items = NULL;
    pthread_mutex_lock(&m->mu);
    if (mem_rows_oldest(&m->endpoints, tenant, NULL, NULL, mem_endpoint_copy, endpoint_item_clear,
                        sizeof(struct store_endpoint), m->endpoints.n + 1, &items,
                        &out->count) != 0) {
        snprintf(err, errlen, "out of memory");
        st = STORE_ERROR;
    } else {
        out->items = items;
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}

enum store_status mem_delete_endpoint(struct store *s, const char *tenant, const char *endpoint_id,
                                      char *err, size_t errlen)
{
    struct store_mem *m = (struct store_mem *)s;
    enum store_status st = STORE_OK;
    pthread_mutex_lock(&m->mu);
    size_t i = mem_rows_find(&m->endpoints, tenant, mem_endpoint_is, endpoint_id);
    if (i == m->endpoints.n) {
        snprintf(err, errlen, "no such endpoint");
        st = STORE_NOT_FOUND;
    } else {
        mem_rows_remove(&m->endpoints, i, mem_endpoint_row_clear);
        /* its deliveries with it */
        for (size_t k = 0; k < m->deliveries.n;) {
            const struct mem_delivery *d = mem_rows_at(&m->deliveries, k);
            if (strcmp(d->tenant, tenant) == 0 && strcmp(d->endpoint_id, endpoint_id) == 0)
                mem_rows_remove(&m->deliveries, k, mem_delivery_row_clear);
            else
                k++;
        }
    }
    pthread_mutex_unlock(&m->mu);
    return st;
}
