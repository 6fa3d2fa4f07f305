/* Blob pulls: HEADs, linking a blob stored for another repository, and one upstream fetch
 * per digest that every client reads from the spool as it fills. */
#include "proxy_int.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "cluster.h"
#include "httpc.h"
#include "layout.h"
#include "log.h"
#include "metrics.h"
#include "offload.h"
#include "reference.h"
#include "spools.h"

/* ---- blobs: HEAD, and GET of a blob stored for another repository ---- */

struct bhead {
    struct bhead *next;
    struct proxy *px;
    struct client c;
    struct remote *rm;
    struct digest d;
    struct upstream_req *ureq;
    struct slot slot;
    /* -1: the upstream's Content-Length is missing or unreadable */
    int64_t size;
    bool linked; /* the link job's result */
    /* The request's side (until bhead_finish) and the link job's, which holds the request's
     * abort callback while it runs. */
    unsigned refs;
};

static void blob_fetch(struct proxy *px, const struct target *t, struct client *c,
                       const struct digest *d, bool again);
static void bhead_work(void *arg);
static void bhead_done(void *arg, struct http_req *req);

static void bhead_unref(struct bhead *b)
{
    if (--b->refs == 0)
        free(b);
}

/* Leaves the table (proxy_busy no longer sees it) and drops the request side's reference. */
static void bhead_finish(struct bhead *b)
{
    for (struct bhead **p = &b->px->bheads; *p; p = &(*p)->next) {
        if (*p == b) {
            *p = b->next;
            break;
        }
    }
    if (b->ureq)
        upstream_cancel(b->ureq);
    b->ureq = NULL;
    proxy_slot_release(b->px, &b->slot);
    bhead_unref(b);
}

static void bhead_abort(struct http_req *req, void *ctx)
{
    bhead_finish(ctx);
}

static int bh_on_response(struct upstream_req *r, void *ctx, long status,
                          const struct httpc_headers *h)
{
    struct bhead *b = ctx;
    const char *cl = httpc_header_get(h, "Content-Length");
    uint64_t n;
    b->size = (cl && reference_parse_uint(cl, &n) == 0 && n <= INT64_MAX) ? (int64_t)n : -1;
    return 0;
}

static void bh_on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    struct bhead *b = ctx;
    struct proxy *px = b->px;
    struct client c = b->c;
    b->ureq = NULL;
    proxy_slot_release(px, &b->slot);
    if (o->result != UPSTREAM_OK) {
        bhead_finish(b);
        proxy_client_error(&c, proxy_outcome_error(o, true), o->retry_after_s, o->message);
        return;
    }
    /* The upstream has the blob in this repository: link the stored copy and serve it. The
     * link job takes the request's abort slot. */
    http_req_on_abort(c.req, NULL, NULL);
    b->linked = false;
    b->refs++;
    proxy_ref(px);
    offload_req(px->offload, c.req, bhead_work, bhead_done, b);
}

static void bhead_work(void *arg)
{
    struct bhead *b = arg;
    struct registry *reg = b->px->reg;
    b->linked =
        registry_blob_stored(reg, &b->d) && registry_blob_link(reg, b->c.rt.name, &b->d) == REG_OK;
    if (b->linked)
        registry_proxy_pulled(reg, b->c.rt.name, &b->d, true);
}

static void bhead_done(void *arg, struct http_req *req)
{
    struct bhead *b = arg;
    struct proxy *px = b->px;
    struct client c = b->c;
    struct target t = {b->rm, c.rt};
    struct digest d = b->d;
    int64_t size = b->size;
    bool linked = b->linked;
    if (!px->closing)
        bhead_finish(b); /* else proxy_free has */
    bhead_unref(b);      /* the job's */
    if (!req || px->closing) {
        proxy_unref(px);
        return;
    }
    proxy_unref(px);
    if (linked) {
        proxy_pulled_due(px, c.rt.name, &d, true);
        proxy_client_serve(&c);
        return;
    }
    if (http_req_method(c.req) == HTTP_GET) {
        http_req_on_abort(c.req, NULL, NULL);
        blob_fetch(px, &t, &c, &d, false);
        return;
    }
    if (size < 0) {
        /* Never answer a size that was not read. */
        proxy_client_error(&c, REG_ERR_BAD_GATEWAY, -1,
                           "the upstream's blob HEAD has no usable size");
        return;
    }
    http_req_on_abort(c.req, NULL, NULL);
    api_blob_head(c.api, c.req, &d, size);
}

/* The slot is granted: send the HEAD. */
static void bhead_go(struct slot *s)
{
    static const struct upstream_callbacks cb = {bh_on_response, NULL, bh_on_done};
    struct bhead *b = PROXY_CONTAINER(s, struct bhead, slot);
    char suffix[API_REF_MAX + 8];
    snprintf(suffix, sizeof(suffix), "blobs/%s", b->c.rt.ref);
    const char *name = b->rm->main ? b->c.rt.name : strchr(b->c.rt.name, '/') + 1;
    b->ureq = upstream_fetch(b->rm->up, "HEAD", name, suffix, NULL, &cb, b);
    if (!b->ureq) {
        struct client c = b->c;
        bhead_finish(b);
        proxy_client_error(&c, REG_ERR_INTERNAL, -1, NULL);
    }
}

static void bhead_expire(struct slot *s)
{
    struct bhead *b = PROXY_CONTAINER(s, struct bhead, slot);
    struct client c = b->c;
    bhead_finish(b);
    proxy_client_error(&c, REG_ERR_UNAVAILABLE, QUEUE_RETRY_AFTER_S,
                       "too many upstream fetches at once (proxy.maxfetches)");
}

static void blob_head(struct proxy *px, const struct target *t, struct client *c,
                      const struct digest *d)
{
    struct bhead *b = calloc(1, sizeof(*b));
    if (!b) {
        proxy_client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return;
    }
    b->px = px;
    b->c = *c;
    b->rm = t->rm;
    b->d = *d;
    b->size = -1;
    b->refs = 1;
    b->next = px->bheads;
    px->bheads = b;
    http_req_on_abort(c->req, bhead_abort, b);
    proxy_slot_acquire(px, &b->slot, bhead_go, bhead_expire);
}

