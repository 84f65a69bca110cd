/* mem_store.h - the memory store's parts, seen from each other (internal to
 * store/mem/)
 *
 *   mem_rows.c       a table of rows, kept oldest first (pages read newest
 *                    first)
 *   mem_tables.c     each kind of row: its order, its id, its copy, its free
 *   mem_idem.c       claim, complete with rows, release, abandon, rows
 *                    without a key; the reaper of records; their free
 *   mem_recover.c    records taken over for recovery, and those waiting
 *   mem_reads.c      payments, refunds, events and the ledger read and
 *                    listed; the events' reaper; ping
 *   mem_endpoints.c  webhook endpoints made, listed, removed
 *   mem_deliveries.c webhook deliveries fanned out, claimed, finished, counted
 *   store_mem.c      the store_ops table, the constructor, the destructor
 *
 * One mutex (store_mem.mu) guards everything: every operation is short and
 * never waits on a payment, so a duplicate gets its answer at once.
 */
#ifndef MOCKERY_MEM_STORE_H
#define MOCKERY_MEM_STORE_H

#include "hashtab.h"
#include "mem_rows.h"
#include "store.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

enum rec_state { REC_PROCESSING, REC_COMPLETED };

struct record {
    struct hashtab_link link; /* in records, by (tenant, key) */
    char *tenant;
    char *key;
    char *fingerprint;
    enum rec_state state;
    int64_t lease_token;
    int64_t locked_until_us;
    int64_t created_at_us;
    int64_t expires_at_us;
    char downstream_key[65]; /* chosen when the record is made or claimed after expiry */
    char *request;           /* kept for recovery while processing (store_claim); or NULL */
    int response_status;
    char *body;
    size_t body_len;
    char *location;
};

struct mem_payment {
    char *tenant;
    struct store_payment p;
};

struct mem_refund {
    char *tenant;
    struct store_refund r;
};

struct mem_event {
    char *tenant;
    struct store_event e;
};

struct mem_endpoint {
    char *tenant;
    struct store_endpoint e;
};

/* A delivery of an event to an endpoint (sql/014's row, kept only while
 * pending: the memory store has no psql to show the others). */
struct mem_delivery {
    char *tenant;
    char *event_id;
    char *endpoint_id;
    int attempts;
    int64_t due_us; /* when it is due, or its lease ends */
    int64_t created_us;
};

/* The acquirer's ledger belongs to no tenant: tenant is always NULL (a NULL
 * tenant in mem_rows matches every row). */
struct mem_charge {
    char *tenant;
    struct store_charge c;
};

struct mem_charge_refund {
    char *tenant;
    struct store_charge_refund r;
};

struct store_mem {
    struct store base;
    pthread_mutex_t mu;
    struct hashtab records;         /* of struct record */
    struct mem_rows payments;       /* of struct mem_payment */
    struct mem_rows refunds;        /* of struct mem_refund */
    struct mem_rows charges;        /* of struct mem_charge */
    struct mem_rows charge_refunds; /* of struct mem_charge_refund */
    struct mem_rows events;         /* of struct mem_event */
    struct mem_rows endpoints;      /* of struct mem_endpoint */
    struct mem_rows deliveries;     /* of struct mem_delivery, pending */
    int64_t next_token;
};

static inline struct record *mem_record_of(struct hashtab_link *l)
{
    return l ? hashtab_entry(l, struct record, link) : NULL;
}

/* mem_idem.c */
enum store_status mem_claim(struct store *s, const char *tenant, const char *key,
                            const char *fingerprint, const char *request, const char *downstream,
                            int64_t lease_ms, int64_t ttl_ms, struct store_claim_result *out,
                            char *err, size_t errlen);
enum store_status mem_complete(struct store *s, const char *tenant, const char *key,
                               int64_t lease_token, const struct store_response *resp,
                               const struct store_rows *rows, char *err, size_t errlen);
enum store_status mem_release(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, char *err, size_t errlen);
enum store_status mem_abandon(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, char *err, size_t errlen);
enum store_status mem_write_rows(struct store *s, const char *tenant, const struct store_rows *rows,
                                 char *err, size_t errlen);
enum store_status mem_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen);
void mem_records_free(struct store_mem *m);

/* mem_recover.c */
enum store_status mem_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                              char *err, size_t errlen);
enum store_status mem_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                 size_t errlen);

/* mem_reads.c */
enum store_status mem_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                  struct store_payment *out, char *err, size_t errlen);
enum store_status mem_list_payments(struct store *s, const char *tenant,
                                    const struct store_list_query *q, struct store_list *out,
                                    char *err, size_t errlen);
enum store_status mem_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                 struct store_refund *out, char *err, size_t errlen);
enum store_status mem_list_refunds(struct store *s, const char *tenant,
                                   const struct store_refund_query *q,
                                   struct store_refund_list *out, char *err, size_t errlen);
enum store_status mem_get_event(struct store *s, const char *tenant, const char *event_id,
                                struct store_event *out, char *err, size_t errlen);
enum store_status mem_list_events(struct store *s, const char *tenant,
                                  const struct store_event_query *q, struct store_event_list *out,
                                  char *err, size_t errlen);
enum store_status mem_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                  char *err, size_t errlen);
enum store_status mem_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                 char *err, size_t errlen);
enum store_status mem_list_charges(struct store *s, const char *reference,
                                   struct store_charge_list *out, char *err, size_t errlen);
enum store_status mem_list_charge_refunds(struct store *s, const char *charge_id,
                                          struct store_charge_refund_list *out, char *err,
                                          size_t errlen);
enum store_status mem_ping(struct store *s, char *err, size_t errlen);

/* mem_endpoints.c */
enum store_status mem_create_endpoint(struct store *s, const char *tenant,
                                      const struct store_endpoint *e, int max, char *err,
                                      size_t errlen);
enum store_status mem_list_endpoints(struct store *s, const char *tenant,
                                     struct store_endpoint_list *out, char *err, size_t errlen);
enum store_status mem_delete_endpoint(struct store *s, const char *tenant, const char *endpoint_id,
                                      char *err, size_t errlen);

/* mem_deliveries.c */
int mem_fan_out(struct store_mem *m, const char *tenant, const struct store_event *ev,
                struct mem_delivery **out, size_t *n);
enum store_status mem_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                       struct store_delivery_list *out, char *err, size_t errlen);
enum store_status mem_finish_deliveries(struct store *s,
                                        const struct store_delivery_result *results, size_t n,
                                        char *err, size_t errlen);
enum store_status mem_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                       char *err, size_t errlen);

/* mem_tables.c */
void mem_tables_init(struct store_mem *m);
void mem_tables_free(struct store_mem *m);
int mem_payment_is(const void *row, const void *id);
int mem_refund_is(const void *row, const void *id);
int mem_charge_is(const void *row, const void *id);
int mem_event_is(const void *row, const void *id);
int mem_endpoint_is(const void *row, const void *id);
int mem_payment_copy(void *item, const void *row);
int mem_refund_copy(void *item, const void *row);
int mem_charge_copy(void *item, const void *row);
int mem_charge_refund_copy(void *item, const void *row);
int mem_event_copy(void *item, const void *row);
int mem_endpoint_copy(void *item, const void *row);
void mem_payment_row_clear(void *row);
void mem_refund_row_clear(void *row);
void mem_charge_row_clear(void *row);
void mem_charge_refund_row_clear(void *row);
void mem_event_row_clear(void *row);
void mem_endpoint_row_clear(void *row);
void mem_delivery_row_clear(void *row);

#endif
