/*
 * /v2/<name>/blobs/uploads/: POST (session, monolithic ?digest=, mount ?mount=&from=),
 * and /v2/<name>/blobs/uploads/<id>: PATCH, PUT ?digest=, GET status, DELETE.
 * Bodies stream straight into the upload's storage; nothing is held in memory.
 */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "log.h"
#include "notify.h"
#include "reference.h"

enum upload_mode { MODE_PATCH, MODE_PUT, MODE_MONOLITHIC };

/* One request streaming into an upload session. */
struct upload_ctx {
    const struct api *api;
    struct api_route rt;
    enum upload_mode mode;
    struct registry_upload *up;
    struct digest digest; /* PUT and monolithic POST */
    bool answered;        /* an error was sent from the data callback */
};

static bool upload_id_valid(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return false;
    for (const char *c = id; *c; c++) {
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '-' || *c == '_'))
            return false;
    }
    return true;
}

/* 202/204 answer that tells the client where the session is and how much it holds. */
static void answer_session(const struct api *api, struct http_req *req, const char *name,
                           const char *id, uint64_t size, int status)
{
    char path[API_NAME_MAX + 128];
    snprintf(path, sizeof(path), "/v2/%s/blobs/uploads/%s", name, id);
    char *url = api_url(api, req, path);
    api_start(api, req, status);
    http_resp_header(req, "Location", url ? url : path);
    http_resp_header(req, "Docker-Upload-UUID", id);
    http_resp_headerf(req, "Range", "0-%" PRIu64, size ? size - 1 : 0);
    http_resp_no_body(req, status == 204 ? -1 : 0);
    free(url);
}

/* 201 answer for a blob that is now in the repository. */
static void answer_created(const struct api *api, struct http_req *req, const char *name,
                           const struct digest *d)
{
    char ds[DIGEST_STR_MAX], path[API_NAME_MAX + DIGEST_STR_MAX + 16];
    digest_str(d, ds);
    snprintf(path, sizeof(path), "/v2/%s/blobs/%s", name, ds);
    char *url = api_url(api, req, path);
    api_start(api, req, 201);
    http_resp_header(req, "Location", url ? url : path);
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_no_body(req, 0);
    free(url);
}

static void ctx_free(struct upload_ctx *ctx)
{
    if (ctx->up)
        registry_upload_close(ctx->up);
    free(ctx);
}

static int body_data(struct http_req *req, void *arg, const char *data, size_t len)
{
    struct upload_ctx *ctx = arg;
    enum regerr result = registry_upload_write(ctx->up, data, len);
    if (result == REG_OK)
        return 0;
    ctx->answered = true;
    api_error(ctx->api, req, result, NULL);
    return -1;
}

static void body_end(struct http_req *req, void *arg)
{
    struct upload_ctx *ctx = arg;
    const struct api *api = ctx->api;
    if (ctx->answered)
        goto out;
    if (ctx->mode == MODE_PATCH) {
        uint64_t size = registry_upload_offset(ctx->up);
        answer_session(api, req, ctx->rt.name, ctx->rt.ref, size, 202);
        goto out;
    }
    struct registry_upload *up = ctx->up;
    ctx->up = NULL;
    int64_t size = (int64_t)registry_upload_offset(up);
    enum regerr result = registry_upload_commit(up, &ctx->digest);
    if (result != REG_OK) {
        char ds[DIGEST_STR_MAX];
        api_errorf(api, req, result, "digest %s", digest_str(&ctx->digest, ds));
        goto out;
    }
    struct cache_desc cd = {.digest = ctx->digest, .size = (uint64_t)size};
    snprintf(cd.media_type, sizeof(cd.media_type), "application/octet-stream");
    cache_put(api->cache, ctx->rt.name, &cd);
    notify_blob(api, req, NOTIFY_PUSH, ctx->rt.name, &ctx->digest, size, NULL);
    answer_created(api, req, ctx->rt.name, &ctx->digest);
out:
    ctx_free(ctx);
}

static void body_abort(struct http_req *req, void *arg)
{
    ctx_free(arg);
}

/* Reads ?digest= into d; answers DIGEST_INVALID itself and returns -1 when bad. */
static int query_digest(const struct api *api, struct http_req *req, struct digest *d)
{
    char *s = reference_query_get(http_req_query(req), "digest");
    int rc = 0;
    if (!s || digest_parse(s, strlen(s), d) != 0) {
        api_errorf(api, req, REG_ERR_DIGEST_INVALID, "digest parameter %s",
                   s ? "is not a valid digest" : "is missing");
        rc = -1;
    }
    free(s);
    return rc;
}

