/* routes.h - the API's resources, each served by its own file: payments
 * (payment_routes.c), refunds (refund_routes.c), events (event_routes.c)
 * and webhook endpoints (webhook_routes.c). handlers.c routes to
 * them once the tenant is known. */
#ifndef MOCKERY_ROUTES_H
#define MOCKERY_ROUTES_H

#include "http.h"

struct post_route;

#define ROUTES_PAYMENTS "/api/v1/payments"
#define ROUTES_REFUNDS "/api/v1/refunds"
#define ROUTES_EVENTS "/api/v1/events"
#define ROUTES_WEBHOOK_ENDPOINTS "/api/v1/webhook_endpoints"

/* The idempotent POSTs, as recovery revives them (recovery.h). */
extern const struct post_route ROUTES_PAYMENT_POST;
extern const struct post_route ROUTES_REFUND_POST;

/* POST /api/v1/payments (idempotent) */
void routes_create_payment(struct request *r);
/* GET /api/v1/payments */
void routes_list_payments(struct request *r);
/* GET /api/v1/payments/{transaction_id} */
void routes_get_payment(struct request *r, const char *id);

/* POST /api/v1/payments/{transaction_id}/refunds (idempotent) */
void routes_create_refund(struct request *r, const char *payment_id);
/* GET /api/v1/payments/{transaction_id}/refunds */
void routes_list_refunds(struct request *r, const char *payment_id);
/* GET /api/v1/refunds/{refund_id} */
void routes_get_refund(struct request *r, const char *id);

/* GET /api/v1/events */
void routes_list_events(struct request *r);
/* GET /api/v1/events/{event_id} */
void routes_get_event(struct request *r, const char *id);

/* POST /api/v1/webhook_endpoints (not idempotent by key) */
void routes_create_endpoint(struct request *r);
/* GET /api/v1/webhook_endpoints */
void routes_list_endpoints(struct request *r);
/* DELETE /api/v1/webhook_endpoints/{endpoint_id} */
void routes_delete_endpoint(struct request *r, const char *id);

#endif
