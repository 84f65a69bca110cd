/* host_lookup.h - a host name's addresses, looked up with a bound on the
 * wait and on the lookups under way
 *
 * getaddrinfo() waits as long as the resolver's configuration lets it (a
 * nameserver that never answers: seconds to tens of seconds, on whichever
 * thread asked). host_lookup() runs it on a thread of its own and waits
 * at most timeout_ms; a lookup it stops waiting for finishes on its thread
 * and frees itself. At most HOST_LOOKUPS_MAX lookups are
 * under way at once, waited for or not (a lookup's place is free once
 * getaddrinfo() has returned), and at most HOST_LOOKUPS_PER_OWNER of one
 * owner's (a tenant's): past that a lookup is refused at once, so that
 * slow names can hold only a few of the threads that ask, and one owner's
 * only a few of the places.
 * An address written out (an IPv4 or IPv6 literal) is no lookup: it is
 * answered at once and takes no place.
 * Thread-safe.
 */
#ifndef MOCKERY_HOST_LOOKUP_H
#define MOCKERY_HOST_LOOKUP_H

#include <sys/socket.h>

#define HOST_LOOKUPS_MAX 8
#define HOST_LOOKUPS_PER_OWNER 2

enum host_lookup_result {
    HOST_LOOKUP_OK,          /* each() saw the addresses */
    HOST_LOOKUP_NOT_FOUND,   /* no such host, or no address for it */
    HOST_LOOKUP_UNAVAILABLE, /* not now: a resolver failure, the bound, too many under way */
};

/* Called for each address (of a stream socket) until it returns nonzero. */
typedef int (*host_lookup_each)(const struct sockaddr *addr, void *arg);

/* Looks host up for owner (NULL: the owner "", shared by every such
 * lookup), waiting at most timeout_ms; on HOST_LOOKUP_OK each() has been
 * called. why (may be NULL) names an unavailable lookup's cause. */
enum host_lookup_result host_lookup(const char *host, const char *owner, int timeout_ms,
                                    host_lookup_each each, void *arg, const char **why);

#endif
