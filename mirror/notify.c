#include "notify.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <jansson.h>
#include <openssl/rand.h>

#include "api.h"
#include "config.h"
#include "httpc.h"
#include "log.h"
#include "manifest.h"
#include "metrics.h"

#define UUID_STR 37

struct endpoint {
    struct notify *n;
    const struct config_endpoint *cfg;
    char **headers; /* "Name: value" lines, NULL-terminated */
    /* Pending events (serialized JSON objects), a ring of NOTIFY_QUEUE_MAX. */
    char **ring;
    size_t head, count;
    /* The batch being delivered (or waiting for its retry): the envelope and its size. */
    char *batch;
    size_t batch_len, batch_n;
    struct httpc_req *req;
    long status;
    struct event *timer;
    bool timer_armed;
    int failures; /* attempts in a row that failed */
    bool down;
    uint64_t sent, dropped, failed;
    uint64_t dropped_unlogged;
};

struct notify {
    struct event_base *base;
    const struct config *cfg;
    struct httpc *httpc;
    struct endpoint *eps;
    size_t neps;
    char instance[UUID_STR];
    char source_addr[300];
};

/* The notifier the API hooks use (one per daemon, see notify.h). */
static struct notify *active;

static const char *const action_names[] = {[NOTIFY_PUSH] = "push",
                                           [NOTIFY_PULL] = "pull",
                                           [NOTIFY_DELETE] = "delete",
                                           [NOTIFY_MOUNT] = "mount"};

static void uuid_new(char out[UUID_STR])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof(b)) != 1) {
        /* Only ids for receivers to tell events apart: weak randomness is acceptable. */
        for (size_t i = 0; i < sizeof(b); i++)
            b[i] = (unsigned char)rand();
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    snprintf(out, UUID_STR, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* RFC 3339 with nanoseconds in UTC, as Go's time.Time marshals. */
static void timestamp_now(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, size, "%s.%09ldZ", base, ts.tv_nsec);
}

static bool listed(char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; s && i < n; i++) {
        if (strcmp(list[i], s) == 0)
            return true;
    }
    return false;
}

static bool filtered(const struct config_endpoint *e, enum notify_action action,
                     const char *media_type)
{
    if (listed(e->ignore.actions, e->ignore.nactions, action_names[action]))
        return true;
    return listed(e->ignoredmediatypes, e->nignoredmediatypes, media_type) ||
           listed(e->ignore.mediatypes, e->ignore.nmediatypes, media_type);
}

static void set_str(json_t *o, const char *key, const char *value)
{
    json_object_set_new(o, key, json_string(value ? value : ""));
}

/* A descriptor as registry:2 writes it in target.references (distribution.Descriptor). */
static json_t *desc_json(const struct manifest_desc *d)
{
    char ds[DIGEST_STR_MAX];
    json_t *o = json_object();
    if (!o)
        return NULL;
    set_str(o, "mediaType", d->media_type);
    if (d->size > 0) /* omitempty there */
        json_object_set_new(o, "size", json_integer(d->size));
    set_str(o, "digest", digest_str(&d->digest, ds));
    if (d->nurls > 0) {
        json_t *u = json_array();
        for (size_t i = 0; u && i < d->nurls; i++)
            json_array_append_new(u, json_string(d->urls[i]));
        json_object_set_new(o, "urls", u);
    }
    if (d->annotations_json) {
        json_t *a = json_loads(d->annotations_json, 0, NULL);
        if (a && json_object_size(a) > 0)
            json_object_set(o, "annotations", a);
        json_decref(a);
    }
    if (d->os || d->arch) {
        json_t *pl = json_object();
        if (pl) {
            set_str(pl, "architecture", d->arch);
            set_str(pl, "os", d->os);
            if (d->variant)
                set_str(pl, "variant", d->variant);
            json_object_set_new(o, "platform", pl);
        }
    }
    return o;
}

/* The references of m: config then layers for images, the manifests for indexes. */
static json_t *references_json(const struct manifest *m)
{
    json_t *a = json_array();
    if (!a)
        return NULL;
    if (m->has_config)
        json_array_append_new(a, desc_json(&m->config));
    for (size_t i = 0; i < m->nlayers; i++)
        json_array_append_new(a, desc_json(&m->layers[i]));
    return a;
}

