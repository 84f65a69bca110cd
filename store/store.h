/* store.h - the idempotency records and the business rows written with them
 *
 * One contract, two backends: PostgreSQL (store_pg.c) and memory
 * (store_mem.c). Callers hold an opaque struct store and call the thin
 * wrappers below; every function is safe to call from many threads at once.
 * The store knows nothing of HTTP or JSON: bodies are opaque bytes. A
 * completion writes the cached answer and the operation's rows (struct
 * store_rows: a payment, a refund) in one transaction, under the fencing
 * token of the claim.
 */
#ifndef MOCKERY_STORE_H
#define MOCKERY_STORE_H

#include <stddef.h>
#include <stdint.h>

enum store_status {
    STORE_OK = 0,
    STORE_NOT_FOUND,   /* no such record or payment */
    STORE_LEASE_LOST,  /* the fencing token no longer matches: nothing written */
    STORE_UNAVAILABLE, /* the database did not answer; retrying later may work */
    STORE_ERROR,       /* anything else: a bug or a constraint we did not expect */
    STORE_REJECTED,    /* a row's condition failed when written (a refund over what is left
                          of its payment): nothing written */
};

enum claim_outcome {
    CLAIM_NEW = 0,     /* the key was free: the caller holds the lease */
    CLAIM_TAKEOVER,    /* expired, or its holder died: the caller holds a new lease */
    CLAIM_COMPLETED,   /* a completed record with the same fingerprint: replay it */
    CLAIM_IN_PROGRESS, /* another request holds a live lease on the key */
    CLAIM_MISMATCH,    /* the key was used with a different fingerprint */
};

/* What a claim found. body and location are owned by the result and freed by
 * store_claim_result_clear(); they are set only for CLAIM_COMPLETED. */
struct store_claim_result {
    enum claim_outcome outcome;
    int64_t lease_token; /* with CLAIM_NEW / CLAIM_TAKEOVER */
    int response_status; /* with CLAIM_COMPLETED */
    char *response_body;
    size_t response_body_len;
    char *response_location; /* may be NULL */
    int64_t created_at_us;   /* when the key was first claimed (unix microseconds) */
    /* With CLAIM_NEW / CLAIM_TAKEOVER: the record's Idempotency-Key for an
     * acquirer downstream - STORE_DOWNSTREAM_PREFIX and random characters,
     * never the client's key - chosen when the record was made (or claimed
     * again after it expired), the same for every takeover. */
    char downstream_key[65];
};

#define STORE_DOWNSTREAM_PREFIX "dk_"

/* A payment row. Strings are borrowed on input and owned (malloc'd) when the
 * store fills a struct for the caller: free those with store_payment_clear(). */
struct store_payment {
    char *transaction_id;
    char *idempotency_key; /* may be NULL (a request without a key) */
    char *customer_id;
    int64_t amount_minor;
    char currency[4];
    char *description; /* may be NULL */
    char *status;      /* "completed" or "declined" */
    int64_t processed_at_us;
    int64_t amount_refunded_minor; /* read only: the sum of its refunds (0 when inserted) */
    char *charge_id; /* the acquirer's charge (or the simulator's); NULL for payments made
                        before sql/008 */
};

/* A refund row, owned like a payment's strings: free with store_refund_clear(). */
struct store_refund {
    char *refund_id;
    char *transaction_id;  /* the payment refunded, of the same tenant */
    char *idempotency_key; /* may be NULL */
    int64_t amount_minor;
    char currency[4];
    char *reason; /* may be NULL */
    char *status; /* "succeeded" */
    int64_t created_at_us;
    char *acquirer_refund_id; /* the acquirer's refund (or the simulator's); NULL for refunds
                                 made before sql/009 */
};

/* A charge in an acquirer's ledger (mockery-acquirer's tables,
 * sql/007_acquirer_ledger.sql): money taken from a customer for a
 * merchant, or a decline recorded. Owned like a payment's strings: free
 * with store_charge_clear(). */
