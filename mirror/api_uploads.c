/*
 * /v2/<name>/blobs/uploads/: POST (session, monolithic ?digest=, mount ?mount=&from=),
 * and /v2/<name>/blobs/uploads/<id>: PATCH, PUT ?digest=, GET status, DELETE.
 *
 * Storage calls run through the offload pool (offload.h). With the filesystem's inline pool
 * the body goes straight into the upload's storage as it arrives. On remote storage, where a
 * write may block on a multipart part, the body is gathered on the loop into a buffer that a
 * worker writes while the next one fills; reading pauses while both are full, so an upload
 * holds about 2 * UPLOAD_BUF bytes here whatever its size (plus the driver's own buffer).
 */
#include "api.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "cache.h"
#include "log.h"
#include "notify.h"
#include "offload.h"
#include "reference.h"

/* Body bytes gathered before a worker writes them (remote storage only). */
#define UPLOAD_BUF (1024 * 1024)

enum upload_mode { MODE_PATCH, MODE_PUT, MODE_MONOLITHIC };

/*
 * One request streaming into an upload session. While a job has it (busy), the worker uses
 * up and wbuf and sets result and size; the loop keeps to the other fields.
 * api (the server's) outlives ctx: at shutdown the server frees it only after the pool has
 * drained.
 */
