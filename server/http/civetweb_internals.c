/* civetweb_internals.c - civetweb 1.15's struct mg_connection, read at
 * fixed places (why: civetweb_internals.h) */
#define _POSIX_C_SOURCE 200809L
#include "civetweb_internals.h"

#include <civetweb.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

/* The head of civetweb 1.15's struct mg_connection (src/civetweb.c),
 * built without HTTP/2 (Debian's build leaves it out): three ints, then the
 * public struct mg_request_info and struct mg_response_info, the two
 * context pointers, the TLS handle, and the struct socket whose first
 * member is the descriptor. */
struct civetweb_connection_head {
    int connection_type, protocol_type, request_state;
    struct mg_request_info request_info;
    struct mg_response_info response_info;
    void *phys_ctx, *dom_ctx;
    void *ssl;
    int sock;
};

/* The same, built with server statistics (one int more before ssl). */
struct civetweb_connection_head_stats {
    int connection_type, protocol_type, request_state;
    struct mg_request_info request_info;
    struct mg_response_info response_info;
    void *phys_ctx, *dom_ctx;
    int conn_state;
    void *ssl;
    int sock;
};

static int reads_on;   /* atomic */
static size_t sock_at; /* offset of sock, set by the check */

int civetweb_internals_check(char *err, size_t errlen)
{
    const char *v = mg_version();
    if (!v || strcmp(v, CIVETWEB_INTERNALS_VERSION) != 0) {
        snprintf(err, errlen, "civetweb %s is not %s, whose connection layout this server reads",
                 v ? v : "(unknown)", CIVETWEB_INTERNALS_VERSION);
        return -1;
    }
    if (mg_check_feature(MG_FEATURES_HTTP2)) {
        snprintf(err, errlen, "civetweb is built with HTTP/2, which changes its connection layout");
        return -1;
    }
    sock_at = mg_check_feature(MG_FEATURES_STATS)
                  ? offsetof(struct civetweb_connection_head_stats, sock)
                  : offsetof(struct civetweb_connection_head, sock);
    __atomic_store_n(&reads_on, 1, __ATOMIC_SEQ_CST);
    return 0;
}

int civetweb_internals_on(void)
{
    return __atomic_load_n(&reads_on, __ATOMIC_RELAXED);
}

void civetweb_internals_off(void)
{
    __atomic_store_n(&reads_on, 0, __ATOMIC_SEQ_CST);
}

int civetweb_socket_hint(const struct mg_connection *conn)
{
    if (!civetweb_internals_on())
        return -1;
    int fd;
    memcpy(&fd, (const char *)conn + sock_at, sizeof fd);
    return fd;
}

static const struct mg_request_info *request_info_at(const struct mg_connection *conn)
{
    return (const void *)((const char *)conn +
                          offsetof(struct civetweb_connection_head, request_info));
}

int civetweb_layout_matches(const struct mg_connection *conn, const struct mg_request_info *ri)
{
    return request_info_at(conn) == ri;
}

const struct mg_request_info *civetweb_early_request_info(const struct mg_connection *conn)
{
    if (!civetweb_internals_on())
        return NULL;
    const struct mg_request_info *ri = request_info_at(conn);
    unsigned char a[16];
    if (!memchr(ri->remote_addr, '\0', sizeof ri->remote_addr) ||
        (inet_pton(AF_INET, ri->remote_addr, a) != 1 &&
         inet_pton(AF_INET6, ri->remote_addr, a) != 1))
        return NULL;
    return ri;
}

/* civetweb parses the header block in place: it writes a NUL over the colon
 * (and over any spaces before it) and over each line's CR and LF, and points
 * name and value into that buffer. What lies between tells what it dropped. */
int civetweb_spaces_before_colon(const struct mg_header *h)
{
    int nuls = 0;
    for (const char *p = h->name + strlen(h->name); p < h->value; p++)
        nuls += *p == '\0';
    return nuls > 1;
}

/* After the last field's value: its CR and LF (now NULs), then the blank
 * line. Anything else is a line civetweb stopped at (an obs-fold) and did
 * not read. */
int civetweb_header_block_ends_after(const struct mg_header *h)
{
    const char *p = h->value + strlen(h->value);
    for (int i = 0; i < 2 && *p == '\0'; i++)
        p++;
    return *p == '\r' || *p == '\n';
}
