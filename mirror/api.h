#ifndef REGMIRROR_API_H
#define REGMIRROR_API_H
/*
 * api: the /v2/ routes. server.c parses the route and calls one handler per API family
 * (api_base.c, api_manifests.c, api_blobs.c, api_uploads.c); the helpers below give every
 * answer the same headers and error bodies.
 *
 * Handlers own the request until they answer (see http.h); anything they allocate for a
 * request is released when they answer or in their abort callback.
 */
#include <stdarg.h>

#include "config.h"
#include "http.h"
#include "registry.h"

#define API_NAME_MAX 256
#define API_REF_MAX 160

struct proxy;
struct cache;
struct offload;

struct api {
    const struct config *cfg;
    struct registry *reg;
    struct proxy *proxy; /* NULL unless proxy.remoteurl is set */
    struct cache *cache; /* storage.cache.blobdescriptor; NULL: none */
    /* Storage work goes through it (offload.h): inline for the filesystem, threads for OSS. */
    struct offload *offload;
};

enum api_route_kind {
    API_ROUTE_BASE,
    API_ROUTE_CATALOG,
    API_ROUTE_TAGS,
    API_ROUTE_MANIFEST,
    API_ROUTE_BLOB,
    API_ROUTE_UPLOAD_START, /* /blobs/uploads/ */
    API_ROUTE_UPLOAD,       /* /blobs/uploads/<id> */
    API_ROUTE_REFERRERS,
};

struct api_route {
    enum api_route_kind kind;
    char name[API_NAME_MAX];
    char ref[API_REF_MAX]; /* tag, digest or upload id, per kind */
};

/*
 * Parses path (the part after http.prefix) into rt. Returns REG_OK, REG_ERR_NOT_FOUND when
 * the path is no /v2/ route, or NAME_INVALID / TAG_INVALID / DIGEST_INVALID /
 * BLOB_UPLOAD_UNKNOWN for malformed parts.
 */
enum regerr api_route_parse(const char *path, struct api_route *rt);

/* Starts a response with the headers every /v2/ answer carries. */
void api_start(const struct api *api, struct http_req *req, int status);
/* A complete error answer with the registry's JSON error body; detail may be NULL. */
void api_error(const struct api *api, struct http_req *req, enum regerr e, const char *detail);
/* The same, with extra headers: a NULL-terminated list of name, value pairs. */
void api_error_headers(const struct api *api, struct http_req *req, enum regerr e,
                       const char *detail, const char *const *headers);