/*
 * Opens the session and starts streaming the request body into it; the answer comes from
 * body_end. digest is NULL for PATCH.
 */
static void stream_into(const struct api *api, struct http_req *req, const struct api_route *rt,
                        const char *id, enum upload_mode mode, const struct digest *digest)
{
    struct upload_ctx *ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    ctx->api = api;
    ctx->rt = *rt;
    snprintf(ctx->rt.ref, sizeof(ctx->rt.ref), "%s", id);
    ctx->mode = mode;
    if (digest)
        ctx->digest = *digest;
    enum regerr result = registry_upload_open(api->reg, rt->name, id, &ctx->up);
    if (result != REG_OK) {
        api_errorf(api, req, result, "upload %s", id);
        ctx_free(ctx);
        return;
    }
    const char *cr = http_req_header(req, "Content-Range");
    if (cr && mode != MODE_MONOLITHIC) {
        uint64_t start, end;
        uint64_t offset = registry_upload_offset(ctx->up);
        int64_t cl = http_req_content_length(req);
        if (reference_parse_content_range(cr, &start, &end) != 0 || start != offset ||
            (cl >= 0 && (uint64_t)cl != end - start + 1)) {
            char size[64];
            snprintf(size, sizeof(size), "0-%" PRIu64, offset ? offset - 1 : 0);
            const char *hdrs[] = {"Range", size, NULL};
            api_error_headers(api, req, REG_ERR_RANGE_INVALID, cr, hdrs);
            ctx_free(ctx);
            return;
        }
    }
    http_req_on_abort(req, body_abort, ctx);
    if (http_req_has_body(req))
        http_req_read_body(req, body_data, body_end, ctx);
    else
        body_end(req, ctx);
}

void api_upload_start(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (http_req_method(req) != HTTP_POST) {
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
        return;
    }
    const char *q = http_req_query(req);
    char *mount = reference_query_get(q, "mount");
    char *from = reference_query_get(q, "from");
    char *digest_s = reference_query_get(q, "digest");
    struct digest d;
    if (mount && from) {
        if (digest_parse(mount, strlen(mount), &d) != 0) {
            api_errorf(api, req, REG_ERR_DIGEST_INVALID, "mount=%s", mount);
            goto out;
        }
        /* A mount that cannot be done falls back to a new session, as the spec says. */
        if (reference_name_valid(from, strlen(from)) &&
            registry_blob_mount(api->reg, rt->name, from, &d) == REG_OK) {
            notify_blob(api, req, NOTIFY_MOUNT, rt->name, &d, -1, from);
            answer_created(api, req, rt->name, &d);
            goto out;
        }
    }
    char id[37];
    enum regerr result = registry_upload_start(api->reg, rt->name, id);
    if (result != REG_OK) {
        api_error(api, req, result, NULL);
        goto out;
    }
    if (digest_s) {
        if (query_digest(api, req, &d) != 0) {
            registry_upload_cancel(api->reg, rt->name, id);
            goto out;
        }
        stream_into(api, req, rt, id, MODE_MONOLITHIC, &d);
        goto out;
    }
    answer_session(api, req, rt->name, id, 0, 202);
out:
    free(mount);
    free(from);
    free(digest_s);
}

void api_upload(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!upload_id_valid(rt->ref)) {
        api_errorf(api, req, REG_ERR_BLOB_UPLOAD_UNKNOWN, "upload %s", rt->ref);
        return;
    }
    uint64_t size;
    enum regerr result;
    struct digest d;
    switch (http_req_method(req)) {
    case HTTP_PATCH:
        stream_into(api, req, rt, rt->ref, MODE_PATCH, NULL);
        break;
    case HTTP_PUT:
        if (query_digest(api, req, &d) == 0)
            stream_into(api, req, rt, rt->ref, MODE_PUT, &d);
        break;
    case HTTP_GET:
        result = registry_upload_size(api->reg, rt->name, rt->ref, &size);
        if (result != REG_OK)
            api_errorf(api, req, result, "upload %s", rt->ref);
        else
            answer_session(api, req, rt->name, rt->ref, size, 204);
        break;
    case HTTP_DELETE:
        result = registry_upload_cancel(api->reg, rt->name, rt->ref);
        if (result != REG_OK) {
            api_errorf(api, req, result, "upload %s", rt->ref);
        } else {
            api_start(api, req, 204);
            http_resp_no_body(req, -1);
        }
        break;
    default:
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
    }
}
