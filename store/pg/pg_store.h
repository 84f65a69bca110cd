/* pg_store.h - the PostgreSQL store's parts, seen from its operations
 * (internal to store/)
 *
 *   pg_sql.c      the statements, prepared on every connection
 *   pg_pool.c     the connection pool (its locking contract: pg_pool.h)
 *   pg_batch.c    group commit of claims and completions
 *   pg_migrate.c  the schema at start-up
 *   pg_idem.c     claim, complete with rows, release, rows without a key
 *   pg_reads.c    payments, refunds, events and the ledger read and listed;
 *                 reapers; ping
 *   pg_endpoints.c webhook endpoints made, listed, removed
 *   pg_deliveries.c webhook deliveries claimed, finished, counted
 *   pg_handoff.c  deliveries handed from a completion to the dispatchers
 *   pg_recover.c  records taken over for recovery, and those waiting for it
 *   store_pg.c    the store_ops table, the constructor
 */
#ifndef MOCKERY_PG_STORE_H
#define MOCKERY_PG_STORE_H

#include "pg_batch.h"
#include "pg_handoff.h"
#include "pg_pool.h"
#include "store.h"

struct store_pg {
    struct store base;
    struct pg_pool pool;
    struct pg_batcher batch;
    struct pg_handoff handoff;
};

enum store_status pg_claim(struct store *s, const char *tenant, const char *key,
                           const char *fingerprint, const char *request, const char *downstream,
                           int64_t lease_ms, int64_t ttl_ms, struct store_claim_result *out,
                           char *err, size_t errlen);
enum store_status pg_complete(struct store *s, const char *tenant, const char *key,
                              int64_t lease_token, const struct store_response *resp,
                              const struct store_rows *rows, char *err, size_t errlen);
enum store_status pg_release(struct store *s, const char *tenant, const char *key,
                             int64_t lease_token, char *err, size_t errlen);
enum store_status pg_abandon(struct store *s, const char *tenant, const char *key,
                             int64_t lease_token, char *err, size_t errlen);
enum store_status pg_write_rows(struct store *s, const char *tenant, const struct store_rows *rows,
                                char *err, size_t errlen);
enum store_status pg_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                 struct store_payment *out, char *err, size_t errlen);
enum store_status pg_list_payments(struct store *s, const char *tenant,
                                   const struct store_list_query *q, struct store_list *out,
                                   char *err, size_t errlen);
enum store_status pg_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                struct store_refund *out, char *err, size_t errlen);
enum store_status pg_list_refunds(struct store *s, const char *tenant,
                                  const struct store_refund_query *q, struct store_refund_list *out,
                                  char *err, size_t errlen);
enum store_status pg_get_event(struct store *s, const char *tenant, const char *event_id,
                               struct store_event *out, char *err, size_t errlen);
enum store_status pg_list_events(struct store *s, const char *tenant,
                                 const struct store_event_query *q, struct store_event_list *out,
                                 char *err, size_t errlen);
enum store_status pg_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                 char *err, size_t errlen);
enum store_status pg_create_endpoint(struct store *s, const char *tenant,
                                     const struct store_endpoint *e, int max, char *err,
                                     size_t errlen);
enum store_status pg_list_endpoints(struct store *s, const char *tenant,
                                    struct store_endpoint_list *out, char *err, size_t errlen);
enum store_status pg_delete_endpoint(struct store *s, const char *tenant, const char *endpoint_id,
                                     char *err, size_t errlen);
enum store_status pg_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                      struct store_delivery_list *out, char *err, size_t errlen);
/* Puts back every delivery handed off and not begun (pg_handoff.h). */
void pg_put_back_handoffs(struct store *s);
enum store_status pg_finish_deliveries(struct store *s, const struct store_delivery_result *results,
                                       size_t n, char *err, size_t errlen);
enum store_status pg_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                      char *err, size_t errlen);
enum store_status pg_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                char *err, size_t errlen);
enum store_status pg_list_charges(struct store *s, const char *reference,
                                  struct store_charge_list *out, char *err, size_t errlen);
enum store_status pg_list_charge_refunds(struct store *s, const char *charge_id,
                                         struct store_charge_refund_list *out, char *err,
                                         size_t errlen);
enum store_status pg_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                             char *err, size_t errlen);
enum store_status pg_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                size_t errlen);
enum store_status pg_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen);
enum store_status pg_ping(struct store *s, char *err, size_t errlen);

#endif