/* ---- blobs: one fetch per digest, every client reading the spool ---- */

/* B_STORED: another node stored the blob while this one asked for the lease. */
enum bstate { B_QUEUED, B_HEADERS, B_STREAMING, B_DONE, B_FAILED, B_STORED };

struct bside;

/* One client of a fetch: the source its answer's stream reads, f's spool or, for a Range
 * beyond what f has, side (a ranged upstream request of its own). */
struct breader {
    struct breader *next;
    struct bfetch *f;
    struct api_stream *st;
    struct bside *side; /* NULL: reads f's spool */
};

struct bfetch {
    struct bfetch *next;
    struct proxy *px;
    struct remote *rm;
    struct digest d;
    char name[API_NAME_MAX];
    char id[37];
    struct registry_upload *up;
    int fd; /* the spool, for readers */
    struct upstream_req *ureq;
    struct slot slot;
    enum bstate state;
    uint64_t written;
    int64_t total;
    enum regerr err;
    long retry_after;
    char why[256];
    struct breader *readers;
    /* Who holds f: each reader, the upstream exchange while it runs, the import job, and
     * whoever walks the readers (bfetch_pump_all); the last bfetch_unref frees it. */
    unsigned refs;
    enum regerr imported;
    /* Cluster (cluster.h): the lease question while it is asked; the other node's spool
     * being read instead of the upstream, its answer's status, how often its holder was
     * missing, and the pause before asking again; whether this node holds d's lease
     * (dropped when the fetch ends). */
    struct cluster_op *lease_op;
    struct httpc_req *peer;
    long peer_status;
    struct event *retry;
    int peer_misses;
    bool leased;
    bool again;     /* its first reader came back after a "stored" lease: fetch, do not trust it */
    bool listed;    /* in px->bfetches: new requests join it */
    bool importing; /* the verified spool is being stored (remote store); readers go on */
    /* The upstream's answer was refused (502), not lost. */
    bool bad_answer;
};