struct store_charge {
    char *charge_id; /* "ch_..." */
    char *merchant;  /* the acquirer's client's tenant */
    char *customer_id;
    int64_t amount_minor;
    char currency[4];
    char *status;       /* "succeeded" or "declined" */
    char *decline_code; /* with "declined"; else NULL */
    char *reference;    /* the client's id for it (a transaction id) */
    char *idempotency_key;
    int64_t created_at_us;
    int64_t amount_refunded_minor; /* read only: the sum of its refunds (0 when inserted) */
};

/* A refund in the acquirer's ledger: free with store_charge_refund_clear(). */
struct store_charge_refund {
    char *refund_id; /* "rf_..." */
    char *charge_id;
    int64_t amount_minor;
    char *reference; /* the client's id for it (a refund id) */
    char *idempotency_key;
    int64_t created_at_us;
};

/* An event of a completed operation (sql/012_events.sql): written with the
 * operation's rows, in the same statement or transaction and under the
 * same fencing token, so it exists exactly when they do. body is the
 * event as the API shows it (JSON), stored and read back byte for byte.
 * Owned like a payment's strings: free with store_event_clear(). */
struct store_event {
    char *event_id; /* "evt_..." */
    char *type;     /* "payment.succeeded", "payment.declined" or "refund.succeeded" */
    int64_t created_at_us;
    char *body;
    size_t body_len;
};

/* The business rows an operation writes with its completion (or alone, for
 * a request without a key); NULL members write nothing, and at most one is
 * set. A charge is inserted; a charge refund is inserted and added to its
 * charge's amount_refunded_minor under the same rule as a refund to its
 * payment (a succeeded charge, within its amount; else STORE_REJECTED). The
 * ledger's rows are not the tenant's: the tenant names only the
 * idempotency record. A payment is
 * inserted. A refund is inserted and added to its payment's
 * amount_refunded_minor only while the payment is completed and its refunds
 * stay within its amount - checked under the payment row's lock in the same
 * transaction, so refunds racing on any number of servers can never add up
 * to more - else STORE_REJECTED and nothing is written. */
struct store_rows {
    const struct store_payment *payment;
    const struct store_refund *refund;
    const struct store_charge *charge;
    const struct store_charge_refund *charge_refund;
    /* With a payment or a refund (never alone): inserted only when they are. */
    const struct store_event *event;
};

/* A list of charges or of a charge's refunds, oldest first. */
struct store_charge_list {
    struct store_charge *items;
    size_t count;
};

struct store_charge_refund_list {
    struct store_charge_refund *items;
    size_t count;
};

/* At most this many rows in a ledger list (a reference names one charge
 * in normal use; a charge has few refunds). */
#define STORE_LEDGER_LIST_MAX 100

/* The cached answer written by store_complete(). */
struct store_response {
    int status;
    const char *body;
    size_t body_len;
    const char *location; /* may be NULL */
};

struct store_list_query {
    const char *customer_id;    /* NULL: all customers */
    const char *starting_after; /* NULL: from the newest */
    int limit;                  /* rows wanted; the store fetches one more to tell has_more */
};

struct store_list {
    struct store_payment *items;
    size_t count;
    int has_more;
};

struct store_refund_query {
    const char *transaction_id; /* the payment whose refunds are listed */
    const char *starting_after; /* a refund id; NULL: from the newest */
    int limit;
};

struct store_refund_list {
    struct store_refund *items;
    size_t count;
    int has_more;
};

struct store_event_query {
    const char *type;           /* NULL: every type */
    const char *starting_after; /* an event id; NULL: from the newest */
    int limit;
};

struct store_event_list {
    struct store_event *items;
    size_t count;
    int has_more;
};

/* A webhook endpoint of a tenant (sql/013): where its events go. Owned
 * like a payment's strings: free with store_endpoint_clear(). */
