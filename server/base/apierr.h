/* apierr.h - API errors: the one table of them, and their JSON shape
 *
 * {"error": {"type": "...", "code": "...", "message": "...", "param": "..."}}
 *
 * Every error answer the server sends is a row of APIERR_TABLE: its name
 * in the code, the HTTP status, the type and code a client reads, and the
 * message when the caller has nothing more precise to say (plain ASCII,
 * nothing JSON must escape). openapi.yaml is checked against this table
 * (tests/openapi_check.py).
 */
#ifndef MOCKERY_APIERR_H
#define MOCKERY_APIERR_H

#include <stddef.h>

#define APIERR_TYPE_INVALID "invalid_request_error"
#define APIERR_TYPE_IDEMPOTENCY "idempotency_error"
#define APIERR_TYPE_AUTH "authentication_error"
#define APIERR_TYPE_RATE "rate_limit_error"
#define APIERR_TYPE_CARD "card_error"
#define APIERR_TYPE_API "api_error"

/* X(name, status, type, code, default message) */
#define APIERR_TABLE(X)                                                                            \
    X(BAD_REQUEST, 400, APIERR_TYPE_INVALID, "bad_request", "the request could not be parsed")     \
    X(INVALID_JSON, 400, APIERR_TYPE_INVALID, "invalid_json", "the body is not valid JSON")        \
    X(INVALID_BODY, 400, APIERR_TYPE_INVALID, "invalid_body",                                      \
      "the body could not be read: shorter than Content-Length, or too slow")                      \
    X(INVALID_PARAMETER, 400, APIERR_TYPE_INVALID, "invalid_parameter",                            \
      "a query parameter is not valid")                                                            \
    X(IDEMPOTENCY_KEY_MISSING, 400, APIERR_TYPE_INVALID, "idempotency_key_missing",                \
      "the Idempotency-Key header is required")                                                    \
    X(IDEMPOTENCY_KEY_INVALID, 400, APIERR_TYPE_INVALID, "idempotency_key_invalid",                \
      "the Idempotency-Key header is not valid")                                                   \
    X(UNAUTHORIZED, 401, APIERR_TYPE_AUTH, "unauthorized",                                         \
      "a valid API key is required as Authorization: Bearer <key>")                                \
    X(CARD_DECLINED, 402, APIERR_TYPE_CARD, "card_declined", "the card was declined")              \
    X(PAYMENT_NOT_FOUND, 404, APIERR_TYPE_INVALID, "payment_not_found", "no payment with that id") \
    X(REFUND_NOT_FOUND, 404, APIERR_TYPE_INVALID, "refund_not_found", "no refund with that id")    \
    X(EVENT_NOT_FOUND, 404, APIERR_TYPE_INVALID, "event_not_found", "no event with that id")       \
    X(WEBHOOK_ENDPOINT_NOT_FOUND, 404, APIERR_TYPE_INVALID, "webhook_endpoint_not_found",          \
      "no webhook endpoint with that id")                                                          \
    X(INVALID_URL, 422, APIERR_TYPE_INVALID, "invalid_url", "url is not a valid http(s) URL")      \
    X(URL_NOT_ALLOWED, 422, APIERR_TYPE_INVALID, "url_not_allowed",                                \
      "url resolves to an address that is not public")                                             \
    X(INVALID_EVENTS, 422, APIERR_TYPE_INVALID, "invalid_events", "events is not a list of types") \
    X(ENDPOINT_LIMIT_REACHED, 422, APIERR_TYPE_INVALID, "endpoint_limit_reached",                  \
      "the tenant has as many webhook endpoints as it may")                                        \
    X(ROUTE_NOT_FOUND, 404, APIERR_TYPE_INVALID, "route_not_found", "no such route")               \
    X(METHOD_NOT_ALLOWED, 405, APIERR_TYPE_INVALID, "method_not_allowed",                          \
      "this method is not allowed here")                                                           \
    X(REQUEST_TIMEOUT, 408, APIERR_TYPE_INVALID, "request_timeout",                                \
      "the request did not arrive in time")                                                        \
    X(IDEMPOTENCY_KEY_IN_USE, 409, APIERR_TYPE_IDEMPOTENCY, "idempotency_key_in_use",              \
      "a request with this idempotency key is in progress; retry later")                           \
    X(PAYMENT_NOT_REFUNDABLE, 409, APIERR_TYPE_INVALID, "payment_not_refundable",                  \
      "this payment cannot be refunded")                                                           \
    X(BODY_TOO_LARGE, 413, APIERR_TYPE_INVALID, "body_too_large", "the body is too large")         \
    X(REQUEST_TOO_LARGE, 413, APIERR_TYPE_INVALID, "request_too_large",                            \
      "the request is too large")                                                                  \
    X(URI_TOO_LONG, 414, APIERR_TYPE_INVALID, "request_too_large",                                 \
      "the request target is too long")                                                            \
    X(UNSUPPORTED_MEDIA_TYPE, 415, APIERR_TYPE_INVALID, "unsupported_media_type",                  \
      "the body must be sent as Content-Type: application/json")                                   \
    X(IDEMPOTENCY_KEY_REUSED, 422, APIERR_TYPE_IDEMPOTENCY, "idempotency_key_reused",              \
      "this idempotency key was used with a different request")                                    \
    X(INVALID_AMOUNT, 422, APIERR_TYPE_INVALID, "invalid_amount", "the amount is not valid")       \
    X(INVALID_CURRENCY, 422, APIERR_TYPE_INVALID, "invalid_currency", "the currency is not valid") \
    X(INVALID_CUSTOMER_ID, 422, APIERR_TYPE_INVALID, "invalid_customer_id",                        \
      "the customer_id is not valid")                                                              \
    X(INVALID_DESCRIPTION, 422, APIERR_TYPE_INVALID, "invalid_description",                        \
      "the description is not valid")                                                              \
    X(INVALID_REASON, 422, APIERR_TYPE_INVALID, "invalid_reason", "the reason is not valid")       \
    X(UNKNOWN_FIELD, 422, APIERR_TYPE_INVALID, "unknown_field", "the body has an unknown field")   \
    X(REFUND_EXCEEDS_PAYMENT, 422, APIERR_TYPE_INVALID, "refund_exceeds_payment",                  \
      "the refund is more than what is left of the payment")                                       \
    X(RATE_LIMITED, 429, APIERR_TYPE_RATE, "rate_limited", "too many requests; retry later")       \
    X(TOO_MANY_CONNECTIONS, 429, APIERR_TYPE_RATE, "too_many_connections",                         \
      "this client address has too many open connections; close one and retry")                    \
    X(HEADERS_TOO_LARGE, 431, APIERR_TYPE_INVALID, "headers_too_large",                            \
      "the request headers are too large")                                                         \
    X(INTERNAL_ERROR, 500, APIERR_TYPE_API, "internal_error", "the request could not be handled")  \
    X(GATEWAY_ERROR, 502, APIERR_TYPE_API, "gateway_error", "the payment processor failed")        \
    X(STORE_UNAVAILABLE, 503, APIERR_TYPE_API, "store_unavailable",                                \
      "the payment store is unavailable")                                                          \
    X(DNS_UNAVAILABLE, 503, APIERR_TYPE_API, "dns_unavailable",                                    \
      "the url's host could not be looked up now; retry later")                                    \
    X(SERVER_BUSY, 503, APIERR_TYPE_API, "server_busy",                                            \
      "few workers were free and this connection had waited idle: it is closed; retry")            \
    X(OUTCOME_PENDING, 503, APIERR_TYPE_API, "outcome_pending",                                    \
      "the acquirer's answer was lost: the money may have moved; retry with the same "             \
      "idempotency key to learn the outcome")                                                      \
    X(SHUTTING_DOWN, 503, APIERR_TYPE_API, "shutting_down",                                        \
      "this server is shutting down; retry (another server will answer)")                          \
    X(HTTP_VERSION, 505, APIERR_TYPE_INVALID, "bad_request", "this HTTP version is not supported")