/* One event as a JSON object; NULL when out of memory. */
static char *event_json(struct notify *n, enum notify_action action, const struct notify_target *t,
                        const struct notify_request *rq)
{
    char id[UUID_STR], rid[UUID_STR], ts[64], ds[DIGEST_STR_MAX];
    uuid_new(id);
    uuid_new(rid);
    timestamp_now(ts, sizeof(ts));
    json_t *ev = json_object(), *target = json_object(), *req = json_object();
    json_t *actor = json_object(), *source = json_object();
    char *text = NULL;
    if (!ev || !target || !req || !actor || !source)
        goto out;
    set_str(ev, "id", id);
    set_str(ev, "timestamp", ts);
    set_str(ev, "action", action_names[action]);
    if (t->media_type)
        set_str(target, "mediaType", t->media_type);
    if (t->digest)
        set_str(target, "digest", digest_str(t->digest, ds));
    if (t->size >= 0) {
        json_object_set_new(target, "size", json_integer(t->size));
        json_object_set_new(target, "length", json_integer(t->size));
    }
    set_str(target, "repository", t->repository);
    if (t->from_repository)
        set_str(target, "fromRepository", t->from_repository);
    if (t->url)
        set_str(target, "url", t->url);
    if (t->tag)
        set_str(target, "tag", t->tag);
    if (t->references)
        json_object_set_new(target, "references", references_json(t->references));
    set_str(req, "id", rid);
    set_str(req, "addr", rq ? rq->addr : NULL);
    set_str(req, "host", rq ? rq->host : NULL);
    set_str(req, "method", rq ? rq->method : NULL);
    set_str(req, "useragent", rq ? rq->useragent : NULL);
    set_str(source, "addr", n->source_addr);
    set_str(source, "instanceID", n->instance);
    json_object_set(ev, "target", target);
    json_object_set(ev, "request", req);
    json_object_set(ev, "actor", actor);
    json_object_set(ev, "source", source);
    text = json_dumps(ev, JSON_COMPACT);
out:
    json_decref(ev);
    json_decref(target);
    json_decref(req);
    json_decref(actor);
    json_decref(source);
    return text;
}

/* ---- delivery ---- */

static void ep_kick(struct endpoint *ep);

static void ep_log_drops(struct endpoint *ep)
{
    if (!ep->dropped_unlogged)
        return;
    log_warn("notifications: endpoint %s is down and its queue is full: dropped %" PRIu64
             " events (%" PRIu64 " in total)",
             ep->cfg->name, ep->dropped_unlogged, ep->dropped);
    ep->dropped_unlogged = 0;
}

static void ep_batch_free(struct endpoint *ep)
{
    free(ep->batch);
    ep->batch = NULL;
    ep->batch_len = ep->batch_n = 0;
}

/* Moves up to NOTIFY_BATCH_MAX queued events into one envelope. 0, or -1 out of memory. */
static int ep_batch_build(struct endpoint *ep)
{
    size_t n = ep->count < NOTIFY_BATCH_MAX ? ep->count : NOTIFY_BATCH_MAX;
    size_t len = sizeof("{\"events\":[]}");
    for (size_t i = 0; i < n; i++)
        len += strlen(ep->ring[(ep->head + i) % NOTIFY_QUEUE_MAX]) + 1;
    char *body = malloc(len);
    if (!body)
        return -1;
    size_t off = 0;
    memcpy(body, "{\"events\":[", 11);
    off = 11;
    for (size_t i = 0; i < n; i++) {
        char **slot = &ep->ring[(ep->head + i) % NOTIFY_QUEUE_MAX];
        size_t k = strlen(*slot);
        if (i)
            body[off++] = ',';
        memcpy(body + off, *slot, k);
        off += k;
        free(*slot);
        *slot = NULL;
    }
    memcpy(body + off, "]}", 3);
    off += 2;
    ep->head = (ep->head + n) % NOTIFY_QUEUE_MAX;
    ep->count -= n;
    ep->batch = body;
    ep->batch_len = off;
    ep->batch_n = n;
    return 0;
}

static int ep_on_headers(struct httpc_req *r, void *ctx, long status, const struct httpc_headers *h)
{
    struct endpoint *ep = ctx;
    ep->status = status;
    return 0;
}

static void ep_retry_later(struct endpoint *ep)
{
    int64_t ms = ep->failures >= ep->cfg->threshold ? ep->cfg->backoff_ms : 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    if (evtimer_add(ep->timer, &tv) == 0)
        ep->timer_armed = true;
}

