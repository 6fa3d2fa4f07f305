#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "api.h"
#include "health.h"
#include "auth.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "proxy.h"
#include "status.h"
#include "tls.h"
#include "writepolicy.h"

struct server {
    struct api api;
    struct http_server *http;
    struct http_server *debug;   /* http.debug.addr; NULL when unset */
    const struct health *health; /* for /healthz; NULL: always ok */
    struct status *status;       /* for /status and /status.json; NULL: not served */
    struct auth *auth;           /* auth.htpasswd; NULL without client auth */
    struct tls_server *tls;      /* http.tls.certificate; NULL for plain HTTP */
    struct admin *admin;         /* /admin/cache on the debug listener; NULL without one */
    /* server_drain: the HTTP servers still draining, and whom to tell when none is left */
    int ndraining;
    server_drained_cb on_drained;
    void *drained_arg;
};

typedef void (*route_fn)(const struct api *api, struct http_req *req, const struct api_route *rt);

static const route_fn routes[] = {
    [API_ROUTE_BASE] = api_base,     [API_ROUTE_CATALOG] = api_catalog,
    [API_ROUTE_TAGS] = api_tags,     [API_ROUTE_MANIFEST] = api_manifest,
    [API_ROUTE_BLOB] = api_blob,     [API_ROUTE_UPLOAD_START] = api_upload_start,
    [API_ROUTE_UPLOAD] = api_upload, [API_ROUTE_REFERRERS] = api_referrers,
};

static void not_found(struct http_req *req)
{
    static const char body[] = "404 page not found\n";
    http_resp_start(req, 404);
    http_resp_header(req, "Content-Type", "text/plain; charset=utf-8");
    http_resp_body_mem(req, body, sizeof(body) - 1);
}

static bool is_write(enum http_method m)
{
    return m == HTTP_POST || m == HTTP_PUT || m == HTTP_PATCH || m == HTTP_DELETE;
}

/* The request path with http.prefix removed, or NULL when it is outside the prefix. */
static const char *strip_prefix(const struct config *cfg, const char *path)
{
    const char *prefix = cfg->http.prefix;
    if (!prefix || !*prefix)
        return path;
    size_t pl = strlen(prefix);
    while (pl > 0 && prefix[pl - 1] == '/')
        pl--;
    if (strncmp(path, prefix, pl) != 0 || path[pl] != '/')
        return NULL;
    return path + pl;
}

/* Errors the HTTP layer decides (413 for an oversized buffered body; 400, 414, 431, ... for
 * requests that did not parse) get the registry's error body and headers like every other
 * /v2/ answer. */
static void on_error(struct http_req *req, int status, void *arg)
{
    struct server *srv = arg;
    api_error(&srv->api, req, regerr_from_http_status(status), NULL);
}

static void on_complete(struct http_req *req, int status, uint64_t duration_us, void *arg)
{
    metrics_request(http_req_path(req), http_req_method(req), status, duration_us);
}

static void on_request(struct http_req *req, void *arg)
{
    struct server *srv = arg;
    if (strcmp(http_req_path(req), "/healthz") == 0) { /* for probes: before auth and prefix */
        health_serve_healthz(srv->health, req);
        return;
    }
    /* Another node of the cluster reads a fetch in flight: its own token, not client auth. */
    if (srv->api.proxy &&
        strncmp(http_req_path(req), PROXY_PEER_PATH, sizeof(PROXY_PEER_PATH) - 1) == 0) {
        proxy_blob_peer(srv->api.proxy, &srv->api, req,
                        http_req_path(req) + sizeof(PROXY_PEER_PATH) - 1);
        return;
    }
    const char *path = strip_prefix(srv->api.cfg, http_req_path(req));
    if (!path || strncmp(path, "/v2", 3) != 0 || (path[3] != '/' && path[3] != '\0')) {
        not_found(req);
        return;
    }
    /* Client auth comes before routing: without credentials nothing about the store shows. */
    char user[AUTH_USER_MAX] = "";
    if (srv->auth && !auth_check(srv->auth, http_req_header(req, "Authorization"),
                                 http_req_remote_addr(req), user)) {
        const char *hdrs[] = {"WWW-Authenticate", auth_challenge(srv->auth), NULL};
        api_error_headers(&srv->api, req, REG_ERR_UNAUTHORIZED, NULL, hdrs);
        return;
    }
    struct api_route rt;
    enum regerr result = api_route_parse(path, &rt);
    if (result != REG_OK) {
        api_error(&srv->api, req, result, NULL);
        return;
    }
    if (srv->api.cfg->storage.maintenance.readonly && is_write(http_req_method(req))) {
        api_error(&srv->api, req, REG_ERR_UNSUPPORTED,
                  "the registry is read-only (storage.maintenance.readonly)");
        return;
    }
    char why[API_NAME_MAX + 128];
    if (is_write(http_req_method(req)) &&
        (result = writepolicy_request(srv->api.cfg, &rt, srv->auth ? user : NULL, why,
                                      sizeof(why))) != REG_OK) {
        api_error(&srv->api, req, result, why);
        return;
    }
    routes[rt.kind](&srv->api, req, &rt);
}

