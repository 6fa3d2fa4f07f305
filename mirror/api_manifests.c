/* /v2/<name>/manifests/<reference>: GET, HEAD, PUT, DELETE. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "notify.h"
#include "proxy.h"

#define ACCEPT_LINES_MAX 32

struct put_ctx {
    const struct api *api;
    struct api_route rt;
};

/* Every Accept line the client sent: clients send several separate lines. */
static size_t accept_lines(struct http_req *req, const char **out)
{
    size_t n = 0;
    const char *v;
    while (n < ACCEPT_LINES_MAX && (v = http_req_header_n(req, "Accept", n)) != NULL)
        out[n++] = v;
    return n;
}

static bool is_oci(const char *mt)
{
    return strcmp(mt, MANIFEST_MT_OCI_MANIFEST) == 0 || strcmp(mt, MANIFEST_MT_OCI_INDEX) == 0;
}

/*
 * A client that does not take manifest lists gets the linux/amd64 image of a Docker
 * manifest list, as distribution does. Returns REG_OK with *m replaced, or leaves *m alone
 * when the list has no such entry.
 */
static enum regerr pick_default_platform(const struct api *api, const char *name,
                                         struct registry_manifest *m)
{
    struct manifest list;
    char err[128];
    if (manifest_parse(m->body, m->len, NULL, &list, err, sizeof(err)) != REG_OK)
        return REG_ERR_INTERNAL;
    enum regerr result = REG_OK;
    for (size_t i = 0; i < list.nlayers; i++) {
        const struct manifest_desc *d = &list.layers[i];
        if (d->os && d->arch && strcmp(d->os, "linux") == 0 && strcmp(d->arch, "amd64") == 0) {
            char ds[DIGEST_STR_MAX];
            struct registry_manifest child;
            result = registry_manifest_get(api->reg, name, digest_str(&d->digest, ds), &child);
            if (result == REG_OK) {
                registry_manifest_release(m);
                *m = child;
            }
            break;
        }
    }
    manifest_free(&list);
    return result;
}

/* resolved: the digest rt->ref stands for, when the caller has just looked it up; or NULL. */
static void serve_manifest(const struct api *api, struct http_req *req, const struct api_route *rt,
                           const struct digest *resolved)
{
    struct registry_manifest m;
    enum regerr result = resolved ? registry_manifest_get_resolved(api->reg, resolved, &m)
                                  : registry_manifest_get(api->reg, rt->name, rt->ref, &m);
    if (result != REG_OK) {
        api_errorf(api, req, result, "manifest %s:%s", rt->name, rt->ref);
        return;
    }
    const char *accept[ACCEPT_LINES_MAX];
    size_t naccept = accept_lines(req, accept);
    if (naccept && !manifest_accepts(accept, naccept, m.media_type)) {
        if (is_oci(m.media_type)) {
            api_errorf(api, req, REG_ERR_MANIFEST_UNKNOWN,
                       "%s found, but the Accept header does not allow it", m.media_type);
            goto out;
        }
        /* By digest the client asked for exactly this manifest. */
        if (strcmp(m.media_type, MANIFEST_MT_DOCKER_LIST) == 0 && !strchr(rt->ref, ':') &&
            pick_default_platform(api, rt->name, &m) != REG_OK) {
            api_error(api, req, REG_ERR_INTERNAL, NULL);
            goto out;
        }
    }
    char ds[DIGEST_STR_MAX], etag[DIGEST_STR_MAX + 2];
    digest_str(&m.digest, ds);
    snprintf(etag, sizeof(etag), "\"%s\"", ds);
    const char *inm = http_req_header(req, "If-None-Match");
    if (inm && (strcmp(inm, etag) == 0 || strcmp(inm, ds) == 0)) {
        api_start(api, req, 304);
        http_resp_header(req, "Docker-Content-Digest", ds);
        http_resp_header(req, "ETag", etag);
        http_resp_no_body(req, -1);
        goto out;
    }
    notify_manifest(api, req, NOTIFY_PULL, rt->name, rt->ref, &m.digest, m.media_type,
                    (int64_t)m.len);
    api_start(api, req, 200);
    http_resp_header(req, "Content-Type", m.media_type);
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_header(req, "ETag", etag);
    if (http_req_method(req) == HTTP_HEAD)
        http_resp_no_body(req, (int64_t)m.len);
    else
        http_resp_body_mem(req, m.body, m.len);
out:
    registry_manifest_release(&m);
}

static void put_body(struct http_req *req, void *arg, const char *data, size_t len)
{
    struct put_ctx *ctx = arg;
    const struct api *api = ctx->api;
    const struct api_route *rt = &ctx->rt;
    char err[512] = "";
    struct digest d, subject;
    bool has_subject = false;
    enum regerr result = registry_manifest_put(api->reg, rt->name, rt->ref, data, len,
                                               http_req_header(req, "Content-Type"), &d,
                                               &has_subject, &subject, err, sizeof(err));
    if (result != REG_OK) {
        api_error(api, req, result, *err ? err : NULL);
        goto out;
    }
    char ds[DIGEST_STR_MAX], path[API_NAME_MAX + DIGEST_STR_MAX + 32];
    digest_str(&d, ds);
    snprintf(path, sizeof(path), "/v2/%s/manifests/%s", rt->name, ds);
    char *url = api_url(api, req, path);
    notify_manifest(api, req, NOTIFY_PUSH, rt->name, rt->ref, &d,
                    http_req_header(req, "Content-Type"), (int64_t)len);
    api_start(api, req, 201);
    http_resp_header(req, "Location", url ? url : path);
    http_resp_header(req, "Docker-Content-Digest", ds);
    if (has_subject)
        http_resp_header(req, "OCI-Subject", digest_str(&subject, ds));
    http_resp_no_body(req, 0);
    free(url);
out:
    free(ctx);
}

static void put_abort(struct http_req *req, void *arg)
{
    free(arg);
}

static void put_manifest(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    int64_t cl = http_req_content_length(req);
    if (cl > (int64_t)REGISTRY_MANIFEST_MAX) {
        api_errorf(api, req, REG_ERR_MANIFEST_INVALID, "manifest larger than %u bytes",
                   REGISTRY_MANIFEST_MAX);
        return;
    }
    struct put_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    ctx->api = api;
    ctx->rt = *rt;
    http_req_on_abort(req, put_abort, ctx);
    http_req_buffer_body(req, REGISTRY_MANIFEST_MAX, put_body, ctx);
}

static void delete_manifest(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!registry_delete_enabled(api->reg)) {
        api_error(api, req, REG_ERR_UNSUPPORTED, "deletes are disabled (storage.delete.enabled)");
        return;
    }
    enum regerr result = registry_manifest_delete(api->reg, rt->name, rt->ref);
    if (result != REG_OK) {
        api_errorf(api, req, result, "manifest %s:%s", rt->name, rt->ref);
        return;
    }
    notify_manifest(api, req, NOTIFY_DELETE, rt->name, rt->ref, NULL, NULL, -1);
    api_start(api, req, 202);
    http_resp_no_body(req, 0);
}

void api_manifest(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    switch (http_req_method(req)) {
    case HTTP_GET:
    case HTTP_HEAD:
        if (api->proxy)
            proxy_manifest(api->proxy, api, req, rt, serve_manifest);
        else
            serve_manifest(api, req, rt, NULL);
        break;
    case HTTP_PUT:
        put_manifest(api, req, rt);
        break;
    case HTTP_DELETE:
        delete_manifest(api, req, rt);
        break;
    default:
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
    }
}
