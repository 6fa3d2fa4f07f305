/* /v2/<name>/blobs/<digest>: GET (with a single Range), HEAD, DELETE. */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "metrics.h"
#include "notify.h"
#include "proxy.h"
#include "reference.h"

/* linked_size: the blob's size when the caller has just found it linked in rt->name, else -1
 * (then it is looked up). A HEAD needs no more than that; a GET opens the data. */
static void serve_blob(const struct api *api, struct http_req *req, const struct api_route *rt,
                       int64_t linked_size)
{
    struct digest d;
    digest_parse(rt->ref, strlen(rt->ref), &d);
    int fd = -1;
    uint64_t size = 0;
    bool head = http_req_method(req) == HTTP_HEAD;
    enum regerr result = REG_OK;
    if (head && linked_size >= 0)
        size = (uint64_t)linked_size;
    else if (head)
        result = registry_blob_stat(api->reg, rt->name, &d, &size);
    else
        result = registry_blob_open(api->reg, rt->name, &d, &fd, &size);
    if (result != REG_OK) {
        api_errorf(api, req, result, "blob %s in %s", rt->ref, rt->name);
        return;
    }
    if (linked_size < 0) {
        struct cache_desc cd = {.digest = d, .size = size};
        snprintf(cd.media_type, sizeof(cd.media_type), "application/octet-stream");
        cache_put(api->cache, rt->name, &cd);
    }
    uint64_t start = 0, end = size ? size - 1 : 0;
    int status = 200;
    const char *range = http_req_header(req, "Range");
    if (range) {
        switch (reference_parse_range(range, size, &start, &end)) {
        case REFERENCE_RANGE_OK:
            status = 206;
            break;
        case REFERENCE_RANGE_UNSATISFIABLE:
            if (fd >= 0)
                close(fd);
            char cr[64];
            snprintf(cr, sizeof(cr), "bytes */%" PRIu64, size);
            const char *hdrs[] = {"Content-Range", cr, NULL};
            api_error_headers(api, req, REG_ERR_RANGE_INVALID, range, hdrs);
            return;
        case REFERENCE_RANGE_IGNORE:
            break;
        }
    }
    uint64_t len = size ? end - start + 1 : 0;
    char etag[API_REF_MAX + 2];
    snprintf(etag, sizeof(etag), "\"%s\"", rt->ref);
    api_start(api, req, status);
    http_resp_header(req, "Content-Type", "application/octet-stream");
    http_resp_header(req, "Docker-Content-Digest", rt->ref);
    http_resp_header(req, "ETag", etag);
    http_resp_header(req, "Accept-Ranges", "bytes");
    http_resp_header(req, "Cache-Control", "max-age=31536000");
    if (status == 206)
        http_resp_headerf(req, "Content-Range", "bytes %" PRIu64 "-%" PRIu64 "/%" PRIu64, start,
                          end, size);
    if (head) {
        http_resp_no_body(req, (int64_t)len);
        return;
    }
    metrics_add(METRICS_BYTES_FROM_CACHE, len);
    notify_blob(api, req, NOTIFY_PULL, rt->name, &d, (int64_t)size, NULL);
    http_resp_body_file(req, fd, (off_t)start, (off_t)len);
}

static void delete_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!registry_delete_enabled(api->reg)) {
        api_error(api, req, REG_ERR_UNSUPPORTED, "deletes are disabled (storage.delete.enabled)");
        return;
    }
    struct digest d;
    digest_parse(rt->ref, strlen(rt->ref), &d);
    enum regerr result = registry_blob_delete(api->reg, rt->name, &d);
    if (result != REG_OK) {
        api_errorf(api, req, result, "blob %s in %s", rt->ref, rt->name);
        return;
    }
    cache_forget(api->cache, rt->name, &d);
    notify_blob(api, req, NOTIFY_DELETE, rt->name, &d, -1, NULL);
    api_start(api, req, 202);
    http_resp_header(req, "Docker-Content-Digest", rt->ref);
    http_resp_no_body(req, 0);
}

/* GET and HEAD once the blob-descriptor cache had its say: size >= 0 is a hit. */
static void get_blob(const struct api *api, struct http_req *req, const struct api_route *rt,
                     int64_t size)
{
    if (size >= 0)
        serve_blob(api, req, rt, size);
    else if (api->proxy)
        proxy_blob(api->proxy, api, req, rt, serve_blob);
    else
        serve_blob(api, req, rt, -1);
}

/* A HEAD waiting for the blob-descriptor cache. */
struct head_lookup {
    const struct api *api;
    struct http_req *req;
    struct api_route rt;
    struct cache_op *op;
};

static void head_abort(struct http_req *req, void *arg)
{
    struct head_lookup *hl = arg;
    if (hl->op)
        cache_op_cancel(hl->op);
    free(hl);
}

static void head_desc(void *arg, int found, const struct cache_desc *d)
{
    struct head_lookup hl = *(struct head_lookup *)arg;
    free(arg);
    http_req_on_abort(hl.req, NULL, NULL);
    get_blob(hl.api, hl.req, &hl.rt, found == 1 ? (int64_t)d->size : -1);
}

/*
 * A HEAD asks the cache first (registry:2 does the same): a hit answers without touching
 * storage, which matters most for remote storage. GETs open the data anyway.
 */
static void head_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    struct head_lookup *hl = calloc(1, sizeof(*hl));
    if (!hl) {
        get_blob(api, req, rt, -1);
        return;
    }
    *hl = (struct head_lookup){api, req, *rt, NULL};
    struct digest d;
    digest_parse(rt->ref, strlen(rt->ref), &d);
    http_req_on_abort(req, head_abort, hl);
    /* An inline answer has freed hl: keep the handle only when the answer comes later. */
    struct cache_op *op = cache_get(api->cache, rt->name, &d, head_desc, hl);
    if (op)
        hl->op = op;
}

void api_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    switch (http_req_method(req)) {
    case HTTP_GET:
        get_blob(api, req, rt, -1);
        break;
    case HTTP_HEAD:
        if (api->cache)
            head_blob(api, req, rt);
        else
            get_blob(api, req, rt, -1);
        break;
    case HTTP_DELETE:
        delete_blob(api, req, rt);
        break;
    default:
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
    }
}