static void bfetch_unlist(struct bfetch *f)
{
    if (!f->listed)
        return;
    for (struct bfetch **p = &f->px->bfetches; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    f->listed = false;
    f->px->bseq++;
}

static void bfetch_ref(struct bfetch *f)
{
    f->refs++;
}

static void bfetch_unref(struct bfetch *f)
{
    assert(f->refs > 0);
    if (--f->refs > 0)
        return;
    bfetch_unlist(f);
    proxy_slot_release(f->px, &f->slot); /* still queued: nobody wants it any more */
    if (f->fd >= 0)
        close(f->fd);
    if (f->retry)
        event_free(f->retry);
    free(f);
}

static void reader_unlink(struct breader *rd)
{
    for (struct breader **p = &rd->f->readers; *p; p = &(*p)->next) {
        if (*p == rd) {
            *p = rd->next;
            break;
        }
    }
}

static void side_free(struct breader *rd);
static void side_poll(const struct bside *s, struct api_fill *fl);

/* The reader's stream is over (its response complete or cut, or its client gone). */
static void reader_release(void *src)
{
    struct breader *rd = src;
    struct bfetch *f = rd->f;
    side_free(rd);
    reader_unlink(rd);
    free(rd);
    bfetch_unref(f);
}

static void reader_poll(void *src, struct api_fill *fl)
{
    const struct breader *rd = src;
    const struct bfetch *f = rd->f;
    if (rd->side) {
        side_poll(rd->side, fl);
        return;
    }
    switch (f->state) {
    case B_QUEUED:
    case B_HEADERS:
        fl->state = API_FILL_WAITING;
        break;
    case B_STREAMING:
        fl->state = API_FILL_GROWING;
        break;
    case B_DONE:
        fl->state = API_FILL_DONE;
        break;
    case B_FAILED:
        fl->state = API_FILL_FAILED;
        break;
    case B_STORED:
        fl->state = API_FILL_STORED;
        break;
    }
    fl->total = f->total;
    fl->base = 0;
    fl->have = f->written;
    fl->fd = f->fd;
    fl->err = f->err;
    fl->retry_after = f->retry_after;
    fl->why = f->why;
}

static const struct api_source reader_source = {reader_poll, reader_release};

/* Pumps every reader. f may be gone afterwards unless the caller holds a reference. */
static void bfetch_pump_all(struct bfetch *f)
{
    bfetch_ref(f);
    struct breader *rd = f->readers;
    while (rd) {
        struct breader *next = rd->next; /* waking may finish and free rd */
        api_stream_wake(rd->st);
        rd = next;
    }
    bfetch_unref(f);
}

/* Where f's bytes come from, for messages. */
static const char *bfetch_from(const struct bfetch *f)
{
    return f->peer ? "the node holding the fetch" : "the upstream";
}

/* The answer's head is in: the length, when it is given. -1: refused (f->why says why). */
static int bfetch_headers(struct bfetch *f, const struct httpc_headers *h)
{
    const char *cl = httpc_header_get(h, "Content-Length");
    uint64_t n;
    if (cl && (reference_parse_uint(cl, &n) != 0 || n > INT64_MAX)) {
        f->bad_answer = true;
        snprintf(f->why, sizeof(f->why), "%s sent an unreadable Content-Length", bfetch_from(f));
        return -1;
    }
    f->total = cl ? (int64_t)n : -1;
    f->state = B_STREAMING;
    bfetch_pump_all(f);
    return 0;
}

/* Body bytes into the spool, then to the readers. -1: refused (f->err, f->why). */
static int bfetch_data(struct bfetch *f, const char *data, size_t len)
{
    if (f->total >= 0 && f->written + len > (uint64_t)f->total) {
        snprintf(f->why, sizeof(f->why), "%s sent more bytes than announced", bfetch_from(f));
        f->err = REG_ERR_BAD_GATEWAY;
        return -1;
    }
    if (registry_upload_write(f->up, data, len) != REG_OK) {
        snprintf(f->why, sizeof(f->why), "writing the spool failed");
        f->err = REG_ERR_UNAVAILABLE;
        return -1;
    }
    f->written += len;
    metrics_add(f->peer ? METRICS_CLUSTER_PEER_BYTES : METRICS_BYTES_FROM_UPSTREAM, len);
    bfetch_pump_all(f);
    return 0;
}

static int b_on_response(struct upstream_req *r, void *ctx, long status,
                         const struct httpc_headers *h)
{
    return bfetch_headers(ctx, h);
}

static int b_on_data(struct upstream_req *r, void *ctx, const char *data, size_t len)
{
    return bfetch_data(ctx, data, len);
}

/* Gives up d's lease, if this node holds it; stored: other nodes find the blob stored. */
static void bfetch_unlease(struct bfetch *f, bool stored)
{
    if (!f->leased)
        return;
    f->leased = false;
    cluster_lease_drop(f->px->cluster, &f->d, stored);
}

/* Removes the imported spool file (readers hold it open) and its link. */
static void spool_drop(struct bfetch *f)
{
    struct storage *st = f->px->spool_st;
    char path[LAYOUT_PATH_MAX];
    storage_remove(st, layout_blob_dir(path, &f->d));
    layout_layer_link(path, f->name, &f->d);
    *strrchr(path, '/') = '\0';
    storage_remove(st, path);
}

static void bimport_work(void *arg)
{
    struct bfetch *f = arg;
    struct registry *reg = f->px->reg;
    f->imported = registry_blob_import(reg, f->name, &f->d, f->fd, f->written);
    if (f->imported == REG_OK)
        registry_proxy_pulled(reg, f->name, &f->d, true);
}

static void bimport_done(void *arg, bool cancelled)
{
    struct bfetch *f = arg;
    struct proxy *px = f->px;
    char ds[DIGEST_STR_MAX];
    digest_str(&f->d, ds);
    f->importing = false;
    spool_drop(f);
    bfetch_unlease(f, f->imported == REG_OK);
    if (px->closing) {
        bfetch_unref(f);
        proxy_unref(px);
        return;
    }
    proxy_unref(px);
    if (f->imported == REG_OK) {
        proxy_pulled_due(px, f->name, &f->d, true);
        log_info("proxy: cached %s for %s (%" PRIu64 " bytes)", ds, f->name, f->written);
    } else {
        log_warn("proxy: storing %s for %s failed; its clients were served from the spool", ds,
                 f->name);
    }
    /* Stored now (or not at all): new requests find it in the store (or fetch again). */
    bfetch_unlist(f);
    bfetch_unref(f);
}

/*
 * Remote store: the blob is verified in the local spool; store it from there off the loop.
 * The fetch stays listed meanwhile, so new requests read the spool rather than fetch again.
 */
static void bfetch_import(struct bfetch *f)
{
    f->importing = true;
    f->imported = REG_ERR_UNAVAILABLE; /* what a job cancelled before it ran leaves */
    bfetch_ref(f);
    proxy_ref(f->px);
    offload_run(f->px->offload, bimport_work, bimport_done, f);
}

/*
 * The transfer ended: result is the transport's verdict (REG_OK: the whole answer arrived).
 * Commits what verifies, or fails every reader.
 */
static void bfetch_end(struct bfetch *f, enum regerr result, long retry_after, const char *msg)
{
    struct proxy *px = f->px;
    struct registry *sreg = proxy_spool_reg(px);
    bool from_peer = f->peer != NULL;
    char ds[DIGEST_STR_MAX];
    digest_str(&f->d, ds);
    f->ureq = NULL;
    f->peer = NULL;
    proxy_slot_release(px, &f->slot);
    if (!px->spool)
        bfetch_unlist(f);
    if (result == REG_OK && f->total >= 0 && f->written != (uint64_t)f->total) {
        result = REG_ERR_BAD_GATEWAY;
        snprintf(f->why, sizeof(f->why), "%s sent %" PRIu64 " of %" PRId64 " bytes",
                 from_peer ? "the node holding the fetch" : "the upstream", f->written, f->total);
    }
    if (result == REG_OK) {
        struct registry_upload *up = f->up;
        f->up = NULL;
        result = registry_upload_commit(up, &f->d);
        if (result == REG_ERR_DIGEST_INVALID)
            snprintf(f->why, sizeof(f->why), "%s sent bytes that do not match %s",
                     from_peer ? "the node holding the fetch" : "the upstream", ds);
        else if (result != REG_OK)
            snprintf(f->why, sizeof(f->why), "storing the blob failed");
        if (result != REG_OK) {
            registry_upload_cancel(sreg, f->name, f->id);
            result = result == REG_ERR_DIGEST_INVALID ? REG_ERR_BAD_GATEWAY : REG_ERR_UNAVAILABLE;
        }
    } else {
        if (f->err != REG_OK) {
            result = f->err; /* bfetch_data stopped the transfer */
        } else if (f->bad_answer) {
            result = REG_ERR_BAD_GATEWAY;
        } else if (result == REG_ERR_UNAVAILABLE && f->total >= 0 &&
                   f->written < (uint64_t)f->total) {
            result = REG_ERR_BAD_GATEWAY;
            snprintf(f->why, sizeof(f->why), "%s sent %" PRIu64 " of %" PRId64 " bytes",
                     from_peer ? "the node holding the fetch" : "the upstream", f->written,
                     f->total);
        }
        if (!f->why[0])
            snprintf(f->why, sizeof(f->why), "%s", msg);
        registry_upload_close(f->up);
        f->up = NULL;
        registry_upload_cancel(sreg, f->name, f->id);
    }
    spools_drop(px->spools, f->id);
    if (result == REG_OK && px->spool && from_peer) {
        /* The holder stores the blob: this copy only served this node's readers. */
        f->state = B_DONE;
        bfetch_pump_all(f);
        spool_drop(f);
        bfetch_unlist(f);
        bfetch_unref(f); /* the exchange's */
        return;
    }
    if (result == REG_OK && px->spool) {
        /* Readers finish from the spool while the import runs. */
        f->state = B_DONE;
        bfetch_pump_all(f);
        bfetch_import(f);
        bfetch_unref(f); /* the exchange's */
        return;
    }
    bfetch_unlease(f, result == REG_OK);
    if (result == REG_OK) {
        proxy_note_pulled(px, f->name, &f->d, true);
        f->state = B_DONE;
        log_info("proxy: cached %s for %s (%" PRIu64 " bytes)", ds, f->name, f->written);
    } else {
        bfetch_unlist(f);
        f->state = B_FAILED;
        f->err = result;
        f->retry_after = retry_after;
        log_warn("proxy: fetching %s for %s failed: %s", ds, f->name, f->why);
    }
    bfetch_pump_all(f);
    bfetch_unref(f); /* the exchange's */
}

static void b_on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    bfetch_end(ctx, proxy_outcome_error(o, true), o->retry_after_s, o->message);
}