struct store_endpoint {
    char *endpoint_id; /* "we_..." */
    char *url;
    char *events; /* the types it wants, comma-separated; NULL: every type */
    char *secret; /* the HMAC key of its deliveries */
    int64_t created_at_us;
};

struct store_endpoint_list {
    struct store_endpoint *items; /* oldest first */
    size_t count;
};

/* A delivery claimed for an attempt (sql/014): the event's body for one
 * endpoint of its tenant. attempt is this attempt's number (1: the
 * first); it fences the attempt's result (store_finish_deliveries). Owned:
 * free the list with store_delivery_list_clear(). */
struct store_delivery {
    char *tenant;
    char *event_id;
    char *endpoint_id;
    int attempt;
    char *url; /* url, secret, body: NULL when the endpoint or the event is gone
                  (deleted as the event was written): fail it */
    char *secret;
    char *body; /* the event as GET /api/v1/events/{id} shows it */
    size_t body_len;
};

struct store_delivery_list {
    struct store_delivery *items;
    size_t count;
    /* 1: every item was handed off in memory (a completion's own, the
     * PostgreSQL store's pg_handoff.h) and the claim read no row: it says
     * nothing of what is due in the table */
    int table_unread;
    size_t late; /* rows claimed too late to return (late_after_ms): read, not in items */
};

/* An endpoint the claiming sender has attempts under way to. */
struct store_endpoint_busy {
    const char *tenant;
    const char *endpoint_id;
};

/* What a claim may take (store_claim_deliveries). */
struct store_delivery_claim {
    int batch;        /* deliveries at most */
    int64_t lease_ms; /* each one not due again for this long */
    const struct store_endpoint_busy *busy; /* none of these endpoints' deliveries */
    size_t nbusy;
    /* 0: any due delivery; else only those that came due within the last
     * lookback_ms (the rows before them are not even stepped over) */
    int64_t lookback_ms;
    /* > 0: rows claimed by a statement whose result came back more than
     * this after it was sent (a lock wait, a slow database, a commit
     * waiting for a standby) - their lease, counted from the statement's
     * start, is that much shorter - are not returned: they wait out their
     * lease, the attempt counted (list->late; the memory store's claims are
     * never late) */
    int64_t late_after_ms;
};

enum store_delivery_state {
    STORE_DELIVERY_DELIVERED = 0, /* done: the delivery is deleted */
    STORE_DELIVERY_RETRY,         /* pending again, due after retry_in_ms */
    STORE_DELIVERY_FAILED,        /* given up */
};

/* What one attempt came to; strings borrowed. */
struct store_delivery_result {
    const char *tenant;
    const char *event_id;
    const char *endpoint_id;
    int attempt;  /* as claimed: nothing is written unless the row still holds it */
    int attempts; /* attempts begun, written to the row (attempt, or one less
                     for an attempt given up without being sent) */
    enum store_delivery_state state;
    int64_t retry_in_ms;
    int http_status;   /* 0: no HTTP answer */
    const char *error; /* NULL when delivered */
};

/* Deliveries not yet made: how many, and when the oldest one's event was
 * written (0: none). */
struct store_delivery_backlog {
    int64_t pending;
    int64_t oldest_created_us;
};

struct store_pool_stats {
    int size;
    int in_use;
    int waiting;
    /* statements that carried claims / completions, and how many they carried */
    unsigned long long claim_batches, claims_batched;
    unsigned long long complete_batches, completes_batched;
    /* batches that failed as a whole and ran again one operation at a time */
    unsigned long long batches_split;
    /* deliveries handed off by a completion in memory: taken by a claim, or
     * not begun in time and put back in the table (the PostgreSQL store's
     * pg_handoff.h) */
    unsigned long long handoffs_taken, handoffs_expired;
};

/* A record taken over for recovery (store_recover): one left processing
 * past its lease that kept its request. Strings are owned: free with
 * store_recovery_clear(). */
