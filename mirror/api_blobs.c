/* /v2/<name>/blobs/<digest>: GET (with a single Range), HEAD, DELETE. */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"
#include "notify.h"
#include "proxy.h"
#include "reference.h"

static void serve_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    struct digest d;
    digest_parse(rt->ref, strlen(rt->ref), &d);
    int fd = -1;
    uint64_t size = 0;
    enum regerr result = registry_blob_open(api->reg, rt->name, &d, &fd, &size);
    if (result != REG_OK) {
        api_errorf(api, req, result, "blob %s in %s", rt->ref, rt->name);
        return;
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
    if (http_req_method(req) == HTTP_HEAD) {
        close(fd);
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
    notify_blob(api, req, NOTIFY_DELETE, rt->name, &d, -1, NULL);
    api_start(api, req, 202);
    http_resp_header(req, "Docker-Content-Digest", rt->ref);
    http_resp_no_body(req, 0);
}

void api_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    switch (http_req_method(req)) {
    case HTTP_GET:
    case HTTP_HEAD:
        if (api->proxy)
            proxy_blob(api->proxy, api, req, rt, serve_blob);
        else
            serve_blob(api, req, rt);
        break;
    case HTTP_DELETE:
        delete_blob(api, req, rt);
        break;
    default:
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
    }
}
