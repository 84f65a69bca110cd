/* webhook_endpoint.h - a tenant's webhook endpoint: the request that makes
 * one, the address check that keeps tenants out of the operator's network,
 * and its JSON (docs/api.md, "Webhook endpoints")
 *
 * Plain functions; webhook_url_check() asks the resolver, waiting at most
 * WEBHOOK_LOOKUP_TIMEOUT_MS (host_lookup.h: a thread per lookup, places
 * shared by the process). Thread-safe.
 */
#ifndef MOCKERY_WEBHOOK_ENDPOINT_H
#define MOCKERY_WEBHOOK_ENDPOINT_H

#include <stddef.h>

#include "apierr.h"
#include "store.h"

struct cJSON;
struct sockaddr;

#define WEBHOOK_ENDPOINT_MAX_BODY (8 * 1024)
#define WEBHOOK_URL_MAX 2048
#define WEBHOOK_ENDPOINT_ID_LEN 27 /* "we_" + 24 URL-safe characters */
#define WEBHOOK_SECRET_LEN 30      /* "whsec_" + 24 URL-safe characters (144 random bits) */

/* What a POST asks for: its url as sent, and the types it wants
 * (comma-separated, in the order sent; NULL: every type). Both malloc'd:
 * free with webhook_endpoint_request_clear(). */
struct webhook_endpoint_request {
    char *url;
    char *events;
};

/* Parses a body {"url": ..., "events": [...]?}: the URL http or https, with
 * a host, no user or password, at most WEBHOOK_URL_MAX bytes (read by
 * libcurl's URL parser); events, when present and not null, a non-empty
 * array of distinct event types. Returns 0, or -1 with err (400
 * invalid_json, 422 unknown_field / invalid_url / invalid_events). */
int webhook_endpoint_parse(const char *body, size_t len, struct webhook_endpoint_request *out,
                           struct apierr *err);
void webhook_endpoint_request_clear(struct webhook_endpoint_request *r);

/* Whether an address is one a tenant may make us connect to: not
 * loopback, private, shared (100.64/10), link-local, unspecified,
 * multicast, reserved or broadcast IPv4; IPv6 outside global unicast
 * (2000::/3) or in its documentation prefix; and IPv4 inside IPv6 (mapped,
 * NAT64, 6to4, the old compatible form) judged as IPv4. */
int webhook_address_public(const struct sockaddr *sa);

/* The longest a create waits for its host's addresses. */
#define WEBHOOK_LOOKUP_TIMEOUT_MS 5000

/* Resolves the host of url (already parsed) for tenant: 0 when it resolves
 * and every address it has is public (any address with allow_private);
 * else -1 with err (422 invalid_url when it does not resolve,
 * url_not_allowed; 503 dns_unavailable when it could not be looked up now:
 * a resolver failure, no answer within WEBHOOK_LOOKUP_TIMEOUT_MS, or too
 * many lookups under way - HOST_LOOKUPS_MAX, or HOST_LOOKUPS_PER_OWNER of
 * the tenant's). */
int webhook_url_check(const char *url, int allow_private, const char *tenant, struct apierr *err);

/* Whether s has the shape of an endpoint id ("we_" and 1-60 URL-safe characters). */
int webhook_endpoint_id_valid(const char *s);

/* The endpoint as the API shows it: {"id", "url", "events" (null: every
 * type), "created_at"} and, only in the answer that made it, "secret".
 * NULL when out of memory. */
struct cJSON *webhook_endpoint_to_cjson(const struct store_endpoint *e, int with_secret);

#endif