/* A fetch that could not start (or waited too long): its readers get the error. */
static void bfetch_fail_early(struct bfetch *f, enum regerr e, long retry_after, const char *why)
{
    struct registry *sreg = proxy_spool_reg(f->px);
    if (f->up)
        registry_upload_close(f->up);
    f->up = NULL;
    if (f->id[0]) {
        registry_upload_cancel(sreg, f->name, f->id);
        spools_drop(f->px->spools, f->id);
    }
    bfetch_unlist(f);
    bfetch_unlease(f, false);
    proxy_slot_release(f->px, &f->slot);
    f->state = B_FAILED;
    f->err = e;
    f->retry_after = retry_after;
    snprintf(f->why, sizeof(f->why), "%s", why);
    bfetch_pump_all(f); /* last: the readers leaving may free f */
}

/* Starts the upstream GET into the open spool. */
static void bfetch_upstream(struct bfetch *f)
{
    static const struct upstream_callbacks cb = {b_on_response, b_on_data, b_on_done};
    char suffix[API_REF_MAX + 8], ds[DIGEST_STR_MAX];
    snprintf(suffix, sizeof(suffix), "blobs/%s", digest_str(&f->d, ds));
    const char *name = f->rm->main ? f->name : strchr(f->name, '/') + 1;
    f->state = B_HEADERS;
    /* No callback runs before upstream_fetch returns (they set f->ureq to NULL). */
    f->ureq = upstream_fetch(f->rm->up, "GET", name, suffix, NULL, &cb, f);
    if (f->ureq) {
        bfetch_ref(f); /* the exchange's, until b_on_done */
        return;
    }
    bfetch_fail_early(f, REG_ERR_INTERNAL, -1, "cannot start the upstream fetch");
}

static void bfetch_source(struct bfetch *f);

/* ---- the cluster: one node fetches, the others read its spool ---- */

/* The holder had no such fetch (finished, or gone with its lease not expired yet): ask again
 * after a pause, until its lease expires and this node takes it, or the blob is stored. */
#define PEER_RETRY_MS 500
#define PEER_MISSES_MAX 30

static void on_peer_retry(evutil_socket_t fd, short what, void *arg)
{
    struct bfetch *f = arg;
    bfetch_source(f);
    bfetch_unref(f); /* the timer's */
}

static int p_on_headers(struct httpc_req *r, void *ctx, long status, const struct httpc_headers *h)
{
    struct bfetch *f = ctx;
    f->peer_status = status;
    return status == 200 ? bfetch_headers(f, h) : -1;
}

static int p_on_data(struct httpc_req *r, void *ctx, const char *data, size_t len)
{
    return bfetch_data(ctx, data, len);
}

static void p_on_done(struct httpc_req *r, void *ctx, enum httpc_result res, const char *errmsg)
{
    struct bfetch *f = ctx;
    if (f->state == B_HEADERS && !f->bad_answer) {
        /* Nothing arrived: the holder is not (or no longer) fetching it. Ask again. */
        f->peer = NULL;
        log_debug("proxy: the node holding the fetch did not serve it (%s, status %ld); asking "
                  "again",
                  errmsg[0] ? errmsg : httpc_result_name(res), f->peer_status);
        struct timeval tv = {0, PEER_RETRY_MS * 1000};
        if (++f->peer_misses <= PEER_MISSES_MAX && evtimer_add(f->retry, &tv) == 0)
            return; /* the exchange's reference passes to the timer */
        bfetch_fail_early(f, REG_ERR_UNAVAILABLE, 1, "the node fetching this blob does not answer");
        bfetch_unref(f);
        return;
    }
    enum regerr result = res == HTTPC_OK ? REG_OK : REG_ERR_UNAVAILABLE;
    char why[160];
    snprintf(why, sizeof(why), "reading the spool of the node holding the fetch: %s",
             errmsg[0] ? errmsg : httpc_result_name(res));
    bfetch_end(f, result, -1, why);
}

/* Reads the spool of the node at holder, which fetches d from the upstream. */
static void bfetch_peer(struct bfetch *f, const char *holder)
{
    static const struct httpc_callbacks cb = {p_on_headers, p_on_data, p_on_done};
    struct proxy *px = f->px;
    char ds[DIGEST_STR_MAX], url[1024], token[CLUSTER_TOKEN_MAX], hdr[CLUSTER_TOKEN_MAX + 32];
    size_t hl = strlen(holder);
    while (hl > 0 && holder[hl - 1] == '/')
        hl--;
    snprintf(url, sizeof(url), "%.*s%s%s", (int)hl, holder, PROXY_PEER_PATH, digest_str(&f->d, ds));
    cluster_peer_token(px->cfg->http.secret, &f->d, time(NULL), token);
    snprintf(hdr, sizeof(hdr), "X-Regmirror-Peer: %s", token);
    const char *hdrs[] = {hdr, NULL};
    struct httpc_req_opts o = {.url = url, .headers = hdrs, .connect_timeout_ms = 2000};
    f->state = B_HEADERS;
    f->peer_status = 0;
    f->peer = httpc_start(px->httpc, &o, &cb, f);
    if (!f->peer) {
        bfetch_fail_early(f, REG_ERR_INTERNAL, -1, "cannot read the spool of another node");
        return;
    }
    bfetch_ref(f); /* the exchange's, until p_on_done */
}