static void ep_on_done(struct httpc_req *r, void *ctx, enum httpc_result res, const char *errmsg)
{
    struct endpoint *ep = ctx;
    ep->req = NULL;
    if (res == HTTPC_OK && ep->status >= 200 && ep->status < 400) {
        ep->sent += ep->batch_n;
        ep_batch_free(ep);
        if (ep->down)
            log_info("notifications: endpoint %s is back after %d failed attempts", ep->cfg->name,
                     ep->failures);
        ep->failures = 0;
        ep->down = false;
        ep_log_drops(ep);
        ep_kick(ep);
        return;
    }
    ep->failures++;
    ep->failed++;
    char why[64];
    if (res == HTTPC_OK)
        snprintf(why, sizeof(why), "answered %ld", ep->status);
    else
        snprintf(why, sizeof(why), "%s", httpc_result_name(res));
    if (!ep->down && ep->failures >= ep->cfg->threshold) {
        ep->down = true;
        log_warn("notifications: endpoint %s is down (%d attempts failed, last: %s); retrying "
                 "every %" PRId64 " ms",
                 ep->cfg->name, ep->failures, why, ep->cfg->backoff_ms);
    } else {
        log_debug("notifications: delivery to %s failed: %s", ep->cfg->name, why);
    }
    ep_log_drops(ep);
    ep_retry_later(ep);
}

static const struct httpc_callbacks ep_callbacks = {ep_on_headers, NULL, ep_on_done};

/* Starts the next delivery when none runs and no retry is pending. */
static void ep_kick(struct endpoint *ep)
{
    if (ep->req || ep->timer_armed)
        return;
    if (!ep->batch) {
        if (!ep->count)
            return;
        if (ep_batch_build(ep) != 0) {
            ep_retry_later(ep);
            return;
        }
    }
    struct httpc_req_opts o = {
        .method = "POST",
        .url = ep->cfg->url,
        .headers = (const char *const *)ep->headers,
        .body = ep->batch,
        .body_len = ep->batch_len,
        .timeout_ms = ep->cfg->timeout_ms,
        .connect_timeout_ms = ep->cfg->timeout_ms,
    };
    ep->status = 0;
    ep->req = httpc_start(ep->n->httpc, &o, &ep_callbacks, ep);
    if (!ep->req) {
        ep->failures++;
        ep_retry_later(ep);
    }
}

static void ep_on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct endpoint *ep = arg;
    ep->timer_armed = false;
    ep_kick(ep);
}

static void ep_enqueue(struct endpoint *ep, const char *event)
{
    char *copy = strdup(event);
    if (!copy)
        return;
    if (ep->count == NOTIFY_QUEUE_MAX) {
        /* Full: the oldest pending event goes. The batch in flight is not in the ring. */
        free(ep->ring[ep->head]);
        ep->ring[ep->head] = NULL;
        ep->head = (ep->head + 1) % NOTIFY_QUEUE_MAX;
        ep->count--;
        if (!ep->dropped)
            log_warn("notifications: queue of endpoint %s is full (%d events): dropping the "
                     "oldest",
                     ep->cfg->name, NOTIFY_QUEUE_MAX);
        else
            ep->dropped_unlogged++;
        ep->dropped++;
    }
    ep->ring[(ep->head + ep->count) % NOTIFY_QUEUE_MAX] = copy;
    ep->count++;
    ep_kick(ep);
}

void notify_emit(struct notify *n, enum notify_action action, const struct notify_target *t,
                 const struct notify_request *rq)
{
    if (!n || !n->neps)
        return;
    char *text = NULL;
    for (size_t i = 0; i < n->neps; i++) {
        struct endpoint *ep = &n->eps[i];
        if (filtered(ep->cfg, action, t->media_type))
            continue;
        if (!text)
            text = event_json(n, action, t, rq);
        if (!text)
            return;
        ep_enqueue(ep, text);
    }
    free(text);
}

size_t notify_queue_depth(const struct notify *n)
{
    size_t depth = 0;
    for (size_t i = 0; n && i < n->neps; i++)
        depth += n->eps[i].count + n->eps[i].batch_n;
    return depth;
}

uint64_t notify_dropped(const struct notify *n)
{
    uint64_t d = 0;
    for (size_t i = 0; n && i < n->neps; i++)
        d += n->eps[i].dropped;
    return d;
}

void notify_each_queue(const struct notify *n,
                       void (*fn)(const struct notify_queue_view *v, void *ctx), void *ctx)
{
    for (size_t i = 0; n && i < n->neps; i++) {
        const struct endpoint *ep = &n->eps[i];
        struct notify_queue_view v = {
            ep->cfg->name, ep->count + ep->batch_n, ep->sent, ep->dropped, ep->failed, ep->down};
        fn(&v, ctx);
    }
}

