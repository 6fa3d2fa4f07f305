/* /v2/<name>/blobs/<digest>: GET (with a single Range), HEAD, DELETE. */
#include "api.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "offload.h"
#include "proxy.h"
#include "reference.h"

/* How long a redirect to the store stays valid (registry:2's default for cloud drivers). */
#define REDIRECT_EXPIRY_S 1200
/* A streamed read from a remote store: bytes read ahead of the client, and queued in the
 * connection's output, at most. */
#define STREAM_QUEUE_MAX (1u << 20)
#define STREAM_OUTPUT_MAX (256u << 10)

/* ---- streaming from a remote store: a worker reads, the loop writes ---- */

struct chunk {
    struct chunk *next;
    size_t len;
    char data[];
};

/*
 * One GET streamed from a remote store. The worker (stream_work) appends chunks under mu and
 * waits while STREAM_QUEUE_MAX bytes wait for the client; the loop (stream_pump) moves them
 * to the connection as it drains. Freed on the loop once the work has finished and the
 * request is over (ended or aborted).
 */
struct blob_stream {
    const struct api *api;
    struct http_req *req; /* NULL once the response ended or the client went away */
    struct digest d;
    uint64_t off, len;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct chunk *head, *tail;
    size_t queued;
    bool posted, cancel; /* under mu */
    bool work_done;      /* loop only */
    enum regerr result;
};