enum apierr_id {
#define APIERR_ENUM(name, status, type, code, message) APIERR_##name,
    APIERR_TABLE(APIERR_ENUM)
#undef APIERR_ENUM
        APIERR_COUNT
};

/* A row of the table. */
struct apierr_row {
    int status;
    const char *type, *code, *message;
};
const struct apierr_row *apierr_row(enum apierr_id id);

struct apierr {
    int status;       /* HTTP status */
    const char *type; /* e.g. "invalid_request_error" (a static string) */
    const char *code; /* e.g. "invalid_amount" (a static string) */
    char message[256];
    char param[64]; /* empty when no single field is at fault */
};

/* Fills e with row id; param may be NULL; fmt NULL: the row's message.
 * Returns -1 so that callers can `return apierr_of(...)`. */
int apierr_of(struct apierr *e, enum apierr_id id, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The answer to a store call that failed: 503 store_unavailable when the
 * database did not answer (worth a retry), else 500 internal_error.
 * idempotent: the request was a POST, and nothing of it was recorded. */
void apierr_store(struct apierr *e, int unavailable, int idempotent);

/* The error body, malloc'd, NUL-terminated; NULL on allocation failure. */
char *apierr_json(const struct apierr *e);

/* The same with one more member beside "error", name: value (a string):
 * the id of what the error is about ({"error": {...}, "transaction_id": ...}). */
char *apierr_json_with(const struct apierr *e, const char *name, const char *value);

/* Row id's body with its default message, built without allocating: for
 * the answers that must go out when nothing can be allocated, or before a
 * request exists. A static string. */
const char *apierr_default_json(enum apierr_id id);

#endif
