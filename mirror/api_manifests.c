/* /v2/<name>/manifests/<reference>: GET, HEAD, PUT, DELETE. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "log.h"
#include "notify.h"
#include "offload.h"
#include "proxy.h"
#include "writepolicy.h"

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
static enum regerr pick_default_platform(struct registry *reg, const char *name,
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
            result = registry_manifest_get(reg, name, digest_str(&d->digest, ds), &child);
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

/* A manifest GET/HEAD: read off the loop, answered on it. */
struct get_job {
    const struct api *api;
    struct api_route rt;
    bool have_resolved;
    struct digest resolved;
    bool pick_platform; /* a Docker list by tag for a client that takes no lists */
    /* The request's Accept lines: they point into req, so done reads them only while req
     * is there (work never does). */
    const char *accept[ACCEPT_LINES_MAX];
    size_t naccept;
    struct registry_manifest m;
    char stored_type[128]; /* media type of the manifest ref names (before any pick) */
    enum regerr result, picked;
};

static void get_work(void *arg)
{
    struct get_job *j = arg;
    j->result = j->have_resolved ? registry_manifest_get_resolved(j->api->reg, &j->resolved, &j->m)
                                 : registry_manifest_get(j->api->reg, j->rt.name, j->rt.ref, &j->m);
    if (j->result != REG_OK)
        return;
    snprintf(j->stored_type, sizeof(j->stored_type), "%s", j->m.media_type);
    j->picked = REG_OK;
    if (j->pick_platform && strcmp(j->m.media_type, MANIFEST_MT_DOCKER_LIST) == 0)
        j->picked = pick_default_platform(j->api->reg, j->rt.name, &j->m);
}

static void get_done(void *arg, struct http_req *req)
{
    struct get_job *j = arg;
    const struct api *api = j->api;
    struct registry_manifest *m = &j->m;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_errorf(api, req, j->result, "manifest %s:%s", j->rt.name, j->rt.ref);
        goto out;
    }
    if (j->naccept && !manifest_accepts(j->accept, j->naccept, j->stored_type)) {
        if (is_oci(j->stored_type)) {
            api_errorf(api, req, REG_ERR_MANIFEST_UNKNOWN,
                       "%s found, but the Accept header does not allow it", j->stored_type);
            goto out;
        }
        if (j->picked != REG_OK) {
            api_error(api, req, REG_ERR_INTERNAL, NULL);
            goto out;
        }
    }
    if (api_manifest_not_modified(api, req, &m->digest))
        goto out;
    notify_manifest(api, req, NOTIFY_PULL, j->rt.name, j->rt.ref, &m->digest, m->media_type,
                    m->body, m->len);
    if (http_req_method(req) == HTTP_GET)
        admin_note_pull(j->rt.name, &m->digest);
    api_manifest_answer(api, req, m);
out:
    registry_manifest_release(m);
    free(j);
}

void api_manifest_serve(const struct api *api, struct http_req *req, const struct api_route *rt,
                        const struct digest *resolved)
{
    struct get_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    j->api = api;
    j->rt = *rt;
    if (resolved) {
        j->have_resolved = true;
        j->resolved = *resolved;
    }
    /* The request's headers stay on the loop: decide here what work needs from them. By
     * digest the client asked for exactly that manifest, so no platform is picked. */
    j->naccept = accept_lines(req, j->accept);
    j->pick_platform = j->naccept && !strchr(rt->ref, ':') &&
                       !manifest_accepts(j->accept, j->naccept, MANIFEST_MT_DOCKER_LIST);
    offload_req(api->offload, req, get_work, get_done, j);
}

/* A manifest PUT: validated and stored off the loop. */
struct put_job {
    const struct api *api;
    struct api_route rt;
    const char *body; /* the request's buffer (inline pool) or the job's copy */
    char *copy;
    size_t len;
    char *content_type;
    struct digest d, subject;
    bool has_subject;
    enum regerr result;
    char err[512];
};