static void on_lease(void *ctx, enum cluster_lease r, const char *holder)
{
    struct bfetch *f = ctx;
    f->lease_op = NULL;
    switch (r) {
    case CLUSTER_OURS:
        f->leased = true;
        if (f->peer_misses)
            metrics_inc(METRICS_CLUSTER_TAKEN_OVER);
        bfetch_upstream(f);
        break;
    case CLUSTER_ALONE:
        bfetch_upstream(f);
        break;
    case CLUSTER_HELD:
        if (!f->peer_misses)
            metrics_inc(METRICS_CLUSTER_LEASES_WAITED);
        bfetch_peer(f, holder);
        break;
    case CLUSTER_STORED:
        if (f->again) {
            /* The store did not have it after all (evicted since): fetch on our own. */
            bfetch_upstream(f);
            break;
        }
        /* Readers are answered from the store (through the proxy again: proxy_blob_again);
         * nothing was fetched here. */
        if (f->up)
            registry_upload_close(f->up);
        f->up = NULL;
        registry_upload_cancel(proxy_spool_reg(f->px), f->name, f->id);
        spools_drop(f->px->spools, f->id);
        bfetch_unlist(f);
        proxy_slot_release(f->px, &f->slot);
        f->state = B_STORED;
        bfetch_pump_all(f);
        break;
    }
    bfetch_unref(f); /* the question's */
}

/* The spool is open: fetch from the upstream, or, in a cluster, ask who does. */
static void bfetch_source(struct bfetch *f)
{
    struct cluster *cl = f->px->cluster;
    if (!cl) {
        bfetch_upstream(f);
        return;
    }
    f->state = B_HEADERS;
    f->lease_op = cluster_lease_take(cl, &f->d, on_lease, f);
    if (!f->lease_op) {
        bfetch_upstream(f);
        return;
    }
    bfetch_ref(f); /* the question's, until on_lease */
}

/* The slot is granted: open the spool, then find the source. */
static void bfetch_go(struct slot *s)
{
    struct bfetch *f = PROXY_CONTAINER(s, struct bfetch, slot);
    /* The spool is local (see spool_reg): these are a few syscalls on the loop. */
    struct registry *sreg = proxy_spool_reg(f->px);
    enum regerr result = registry_upload_start(sreg, f->name, f->id);
    if (result == REG_OK)
        spools_add(f->px->spools, f->name, f->id);
    if (result == REG_OK)
        result = registry_upload_open(sreg, f->name, f->id, &f->up);
    if (result == REG_OK)
        result = registry_upload_reader(sreg, f->name, f->id, &f->fd);
    if (result == REG_OK && f->px->cluster && !f->retry) {
        f->retry = evtimer_new(f->px->base, on_peer_retry, f);
        if (!f->retry)
            result = REG_ERR_INTERNAL;
    }
    if (result == REG_OK) {
        bfetch_source(f);
        return;
    }
    bfetch_fail_early(f, result, -1, "cannot start the upstream fetch");
}

static void bfetch_expire(struct slot *s)
{
    bfetch_fail_early(PROXY_CONTAINER(s, struct bfetch, slot), REG_ERR_UNAVAILABLE,
                      QUEUE_RETRY_AFTER_S, "too many upstream fetches at once (proxy.maxfetches)");
}

/* ---- ranged side fetches: a Range beyond what the fetch has ---- */

/* A Range that starts more than this far ahead of the fetch's spool gets a ranged upstream
 * request of its own; a closer one waits for the fetch, which brings it within a fraction of
 * a second at a common upstream's pace, for no extra upstream bytes. */
#define SIDE_AHEAD (8 * 1024 * 1024)
/* Longest Range header passed on to the upstream; one range is far shorter. */
#define SIDE_RANGE_MAX 128

enum sstate { S_WAITING, S_STREAMING, S_DONE, S_FAILED };

/*
 * One client's ranged upstream GET (its own Range, passed on), spooled into an upload session
 * of its own: on disk, the range only. It is never committed: a part of a blob cannot be
 * checked against the digest. Owned by its reader; an answer that is not the 206 of the span
 * the client asked leaves the reader on the fetch, as if there had been no side fetch.
 */
struct bside {
    struct http_req *req; /* the client's (for its Range), held by the reader's stream */
    char id[37];          /* the spool's upload session; "" before it exists */
    struct registry_upload *up;
    int fd;
    struct upstream_req *ureq;
    enum sstate state;
    uint64_t base, have, end; /* the blob's bytes [base, end) asked, [base, have) in */
    int64_t total;
    enum regerr err;
    char why[160];
};

/* Whether req's Range starts beyond what f will have soon. One range only: the others (none,
 * several, unreadable) get the whole blob (reference_parse_range). */
static bool side_wanted(const struct bfetch *f, struct http_req *req)
{
    const char *range = http_req_header(req, "Range");
    uint64_t start, last;
    if (!range || strlen(range) >= SIDE_RANGE_MAX)
        return false;
    /* While the length is unknown, a suffix ("bytes=-n") resolves near UINT64_MAX: beyond. */
    uint64_t size = f->total >= 0 ? (uint64_t)f->total : UINT64_MAX;
    if (reference_parse_range(range, size, &start, &last) != REFERENCE_RANGE_OK)
        return false;
    return start > f->written + SIDE_AHEAD;
}

/* Leaves rd on its fetch's spool; cancels the side's request. No-op without a side. */
static void side_free(struct breader *rd)
{
    struct bside *s = rd->side;
    if (!s)
        return;
    struct proxy *px = rd->f->px;
    rd->side = NULL;
    if (s->ureq)
        upstream_cancel(s->ureq);
    if (s->up)
        registry_upload_close(s->up);
    if (s->id[0]) {
        registry_upload_cancel(proxy_spool_reg(px), rd->f->name, s->id);
        spools_drop(px->spools, s->id);
    }
    if (s->fd >= 0)
        close(s->fd);
    free(s);
}

