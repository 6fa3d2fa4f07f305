/* Route parsing, the headers and error bodies every /v2/ answer shares, and the discovery
 * routes: /v2/, _catalog, tags/list, referrers. */
#include "api.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "offload.h"
#include "reference.h"

/* Page size when the client asks for none, and the most one page may hold. */
#define API_PAGE_DEFAULT 100
#define API_PAGE_MAX 10000

static int copy_part(char *dst, size_t size, const char *src, size_t len)
{
    if (len >= size)
        return -1;
    memcpy(dst, src, len);
    dst[len] = '\0';
    return 0;
}

/* Finds the last "/<word>/" in s whose tail has no '/', returning the tail start. */
static const char *split_last(const char *s, const char *word, size_t *name_len)
{
    size_t wl = strlen(word);
    const char *best = NULL;
    for (const char *p = strstr(s, word); p; p = strstr(p + 1, word))
        best = p;
    if (!best || strchr(best + wl, '/'))
        return NULL;
    *name_len = (size_t)(best - s);
    return best + wl;
}

static enum regerr set_name(struct api_route *rt, const char *s, size_t len)
{
    if (copy_part(rt->name, sizeof(rt->name), s, len) != 0 || !reference_name_valid(s, len))
        return REG_ERR_NAME_INVALID;
    return REG_OK;
}

/* A route whose last part must be a digest: /blobs/<digest>, /referrers/<digest>. */
static enum regerr set_digest_route(struct api_route *rt, enum api_route_kind kind,
                                    const char *rest, size_t name_len, const char *tail)
{
    rt->kind = kind;
    enum regerr result = set_name(rt, rest, name_len);
    if (result != REG_OK)
        return result;
    size_t tl = strlen(tail);
    if (copy_part(rt->ref, sizeof(rt->ref), tail, tl) != 0 || digest_parse(tail, tl, NULL) != 0)
        return REG_ERR_DIGEST_INVALID;
    return REG_OK;
}

enum regerr api_route_parse(const char *path, struct api_route *rt)
{
    memset(rt, 0, sizeof(*rt));
    if (strcmp(path, "/v2/") == 0 || strcmp(path, "/v2") == 0) {
        rt->kind = API_ROUTE_BASE;
        return REG_OK;
    }
    if (strncmp(path, "/v2/", 4) != 0)
        return REG_ERR_NOT_FOUND;
    const char *rest = path + 4;
    if (strcmp(rest, "_catalog") == 0) {
        rt->kind = API_ROUTE_CATALOG;
        return REG_OK;
    }
    size_t rl = strlen(rest), nl;
    const char *tail;
    if (rl > 10 && strcmp(rest + rl - 10, "/tags/list") == 0) {
        rt->kind = API_ROUTE_TAGS;
        return set_name(rt, rest, rl - 10);
    }
    if ((tail = split_last(rest, "/blobs/uploads/", &nl))) {
        rt->kind = *tail ? API_ROUTE_UPLOAD : API_ROUTE_UPLOAD_START;
        if (copy_part(rt->ref, sizeof(rt->ref), tail, strlen(tail)) != 0)
            return REG_ERR_BLOB_UPLOAD_UNKNOWN;
        return set_name(rt, rest, nl);
    }
    if ((tail = split_last(rest, "/blobs/", &nl)))
        return set_digest_route(rt, API_ROUTE_BLOB, rest, nl, tail);
    if ((tail = split_last(rest, "/referrers/", &nl)))
        return set_digest_route(rt, API_ROUTE_REFERRERS, rest, nl, tail);
    struct digest d;
    if ((tail = split_last(rest, "/manifests/", &nl))) {
        rt->kind = API_ROUTE_MANIFEST;
        enum regerr result = set_name(rt, rest, nl);
        if (result != REG_OK)
            return result;
        size_t tl = strlen(tail);
        /* Neither a tag nor a digest names no manifest: 404 for every method, as the OCI
         * spec says for GET and registry:2 answers (its route does not match). */
        if (copy_part(rt->ref, sizeof(rt->ref), tail, tl) != 0)
            return REG_ERR_MANIFEST_UNKNOWN;
        if (strchr(tail, ':'))
            return digest_parse(tail, tl, &d) == 0 ? REG_OK : REG_ERR_DIGEST_INVALID;
        return reference_tag_valid(tail, tl) ? REG_OK : REG_ERR_MANIFEST_UNKNOWN;
    }
    return REG_ERR_NOT_FOUND;
}

void api_start(const struct api *api, struct http_req *req, int status)
{
    http_resp_start(req, status);
    http_resp_header(req, "Docker-Distribution-API-Version", "registry/2.0");
    for (size_t i = 0; i < api->cfg->http.nheaders; i++) {
        const struct config_header *h = &api->cfg->http.headers[i];
        for (size_t j = 0; j < h->nvalues; j++)
            http_resp_header(req, h->name, h->values[j]);
    }
}

