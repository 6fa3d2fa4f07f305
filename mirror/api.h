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
/* A complete JSON answer; takes the reference to body. */
void api_json(const struct api *api, struct http_req *req, int status, json_t *body,
              const char *content_type);
/*
 * Location header value for path (which starts with "/v2/"): relative, or absolute from
 * http.host, X-Forwarded-Proto/-Host or Host, per http.relativeurls. Caller frees.
 */
char *api_url(const struct api *api, struct http_req *req, const char *path);

void api_base(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_catalog(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_tags(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_manifest(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_referrers(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_blob(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_upload_start(const struct api *api, struct http_req *req, const struct api_route *rt);
void api_upload(const struct api *api, struct http_req *req, const struct api_route *rt);

#endif