struct store_recovery {
    char *tenant;
    char *key;
    char *fingerprint;
    char *request; /* as the claim kept it */
    int64_t lease_token;
    int64_t created_at_us;
    char downstream_key[65];
};

/* The records waiting for recovery now (processing, with a request, past
 * their lease): how many, and when the oldest was claimed first (0: none). */
struct store_unfinished {
    int64_t waiting;
    int64_t oldest_created_us;
};

struct store;

struct store_ops {
    const char *name;
    /* downstream_key: a new key, which the record takes if this claim makes
     * it (or claims it after it expired); store_claim() chooses it. */
    enum store_status (*claim)(struct store *s, const char *tenant, const char *key,
                               const char *fingerprint, const char *request,
                               const char *downstream_key, int64_t lease_ms, int64_t ttl_ms,
                               struct store_claim_result *out, char *err, size_t errlen);
    enum store_status (*complete)(struct store *s, const char *tenant, const char *key,
                                  int64_t lease_token, const struct store_response *resp,
                                  const struct store_rows *rows, char *err, size_t errlen);
    enum store_status (*release)(struct store *s, const char *tenant, const char *key,
                                 int64_t lease_token, char *err, size_t errlen);
    enum store_status (*abandon)(struct store *s, const char *tenant, const char *key,
                                 int64_t lease_token, char *err, size_t errlen);
    enum store_status (*write_rows)(struct store *s, const char *tenant,
                                    const struct store_rows *rows, char *err, size_t errlen);
    enum store_status (*get_payment)(struct store *s, const char *tenant,
                                     const char *transaction_id, struct store_payment *out,
                                     char *err, size_t errlen);
    enum store_status (*list_payments)(struct store *s, const char *tenant,
                                       const struct store_list_query *q, struct store_list *out,
                                       char *err, size_t errlen);
    enum store_status (*get_refund)(struct store *s, const char *tenant, const char *refund_id,
                                    struct store_refund *out, char *err, size_t errlen);
    enum store_status (*list_refunds)(struct store *s, const char *tenant,
                                      const struct store_refund_query *q,
                                      struct store_refund_list *out, char *err, size_t errlen);
    enum store_status (*get_event)(struct store *s, const char *tenant, const char *event_id,
                                   struct store_event *out, char *err, size_t errlen);
    enum store_status (*list_events)(struct store *s, const char *tenant,
                                     const struct store_event_query *q,
                                     struct store_event_list *out, char *err, size_t errlen);
    enum store_status (*reap_events)(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                     char *err, size_t errlen);
    enum store_status (*create_endpoint)(struct store *s, const char *tenant,
                                         const struct store_endpoint *e, int max, char *err,
                                         size_t errlen);
    enum store_status (*list_endpoints)(struct store *s, const char *tenant,
                                        struct store_endpoint_list *out, char *err, size_t errlen);
    enum store_status (*delete_endpoint)(struct store *s, const char *tenant,
                                         const char *endpoint_id, char *err, size_t errlen);
    enum store_status (*claim_deliveries)(struct store *s, const struct store_delivery_claim *c,
                                          struct store_delivery_list *out, char *err,
                                          size_t errlen);
    enum store_status (*finish_deliveries)(struct store *s,
                                           const struct store_delivery_result *results, size_t n,
                                           char *err, size_t errlen);
    enum store_status (*delivery_backlog)(struct store *s, struct store_delivery_backlog *out,
                                          char *err, size_t errlen);
    enum store_status (*get_charge)(struct store *s, const char *charge_id,
                                    struct store_charge *out, char *err, size_t errlen);
    enum store_status (*list_charges)(struct store *s, const char *reference,
                                      struct store_charge_list *out, char *err, size_t errlen);
    enum store_status (*list_charge_refunds)(struct store *s, const char *charge_id,
                                             struct store_charge_refund_list *out, char *err,
                                             size_t errlen);
    enum store_status (*recover)(struct store *s, int64_t lease_ms, struct store_recovery *out,
                                 char *err, size_t errlen);
    enum store_status (*unfinished)(struct store *s, struct store_unfinished *out, char *err,
                                    size_t errlen);
    enum store_status (*reap)(struct store *s, int batch, int *deleted, char *err, size_t errlen);
    enum store_status (*ping)(struct store *s, char *err, size_t errlen);
    void (*pool_stats)(struct store *s, struct store_pool_stats *out);
    void (*free)(struct store *s);
};

