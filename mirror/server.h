#ifndef REGMIRROR_SERVER_H
#define REGMIRROR_SERVER_H
/*
 * server: the listeners of http.addr and the routing of each request to its API handler,
 * under http.prefix. The server borrows cfg, reg and proxy (NULL when not proxying): they
 * must outlive it.
 */
#include <event2/event.h>

#include "config.h"
#include "registry.h"

struct offload;

struct proxy;
struct cache;

struct server;

/* Creates the server and listens on cfg->http.addr. NULL on error (logged). */
struct server *server_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                          struct proxy *proxy, struct cache *cache, struct offload *ol);
/*
 * Shutdown. server_drain (optional, first) stops taking connections on every listener (TLS
 * handshakes in progress are dropped) and lets the requests in flight finish: each connection
 * closes after its answer, idle ones at once; done(arg) runs from the loop once none is left.
 * server_close closes the listeners and every connection (each request's abort runs); the api
 * the handlers were given stays. server_free (after the offload pool has drained, so no job's
 * work or done still uses the api) frees the rest. server_free closes first if server_close
 * was not called. server_close and server_free take NULL.
 */
typedef void (*server_drained_cb)(void *arg);
void server_drain(struct server *srv, server_drained_cb done, void *arg);
void server_close(struct server *srv);
void server_free(struct server *srv);

struct health;
struct status;
/*
 * Observability: /healthz on the main listener reports health (borrowed, may be NULL), and
 * when http.debug.addr is set a second listener there serves /debug/health, /status and
 * /status.json (status, borrowed, may be NULL) and, with http.debug.prometheus.enabled, the
 * metrics at its path. 0, or -1 when that listen fails.
 */
int server_observe(struct server *srv, struct event_base *base, const struct health *health,
                   struct status *status);

#endif