/* ---- metrics ---- */

static void collect(struct evbuffer *out, void *ctx)
{
    struct notify *n = ctx;
    evbuffer_add_printf(out, "# HELP regmirror_notifications_queue_depth Events queued or in "
                             "flight per notification endpoint.\n"
                             "# TYPE regmirror_notifications_queue_depth gauge\n");
    for (size_t i = 0; i < n->neps; i++) {
        const struct endpoint *ep = &n->eps[i];
        evbuffer_add_printf(out, "regmirror_notifications_queue_depth{endpoint=\"");
        metrics_escape_label(out, ep->cfg->name);
        evbuffer_add_printf(out, "\"} %zu\n", ep->count + ep->batch_n);
    }
    evbuffer_add_printf(out, "# HELP regmirror_notifications_events_total Events per "
                             "notification endpoint: delivered (sent) or dropped from a full "
                             "queue.\n"
                             "# TYPE regmirror_notifications_events_total counter\n");
    for (size_t i = 0; i < n->neps; i++) {
        const struct endpoint *ep = &n->eps[i];
        const char *results[] = {"sent", "dropped"};
        uint64_t values[] = {ep->sent, ep->dropped};
        for (size_t k = 0; k < 2; k++) {
            evbuffer_add_printf(out, "regmirror_notifications_events_total{endpoint=\"");
            metrics_escape_label(out, ep->cfg->name);
            evbuffer_add_printf(out, "\",result=\"%s\"} %" PRIu64 "\n", results[k], values[k]);
        }
    }
    evbuffer_add_printf(out, "# HELP regmirror_notifications_failures_total Failed delivery "
                             "attempts per notification endpoint.\n"
                             "# TYPE regmirror_notifications_failures_total counter\n");
    for (size_t i = 0; i < n->neps; i++) {
        const struct endpoint *ep = &n->eps[i];
        evbuffer_add_printf(out, "regmirror_notifications_failures_total{endpoint=\"");
        metrics_escape_label(out, ep->cfg->name);
        evbuffer_add_printf(out, "\"} %" PRIu64 "\n", ep->failed);
    }
}

/* ---- life cycle ---- */

static char **header_lines(const struct config_endpoint *e)
{
    size_t n = 2;
    for (size_t i = 0; i < e->nheaders; i++)
        n += e->headers[i].nvalues;
    char **lines = calloc(n + 1, sizeof(char *));
    if (!lines)
        return NULL;
    size_t k = 0;
    lines[k++] = strdup("Content-Type: " NOTIFY_MEDIA_TYPE);
    lines[k++] = strdup("User-Agent: regmirror");
    for (size_t i = 0; i < e->nheaders; i++) {
        for (size_t j = 0; j < e->headers[i].nvalues; j++) {
            if (asprintf(&lines[k], "%s: %s", e->headers[i].name, e->headers[i].values[j]) < 0)
                lines[k] = NULL;
            k++;
        }
    }
    for (size_t i = 0; i < k; i++) {
        if (!lines[i]) {
            for (size_t j = 0; j < k; j++)
                free(lines[j]);
            free(lines);
            return NULL;
        }
    }
    return lines;
}