static void stream_free(struct blob_stream *s)
{
    while (s->head) {
        struct chunk *c = s->head;
        s->head = c->next;
        free(c);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

static void stream_pump(struct blob_stream *s)
{
    pthread_mutex_lock(&s->mu);
    s->posted = false;
    pthread_mutex_unlock(&s->mu);
    struct http_req *req = s->req;
    if (!req) {
        if (s->work_done)
            stream_free(s);
        return;
    }
    for (;;) {
        if (http_resp_stream_pending(req) >= STREAM_OUTPUT_MAX)
            return;
        pthread_mutex_lock(&s->mu);
        struct chunk *c = s->head;
        if (c) {
            s->head = c->next;
            if (!s->head)
                s->tail = NULL;
            s->queued -= c->len;
            pthread_cond_signal(&s->cv);
        }
        pthread_mutex_unlock(&s->mu);
        if (!c)
            break;
        http_resp_stream_write(req, c->data, c->len);
        free(c);
    }
    if (!s->work_done)
        return;
    http_req_on_abort(req, NULL, NULL);
    s->req = NULL;
    if (s->result == REG_OK) {
        http_resp_stream_end(req);
    } else {
        /* The status line has gone: cutting the connection is the only way to tell. */
        char ds[DIGEST_STR_MAX];
        log_error("blob %s: reading from storage failed mid-response", digest_str(&s->d, ds));
        http_resp_stream_abort(req);
    }
    stream_free(s);
}

static void stream_posted(void *arg, bool cancelled)
{
    stream_pump(arg);
}

static void stream_writable(struct http_req *req, void *arg)
{
    stream_pump(arg);
}

static void stream_abort(struct http_req *req, void *arg)
{
    struct blob_stream *s = arg;
    s->req = NULL;
    pthread_mutex_lock(&s->mu);
    s->cancel = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->work_done)
        stream_free(s);
}

/* read_range's sink, on the worker. */
static int stream_chunk(void *ctx, const void *data, size_t len)
{
    struct blob_stream *s = ctx;
    struct chunk *c = malloc(sizeof(*c) + len);
    if (!c)
        return 1;
    c->next = NULL;
    c->len = len;
    memcpy(c->data, data, len);
    pthread_mutex_lock(&s->mu);
    while (s->queued >= STREAM_QUEUE_MAX && !s->cancel)
        pthread_cond_wait(&s->cv, &s->mu);
    if (s->cancel || (!s->posted && offload_post(s->api->offload, stream_posted, s) != 0)) {
        pthread_mutex_unlock(&s->mu);
        free(c);
        return 1;
    }
    s->posted = true;
    if (s->tail)
        s->tail->next = c;
    else
        s->head = c;
    s->tail = c;
    s->queued += len;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void stream_work(void *arg)
{
    struct blob_stream *s = arg;
    s->result = registry_blob_read(s->api->reg, &s->d, s->off, s->len, stream_chunk, s);
}

static void stream_done(void *arg, bool cancelled)
{
    struct blob_stream *s = arg;
    if (cancelled)
        s->result = REG_ERR_UNAVAILABLE;
    s->work_done = true;
    stream_pump(s);
}

/* Starts the body of a GET whose headers are set: bytes [off, off + len) of the blob. */
static void stream_blob(const struct api *api, struct http_req *req, const struct digest *d,
                        uint64_t off, uint64_t len)
{
    struct blob_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        http_resp_stream_begin(req, (int64_t)len, NULL, NULL);
        http_resp_stream_abort(req);
        return;
    }
    s->api = api;
    s->req = req;
    s->d = *d;
    s->off = off;
    s->len = len;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    http_req_on_abort(req, stream_abort, s);
    http_resp_stream_begin(req, (int64_t)len, stream_writable, s);
    if (len == 0) {
        s->work_done = true;
        stream_pump(s);
        return;
    }
    offload_run(api->offload, stream_work, stream_done, s);
}

/* ---- GET, HEAD ---- */

/* A remote store's blob by a signed URL: 307, as registry:2 answers for cloud drivers. */
static bool redirect_blob(const struct api *api, struct http_req *req, const struct api_route *rt,
                          const struct digest *d, uint64_t size)
{
    char *url = NULL;
    if (api->cfg->storage.redirect_disable ||
        registry_blob_url(api->reg, d, REDIRECT_EXPIRY_S, &url) != REG_OK)
        return false;
    notify_blob(api, req, NOTIFY_PULL, rt->name, d, (int64_t)size, NULL);
    api_blob_redirect(api, req, d, url);
    free(url);
    return true;
}

/*
 * Answers a GET or HEAD of a blob found linked, of the given size. fd: the open data for a
 * GET from local storage, or -1 (a HEAD, or a remote store: then redirect or stream).
 * cache_it: the size was looked up in storage, so the descriptor cache learns it.
 */
static void answer_blob(const struct api *api, struct http_req *req, const struct api_route *rt,
                        bool cache_it, uint64_t size, int fd)
{
    struct digest d;
    digest_parse(rt->ref, strlen(rt->ref), &d);
    bool head = http_req_method(req) == HTTP_HEAD;
    if (cache_it) {
        struct cache_desc cd = {.digest = d, .size = size};
        snprintf(cd.media_type, sizeof(cd.media_type), "application/octet-stream");
        cache_put(api->cache, rt->name, &cd);
    }
    if (head) {
        if (fd >= 0)
            close(fd);
        api_blob_head(api, req, &d, (int64_t)size);
        return;
    }
    if (fd < 0 && redirect_blob(api, req, rt, &d, size))
        return;
    struct api_span span;
    if (!api_blob_span(req, (int64_t)size, &span)) {
        if (fd >= 0)
            close(fd);
        api_blob_unsatisfiable(api, req, (int64_t)size);
        return;
    }
    api_blob_start(api, req, &d, (int64_t)size, &span);
    metrics_add(METRICS_BYTES_FROM_CACHE, (uint64_t)span.len);
    notify_blob(api, req, NOTIFY_PULL, rt->name, &d, (int64_t)size, NULL);
    if (fd >= 0)
        http_resp_body_file(req, fd, (off_t)span.start, (off_t)span.len);
    else
        stream_blob(api, req, &d, span.start, (uint64_t)span.len);
}

/* A blob looked up in storage off the loop: its size, and for a local GET its open file. */
struct lookup_job {
    const struct api *api;
    struct api_route rt;
    bool open; /* a GET from local storage */
    uint64_t size;
    int fd;
    enum regerr result;
};

static void lookup_work(void *arg)
{
    struct lookup_job *j = arg;
    struct digest d;
    digest_parse(j->rt.ref, strlen(j->rt.ref), &d);
    j->result = j->open ? registry_blob_open(j->api->reg, j->rt.name, &d, &j->fd, &j->size)
                        : registry_blob_stat(j->api->reg, j->rt.name, &d, &j->size);
}

static void lookup_done(void *arg, struct http_req *req)
{
    struct lookup_job *j = arg;
    if (!req) {
        if (j->fd >= 0)
            close(j->fd);
    } else if (j->result != REG_OK) {
        api_errorf(j->api, req, j->result, "blob %s in %s", j->rt.ref, j->rt.name);
    } else {
        answer_blob(j->api, req, &j->rt, true, j->size, j->fd);
    }
    free(j);
}

/* Without linked_size the blob is looked up. A HEAD needs no more than its size; a GET opens
 * the data, unless the caller has (fd >= 0, a GET only). */
void api_blob_serve(const struct api *api, struct http_req *req, const struct api_route *rt,
                    int64_t linked_size, int fd)
{
    bool head = http_req_method(req) == HTTP_HEAD;
    bool local = registry_is_local(api->reg);
    if (linked_size >= 0 && fd >= 0) {
        answer_blob(api, req, rt, false, (uint64_t)linked_size, fd);
        return;
    }
    /* A remote store needs no open: the size is all a redirect or a stream needs. */
    if (linked_size >= 0 && (head || !local)) {
        answer_blob(api, req, rt, false, (uint64_t)linked_size, -1);
        return;
    }
    struct lookup_job *j = malloc(sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    *j = (struct lookup_job){.api = api, .rt = *rt, .open = !head && local, .fd = -1};
    offload_req(api->offload, req, lookup_work, lookup_done, j);
}

/* ---- DELETE ---- */

struct delete_job {
    const struct api *api;
    struct api_route rt;
    struct digest d;
    enum regerr result;
};

static void delete_work(void *arg)
{
    struct delete_job *j = arg;
    j->result = registry_blob_delete(j->api->reg, j->rt.name, &j->d);
}

static void delete_done(void *arg, struct http_req *req)
{
    struct delete_job *j = arg;
    const struct api *api = j->api;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_errorf(api, req, j->result, "blob %s in %s", j->rt.ref, j->rt.name);
        goto out;
    }
    cache_forget(api->cache, j->rt.name, &j->d);
    notify_blob(api, req, NOTIFY_DELETE, j->rt.name, &j->d, -1, NULL);
    api_start(api, req, 202);
    http_resp_header(req, "Docker-Content-Digest", j->rt.ref);
    http_resp_no_body(req, 0);
out:
    free(j);
}

static void delete_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!registry_delete_enabled(api->reg)) {
        api_error(api, req, REG_ERR_UNSUPPORTED, "deletes are disabled (storage.delete.enabled)");
        return;
    }
    struct delete_job *j = malloc(sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return;
    }
    *j = (struct delete_job){.api = api, .rt = *rt};
    digest_parse(rt->ref, strlen(rt->ref), &j->d);
    offload_req(api->offload, req, delete_work, delete_done, j);
}

/* GET and HEAD once the blob-descriptor cache had its say: size >= 0 is a hit. */
static void get_blob(const struct api *api, struct http_req *req, const struct api_route *rt,
                     int64_t size)
{
    if (size >= 0 && api->proxy) {
        struct digest d;
        digest_parse(rt->ref, strlen(rt->ref), &d);
        proxy_blob_hit(api->proxy, rt->name, &d);
    }
    if (size >= 0)
        api_blob_serve(api, req, rt, size, -1);
    else if (api->proxy)
        proxy_blob(api->proxy, api, req, rt);
    else
        api_blob_serve(api, req, rt, -1, -1);
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

/* Also a malformed one: the proxy refuses it. */
static bool has_ns(struct http_req *req)
{
    char *ns;
    bool has = reference_query_lookup(http_req_query(req), "ns", &ns) != 0;
    free(ns);
    return has;
}

void api_blob(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    switch (http_req_method(req)) {
    case HTTP_GET:
        get_blob(api, req, rt, -1);
        break;
    case HTTP_HEAD:
        /* The cache knows names as the main upstream's: ?ns= names another one. */
        if (api->cache && !(api->proxy && has_ns(req)))
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