/* Every backend embeds this as its first member. */
struct store {
    const struct store_ops *ops;
};

/* A status as a word for logs ("unavailable"). */
const char *store_status_name(enum store_status st);

/* Name of the backend ("postgres" or "memory"). */
const char *store_name(const struct store *s);

/* Claim (tenant, key) for a request with this fingerprint: one atomic step
 * that inserts a processing record with a lease of lease_ms, or takes over an
 * expired record or a processing one past its lease with the same
 * fingerprint (bumping lease_token). Never waits for another request's
 * payment. On STORE_OK *out is filled; otherwise it is untouched.
 * request: NULL, or the request as text, kept with the record until it
 * completes so that store_recover() can hand it to recovery - for an
 * operation that asks outside (an acquirer). A claim that keeps one is
 * durable when it returns (the PostgreSQL store waits for its flush). */
enum store_status store_claim(struct store *s, const char *tenant, const char *key,
                              const char *fingerprint, const char *request, int64_t lease_ms,
                              int64_t ttl_ms, struct store_claim_result *out, char *err,
                              size_t errlen);

/* Atomically mark the record completed with resp and write rows (may be
 * NULL) - only if the record is still processing under lease_token.
 * STORE_LEASE_LOST when it is not, STORE_REJECTED when a row's condition
 * fails (struct store_rows): either way nothing is written. A refund's
 * completion locks its payment row before the record, so a duplicate's
 * claim never waits behind another refund of the same payment. */
enum store_status store_complete(struct store *s, const char *tenant, const char *key,
                                 int64_t lease_token, const struct store_response *resp,
                                 const struct store_rows *rows, char *err, size_t errlen);

/* Delete the processing record held under lease_token so that a retry runs
 * again. STORE_LEASE_LOST when the token no longer matches. */
enum store_status store_release(struct store *s, const char *tenant, const char *key,
                                int64_t lease_token, char *err, size_t errlen);

/* End the lease held under lease_token now, keeping the record processing
 * (its fingerprint, its downstream key): for an outcome that is unknown -
 * money may have moved at an acquirer - which must be neither cached nor
 * released, so that the next claim with the same fingerprint takes it over
 * at once and asks again with the same key. STORE_LEASE_LOST when the token
 * no longer matches. */
enum store_status store_abandon(struct store *s, const char *tenant, const char *key,
                                int64_t lease_token, char *err, size_t errlen);

/* Write rows with no idempotency record (requests without a key), in one
 * transaction; STORE_REJECTED as for store_complete(). */
enum store_status store_write_rows(struct store *s, const char *tenant,
                                   const struct store_rows *rows, char *err, size_t errlen);

/* Read one payment of the tenant. STORE_NOT_FOUND when there is none. */
enum store_status store_get_payment(struct store *s, const char *tenant, const char *transaction_id,
                                    struct store_payment *out, char *err, size_t errlen);

/* The tenant's payments, newest first. STORE_NOT_FOUND when starting_after
 * names no payment of the tenant. Free *out with store_list_clear(). */
enum store_status store_list_payments(struct store *s, const char *tenant,
                                      const struct store_list_query *q, struct store_list *out,
                                      char *err, size_t errlen);