static void side_poll(const struct bside *s, struct api_fill *fl)
{
    static const enum api_fill_state fill[] = {
        [S_WAITING] = API_FILL_WAITING,
        [S_STREAMING] = API_FILL_GROWING,
        [S_DONE] = API_FILL_DONE,
        [S_FAILED] = API_FILL_FAILED,
    };
    fl->state = fill[s->state];
    fl->total = s->total;
    fl->base = s->base;
    fl->have = s->have;
    fl->fd = s->fd;
    fl->err = s->err;
    fl->retry_after = -1;
    fl->why = s->why;
}

/* Digits into *n; the first character after them, NULL when there are none or too many. */
static const char *read_u64(const char *p, uint64_t *n)
{
    const char *start = p;
    *n = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        uint64_t digit = (uint64_t)(*p - '0');
        if (*n > (UINT64_MAX - digit) / 10)
            return NULL;
        *n = *n * 10 + digit;
    }
    return p == start ? NULL : p;
}

/* A 206's "Content-Range: bytes a-b/total", the range inside the blob. */
static bool content_range_parse(const char *v, uint64_t *a, uint64_t *b, uint64_t *total)
{
    static const char unit[] = "bytes ";
    if (!v || strncmp(v, unit, sizeof(unit) - 1) != 0)
        return false;
    const char *p = read_u64(v + sizeof(unit) - 1, a);
    if (!p || *p != '-')
        return false;
    p = read_u64(p + 1, b);
    if (!p || *p != '/')
        return false;
    p = read_u64(p + 1, total);
    return p && *p == '\0' && *a <= *b && *b < *total && *total <= INT64_MAX;
}

/* Only the 206 of the span the client's Range asks (of the size the fetch may know) is
 * taken; anything else stops the side fetch and the reader waits for the fetch. */
static int side_on_response(struct upstream_req *r, void *ctx, long status,
                            const struct httpc_headers *h)
{
    struct breader *rd = ctx;
    struct bside *s = rd->side;
    uint64_t a, b, total;
    struct api_span span;
    if (status != 206 ||
        !content_range_parse(httpc_header_get(h, "Content-Range"), &a, &b, &total) ||
        (rd->f->total >= 0 && (uint64_t)rd->f->total != total) ||
        !api_blob_span(s->req, (int64_t)total, &span) || !span.partial || span.start != a ||
        (uint64_t)span.len != b - a + 1) {
        log_debug("proxy: the upstream answered Range %s of a blob of %s with status %ld, not "
                  "its 206; the answer comes from the fetch",
                  http_req_header(s->req, "Range"), rd->f->name, status);
        return -1;
    }
    s->base = a;
    s->have = a;
    s->end = b + 1;
    s->total = (int64_t)total;
    s->state = S_STREAMING;
    api_stream_wake(rd->st); /* the 206's head; rd may be gone after */
    return 0;
}

static int side_on_data(struct upstream_req *r, void *ctx, const char *data, size_t len)
{
    struct breader *rd = ctx;
    struct bside *s = rd->side;
    if (len > s->end - s->have) {
        s->err = REG_ERR_BAD_GATEWAY;
        snprintf(s->why, sizeof(s->why), "the upstream sent more bytes than the range");
        return -1;
    }
    if (registry_upload_write(s->up, data, len) != REG_OK) {
        s->err = REG_ERR_UNAVAILABLE;
        snprintf(s->why, sizeof(s->why), "writing the range's spool failed");
        return -1;
    }
    s->have += len;
    metrics_add(METRICS_BYTES_FROM_UPSTREAM, len);
    api_stream_wake(rd->st); /* rd may be gone after */
    return 0;
}

static void side_on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    struct breader *rd = ctx;
    struct bside *s = rd->side;
    s->ureq = NULL;
    if (s->state == S_WAITING) {
        /* Nothing was sent from the side: the answer comes from the fetch. */
        side_free(rd);
        api_stream_wake(rd->st);
        return;
    }
    if (o->result == UPSTREAM_OK && s->have == s->end) {
        s->state = S_DONE;
    } else {
        s->state = S_FAILED;
        if (s->err == REG_OK) {
            s->err = o->result == UPSTREAM_OK ? REG_ERR_BAD_GATEWAY : proxy_outcome_error(o, true);
            snprintf(s->why, sizeof(s->why),
                     "the upstream sent %" PRIu64 " of %" PRIu64 " bytes of the range: %s",
                     s->have - s->base, s->end - s->base, o->message);
        }
    }
    api_stream_wake(rd->st);
}

/* Asks the upstream for req's Range on a side fetch of rd; without one (it could not start)
 * rd stays on its fetch. */
static void side_start(struct breader *rd, struct http_req *req)
{
    static const struct upstream_callbacks cb = {side_on_response, side_on_data, side_on_done};
    struct bfetch *f = rd->f;
    struct registry *sreg = proxy_spool_reg(f->px);
    struct bside *s = calloc(1, sizeof(*s));
    if (!s)
        return;
    s->req = req;
    s->fd = -1;
    s->total = -1;
    rd->side = s;
    enum regerr result = registry_upload_start(sreg, f->name, s->id);
    if (result == REG_OK)
        spools_add(f->px->spools, f->name, s->id);
    else
        s->id[0] = '\0';
    if (result == REG_OK)
        result = registry_upload_open(sreg, f->name, s->id, &s->up);
    if (result == REG_OK)
        result = registry_upload_reader(sreg, f->name, s->id, &s->fd);
    if (result == REG_OK) {
        char suffix[API_REF_MAX + 8], ds[DIGEST_STR_MAX], range[SIDE_RANGE_MAX + 8];
        snprintf(suffix, sizeof(suffix), "blobs/%s", digest_str(&f->d, ds));
        snprintf(range, sizeof(range), "Range: %s", http_req_header(req, "Range"));
        const char *hdrs[] = {range, NULL};
        const char *name = f->rm->main ? f->name : strchr(f->name, '/') + 1;
        /* Straight to the upstream, in a cluster too: a range is small, and no slot of
         * proxy.maxfetches: the client's own request bounds it. */
        s->ureq = upstream_fetch(f->rm->up, "GET", name, suffix, hdrs, &cb, rd);
    }
    if (!s->ureq)
        side_free(rd);
}