struct upload_ctx {
    const struct api *api;
    struct http_req *req; /* NULL once answered or gone */
    struct api_route rt;  /* ref: the upload id */
    enum upload_mode mode;
    bool direct; /* inline pool: body pieces are written as they come */
    bool busy;   /* a job holds ctx */
    bool ended;  /* the whole body has arrived */
    struct registry_upload *up;
    struct digest digest; /* PUT and monolithic POST */
    enum regerr result;   /* of the last job */
    uint64_t size;        /* the session's size as the last job saw it */
    uint64_t start;       /* its size when this request began */
    bool rewind;          /* a write failed: cut the session back to start when closing */
    struct buf buf, wbuf; /* filling on the loop; being written by a job */
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

/* ---- the streaming context ---- */

static void ctx_free(struct upload_ctx *ctx)
{
    buf_free(&ctx->buf);
    buf_free(&ctx->wbuf);
    free(ctx);
}

/* Takes the request from ctx, to answer it: its abort no longer concerns ctx. */
static struct http_req *ctx_release(struct upload_ctx *ctx)
{
    struct http_req *req = ctx->req;
    ctx->req = NULL;
    http_req_on_abort(req, NULL, NULL);
    return req;
}

static void ctx_run(struct upload_ctx *ctx, offload_work_fn work, offload_done_fn done)
{
    ctx->busy = true;
    offload_run(ctx->api->offload, work, done, ctx);
}

/* Releases the writer: the session keeps what was written (and size says how much). */
static void close_work(void *arg)
{
    struct upload_ctx *ctx = arg;
    if (ctx->rewind)
        registry_upload_rewind(ctx->up, ctx->start);
    ctx->size = registry_upload_offset(ctx->up);
    ctx->result = registry_upload_close(ctx->up);
    ctx->up = NULL;
}

static void abandon_done(void *arg, bool cancelled)
{
    (void)cancelled;
    struct upload_ctx *ctx = arg;
    /* The pool skipped the work at shutdown: the writer still must be released. */
    if (ctx->up)
        close_work(ctx);
    ctx_free(ctx);
}

/* Frees ctx, whose request is answered or gone, closing its writer off the loop. */
static void ctx_abandon(struct upload_ctx *ctx)
{
    if (ctx->up)
        ctx_run(ctx, close_work, abandon_done);
    else
        ctx_free(ctx);
}

/* Answers with an error; ctx goes once no job holds it. */
static void ctx_fail(struct upload_ctx *ctx, enum regerr e)
{
    api_error(ctx->api, ctx_release(ctx), e, NULL);
    if (!ctx->busy)
        ctx_abandon(ctx);
}

/* A write failed (a full disk, say): what this request wrote goes, so that it keeps no
 * space and the client may send it again from where the session was. */
static void ctx_fail_write(struct upload_ctx *ctx, enum regerr e)
{
    ctx->rewind = true;
    api_errorf(ctx->api, ctx_release(ctx), e,
               "writing the upload failed; the session is back at %" PRIu64 " bytes", ctx->start);
    if (!ctx->busy)
        ctx_abandon(ctx);
}

static void ctx_abort(struct http_req *req, void *arg)
{
    (void)req;
    struct upload_ctx *ctx = arg;
    ctx->req = NULL;
    if (!ctx->busy)
        ctx_abandon(ctx);
}

/*
 * The start of a job's done: true when the request still waits for ctx; otherwise ctx was
 * abandoned. At shutdown (cancelled) the writer is closed here, as no job runs any more.
 */
static bool ctx_resume(struct upload_ctx *ctx, bool cancelled)
{
    ctx->busy = false;
    if (cancelled) {
        if (ctx->req)
            ctx_release(ctx); /* the server closes the connection */
        abandon_done(ctx, true);
        return false;
    }
    if (ctx->req)
        return true;
    ctx_abandon(ctx);
    return false;
}

/* ---- the body ---- */

static void write_work(void *arg)
{
    struct upload_ctx *ctx = arg;
    ctx->result = registry_upload_write(ctx->up, ctx->wbuf.p, ctx->wbuf.len);
}

static void write_done(void *arg, bool cancelled);

/* Hands the gathered bytes to a worker; the other buffer fills meanwhile. */
static void write_start(struct upload_ctx *ctx)
{
    struct buf b = ctx->wbuf;
    ctx->wbuf = ctx->buf;
    ctx->buf = b;
    buf_clear(&ctx->buf);
    ctx_run(ctx, write_work, write_done);
}

/*
 * A piece never exceeds what one read gives, so a buffer outgrows UPLOAD_BUF by that only
 * (bounded by construction). The first allocation is UPLOAD_BUF at once.
 */
static int gather(struct upload_ctx *ctx, const char *data, size_t len)
{
    size_t room = ctx->buf.cap == 0 && len < UPLOAD_BUF ? UPLOAD_BUF : len;
    if (buf_reserve_exact(&ctx->buf, room) != BUF_OK)
        return -1;
    return buf_append(&ctx->buf, data, len) == BUF_OK ? 0 : -1;
}

static int body_data(struct http_req *req, void *arg, const char *data, size_t len)
{
    struct upload_ctx *ctx = arg;
    enum regerr result = REG_OK;
    if (ctx->direct) {
        result = registry_upload_write(ctx->up, data, len);
    } else if (gather(ctx, data, len) != 0) {
        result = REG_ERR_INTERNAL;
    } else if (ctx->buf.len >= UPLOAD_BUF) {
        if (ctx->busy)
            http_req_pause_body(req); /* write_done resumes */
        else
            write_start(ctx);
    }
    if (result == REG_OK)
        return 0;
    /* The body's end will not come: release ctx now. */
    ctx_fail_write(ctx, result);
    return -1;
}

static void close_done(void *arg, bool cancelled)
{
    struct upload_ctx *ctx = arg;
    if (!ctx_resume(ctx, cancelled))
        return;
    if (ctx->result != REG_OK) {
        ctx_fail(ctx, ctx->result);
        return;
    }
    answer_session(ctx->api, ctx_release(ctx), ctx->rt.name, ctx->rt.ref, ctx->size, 202);
    ctx_free(ctx);
}

static void commit_work(void *arg)
{
    struct upload_ctx *ctx = arg;
    struct registry_upload *up = ctx->up;
    ctx->up = NULL;
    ctx->size = registry_upload_offset(up);
    ctx->result = registry_upload_commit(up, &ctx->digest);
}

static void commit_done(void *arg, bool cancelled)
{
    struct upload_ctx *ctx = arg;
    /* The blob is in whether or not the client still waits. */
    struct cache_desc cd = {.digest = ctx->digest, .size = ctx->size};
    snprintf(cd.media_type, sizeof(cd.media_type), "application/octet-stream");
    if (!cancelled && ctx->result == REG_OK)
        cache_put(ctx->api->cache, ctx->rt.name, &cd);
    if (!ctx_resume(ctx, cancelled))
        return;
    const struct api *api = ctx->api;
    struct http_req *req = ctx_release(ctx);
    if (ctx->result != REG_OK) {
        char ds[DIGEST_STR_MAX];
        api_errorf(api, req, ctx->result, "digest %s", digest_str(&ctx->digest, ds));
        goto out;
    }
    notify_blob(api, req, NOTIFY_PUSH, ctx->rt.name, &ctx->digest, (int64_t)ctx->size, NULL);
    answer_created(api, req, ctx->rt.name, &ctx->digest);
out:
    ctx_free(ctx);
}

/*
 * Everything is written: PATCH closes the writer before answering, so that the client's
 * next request sees the data; PUT and POST commit.
 */
static void body_finish(struct upload_ctx *ctx)
{
    if (ctx->mode == MODE_PATCH)
        ctx_run(ctx, close_work, close_done);
    else
        ctx_run(ctx, commit_work, commit_done);
}

static void write_done(void *arg, bool cancelled)
{
    struct upload_ctx *ctx = arg;
    if (!ctx_resume(ctx, cancelled))
        return;
    if (ctx->result != REG_OK) {
        ctx_fail_write(ctx, ctx->result);
        return;
    }
    if (ctx->ended) {
        if (ctx->buf.len > 0)
            write_start(ctx);
        else
            body_finish(ctx);
        return;
    }
    /* Reading was paused if the other buffer filled up meanwhile. */
    if (ctx->buf.len >= UPLOAD_BUF)
        write_start(ctx);
    http_req_resume_body(ctx->req);
}

static void body_end(struct http_req *req, void *arg)
{
    (void)req;
    struct upload_ctx *ctx = arg;
    ctx->ended = true;
    if (ctx->busy)
        return; /* write_done goes on */
    if (ctx->buf.len > 0)
        write_start(ctx);
    else
        body_finish(ctx);
}

static void open_work(void *arg)
{
    struct upload_ctx *ctx = arg;
    ctx->result = registry_upload_open(ctx->api->reg, ctx->rt.name, ctx->rt.ref, &ctx->up);
    if (ctx->result == REG_OK)
        ctx->start = ctx->size = registry_upload_offset(ctx->up);
}

/* Whether Content-Range (if any) continues the session at offset with Content-Length. */
static bool range_ok(struct http_req *req, const char *cr, uint64_t offset)
{
    uint64_t start, end;
    int64_t cl = http_req_content_length(req);
    return reference_parse_content_range(cr, &start, &end) == 0 && start == offset &&
           (cl < 0 || (uint64_t)cl == end - start + 1);
}

static void open_done(void *arg, bool cancelled)
{
    struct upload_ctx *ctx = arg;
    if (!ctx_resume(ctx, cancelled))
        return;
    const struct api *api = ctx->api;
    struct http_req *req = ctx->req;
    if (ctx->result != REG_OK) {
        api_errorf(api, ctx_release(ctx), ctx->result, "upload %s", ctx->rt.ref);
        ctx_free(ctx);
        return;
    }
    const char *cr = http_req_header(req, "Content-Range");
    if (cr && ctx->mode != MODE_MONOLITHIC && !range_ok(req, cr, ctx->size)) {
        char size[64];
        snprintf(size, sizeof(size), "0-%" PRIu64, ctx->size ? ctx->size - 1 : 0);
        const char *hdrs[] = {"Range", size, NULL};
        api_error_headers(api, ctx_release(ctx), REG_ERR_RANGE_INVALID, cr, hdrs);
        ctx_abandon(ctx);
        return;
    }
    if (http_req_has_body(req))
        http_req_read_body(req, body_data, body_end, ctx);
    else
        body_end(req, ctx);
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
 * Opens the session and streams the request body into it; the answer comes once the body
 * is in. digest is NULL for PATCH.
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
    ctx->req = req;
    buf_init(&ctx->buf, BUF_UNCAPPED);
    buf_init(&ctx->wbuf, BUF_UNCAPPED);
    ctx->rt = *rt;
    snprintf(ctx->rt.ref, sizeof(ctx->rt.ref), "%s", id);
    ctx->mode = mode;
    ctx->direct = offload_inline(api->offload);
    if (digest)
        ctx->digest = *digest;
    http_req_on_abort(req, ctx_abort, ctx);
    ctx_run(ctx, open_work, open_done);
}

/* ---- POST: start, mount ---- */

struct start_job {
    const struct api *api;
    struct api_route rt;
    char *from;     /* try a mount of mount from it; NULL: no mount */
    char *digest_s; /* ?digest=: a monolithic upload */
    struct digest mount, digest;
    bool digest_ok; /* digest_s parsed into digest */
    bool mounted;
    char id[37];
    enum regerr result;
};

static void start_work(void *arg)
{
    struct start_job *j = arg;
    struct registry *reg = j->api->reg;
    /* A mount that cannot be done falls back to a new session, as the spec says. */
    if (j->from && registry_blob_mount(reg, j->rt.name, j->from, &j->mount) == REG_OK) {
        j->mounted = true;
        return;
    }
    if (j->digest_s && !j->digest_ok)
        return;
    j->result = registry_upload_start(reg, j->rt.name, j->id);
}

static void start_done(void *arg, struct http_req *req)
{
    struct start_job *j = arg;
    const struct api *api = j->api;
    if (!req)
        goto out;
    if (j->mounted) {
        notify_blob(api, req, NOTIFY_MOUNT, j->rt.name, &j->mount, -1, j->from);
        answer_created(api, req, j->rt.name, &j->mount);
    } else if (j->digest_s && !j->digest_ok) {
        api_errorf(api, req, REG_ERR_DIGEST_INVALID, "digest parameter is not a valid digest");
    } else if (j->result != REG_OK) {
        api_error(api, req, j->result, NULL);
    } else if (j->digest_s) {
        stream_into(api, req, &j->rt, j->id, MODE_MONOLITHIC, &j->digest);
    } else {
        answer_session(api, req, j->rt.name, j->id, 0, 202);
    }
out:
    free(j->from);
    free(j->digest_s);
    free(j);
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
    struct start_job *j = calloc(1, sizeof(*j));
    if (!j) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        goto out;
    }
    j->api = api;
    j->rt = *rt;
    j->digest_s = reference_query_get(q, "digest");
    if (j->digest_s)
        j->digest_ok = digest_parse(j->digest_s, strlen(j->digest_s), &j->digest) == 0;
    if (mount && from) {
        if (digest_parse(mount, strlen(mount), &j->mount) != 0) {
            api_errorf(api, req, REG_ERR_DIGEST_INVALID, "mount=%s", mount);
            free(j->digest_s);
            free(j);
            goto out;
        }
        if (reference_name_valid(from, strlen(from))) {
            j->from = from;
            from = NULL;
        }
    }
    offload_req(api->offload, req, start_work, start_done, j);
out:
    free(mount);
    free(from);
}