void api_json(const struct api *api, struct http_req *req, int status, json_t *body,
              const char *content_type)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        api_start(api, req, 500);
        http_resp_body_mem(req, "", 0);
        return;
    }
    api_start(api, req, status);
    http_resp_header(req, "Content-Type", content_type ? content_type : "application/json");
    http_resp_body_mem(req, text, strlen(text));
    free(text);
}

void api_error(const struct api *api, struct http_req *req, enum regerr e, const char *detail)
{
    api_error_headers(api, req, e, detail, NULL);
}

void api_error_headers(const struct api *api, struct http_req *req, enum regerr e,
                       const char *detail, const char *const *headers)
{
    int status = regerr_status(e);
    if (e == REG_ERR_NOT_FOUND) {
        /* A path that is no route: the spec has no code for it; answer like an unknown name. */
        e = REG_ERR_NAME_UNKNOWN;
    }
    json_t *err = json_pack("{s:s, s:s}", "code", regerr_code(e), "message", regerr_message(e));
    if (err && detail)
        json_object_set_new(err, "detail", json_string(detail));
    json_t *body = err ? json_pack("{s:[o]}", "errors", err) : NULL;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    api_start(api, req, status);
    for (size_t i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        http_resp_header(req, headers[i], headers[i + 1]);
    http_resp_header(req, "Content-Type", "application/json; charset=utf-8");
    http_resp_body_mem(req, text ? text : "", text ? strlen(text) : 0);
    free(text);
}

void api_error_retry(const struct api *api, struct http_req *req, enum regerr e, long retry_after,
                     const char *detail)
{
    char ra[32];
    const char *hdrs[3] = {NULL};
    if ((e == REG_ERR_TOOMANYREQUESTS || e == REG_ERR_UNAVAILABLE) && retry_after >= 0) {
        snprintf(ra, sizeof(ra), "%ld", retry_after);
        hdrs[0] = "Retry-After";
        hdrs[1] = ra;
    }
    api_error_headers(api, req, e, detail, hdrs);
}

void api_errorf(const struct api *api, struct http_req *req, enum regerr e, const char *fmt, ...)
{
    char detail[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    api_error(api, req, e, detail);
}

/* A header value is safe to put back into a URL when it has no spaces or control bytes. */
static bool url_safe(const char *s)
{
    if (!s || !*s || strlen(s) > 255)
        return false;
    for (; *s; s++) {
        if ((unsigned char)*s <= 0x20 || *s == 0x7f || *s == '"' || *s == '\\')
            return false;
    }
    return true;
}

char *api_url(const struct api *api, struct http_req *req, const char *path)
{
    const char *prefix = api->cfg->http.prefix ? api->cfg->http.prefix : "";
    size_t pl = strlen(prefix);
    while (pl > 0 && prefix[pl - 1] == '/')
        pl--;
    char *url = NULL;
    if (api->cfg->http.relativeurls) {
        if (asprintf(&url, "%.*s%s", (int)pl, prefix, path) < 0)
            return NULL;
        return url;
    }
    const char *host = api->cfg->http.host;
    if (host && *host) {
        size_t hl = strlen(host);
        while (hl > 0 && host[hl - 1] == '/')
            hl--;
        if (asprintf(&url, "%.*s%.*s%s", (int)hl, host, (int)pl, prefix, path) < 0)
            return NULL;
        return url;
    }
    const char *proto = http_req_header(req, "X-Forwarded-Proto");
    const char *fhost = http_req_header(req, "X-Forwarded-Host");
    const char *h = http_req_header(req, "Host");
    if (!url_safe(proto) || (strcmp(proto, "http") != 0 && strcmp(proto, "https") != 0))
        proto = api->cfg->http.tls.certificate[0] ? "https" : "http"; /* our own TLS listener */
    if (url_safe(fhost))
        h = fhost;
    if (!url_safe(h)) {
        if (asprintf(&url, "%.*s%s", (int)pl, prefix, path) < 0)
            return NULL;
        return url;
    }
    if (asprintf(&url, "%s://%s%.*s%s", proto, h, (int)pl, prefix, path) < 0)
        return NULL;
    return url;
}

void api_base(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    enum http_method m = http_req_method(req);
    if (m != HTTP_GET && m != HTTP_HEAD) {
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
        return;
    }
    api_start(api, req, 200);
    http_resp_header(req, "Content-Type", "application/json");
    http_resp_body_mem(req, "{}", 2);
}

/*
 * Pagination shared by _catalog and tags/list: entries after `last`, at most n, and a Link
 * header to the next page when more remain.
 */
static void paginate(const struct api *api, struct http_req *req, const char *path, const char *key,
                     const char *name, struct storage_list *l)
{
    const char *q = http_req_query(req);
    char *nstr = reference_query_get(q, "n");
    char *last = reference_query_get(q, "last");
    uint64_t n = API_PAGE_DEFAULT;
    if (nstr && *nstr && reference_parse_uint(nstr, &n) != 0) {
        api_errorf(api, req, REG_ERR_PAGINATION_NUMBER_INVALID, "n=%s", nstr);
        goto out;
    }
    if (n > API_PAGE_MAX)
        n = API_PAGE_MAX;
    size_t start = 0;
    if (last && *last) {
        while (start < l->n && strcmp(l->names[start], last) <= 0)
            start++;
    }
    json_t *arr = json_array();
    size_t i = start;
    for (; i < l->n && (uint64_t)(i - start) < n; i++)
        json_array_append_new(arr, json_string(l->names[i]));
    json_t *body =
        name ? json_pack("{s:s, s:o}", "name", name, key, arr) : json_pack("{s:o}", key, arr);
    char *link = NULL;
    if (i < l->n && i > start) {
        char *enc = reference_url_encode(l->names[i - 1]);
        char *next = NULL;
        if (enc && asprintf(&next, "%s?n=%llu&last=%s", path, (unsigned long long)n, enc) >= 0) {
            char *url = api_url(api, req, next);
            if (url && asprintf(&link, "<%s>; rel=\"next\"", url) < 0)
                link = NULL;
            free(url);
        }
        free(next);
        free(enc);
    }
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (!text) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
    } else {
        api_start(api, req, 200);
        if (link)
            http_resp_header(req, "Link", link);
        http_resp_header(req, "Content-Type", "application/json");
        http_resp_body_mem(req, text, strlen(text));
    }
    free(text);
    free(link);
out:
    free(nstr);
    free(last);
}

/*
 * A listing (catalog, tags, referrers) read from storage off the loop (offload.h). The api
 * outlives the job: at shutdown the server frees it only after the pool has drained.
 */
struct list_job {
    const struct api *api;
    struct api_route rt;
    char *artifact_type; /* referrers: the filter, or NULL */
    struct storage_list l;
    json_t *index; /* referrers */
    enum regerr result;
};

static void list_work(void *arg)
{
    struct list_job *j = arg;
    struct registry *reg = j->api->reg;
    struct digest subject;
    switch (j->rt.kind) {
    case API_ROUTE_CATALOG:
        j->result = registry_catalog(reg, &j->l);
        break;
    case API_ROUTE_TAGS:
        j->result = registry_tags(reg, j->rt.name, &j->l);
        break;
    default:
        digest_parse(j->rt.ref, strlen(j->rt.ref), &subject);
        j->result = registry_referrers(reg, j->rt.name, &subject, j->artifact_type, &j->index);
        break;
    }
}

static void answer_referrers(const struct api *api, struct http_req *req, struct list_job *j)
{
    char *text = json_dumps(j->index, JSON_COMPACT);
    if (!text) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    api_start(api, req, 200);
    http_resp_header(req, "Content-Type", MANIFEST_MT_OCI_INDEX);
    if (j->artifact_type)
        http_resp_header(req, "OCI-Filters-Applied", "artifactType");
    http_resp_body_mem(req, text, strlen(text));
    free(text);
}

static void list_done(void *arg, struct http_req *req)
{
    struct list_job *j = arg;
    const struct api *api = j->api;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        if (j->rt.kind == API_ROUTE_TAGS)
            api_errorf(api, req, j->result, "repository %s", j->rt.name);
        else
            api_error(api, req, j->result, NULL);
        goto out;
    }
    char path[API_NAME_MAX + 32];
    switch (j->rt.kind) {
    case API_ROUTE_CATALOG:
        paginate(api, req, "/v2/_catalog", "repositories", NULL, &j->l);
        break;
    case API_ROUTE_TAGS:
        snprintf(path, sizeof(path), "/v2/%s/tags/list", j->rt.name);
        paginate(api, req, path, "tags", j->rt.name, &j->l);
        break;
    default:
        answer_referrers(api, req, j);
        break;
    }
out:
    storage_list_free(&j->l);
    json_decref(j->index);
    free(j->artifact_type);
    free(j);
}

/* GET only; takes artifact_type. */
static void list(const struct api *api, struct http_req *req, const struct api_route *rt,
                 char *artifact_type)
{
    struct list_job *j = NULL;
    if (http_req_method(req) != HTTP_GET) {
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
        goto fail;
    }
    j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        goto fail;
    }
    j->api = api;
    j->rt = *rt;
    j->artifact_type = artifact_type;
    offload_req(api->offload, req, list_work, list_done, j);
    return;
fail:
    free(artifact_type);
}

void api_catalog(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    list(api, req, rt, NULL);
}

void api_tags(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    list(api, req, rt, NULL);
}

void api_referrers(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    char *artifact_type = reference_query_get(http_req_query(req), "artifactType");
    if (artifact_type && !*artifact_type) {
        free(artifact_type);
        artifact_type = NULL;
    }
    list(api, req, rt, artifact_type);
}