/* registry:2's source.addr: this host's name and the port of http.addr. */
static void source_addr(struct notify *n)
{
    char host[256] = "localhost";
    if (gethostname(host, sizeof(host)) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    const char *addr = n->cfg->http.addr ? n->cfg->http.addr : "";
    const char *colon = strrchr(addr, ':');
    snprintf(n->source_addr, sizeof(n->source_addr), "%s%s", host, colon ? colon : "");
}

struct notify *notify_new(struct event_base *base, const struct config *cfg, struct httpc *hc)
{
    struct notify *n = calloc(1, sizeof(*n));
    if (!n)
        goto oom;
    n->base = base;
    n->cfg = cfg;
    uuid_new(n->instance);
    source_addr(n);
    size_t total = 0;
    for (size_t i = 0; i < cfg->notifications.nendpoints; i++)
        total += !cfg->notifications.endpoints[i].disabled;
    if (!total)
        return n;
    n->eps = calloc(total, sizeof(*n->eps));
    n->httpc = hc;
    if (!n->eps)
        goto oom;
    for (size_t i = 0; i < cfg->notifications.nendpoints; i++) {
        const struct config_endpoint *e = &cfg->notifications.endpoints[i];
        if (e->disabled) {
            log_info("notifications: endpoint %s is disabled", e->name);
            continue;
        }
        struct endpoint *ep = &n->eps[n->neps];
        ep->n = n;
        ep->cfg = e;
        ep->headers = header_lines(e);
        ep->ring = calloc(NOTIFY_QUEUE_MAX, sizeof(char *));
        ep->timer = evtimer_new(base, ep_on_timer, ep);
        n->neps++;
        if (!ep->headers || !ep->ring || !ep->timer)
            goto oom;
        log_info("notifications: endpoint %s (threshold %d, backoff %" PRId64 " ms)", e->name,
                 e->threshold, e->backoff_ms);
    }
    if (metrics_add_collector(collect, n) != 0)
        log_warn("notifications: no room for the metrics collector");
    active = n;
    return n;
oom:
    log_error("notifications: out of memory");
    notify_free(n);
    return NULL;
}

void notify_free(struct notify *n)
{
    if (!n)
        return;
    if (active == n)
        active = NULL;
    metrics_remove_collector(collect, n);
    for (size_t i = 0; i < n->neps; i++) {
        struct endpoint *ep = &n->eps[i];
        if (ep->req)
            httpc_cancel(ep->req); /* no callback follows */
        if (ep->count || ep->batch_n)
            log_warn("notifications: endpoint %s: %zu undelivered events dropped at exit",
                     ep->cfg->name, ep->count + ep->batch_n);
        if (ep->timer)
            event_free(ep->timer);
        for (size_t k = 0; ep->ring && k < ep->count; k++)
            free(ep->ring[(ep->head + k) % NOTIFY_QUEUE_MAX]);
        free(ep->ring);
        ep_batch_free(ep);
        for (size_t k = 0; ep->headers && ep->headers[k]; k++)
            free(ep->headers[k]);
        free(ep->headers);
    }
    free(n->eps);
    free(n);
}

/* ---- API hooks ---- */

static void fill_request(struct http_req *req, struct notify_request *rq)
{
    rq->addr = http_req_remote_addr(req);
    rq->host = http_req_header(req, "Host");
    rq->method = http_req_method_str(req);
    rq->useragent = http_req_header(req, "User-Agent");
}

static void emit_for(const struct api *api, struct http_req *req, enum notify_action action,
                     struct notify_target *t, const char *kind)
{
    char path[API_NAME_MAX + API_REF_MAX + 32], ds[DIGEST_STR_MAX];
    const char *ref = t->digest ? digest_str(t->digest, ds) : t->tag;
    char *url = NULL;
    if (ref) {
        snprintf(path, sizeof(path), "/v2/%s/%s/%s", t->repository, kind, ref);
        url = api_url(api, req, path);
    }
    t->url = url;
    struct notify_request rq;
    fill_request(req, &rq);
    notify_emit(active, action, t, &rq);
    free(url);
}

void notify_blob(const struct api *api, struct http_req *req, enum notify_action action,
                 const char *repo, const struct digest *d, int64_t size, const char *from)
{
    if (!active || !active->neps)
        return;
    if (action == NOTIFY_PULL && http_req_method(req) != HTTP_GET)
        return;
    struct notify_target t = {
        .media_type = action == NOTIFY_DELETE ? NULL : NOTIFY_BLOB_MEDIA_TYPE,
        .digest = d,
        .size = size,
        .repository = repo,
        .from_repository = from,
    };
    emit_for(api, req, action, &t, "blobs");
}

void notify_manifest(const struct api *api, struct http_req *req, enum notify_action action,
                     const char *repo, const char *ref, const struct digest *d,
                     const char *media_type, const char *body, size_t len)
{
    if (!active || !active->neps)
        return;
    if (action == NOTIFY_PULL && http_req_method(req) != HTTP_GET)
        return;
    struct digest parsed;
    bool by_digest = ref && strchr(ref, ':');
    if (!d && by_digest && digest_parse(ref, strlen(ref), &parsed) == 0)
        d = &parsed;
    struct notify_target t = {
        .media_type = media_type,
        .digest = d,
        .size = body ? (int64_t)len : -1,
        .repository = repo,
        .tag = by_digest ? NULL : ref,
    };
    /* A stored or accepted manifest parses; should it not, the event goes without them. */
    struct manifest m = {0};
    if (body && active->cfg->notifications.events_includereferences &&
        manifest_parse(body, len, media_type, &m, NULL, 0) == REG_OK)
        t.references = &m;
    emit_for(api, req, action, &t, "manifests");
    manifest_free(&m);
}
