/* recovery.h - recovery without the client: the request an idempotent POST
 * keeps with its record, and the pass that finishes records left processing
 * past their lease (docs/design.md, "Recovery without the client")
 *
 * A server whose operations ask outside (an acquirer) keeps each POST's
 * request with its claim: its route, the id in its path and its body, as
 * JSON. Should the server die mid-request, or the outcome stay unknown,
 * and no retry come, recovery takes the record over (store_recover: one
 * server a record), makes the kept request back into its operation and
 * request - parsed as the route parses it, checked against the record's
 * fingerprint - and runs it as a retry would, under the record's key
 * downstream: the acquirer answers its first outcome, and the record is
 * completed (or kept, or released) as the idempotency layer says.
 */
#ifndef MOCKERY_RECOVERY_H
#define MOCKERY_RECOVERY_H

#include <stddef.h>

struct post_route;
struct service;

/* The request to keep with the record of a POST to route (its path id, or
 * NULL; its body): malloc'd JSON text, or NULL when out of memory. */
char *recovery_keep(const struct post_route *route, const char *path_id, const char *body,
                    size_t len);

/* What one pass did. */
struct recovery_pass {
    int completed;  /* finished: completed with the operation's answer */
    int pending;    /* asked again, the outcome still unknown: kept */
    int released;   /* nothing moved: released for the client's retry */
    int unreadable; /* a kept request that could not be revived: kept */
    int lost;       /* another took it over meanwhile (its lease ran out) */
    int failed;     /* the store failed: the pass ended */
};

/* Recovers at most max records waiting now, one at a time, each logged;
 * stops early when none waits or the store fails. */
void recovery_run(const struct service *svc, int max, struct recovery_pass *out);

#endif