/* Read one refund of the tenant. STORE_NOT_FOUND when there is none. */
enum store_status store_get_refund(struct store *s, const char *tenant, const char *refund_id,
                                   struct store_refund *out, char *err, size_t errlen);

/* The refunds of one payment, newest first. STORE_NOT_FOUND when
 * starting_after names no refund of that payment. Free *out with
 * store_refund_list_clear(). */
enum store_status store_list_refunds(struct store *s, const char *tenant,
                                     const struct store_refund_query *q,
                                     struct store_refund_list *out, char *err, size_t errlen);

/* Read one event of the tenant. STORE_NOT_FOUND when there is none. */
enum store_status store_get_event(struct store *s, const char *tenant, const char *event_id,
                                  struct store_event *out, char *err, size_t errlen);

/* The tenant's events, newest first, of one type or all. STORE_NOT_FOUND
 * when starting_after names no event of the tenant. Free *out with
 * store_event_list_clear(). */
enum store_status store_list_events(struct store *s, const char *tenant,
                                    const struct store_event_query *q, struct store_event_list *out,
                                    char *err, size_t errlen);

/* Delete at most batch events older than retention_ms. */
enum store_status store_reap_events(struct store *s, int64_t retention_ms, int batch, int *deleted,
                                    char *err, size_t errlen);

/* Add a webhook endpoint for the tenant, unless it has max already
 * (STORE_REJECTED: nothing written). Under concurrent creates of one
 * tenant PostgreSQL may let one or two more through. */
enum store_status store_create_endpoint(struct store *s, const char *tenant,
                                        const struct store_endpoint *e, int max, char *err,
                                        size_t errlen);

/* Every endpoint of the tenant, oldest first. Free with
 * store_endpoint_list_clear(). */
enum store_status store_list_endpoints(struct store *s, const char *tenant,
                                       struct store_endpoint_list *out, char *err, size_t errlen);

/* Remove one endpoint of the tenant; STORE_NOT_FOUND when it has none by
 * that id. */
enum store_status store_delete_endpoint(struct store *s, const char *tenant,
                                        const char *endpoint_id, char *err, size_t errlen);

/* Webhook deliveries (sql/014). A delivery is made with its event, one
 * for each endpoint of the tenant subscribed to the event's type then, in
 * the same transaction, and kept until it is delivered; deleting the
 * endpoint or reaping the event deletes it. */

/* Claim at most c->batch pending deliveries that are due (PostgreSQL: the
 * longest due first; the memory store: the oldest event first), none to an
 * endpoint of c->busy - the rows of other endpoints behind theirs are
 * found: each one's attempt is counted and it is leased for c->lease_ms
 * (not due again until then). With c->lookback_ms, only rows that came
 * due since then (PostgreSQL: next_attempt_at; the memory store: its
 * event's time or its last lease's end). Rows another server
 * is claiming at the same moment are skipped, so no delivery is claimed
 * twice at once; one whose lease ran out (its server died) is due again.
 * The PostgreSQL store also takes, last, the deliveries this server's
 * payment completions handed off, already leased to it (pg_handoff.h),
 * and while those keep coming reads the table only from time to time
 * (out->table_unread says when it did not). An empty list when none is
 * due. Free *out with
 * store_delivery_list_clear(). */
enum store_status store_claim_deliveries(struct store *s, const struct store_delivery_claim *c,
                                         struct store_delivery_list *out, char *err, size_t errlen);

/* Write the results of n attempts; each only while its row is pending and
 * still holds the attempt claimed (another server's later claim wins). */
enum store_status store_finish_deliveries(struct store *s,
                                          const struct store_delivery_result *results, size_t n,
                                          char *err, size_t errlen);

/* The deliveries pending now, and the oldest one's age. */
enum store_status store_delivery_backlog(struct store *s, struct store_delivery_backlog *out,
                                         char *err, size_t errlen);
void store_delivery_clear(struct store_delivery *d);
void store_delivery_list_clear(struct store_delivery_list *l);