/* auth.htpasswd and http.tls: a file that cannot be used stops the start (logged). */
static int server_setup_auth_tls(struct server *srv, struct event_base *base,
                                 const struct config *cfg)
{
    if (cfg->auth.type == CONFIG_AUTH_HTPASSWD) {
        char err[512];
        srv->auth = auth_new(cfg->auth.htpasswd.realm, cfg->auth.htpasswd.path, err, sizeof(err));
        if (!srv->auth) {
            log_error("%s", err);
            return -1;
        }
    } else if (cfg->auth.type != CONFIG_AUTH_NONE) {
        /* serving without the auth the operator asked for would open the registry to all */
        log_error("auth.%s: not supported by regmirror yet; use auth.htpasswd",
                  cfg->auth.type == CONFIG_AUTH_TOKEN ? "token" : "silly");
        return -1;
    }
    if (cfg->http.tls.certificate[0] || cfg->http.tls.letsencrypt.cachefile[0]) {
        srv->tls = tls_server_new(base, cfg, srv->http);
        if (!srv->tls)
            return -1;
    }
    return 0;
}

struct server *server_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                          struct proxy *proxy, struct cache *cache, struct offload *ol)
{
    struct server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return NULL;
    srv->api.cfg = cfg;
    srv->api.reg = reg;
    srv->api.proxy = proxy;
    srv->api.cache = cache;
    srv->api.offload = ol;
    struct http_server_handler handler = {
        .on_request = on_request, .on_error = on_error, .on_complete = on_complete, .arg = srv};
    srv->http = http_server_new(base, NULL, &handler);
    if (!srv->http)
        goto fail;
    http_server_set_access_log(srv->http, !cfg->log.accesslog_disabled);
    if (server_setup_auth_tls(srv, base, cfg) != 0)
        goto fail;
    writepolicy_log_start(cfg, srv->auth != NULL);
    if (srv->tls ? tls_server_listen(srv->tls, cfg->http.addr) != 0
                 : http_server_listen(srv->http, cfg->http.addr) != 0) {
        log_error("cannot listen on %s: %s", cfg->http.addr, strerror(errno));
        goto fail;
    }
    log_info("listening on %s%s", cfg->http.addr, srv->tls ? " (TLS)" : "");
    return srv;
fail:
    server_free(srv);
    return NULL;
}

static void on_http_drained(void *arg)
{
    struct server *srv = arg;
    if (--srv->ndraining == 0)
        srv->on_drained(srv->drained_arg);
}

void server_drain(struct server *srv, server_drained_cb done, void *arg)
{
    if (srv->on_drained)
        return;
    /* its listeners and handshakes: no connection reaches srv->http any more */
    tls_server_free(srv->tls);
    srv->tls = NULL;
    srv->on_drained = done;
    srv->drained_arg = arg;
    srv->ndraining = srv->debug ? 2 : 1;
    http_server_drain(srv->http, on_http_drained, srv);
    if (srv->debug)
        http_server_drain(srv->debug, on_http_drained, srv);
}

void server_close(struct server *srv)
{
    if (!srv)
        return;
    tls_server_free(srv->tls); /* first: it hands connections to srv->http */
    srv->tls = NULL;
    if (srv->http)
        http_server_free(srv->http);
    srv->http = NULL;
    if (srv->debug)
        http_server_free(srv->debug);
    srv->debug = NULL;
    admin_free(srv->admin); /* after its listener: no new job; before the proxy it pulls from */
    srv->admin = NULL;
}

void server_free(struct server *srv)
{
    if (!srv)
        return;
    server_close(srv);
    auth_free(srv->auth);
    free(srv);
}

/* http.debug.addr: /debug/health, the status page and the Prometheus metrics. */
static void on_debug_request(struct http_req *req, void *arg)
{
    struct server *srv = arg;
    const struct config *cfg = srv->api.cfg;
    const char *path = http_req_path(req);
    enum http_method m = http_req_method(req);
    if (srv->admin && strncmp(path, ADMIN_PATH, sizeof(ADMIN_PATH) - 1) == 0 &&
        (path[sizeof(ADMIN_PATH) - 1] == '\0' || path[sizeof(ADMIN_PATH) - 1] == '/')) {
        admin_serve(srv->admin, req);
        return;
    }
    if (m != HTTP_GET && m != HTTP_HEAD) {
        http_resp_start(req, 405);
        http_resp_header(req, "Allow", "GET, HEAD");
        http_resp_no_body(req, -1);
    } else if (strcmp(path, "/debug/health") == 0) {
        health_serve_debug(srv->health, req);
    } else if (srv->status && strcmp(path, "/status") == 0) {
        status_serve_page(req);
    } else if (srv->status && strcmp(path, "/status.json") == 0) {
        status_serve_json(srv->status, req);
    } else if (cfg->http.debug.prometheus_enabled &&
               strcmp(path, cfg->http.debug.prometheus_path) == 0) {
        metrics_serve(req);
    } else {
        not_found(req);
    }
}

int server_observe(struct server *srv, struct event_base *base, const struct health *health,
                   struct status *status)
{
    const struct config *cfg = srv->api.cfg;
    srv->health = health;
    srv->status = status;
    if (!cfg->http.debug.addr[0])
        return 0;
    struct http_server_handler handler = {.on_request = on_debug_request, .arg = srv};
    srv->debug = http_server_new(base, NULL, &handler);
    if (!srv->debug)
        return -1;
    http_server_set_access_log(srv->debug, false);
    srv->admin = admin_new(base, &srv->api, srv->auth, registry_storage(srv->api.reg));
    if (!srv->admin)
        return -1;
    if (status)
        status_set_admin(status, srv->admin);
    if (http_server_listen(srv->debug, cfg->http.debug.addr) != 0) {
        log_error("cannot listen on http.debug.addr %s: %s", cfg->http.debug.addr, strerror(errno));
        return -1;
    }
    log_info("debug server on %s: /debug/health, /status, " ADMIN_PATH "%s%s", cfg->http.debug.addr,
             cfg->http.debug.prometheus_enabled ? ", " : "",
             cfg->http.debug.prometheus_enabled ? cfg->http.debug.prometheus_path : "");
    return 0;
}
