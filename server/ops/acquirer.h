/* acquirer.h - the acquirer's client: asking it to charge or refund over
 * HTTP, and what each answer means for the money
 *
 * The money moves at the acquirer (docs/design.md: the acquirer), and an
 * answer can be lost after it moved. So every answer is classified by what
 * it says about the money, not by its status alone:
 *
 *   201, or its 200 replay      ACQUIRER_MOVED: charged (refunded)
 *   402, or its replay          ACQUIRER_DECLINED: a record, no money
 *   another 4xx but 409; or no
 *   connection (nothing sent)   ACQUIRER_NOTHING_MOVED
 *   a 422 idempotency_key_reused (the key holds another request,
 *   which may have moved money),
 *   409, any 5xx, a timeout, a
 *   connection lost after the
 *   request was sent, an answer
 *   that cannot be read          ACQUIRER_UNKNOWN: money may have moved
 *
 * Every request carries a downstream Idempotency-Key, so asking again with
 * the same key is answered with the first outcome, never a second charge.
 * One client per server: it keeps its HTTP/1.1 connections open and reuses
 * them across requests (a handle per request in flight, each keeping its
 * connection). Thread-safe.
 */
#ifndef MOCKERY_ACQUIRER_H
#define MOCKERY_ACQUIRER_H

#include <stdint.h>

enum acquirer_verdict {
    ACQUIRER_MOVED = 0,
    ACQUIRER_DECLINED,
    ACQUIRER_NOTHING_MOVED,
    ACQUIRER_UNKNOWN,
};

/* What an ask came to. */
struct acquirer_answer {
    enum acquirer_verdict verdict;
    int status;            /* the HTTP status, or 0 when none came */
    int replayed;          /* Idempotent-Replayed: true (the first outcome, again) */
    char id[65];           /* charge_id, or refund_id; "" when none was read */
    char decline_code[65]; /* with ACQUIRER_DECLINED */
    char detail[256];      /* why, for the log: the error code, or the transport's failure */
};

struct acquirer_charge {
    int64_t amount_minor;
    const char *currency; /* ISO 4217 */
    const char *customer_id;
    const char *merchant;  /* the tenant */
    const char *reference; /* the transaction id */
};

struct acquirer_refund {
    const char *charge_id;
    int64_t amount_minor;
    const char *reference; /* the refund id */
};

struct acquirer;

/* A client of the acquirer at base_url ("http://host:port"), each ask
 * bounded by timeout_ms, keeping up to max_idle connections open between
 * asks. NULL when out of memory or libcurl cannot start. */
struct acquirer *acquirer_new(const char *base_url, long timeout_ms, int max_idle);
void acquirer_free(struct acquirer *a);

/* POST /v1/charges with Idempotency-Key: downstream_key. Always fills out. */
void acquirer_charge(struct acquirer *a, const char *downstream_key,
                     const struct acquirer_charge *c, struct acquirer_answer *out);

/* POST /v1/refunds with Idempotency-Key: downstream_key. Always fills out. */
void acquirer_refund(struct acquirer *a, const char *downstream_key,
                     const struct acquirer_refund *r, struct acquirer_answer *out);

/* Whether an answer says that nothing moved under its key downstream,
 * ever: a refusal (the acquirer keeps no record of a refused request, and
 * would have answered a first outcome with it); or no connection, only if
 * no earlier ask was made under that key (asked_before 0) - an ask that
 * never left says nothing of one that did. */
int acquirer_nothing_moved(const struct acquirer_answer *a, int asked_before);

/* TCP connections opened so far: a keep-alive client opens about one per
 * request in flight at once, not one per ask. */
unsigned long long acquirer_connections(const struct acquirer *a);

/* What the asks came to, for the metrics: by operation and verdict, and
 * how long they took (a histogram of ACQUIRER_BUCKETS upper bounds). */
enum acquirer_op { ACQUIRER_OP_CHARGE = 0, ACQUIRER_OP_REFUND, ACQUIRER_OPS };
#define ACQUIRER_BUCKETS 10
extern const double ACQUIRER_BUCKET_S[ACQUIRER_BUCKETS];
#define ACQUIRER_VERDICTS 4

struct acquirer_stats {
    unsigned long long calls[ACQUIRER_OPS][ACQUIRER_VERDICTS];
    unsigned long long buckets[ACQUIRER_BUCKETS]; /* asks that took at most each bound */
    unsigned long long count;                     /* every ask */
    unsigned long long sum_us;
    unsigned long long connections;
};

/* A snapshot (each figure read atomically). */
void acquirer_stats(const struct acquirer *a, struct acquirer_stats *out);

/* The operation's word ("charge", "refund"). */
const char *acquirer_op_name(enum acquirer_op op);

/* The verdict's word ("moved", "declined", "nothing_moved", "unknown"). */
const char *acquirer_verdict_name(enum acquirer_verdict v);

#endif
