/* auth.h - API keys and the tenants they name (docs/operations.md, "Configuration")
 *
 * Read-only after auth_new(): safe to share between threads.
 */
#ifndef MOCKERY_AUTH_H
#define MOCKERY_AUTH_H

#include <stddef.h>

#define AUTH_OPEN_TENANT "default"

struct auth;

/* Parses "tenant:key,tenant:key" or "@path" (a file of such pairs, one or
 * more per line, # comments). An empty spec means one open tenant. Returns
 * NULL with err set on a malformed spec or an unreadable file. */
struct auth *auth_new(const char *spec, char *err, size_t errlen);
void auth_free(struct auth *a);

/* Whether keys are configured (otherwise every request is the open tenant). */
int auth_enabled(const struct auth *a);

/* The tenant of an Authorization header value ("Bearer <key>"), or NULL when
 * it is missing or names no key. Compares keys in constant time. */
const char *auth_tenant(const struct auth *a, const char *authorization);

#endif
