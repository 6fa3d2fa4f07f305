/*
 * Blob answers from a source that is still filling (see api.h): every client of an in-flight
 * fetch gets one stream, which sends the source's bytes as they arrive and no faster than its
 * connection takes them.
 */
#include "api.h"

#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "log.h"
#include "notify.h"
#include "proxy.h"

/* A stream queues at most this much of the source in its connection's output at a time. */
#define STREAM_QUEUE_HIGH (1024 * 1024)

struct api_stream {
    const struct api *api;
    struct http_req *req;
    struct api_route rt;
    struct digest d;
    enum api_stream_kind kind;
    const struct api_source *ops;
    void *src;
    bool started;      /* the status line and headers are out */
    bool partial;      /* a 206 for the request's Range */
    uint64_t off, end; /* end is exclusive; UINT64_MAX while the length is unknown */
};

/* The answer is complete or cut, or the client is gone: the request is no longer ours. */
static void stream_close(struct api_stream *s)
{
    s->ops->release(s->src);
    free(s);
}

static void stream_gone(struct http_req *req, void *ctx)
{
    (void)req;
    stream_close(ctx);
}

static void stream_writable(struct http_req *req, void *ctx)
{
    (void)req;
    api_stream_wake(ctx);
}

struct api_stream *api_stream_new(const struct api *api, struct http_req *req,
                                  const struct api_route *rt, const struct digest *d,
                                  enum api_stream_kind kind, const struct api_source *ops,
                                  void *src)
{
    struct api_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        api_error(api, req, REG_ERR_INTERNAL, NULL);
        return NULL;
    }
    s->api = api;
    s->req = req;
    s->rt = *rt;
    s->d = *d;
    s->kind = kind;
    s->ops = ops;
    s->src = src;
    http_req_on_abort(req, stream_gone, s);
    return s;
}

/* Nothing of the answer has left: the client gets the source's error status. */
static void stream_fail(struct api_stream *s, const struct api_fill *fl)
{
    http_req_on_abort(s->req, NULL, NULL);
    api_error_retry(s->api, s->req, fl->err, fl->retry_after, fl->why);
    stream_close(s);
}

/* Sends the status line and headers once the length is known. false: answered (416), gone. */
static bool stream_begin(struct api_stream *s, const struct api_fill *fl)
{
    struct api_span span;
    if (!api_blob_span(s->req, fl->total, &span)) {
        http_req_on_abort(s->req, NULL, NULL);
        api_blob_unsatisfiable(s->api, s->req, fl->total);
        stream_close(s);
        return false;
    }
    s->off = span.start;
    s->partial = span.partial;
    s->end = span.len < 0 ? UINT64_MAX : span.start + (uint64_t)span.len;
    api_blob_start(s->api, s->req, &s->d, fl->total, &span);
    s->started = true;
    if (s->kind == API_STREAM_PULL)
        notify_blob(s->api, s->req, NOTIFY_PULL, s->rt.name, &s->d, fl->total, NULL);
    http_resp_stream_begin(s->req, span.len, stream_writable, s);
    return true;
}

/* Never re-entered: http calls the writable callback from the loop only, and sources wake
 * their streams from their own callbacks, never from poll. */
void api_stream_wake(struct api_stream *s)
{
    struct api_fill fl = {.base = 0};
    s->ops->poll(s->src, &fl);
    if (!s->started) {
        if (fl.state == API_FILL_STORED) {
            const struct api *api = s->api;
            struct http_req *req = s->req;
            struct api_route rt = s->rt;
            http_req_on_abort(req, NULL, NULL);
            stream_close(s);
            if (api->proxy)
                proxy_blob_again(api->proxy, api, req, &rt);
            else
                api_blob_serve(api, req, &rt, -1, -1);
            return;
        }
        if (fl.state == API_FILL_FAILED) {
            stream_fail(s, &fl);
            return;
        }
        if (fl.state == API_FILL_WAITING || !stream_begin(s, &fl))
            return;
    }
    uint64_t limit = fl.have < s->end ? fl.have : s->end;
    while (s->off < limit && http_resp_stream_pending(s->req) < STREAM_QUEUE_HIGH) {
        uint64_t n = limit - s->off;
        if (n > STREAM_QUEUE_HIGH)
            n = STREAM_QUEUE_HIGH;
        int fd = dup(fl.fd);
        if (fd < 0)
            break; /* out of descriptors: the writable callback tries again */
        http_resp_stream_file(s->req, fd, (off_t)(s->off - fl.base), (off_t)n);
        s->off += n;
    }
    if (fl.state == API_FILL_FAILED && http_resp_retract(s->req)) {
        stream_fail(s, &fl);
        return;
    }
    if (fl.state == API_FILL_FAILED) {
        log_warn("proxy: cutting the response for %s: %s", s->rt.ref, fl.why);
        http_req_on_abort(s->req, NULL, NULL);
        http_resp_stream_abort(s->req);
        stream_close(s);
        return;
    }
    bool complete = s->end == UINT64_MAX ? s->off == fl.have : s->off == s->end;
    /* A part of a blob cannot be checked against its digest: a 206 ends once its bytes are
     * in, the whole blob's 200 only when the source has all of it (verified). */
    if (complete && (fl.state == API_FILL_DONE || (s->partial && fl.state == API_FILL_GROWING))) {
        http_req_on_abort(s->req, NULL, NULL);
        http_resp_stream_end(s->req);
        stream_close(s);
    }
}