/* A new reader of f answering c; NULL when c was answered (out of memory). */
static struct breader *reader_new(struct bfetch *f, struct client *c, const struct digest *d,
                                  enum api_stream_kind kind)
{
    struct breader *rd = calloc(1, sizeof(*rd));
    if (!rd) {
        proxy_client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return NULL;
    }
    rd->st = api_stream_new(c->api, c->req, &c->rt, d, kind, &reader_source, rd);
    if (!rd->st) {
        free(rd);
        return NULL;
    }
    rd->f = f;
    rd->next = f->readers;
    f->readers = rd;
    bfetch_ref(f);
    return rd;
}

static void blob_fetch(struct proxy *px, const struct target *t, struct client *c,
                       const struct digest *d, bool again)
{
    struct bfetch *f;
    for (f = px->bfetches; f; f = f->next) {
        if (f->rm == t->rm && digest_equal(&f->d, d))
            break;
    }
    if (f) {
        /* Joining a fetch, running or queued, takes no slot of its own. */
        struct breader *rd = reader_new(f, c, d, API_STREAM_PULL);
        if (rd) {
            metrics_inc(METRICS_JOINED_WAITERS);
            if (side_wanted(f, c->req))
                side_start(rd, c->req);
            api_stream_wake(rd->st);
        }
        return;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        proxy_client_error(c, REG_ERR_INTERNAL, -1, "cannot start the upstream fetch");
        return;
    }
    f->px = px;
    f->rm = t->rm;
    f->d = *d;
    f->fd = -1;
    f->total = -1;
    f->state = B_QUEUED;
    f->again = again;
    snprintf(f->name, sizeof(f->name), "%s", t->rt.name);
    struct breader *rd = reader_new(f, c, d, API_STREAM_PULL);
    if (!rd) {
        free(f);
        return;
    }
    if (side_wanted(f, c->req))
        side_start(rd, c->req);
    f->listed = true;
    f->next = px->bfetches;
    px->bfetches = f;
    /* Last: go may fail at once, answer the reader and free f. */
    proxy_slot_acquire(px, &f->slot, bfetch_go, bfetch_expire);
}

void proxy_blob_peer(struct proxy *px, const struct api *api, struct http_req *req, const char *ref)
{
    struct digest d;
    if (http_req_method(req) != HTTP_GET) {
        api_error(api, req, REG_ERR_UNSUPPORTED, "only GET reads a spool");
        return;
    }
    if (digest_parse(ref, strlen(ref), &d) != 0) {
        api_error(api, req, REG_ERR_DIGEST_INVALID, NULL);
        return;
    }
    if (!cluster_peer_check(px->cfg->http.secret, &d, http_req_header(req, "X-Regmirror-Peer"),
                            time(NULL))) {
        api_error(api, req, REG_ERR_UNAUTHORIZED, "a node of this cluster's (http.secret)");
        return;
    }
    struct bfetch *f;
    for (f = px->bfetches; f; f = f->next) {
        /* A node that reads another's spool does not pass it on: one holder per lease. */
        if (digest_equal(&f->d, &d) && f->leased)
            break;
    }
    if (!f) {
        api_error(api, req, REG_ERR_BLOB_UNKNOWN, "no fetch of this blob runs on this node");
        return;
    }
    struct client c = {.api = api, .req = req, .manifest = false};
    c.rt.kind = API_ROUTE_BLOB;
    snprintf(c.rt.name, sizeof(c.rt.name), "%s", f->name);
    snprintf(c.rt.ref, sizeof(c.rt.ref), "%s", ref);
    struct breader *rd = reader_new(f, &c, &d, API_STREAM_PEER);
    if (rd)
        api_stream_wake(rd->st);
}

/* What the store says about a pulled blob. */
struct blookup {
    struct proxy *px;
    struct target t;
    struct client c;
    struct digest d;
    bool head;
    unsigned seq; /* px->bseq when the lookup was queued */
    int tries;
    bool linked; /* in rt.name, with size */
    uint64_t size;
    int fd;      /* a local GET's open data when linked, else -1 */
    bool stored; /* a GET's blob not linked here but stored for another repository */
    bool again;  /* asked again after a lease said "stored" (proxy_blob_again) */
};

static void blookup_work(void *arg)
{
    struct blookup *l = arg;
    struct registry *reg = l->px->reg;
    /* A GET from local storage opens the data right away: serving it needs no second look. */
    if (!l->head && registry_is_local(l->px->reg))
        l->linked = registry_blob_open(reg, l->t.rt.name, &l->d, &l->fd, &l->size) == REG_OK;
    else
        l->linked = registry_blob_stat(reg, l->t.rt.name, &l->d, &l->size) == REG_OK;
    l->stored = !l->linked && !l->head && registry_blob_stored(reg, &l->d);
}

static bool bfetch_running(const struct proxy *px, const struct remote *rm, const struct digest *d)
{
    for (const struct bfetch *f = px->bfetches; f; f = f->next) {
        if (f->rm == rm && digest_equal(&f->d, d))
            return true;
    }
    return false;
}

/* Serves from the store, asks the upstream, or fetches. false: look up again instead (a
 * fetch ended while the lookup ran, so the store may hold the blob now). */
static bool blookup_finish(struct blookup *l)
{
    struct proxy *px = l->px;
    if (l->linked) {
        const struct api *api = l->c.api;
        /* The next HEAD answers from the blob-descriptor cache (see proxy_blob_hit); only
         * the main upstream's names are the client's names there. */
        if (l->t.rm->main && api->cache) {
            struct cache_desc cd = {.digest = l->d, .size = l->size};
            snprintf(cd.media_type, sizeof(cd.media_type), "application/octet-stream");
            cache_put(api->cache, l->t.rt.name, &cd);
        }
        proxy_blob_hit(px, l->t.rt.name, &l->d);
        cluster_announce_busy(px->cluster, &l->d);
        proxy_client_serve_looked_up(&l->c, NULL, (int64_t)l->size, l->fd);
        l->fd = -1;
        return true;
    }
    if (!l->head && !l->stored && l->seq != px->bseq && l->tries < LOOKUP_TRIES &&
        !bfetch_running(px, l->t.rm, &l->d))
        return false;
    metrics_inc(METRICS_CACHE_MISS_BLOB);
    if (l->stored)
        cluster_announce_busy(px->cluster, &l->d); /* about to be linked here */
    if (l->head || l->stored)
        blob_head(px, &l->t, &l->c, &l->d);
    else
        blob_fetch(px, &l->t, &l->c, &l->d, l->again);
    return true;
}

