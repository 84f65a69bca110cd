/* civetweb_internals.h - the one file that reads civetweb's private struct
 * mg_connection, and why
 *
 * civetweb 1.15 calls init_connection for a new connection before it has
 * read a request, and then mg_get_request_info() answers NULL; it never
 * hands a callback the connection's socket. The server needs both before a
 * request arrives - an idle connection never sends one: the client's
 * address to hold each address to its limit (connlimit.h), and the socket
 * to shut a connection that is over it, that is shed when few workers are
 * free (conntable.h), or whose body is past its deadline (watchdog.h).
 * civetweb has no public way to either, so they are read from its struct
 * at fixed places, here and nowhere else.
 *
 * What makes that safe: civetweb_internals_check() at start-up (the version
 * is the one this file was written for, built without HTTP/2, whose fields
 * come first), then a probe on a real connection (edge.c: the addresses read
 * here are the probe's own, and the socket is the one they name); on every
 * request the place read is compared with what mg_get_request_info()
 * returns, and a mismatch turns the reads off. The socket read is only a
 * hint, always checked against the connection's addresses before use
 * (peer_socket.h).
 *
 * The same goes for what civetweb leaves in its header buffer, which
 * http_check_framing() reads to refuse what civetweb accepts too loosely
 * (whitespace before a colon, an obsolete line folding, fields beyond the
 * 64 it keeps): that is here too.
 */
#ifndef MOCKERY_CIVETWEB_INTERNALS_H
#define MOCKERY_CIVETWEB_INTERNALS_H

#include <stddef.h>

struct mg_connection;
struct mg_request_info;
struct mg_header;

/* The version this file knows the layout of (mg_version()). */
#define CIVETWEB_INTERNALS_VERSION "1.15"

/* Whether the running civetweb is that version, built as this file
 * expects: 0, or -1 with why in err. On success the reads are on. */
int civetweb_internals_check(char *err, size_t errlen);

/* Whether the reads below may be used (the check passed, nothing has shown
 * otherwise since); atomic. */
int civetweb_internals_on(void);

/* Turns the reads off for good (a mismatch was seen). */
void civetweb_internals_off(void);

/* A new connection's request info (its addresses) before civetweb has read
 * a request, or NULL when the reads are off or it holds no address. */
const struct mg_request_info *civetweb_early_request_info(const struct mg_connection *conn);

/* The descriptor of the connection's socket as civetweb holds it, or -1
 * (reads off): a hint only, to be checked (peer_socket.h). */
int civetweb_socket_hint(const struct mg_connection *conn);

/* Whether ri (from mg_get_request_info) sits where
 * civetweb_early_request_info() reads it: the check made on every request. */
int civetweb_layout_matches(const struct mg_connection *conn, const struct mg_request_info *ri);

/* civetweb 1.15 keeps this many header fields and silently drops the rest. */
#define CIVETWEB_INTERNALS_MAX_HEADERS 64

/* Whether civetweb's parse of header h dropped whitespace between its name
 * and colon (it NULs the colon and the spaces before it). */
int civetweb_spaces_before_colon(const struct mg_header *h);

/* Whether the header block ends after h, the last field civetweb kept:
 * anything else is a line it stopped at (an obs-fold) and did not read. */
int civetweb_header_block_ends_after(const struct mg_header *h);

#endif