void api_errorf(const struct api *api, struct http_req *req, enum regerr e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* api_error with Retry-After: retry_after seconds, sent for 429 and 503 when >= 0. */
void api_error_retry(const struct api *api, struct http_req *req, enum regerr e, long retry_after,
                     const char *detail);
/* A complete JSON answer; takes the reference to body. */
void api_json(const struct api *api, struct http_req *req, int status, json_t *body,
              const char *content_type);
/*
 * Location header value for path (which starts with "/v2/"): relative, or absolute from
 * http.host, X-Forwarded-Proto/-Host or Host, per http.relativeurls. Caller frees.
 */
char *api_url(const struct api *api, struct http_req *req, const char *path);

/*
 * Blob and manifest answers (api_answer.c): their status line and headers are written here
 * and nowhere else, whatever the source of the bytes (the store, an in-flight fetch's spool,
 * an upstream HEAD). The caller then sends the body.
 */
/* The part of a blob an answer carries: len bytes from start; len -1 while the size is not
 * known (an in-flight fetch the upstream gave no length: the whole blob, to its end). */
struct api_span {
    uint64_t start;
    int64_t len;
    bool partial; /* 206 for the Range asked */
};
/* The span the request's Range asks of a blob of size bytes (-1: not known yet, then the
 * Range is ignored). false: the Range cannot be satisfied (answer api_blob_unsatisfiable). */
bool api_blob_span(struct http_req *req, int64_t size, struct api_span *span);
/* The complete 416 answer, its Content-Range naming the size. */
void api_blob_unsatisfiable(const struct api *api, struct http_req *req, int64_t size);
/* Starts a blob's 200 or 206: Content-Type, Docker-Content-Digest, ETag, Accept-Ranges,
 * Cache-Control and Content-Range; the body call that follows sets Content-Length. */
void api_blob_start(const struct api *api, struct http_req *req, const struct digest *d,
                    int64_t size, const struct api_span *span);
/* The complete answer to a blob HEAD (200, 206 or 416, no body). */
void api_blob_head(const struct api *api, struct http_req *req, const struct digest *d,
                   int64_t size);
/* The complete 307 to a remote store's signed url. */
void api_blob_redirect(const struct api *api, struct http_req *req, const struct digest *d,
                       const char *url);
/* Answers 304 when If-None-Match names d; false (nothing sent) otherwise. */
bool api_manifest_not_modified(const struct api *api, struct http_req *req, const struct digest *d);
/* The complete 200 of m (no body for a HEAD). */
void api_manifest_answer(const struct api *api, struct http_req *req,
                         const struct registry_manifest *m);

/*
 * A blob answer whose bytes are still arriving (api_stream.c): an in-flight fetch's spool,
 * read by every client of the fetch at its own pace, or the spool of one client's ranged
 * upstream request (a part of the blob only: base > 0). The source only says what it holds;
 * the stream writes the answer (status and headers once the length is known, the bytes as
 * they come, then the end, an error status while nothing has left, or a cut).
 */
enum api_fill_state {
    API_FILL_WAITING, /* the length is not known yet: nothing is sent */
    API_FILL_GROWING, /* the blob's bytes [base, have) can be read at fd; more are coming */
    API_FILL_DONE,    /* all the bytes are in: [base, have) */
    API_FILL_FAILED,  /* the rest will not come: err, retry_after, why */
    API_FILL_STORED,  /* nothing here, but the store has the blob now: look there again */
};
struct api_fill {
    enum api_fill_state state;
    int64_t total; /* -1: the length is unknown; read when not WAITING */
    /* The blob's byte base is at offset 0 of fd; a source with base > 0 holds only what the
     * request's Range asks, from base on (its span's start). */
    uint64_t base;
    uint64_t have;
    int fd; /* the source's; the stream sends duplicates of it */
    enum regerr err;
    long retry_after;
    const char *why;
};
struct api_source {
    /* What src holds now. */
    void (*poll)(void *src, struct api_fill *fill);
    /* The stream is over (answered, cut, or its client gone) and forgets src: called once. */
    void (*release)(void *src);
};
struct api_stream;
/* A client's pull (a notification goes out), or another node of the cluster reading. */
enum api_stream_kind { API_STREAM_PULL, API_STREAM_PEER };
/*
 * A stream answering req (a GET of blob d in rt->name) from src. It takes req's abort slot
 * and sends nothing until api_stream_wake. NULL: out of memory, req answered with 500 and
 * src not released.
 */
struct api_stream *api_stream_new(const struct api *api, struct http_req *req,
                                  const struct api_route *rt, const struct digest *d,
                                  enum api_stream_kind kind, const struct api_source *ops,
                                  void *src);
/* The source changed (or the stream is new): sends what it holds. The stream may end and
 * release src before this returns. */
void api_stream_wake(struct api_stream *s);

/*
 * Serving from the store, also what the proxy calls once the store holds what it should
 * serve. api_manifest_serve: resolved, when not NULL, is the digest rt->ref was resolved to
 * in the store just now (registry_manifest_get_resolved), so it need not be looked up again.
 * api_blob_serve: linked_size, when >= 0, is the size of the blob just found linked in
 * rt->name, so it need not be looked up again; fd, when >= 0, is its data, opened by that
 * lookup for a GET from local storage (registry_blob_open), owned from here on.
 */
void api_manifest_serve(const struct api *api, struct http_req *req, const struct api_route *rt,
                        const struct digest *resolved);
void api_blob_serve(const struct api *api, struct http_req *req, const struct api_route *rt,
                    int64_t linked_size, int fd);

void api_base(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_catalog(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_tags(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_manifest(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_referrers(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_blob(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_upload_start(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_upload(const struct api *api, struct http_req *req, const struct api_route *rt);

#endif