static void put_work(void *arg)
{
    struct put_job *j = arg;
    j->result =
        writepolicy_tag(j->api->cfg, j->api->reg, j->rt.name, j->rt.ref, j->err, sizeof(j->err));
    if (j->result == REG_OK)
        j->result = registry_manifest_put(j->api->reg, j->rt.name, j->rt.ref, j->body, j->len,
                                          j->content_type, &j->d, &j->has_subject, &j->subject,
                                          j->err, sizeof(j->err));
    if (j->result == REG_OK)
        proxy_tags_changed(j->api->proxy);
}

static void put_done(void *arg, struct http_req *req)
{
    struct put_job *j = arg;
    const struct api *api = j->api;
    const struct api_route *rt = &j->rt;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_error(api, req, j->result, *j->err ? j->err : NULL);
        goto out;
    }
    char ds[DIGEST_STR_MAX], path[API_NAME_MAX + DIGEST_STR_MAX + 32];
    digest_str(&j->d, ds);
    snprintf(path, sizeof(path), "/v2/%s/manifests/%s", rt->name, ds);
    char *url = api_url(api, req, path);
    notify_manifest(api, req, NOTIFY_PUSH, rt->name, rt->ref, &j->d, j->content_type, j->body,
                    j->len);
    api_start(api, req, 201);
    http_resp_header(req, "Location", url ? url : path);
    http_resp_header(req, "Docker-Content-Digest", ds);
    if (j->has_subject)
        http_resp_header(req, "OCI-Subject", digest_str(&j->subject, ds));
    http_resp_no_body(req, 0);
    free(url);
out:
    free(j->copy);
    free(j->content_type);
    free(j);
}

static void put_body(struct http_req *req, void *arg, const char *data, size_t len)
{
    struct put_ctx *ctx = arg;
    const struct api *api = ctx->api;
    http_req_on_abort(req, NULL, NULL); /* ctx is freed here whatever happens */
    struct put_job *j = calloc(1, sizeof(*j));
    const char *ct = http_req_header(req, "Content-Type");
    if (!j || (ct && !(j->content_type = strdup(ct))))
        goto oom;
    j->api = api;
    j->rt = ctx->rt;
    j->len = len;
    j->body = data;
    /* The body buffer lives only during this callback: a worker needs its own copy. */
    if (!offload_inline(api->offload)) {
        if (!(j->copy = malloc(len ? len : 1)))
            goto oom;
        memcpy(j->copy, data, len);
        j->body = j->copy;
    }
    free(ctx);
    offload_req(api->offload, req, put_work, put_done, j);
    return;
oom:
    if (j)
        free(j->content_type);
    free(j);
    free(ctx);
    api_error(api, req, REG_ERR_INTERNAL, NULL);
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

struct delete_job {
    const struct api *api;
    struct api_route rt;
    enum regerr result;
    char err[512];
};

static void delete_work(void *arg)
{
    struct delete_job *j = arg;
    j->result =
        writepolicy_tag(j->api->cfg, j->api->reg, j->rt.name, j->rt.ref, j->err, sizeof(j->err));
    if (j->result == REG_OK)
        j->result = registry_manifest_delete(j->api->reg, j->rt.name, j->rt.ref);
    if (j->result == REG_OK)
        proxy_tags_changed(j->api->proxy);
}

static void delete_done(void *arg, struct http_req *req)
{
    struct delete_job *j = arg;
    const struct api *api = j->api;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        if (*j->err)
            api_error(api, req, j->result, j->err);
        else
            api_errorf(api, req, j->result, "manifest %s:%s", j->rt.name, j->rt.ref);
        goto out;
    }
    notify_manifest(api, req, NOTIFY_DELETE, j->rt.name, j->rt.ref, NULL, NULL, NULL, 0);
    api_start(api, req, 202);
    http_resp_no_body(req, 0);
out:
    free(j);
}

static void delete_manifest(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!registry_delete_enabled(api->reg)) {
        api_error(api, req, REG_ERR_UNSUPPORTED, "deletes are disabled (storage.delete.enabled)");
        return;
    }
    struct delete_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    *j = (struct delete_job){api, *rt, REG_OK, ""};
    offload_req(api->offload, req, delete_work, delete_done, j);
}

void api_manifest(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    switch (http_req_method(req)) {
    case HTTP_GET:
    case HTTP_HEAD:
        if (api->proxy)
            proxy_manifest(api->proxy, api, req, rt);
        else
            api_manifest_serve(api, req, rt, NULL);
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