static void blookup_queue(struct blookup *l);

static void blookup_done(void *arg, struct http_req *req)
{
    struct blookup *l = arg;
    struct proxy *px = l->px;
    if (!req || px->closing) {
        free(l);
        proxy_unref(px);
        return;
    }
    proxy_unref(px);
    if (!blookup_finish(l)) {
        blookup_queue(l);
        return;
    }
    free(l);
}

static void blookup_queue(struct blookup *l)
{
    l->seq = l->px->bseq;
    l->tries++;
    proxy_ref(l->px);
    offload_req(l->px->offload, l->c.req, blookup_work, blookup_done, l);
}

static void blob_lookup(struct proxy *px, const struct api *api, struct http_req *req,
                        const struct api_route *rt, bool again)
{
    /* The filesystem answers at once: look up on the stack, with no job. */
    bool now = offload_inline(px->offload);
    struct blookup stack = {0}, *l = now ? &stack : malloc(sizeof(*l));
    if (!l) {
        api_errorf(api, req, REG_ERR_INTERNAL, "out of memory");
        return;
    }
    if (!proxy_begin(px, api, req, rt, false, &l->t, &l->c)) {
        if (!now)
            free(l);
        return;
    }
    l->px = px;
    digest_parse(l->t.rt.ref, strlen(l->t.rt.ref), &l->d);
    l->head = http_req_method(req) == HTTP_HEAD;
    l->tries = 0;
    l->fd = -1;
    l->again = again;
    if (now) {
        l->seq = px->bseq;
        blookup_work(l);
        blookup_finish(l);
        return;
    }
    blookup_queue(l);
}

void proxy_blob(struct proxy *px, const struct api *api, struct http_req *req,
                const struct api_route *rt)
{
    blob_lookup(px, api, req, rt, false);
}

void proxy_blob_again(struct proxy *px, const struct api *api, struct http_req *req,
                      const struct api_route *rt)
{
    blob_lookup(px, api, req, rt, true);
}

void proxy_blob_hit(struct proxy *px, const char *name, const struct digest *d)
{
    metrics_inc(METRICS_CACHE_HIT_BLOB);
    proxy_note_pulled(px, name, d, false);
}

void proxy_blob_close(struct proxy *px)
{
    /* A link job's bhead stays until its done. */
    while (px->bheads) {
        struct bhead *b = px->bheads;
        px->bheads = b->next; /* the head: bhead_finish's search finds nothing */
        bhead_finish(b);
    }
    while (px->bfetches) {
        struct bfetch *f = px->bfetches;
        px->bfetches = f->next; /* the head: as bfetch_unlist, without its search */
        f->listed = false;
        px->bseq++;
        if (f->importing)
            continue;
        bfetch_ref(f);
        if (f->ureq) {
            upstream_cancel(f->ureq);
            assert(f->refs > 1); /* ours holds f */
            bfetch_unref(f);     /* the exchange's */
        }
        f->ureq = NULL;
        if (f->peer) {
            httpc_cancel(f->peer);
            f->peer = NULL;
            assert(f->refs > 1); /* ours holds f */
            bfetch_unref(f);     /* the exchange's */
        }
        if (f->lease_op) {
            cluster_op_cancel(f->lease_op);
            f->lease_op = NULL;
            assert(f->refs > 1);
            bfetch_unref(f); /* the question's */
        }
        if (f->retry && evtimer_pending(f->retry, NULL)) {
            evtimer_del(f->retry);
            assert(f->refs > 1);
            bfetch_unref(f); /* the timer's */
        }
        bfetch_unlease(f, false);
        if (f->up)
            registry_upload_close(f->up);
        f->up = NULL;
        if (f->id[0]) {
            registry_upload_cancel(proxy_spool_reg(px), f->name, f->id);
            spools_drop(px->spools, f->id);
        }
        f->state = B_FAILED;
        snprintf(f->why, sizeof(f->why), "shutting down");
        for (struct breader *rd = f->readers; rd; rd = rd->next)
            side_free(rd); /* their upstream goes away with the proxy */
        bfetch_pump_all(f);
        /* The analyzer does not count references: ours has held f through the pump. */
        bfetch_unref(f); /* NOLINT(clang-analyzer-unix.Malloc) */
    }
}

static const char *bstate_name(const struct bfetch *f)
{
    switch (f->state) {
    case B_QUEUED:
        return "queued";
    case B_HEADERS:
        return "connecting";
    case B_STREAMING:
        return "streaming";
    case B_DONE:
    case B_FAILED:
    case B_STORED:
        break;
    }
    return f->importing ? "storing" : "done";
}

void proxy_each_fetch(const struct proxy *px,
                      void (*fn)(const struct proxy_fetch_view *v, void *ctx), void *ctx)
{
    for (const struct bfetch *f = px->bfetches; f; f = f->next) {
        size_t clients = 0;
        for (const struct breader *rd = f->readers; rd; rd = rd->next)
            clients++;
        struct proxy_fetch_view v = {
            .digest = &f->d,
            .repository = f->name,
            .upstream = f->rm->host,
            .state = bstate_name(f),
            .bytes = f->written,
            .size = f->total,
            .clients = clients,
            .from_peer = f->peer != NULL,
        };
        fn(&v, ctx);
    }
}

bool proxy_blob_busy(const struct proxy *px, const struct digest *d)
{
    /* A fetch leaves the list when its blob is stored (on the filesystem when its upstream
     * side ends); readers still on it hold the spool by descriptor, so removing the stored
     * blob cannot cut them. */
    for (const struct bfetch *f = px->bfetches; f; f = f->next) {
        if (digest_equal(&f->d, d))
            return true;
    }
    for (const struct bhead *b = px->bheads; b; b = b->next) {
        if (digest_equal(&b->d, d))
            return true;
    }
    return false;
}
