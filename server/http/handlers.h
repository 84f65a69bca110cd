/* handlers.h - routing and the handlers of the API (docs/api.md) */
#ifndef MOCKERY_HANDLERS_H
#define MOCKERY_HANDLERS_H

struct mg_connection;

/* civetweb request handler for every path; cbdata is the struct edge (edge.h). */
int handlers_route(struct mg_connection *conn, void *cbdata);

/* civetweb http_error callback: civetweb's own errors (bad request line,
 * headers too large, ...) in the API's JSON error shape. */
int handlers_http_error(struct mg_connection *conn, int status, const char *msg);

#endif
