/* event.h - the event a completed payment or refund leaves for its tenant
 * (docs/api.md, "Events")
 *
 * {"id": "evt_...", "type": ..., "created": RFC 3339, "data": {"object": the
 * payment or refund as the API shows it}}. The layer writes it with the
 * operation's rows (struct store_rows.event), so it exists exactly when
 * they do. Plain functions: no socket, no database. Reentrant.
 */
#ifndef MOCKERY_EVENT_H
#define MOCKERY_EVENT_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

#define EVENT_ID_LEN 28 /* "evt_" + 24 URL-safe characters */

enum event_type {
    EVENT_PAYMENT_SUCCEEDED = 0,
    EVENT_PAYMENT_DECLINED,
    EVENT_REFUND_SUCCEEDED,
    EVENT_TYPES,
};

/* "payment.succeeded", "payment.declined", "refund.succeeded". */
const char *event_type_name(enum event_type t);

/* Whether s names one of the types above. */
int event_type_valid(const char *s);

/* Whether s has the shape of an event id ("evt_" and 1-60 URL-safe characters). */
int event_id_valid(const char *s);

/* The event of the record whose key downstream is downstream_key: its id
 * is "evt_" and the key's random characters, so every run of one record
 * (a takeover, recovery) names one event, and two can never be written
 * for it. object: the payment or refund as the API shows it (JSON text of
 * object_len bytes, often the answer's own body), placed in the event
 * as it is. A new store_event (free with event_free()), or NULL when out
 * of memory or the key has another shape. */
struct store_event *event_new(enum event_type t, const char *downstream_key, int64_t created_us,
                              const char *object, size_t object_len);
void event_free(struct store_event *e);

#endif
