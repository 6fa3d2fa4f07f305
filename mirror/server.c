#include "server.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "http.h"
#include "log.h"

struct server {
    struct api api;
    struct http_server *http;
};

typedef void (*route_fn)(const struct api *api, struct http_req *req, const struct api_route *rt);

static const route_fn routes[] = {
    [API_ROUTE_BASE] = api_base,
    [API_ROUTE_CATALOG] = api_catalog,
    [API_ROUTE_TAGS] = api_tags,
    [API_ROUTE_MANIFEST] = api_manifest,
    [API_ROUTE_BLOB] = api_blob,
    [API_ROUTE_UPLOAD_START] = api_upload_start,
    [API_ROUTE_UPLOAD] = api_upload,
    [API_ROUTE_REFERRERS] = api_referrers,
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

static void on_request(struct http_req *req, void *arg)
{
    struct server *srv = arg;
    const char *path = strip_prefix(srv->api.cfg, http_req_path(req));
    if (!path || strncmp(path, "/v2", 3) != 0 || (path[3] != '/' && path[3] != '\0')) {
        not_found(req);
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
    routes[rt.kind](&srv->api, req, &rt);
}

struct server *server_new(struct event_base *base, const struct config *cfg,
                          struct registry *reg, struct proxy *proxy)
{
    struct server *srv = calloc(1, sizeof(*srv));
    if (!srv)
        return NULL;
    srv->api.cfg = cfg;
    srv->api.reg = reg;
    srv->api.proxy = proxy;
    struct http_server_handler handler = {.on_request = on_request, .arg = srv};
    srv->http = http_server_new(base, NULL, &handler);
    if (!srv->http)
        goto fail;
    http_server_set_access_log(srv->http, !cfg->log.accesslog_disabled);
    if (http_server_listen(srv->http, cfg->http.addr) != 0) {
        log_error("cannot listen on %s: %s", cfg->http.addr, strerror(errno));
        goto fail;
    }
    log_info("listening on %s", cfg->http.addr);
    return srv;
fail:
    server_free(srv);
    return NULL;
}

void server_free(struct server *srv)
{
    if (!srv)
        return;
    if (srv->http)
        http_server_free(srv->http);
    free(srv);
}