/* 1 when the endpoint is one of busy's n. */
int store_endpoint_in(const struct store_endpoint_busy *busy, size_t n, const char *tenant,
                      const char *endpoint_id);

/* The acquirer's ledger. One charge by id (STORE_NOT_FOUND when none);
 * the charges whose reference is reference, and the refunds of one charge,
 * oldest first, at most STORE_LEDGER_LIST_MAX (an empty list when none).
 * Free lists with store_charge_list_clear(), store_charge_refund_list_clear(). */
enum store_status store_get_charge(struct store *s, const char *charge_id, struct store_charge *out,
                                   char *err, size_t errlen);
enum store_status store_list_charges(struct store *s, const char *reference,
                                     struct store_charge_list *out, char *err, size_t errlen);
enum store_status store_list_charge_refunds(struct store *s, const char *charge_id,
                                            struct store_charge_refund_list *out, char *err,
                                            size_t errlen);

/* Take over the record that kept its request and whose lease ran out
 * longest ago (a record asked again and kept goes to the back), under a
 * new lease of lease_ms (a new token; its fingerprint, key
 * downstream and request kept), for recovery to finish it: *out filled,
 * or STORE_NOT_FOUND when no record waits. Records held by a live lease,
 * or being taken by another server at the same moment, are skipped: one
 * record is recovered by one server at a time. */
enum store_status store_recover(struct store *s, int64_t lease_ms, struct store_recovery *out,
                                char *err, size_t errlen);
void store_recovery_clear(struct store_recovery *r);

/* The records waiting for recovery now. */
enum store_status store_unfinished(struct store *s, struct store_unfinished *out, char *err,
                                   size_t errlen);

/* Delete at most batch expired idempotency records: completed ones, and
 * ones still processing that kept no request once their lease has ended
 * too (nothing outside waits on them); one that kept its request is kept
 * until it is finished. Payments are kept. */
enum store_status store_reap(struct store *s, int batch, int *deleted, char *err, size_t errlen);

/* Check that the backing database answers. */
enum store_status store_ping(struct store *s, char *err, size_t errlen);

/* Connection pool figures (zeros for the memory store). */
void store_pool_stats(struct store *s, struct store_pool_stats *out);

/* Close the store. store_free(NULL) does nothing. */
void store_free(struct store *s);

/* Free what a claim result owns and zero it. */
void store_claim_result_clear(struct store_claim_result *r);
/* Free what a payment filled by the store owns and zero it. */
void store_payment_clear(struct store_payment *p);
/* Free a list filled by store_list_payments() and zero it. */
void store_list_clear(struct store_list *l);
/* Deep copy of a payment; returns 0, or -1 on allocation failure (dst zeroed). */
int store_payment_copy(struct store_payment *dst, const struct store_payment *src);
/* The same for refunds. */
void store_refund_clear(struct store_refund *r);
void store_refund_list_clear(struct store_refund_list *l);
int store_refund_copy(struct store_refund *dst, const struct store_refund *src);
/* The same for events. */
void store_event_clear(struct store_event *e);
void store_event_list_clear(struct store_event_list *l);
int store_event_copy(struct store_event *dst, const struct store_event *src);
/* The same for webhook endpoints. */
void store_endpoint_clear(struct store_endpoint *e);
void store_endpoint_list_clear(struct store_endpoint_list *l);
int store_endpoint_copy(struct store_endpoint *dst, const struct store_endpoint *src);
/* The same for the ledger's rows. */
void store_charge_clear(struct store_charge *c);
void store_charge_list_clear(struct store_charge_list *l);
int store_charge_copy(struct store_charge *dst, const struct store_charge *src);
void store_charge_refund_clear(struct store_charge_refund *r);
void store_charge_refund_list_clear(struct store_charge_refund_list *l);
int store_charge_refund_copy(struct store_charge_refund *dst,
                             const struct store_charge_refund *src);

#endif
