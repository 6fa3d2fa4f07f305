/*
 * The status line and headers of blob and manifest answers: one writer, so a blob gets the
 * same headers whether it comes from the store, an in-flight fetch's spool or an upstream
 * HEAD. The callers send the bodies.
 */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "reference.h"

/* Blobs are named by their digest: what a client cached never changes. */
#define BLOB_CACHE_CONTROL "max-age=31536000"

/* d as text (ds) and as its entity tag, the text quoted (etag). */
static void digest_tags(const struct digest *d, char ds[DIGEST_STR_MAX],
                        char etag[DIGEST_STR_MAX + 2])
{
    digest_str(d, ds);
    snprintf(etag, DIGEST_STR_MAX + 2, "\"%s\"", ds);
}

bool api_blob_span(struct http_req *req, int64_t size, struct api_span *span)
{
    *span = (struct api_span){.start = 0, .len = size, .partial = false};
    const char *range = http_req_header(req, "Range");
    if (!range || size < 0)
        return true;
    uint64_t start = 0, last = 0;
    switch (reference_parse_range(range, (uint64_t)size, &start, &last)) {
    case REFERENCE_RANGE_OK:
        *span =
            (struct api_span){.start = start, .len = (int64_t)(last - start + 1), .partial = true};
        return true;
    case REFERENCE_RANGE_UNSATISFIABLE:
        return false;
    case REFERENCE_RANGE_IGNORE:
        break;
    }
    return true;
}

void api_blob_unsatisfiable(const struct api *api, struct http_req *req, int64_t size)
{
    char cr[64];
    snprintf(cr, sizeof(cr), "bytes */%" PRId64, size);
    const char *hdrs[] = {"Content-Range", cr, NULL};
    api_error_headers(api, req, REG_ERR_RANGE_INVALID, http_req_header(req, "Range"), hdrs);
}

void api_blob_start(const struct api *api, struct http_req *req, const struct digest *d,
                    int64_t size, const struct api_span *span)
{
    char ds[DIGEST_STR_MAX], etag[DIGEST_STR_MAX + 2];
    digest_tags(d, ds, etag);
    api_start(api, req, span->partial ? 206 : 200);
    http_resp_header(req, "Content-Type", "application/octet-stream");
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_header(req, "ETag", etag);
    http_resp_header(req, "Accept-Ranges", "bytes");
    http_resp_header(req, "Cache-Control", BLOB_CACHE_CONTROL);
    if (span->partial)
        http_resp_headerf(req, "Content-Range", "bytes %" PRIu64 "-%" PRIu64 "/%" PRId64,
                          span->start, span->start + (uint64_t)span->len - 1, size);
}

void api_blob_head(const struct api *api, struct http_req *req, const struct digest *d,
                   int64_t size)
{
    struct api_span span;
    if (!api_blob_span(req, size, &span)) {
        api_blob_unsatisfiable(api, req, size);
        return;
    }
    api_blob_start(api, req, d, size, &span);
    http_resp_no_body(req, span.len);
}

void api_blob_redirect(const struct api *api, struct http_req *req, const struct digest *d,
                       const char *url)
{
    char ds[DIGEST_STR_MAX];
    api_start(api, req, 307);
    http_resp_header(req, "Location", url);
    http_resp_header(req, "Docker-Content-Digest", digest_str(d, ds));
    http_resp_no_body(req, 0);
}

bool api_manifest_not_modified(const struct api *api, struct http_req *req, const struct digest *d)
{
    char ds[DIGEST_STR_MAX], etag[DIGEST_STR_MAX + 2];
    digest_tags(d, ds, etag);
    const char *inm = http_req_header(req, "If-None-Match");
    if (!inm || (strcmp(inm, etag) != 0 && strcmp(inm, ds) != 0))
        return false;
    api_start(api, req, 304);
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_header(req, "ETag", etag);
    http_resp_no_body(req, -1);
    return true;
}

void api_manifest_answer(const struct api *api, struct http_req *req,
                         const struct registry_manifest *m)
{
    char ds[DIGEST_STR_MAX], etag[DIGEST_STR_MAX + 2];
    digest_tags(&m->digest, ds, etag);
    api_start(api, req, 200);
    http_resp_header(req, "Content-Type", m->media_type);
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_header(req, "ETag", etag);
    if (http_req_method(req) == HTTP_HEAD)
        http_resp_no_body(req, (int64_t)m->len);
    else
        http_resp_body_mem(req, m->body, m->len);
}