/* ---- GET status, DELETE ---- */

struct session_job {
    const struct api *api;
    struct api_route rt;
    enum http_method method;
    uint64_t size;
    enum regerr result;
};

static void session_work(void *arg)
{
    struct session_job *j = arg;
    if (j->method == HTTP_GET)
        j->result = registry_upload_size(j->api->reg, j->rt.name, j->rt.ref, &j->size);
    else
        j->result = registry_upload_cancel(j->api->reg, j->rt.name, j->rt.ref);
}

static void session_done(void *arg, struct http_req *req)
{
    struct session_job *j = arg;
    const struct api *api = j->api;
    if (!req)
        goto out;
    if (j->result != REG_OK) {
        api_errorf(api, req, j->result, "upload %s", j->rt.ref);
    } else if (j->method == HTTP_GET) {
        answer_session(api, req, j->rt.name, j->rt.ref, j->size, 204);
    } else {
        api_start(api, req, 204);
        http_resp_no_body(req, -1);
    }
out:
    free(j);
}

void api_upload(const struct api *api, struct http_req *req, const struct api_route *rt)
{
    if (!upload_id_valid(rt->ref)) {
        api_errorf(api, req, REG_ERR_BLOB_UPLOAD_UNKNOWN, "upload %s", rt->ref);
        return;
    }
    struct digest d;
    struct session_job *j;
    switch (http_req_method(req)) {
    case HTTP_PATCH:
        stream_into(api, req, rt, rt->ref, MODE_PATCH, NULL);
        break;
    case HTTP_PUT:
        if (query_digest(api, req, &d) == 0)
            stream_into(api, req, rt, rt->ref, MODE_PUT, &d);
        break;
    case HTTP_GET:
    case HTTP_DELETE:
        j = calloc(1, sizeof(*j));
        if (!j) {
            api_error(api, req, REG_ERR_INTERNAL, NULL);
            break;
        }
        j->api = api;
        j->rt = *rt;
        j->method = http_req_method(req);
        offload_req(api->offload, req, session_work, session_done, j);
        break;
    default:
        api_error(api, req, REG_ERR_UNSUPPORTED, NULL);
    }
}
