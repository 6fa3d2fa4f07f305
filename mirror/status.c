#include "status.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "admin.h"
#include "config.h"
#include "digest.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "proxy.h"
#include "ratelimit.h"
#include "upstream.h"

/* The chart: the last hour, one point a minute. */
#define SERIES_STEP_S 60
#define SERIES_POINTS (METRICS_HISTORY_SPAN_S / SERIES_STEP_S)

/*
 * The page's source, assembled in as it is: status_page_html, status_page_size bytes (the
 * Makefile makes this object depend on the file; the assembler reads it from the tree).
 */
__asm__(".pushsection .rodata\n"
        ".global status_page_html\n"
        ".hidden status_page_html\n"
        "status_page_html:\n"
        ".incbin \"mirror/status_page.html\"\n"
        "1:\n"
        ".balign 8\n"
        ".global status_page_size\n"
        ".hidden status_page_size\n"
        "status_page_size:\n"
        ".quad 1b - status_page_html\n"
        ".popsection\n");
extern const char status_page_html[];
extern const uint64_t status_page_size;

struct status {
    const char *version;
    const struct config *cfg;
    const struct proxy *px;
    const struct notify *nt;
    struct admin *admin; /* NULL: no admin (no debug listener) */
    struct event *timer;
    time_t started;
    int64_t started_ms;
};

static int64_t mono_ms_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    metrics_history_tick(mono_ms_now() / 1000);
}

struct status *status_new(struct event_base *base, const char *version, const struct config *cfg,
                          const struct proxy *px, const struct notify *nt)
{
    struct status *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->version = version;
    s->cfg = cfg;
    s->px = px;
    s->nt = nt;
    s->started = time(NULL);
    s->started_ms = mono_ms_now();
    s->timer = event_new(base, -1, EV_PERSIST, on_tick, s);
    struct timeval every = {METRICS_HISTORY_STEP_S, 0};
    if (!s->timer || event_add(s->timer, &every) != 0) {
        status_free(s);
        return NULL;
    }
    metrics_history_tick(s->started_ms / 1000);
    return s;
}

void status_free(struct status *s)
{
    if (!s)
        return;
    if (s->timer)
        event_free(s->timer);
    free(s);
}

/* ---- the figures ---- */

/* json_object_set_new that forgets a NULL value (out of memory: the key is left out). */
static void put(json_t *o, const char *key, json_t *v)
{
    if (v)
        json_object_set_new(o, key, v);
}

static json_t *count(uint64_t v)
{
    return json_integer(v > (uint64_t)INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static uint64_t counter(enum metrics_counter c)
{
    return __atomic_load_n(&metrics_counters[c], __ATOMIC_RELAXED);
}

/* part / whole, or null before there is a whole. */
static json_t *ratio(uint64_t part, uint64_t whole)
{
    return whole ? json_real((double)part / (double)whole) : json_null();
}

static json_t *wall_time(time_t t)
{
    if (t <= 0)
        return json_null();
    struct tm tm;
    char out[32];
    if (!gmtime_r(&t, &tm) || !strftime(out, sizeof(out), "%Y-%m-%dT%H:%M:%SZ", &tm))
        return json_null();
    return json_string(out);
}

static json_t *traffic_json(const struct metrics_traffic *t)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    uint64_t hits = t->blob_hits + t->manifest_hits;
    uint64_t lookups = hits + t->blob_misses + t->manifest_misses;
    put(o, "requests", count(t->requests));
    put(o, "blob_hits", count(t->blob_hits));
    put(o, "blob_misses", count(t->blob_misses));
    put(o, "manifest_hits", count(t->manifest_hits));
    put(o, "manifest_misses", count(t->manifest_misses));
    put(o, "hit_ratio", ratio(hits, lookups));
    put(o, "blob_hit_ratio", ratio(t->blob_hits, t->blob_hits + t->blob_misses));
    put(o, "manifest_hit_ratio", ratio(t->manifest_hits, t->manifest_hits + t->manifest_misses));
    put(o, "bytes_cache", count(t->bytes_cache));
    put(o, "bytes_upstream", count(t->bytes_upstream));
    /* Bytes served from the store are bytes the upstream did not have to send. */
    put(o, "saved_bytes", count(t->bytes_cache));
    put(o, "saved_ratio", ratio(t->bytes_cache, t->bytes_cache + t->bytes_upstream));
    return o;
}

static json_t *traffic_windows(int64_t mono_s)
{
    json_t *o = json_object();
    struct metrics_traffic t;
    if (!o)
        return NULL;
    metrics_history_window(mono_s, 60, &t);
    put(o, "minute", traffic_json(&t));
    metrics_history_window(mono_s, 3600, &t);
    put(o, "hour", traffic_json(&t));
    metrics_traffic_now(&t);
    put(o, "total", traffic_json(&t));
    return o;
}

static json_t *history_json(int64_t mono_s)
{
    struct metrics_traffic points[SERIES_POINTS];
    json_t *o = json_object();
    json_t *hits = json_array(), *misses = json_array(), *cache = json_array(),
           *upstream = json_array();
    if (!o || !hits || !misses || !cache || !upstream) {
        json_decref(o);
        json_decref(hits);
        json_decref(misses);
        json_decref(cache);
        json_decref(upstream);
        return NULL;
    }
    metrics_history_series(mono_s, SERIES_STEP_S, points, SERIES_POINTS);
    for (size_t i = 0; i < SERIES_POINTS; i++) {
        const struct metrics_traffic *p = &points[i];
        json_array_append_new(hits, count(p->blob_hits + p->manifest_hits));
        json_array_append_new(misses, count(p->blob_misses + p->manifest_misses));
        json_array_append_new(cache, count(p->bytes_cache));
        json_array_append_new(upstream, count(p->bytes_upstream));
    }
    put(o, "step_s", json_integer(SERIES_STEP_S));
    put(o, "hits", hits);
    put(o, "misses", misses);
    put(o, "bytes_cache", cache);
    put(o, "bytes_upstream", upstream);
    return o;
}

static json_t *budget_json(const struct config *cfg, const struct ratelimit *rl, int64_t mono_ms)
{
    if (!rl->known && !rl->blocked_until_ms)
        return json_null();
    json_t *o = json_object();
    if (!o)
        return NULL;
    const struct config_amount *reserve = &cfg->proxy.ratelimitreserve;
    enum ratelimit_hold hold = ratelimit_hold(rl, reserve->value, reserve->percent, mono_ms);
    put(o, "limit", rl->known ? json_integer(rl->limit) : json_null());
    put(o, "remaining", rl->known ? json_integer(rl->remaining) : json_null());
    put(o, "window_s", rl->window_s ? json_integer(rl->window_s) : json_null());
    put(o, "source", rl->source[0] ? json_string(rl->source) : json_null());
    put(o, "seen", rl->known ? wall_time(rl->seen) : json_null());
    put(o, "reserve", json_integer(reserve->value));
    put(o, "reserve_percent", json_boolean(reserve->percent));
    put(o, "hold", json_string(ratelimit_hold_name(hold)));
    put(o, "blocked_for_s",
        rl->blocked_until_ms > mono_ms ? json_integer((rl->blocked_until_ms - mono_ms + 999) / 1000)
                                       : json_integer(0));
    return o;
}

static const char *upstream_health(const struct upstream_stats *st, enum ratelimit_hold hold)
{
    if (hold == RATELIMIT_BLOCKED)
        return "rate-limited";
    if (st->failing)
        return "failing";
    return st->last_answer ? "ok" : "unknown";
}

static json_t *upstream_json(const struct config *cfg, const struct upstream *up, const char *host,
                             int64_t mono_ms)
{
    const struct upstream_stats *st = upstream_stats(up);
    const struct ratelimit *rl = upstream_ratelimit(up);
    const struct config_amount *reserve = &cfg->proxy.ratelimitreserve;
    json_t *o = json_object();
    if (!o)
        return NULL;
    put(o, "name", json_string(host));
    put(o, "origin", json_string(upstream_origin(up)));
    put(o, "health",
        json_string(
            upstream_health(st, ratelimit_hold(rl, reserve->value, reserve->percent, mono_ms))));
    put(o, "last_answer", wall_time(st->last_answer));
    put(o, "last_error", st->last_message[0] ? json_string(st->last_message) : json_null());
    put(o, "last_error_at", wall_time(st->last_error));
    put(o, "requests", count(st->requests));
    put(o, "failures", count(st->failures));
    put(o, "token_fetches", count(st->token_fetches));
    put(o, "rate_limited", count(st->rate_limited));
    put(o, "budget", budget_json(cfg, rl, mono_ms));
    return o;
}

static json_t *upstreams_json(const struct status *s, int64_t mono_ms)
{
    json_t *a = json_array();
    const char *host;
    const struct upstream *up;
    for (size_t i = 0; a && s->px && (up = proxy_upstream(s->px, i, &host)); i++) {
        json_t *o = upstream_json(s->cfg, up, host, mono_ms);
        if (o)
            json_array_append_new(a, o);
    }
    return a;
}

static void add_fetch(const struct proxy_fetch_view *v, void *ctx)
{
    json_t *o = json_object();
    char ds[DIGEST_STR_MAX];
    if (!o)
        return;
    put(o, "digest", json_string(digest_str(v->digest, ds)));
    put(o, "repository", json_string(v->repository));
    put(o, "upstream", json_string(v->upstream));
    put(o, "state", json_string(v->state));
    put(o, "bytes", count(v->bytes));
    put(o, "size", json_integer(v->size));
    put(o, "clients", count(v->clients));
    put(o, "from_peer", json_boolean(v->from_peer));
    json_array_append_new(ctx, o);
}

static json_t *storage_json(const struct status *s)
{
    const struct config *cfg = s->cfg;
    json_t *o = json_object();
    if (!o)
        return NULL;
    /* The proxied bytes are counted by eviction passes, which run when proxying with a
     * proxy.ttl or proxy.maxsize. */
    bool measured = s->px && (cfg->proxy.ttl_ms > 0 || cfg->proxy.maxsize > 0);
    uint64_t stored = counter(METRICS_GAUGE_PROXIED_BYTES);
    put(o, "driver", json_string(cfg->storage.driver_name ? cfg->storage.driver_name : ""));
    put(o, "stored_bytes", measured ? count(stored) : json_null());
    put(o, "maxsize", cfg->proxy.maxsize > 0 ? json_integer(cfg->proxy.maxsize) : json_null());
    put(o, "used_ratio",
        measured && cfg->proxy.maxsize > 0 ? json_real((double)stored / (double)cfg->proxy.maxsize)
                                           : json_null());
    put(o, "evictions", count(counter(METRICS_EVICTED_ITEMS)));
    put(o, "evicted_bytes", count(counter(METRICS_EVICTED_BYTES)));
    return o;
}

static json_t *top_json(void)
{
    struct metrics_repo_pulls top[STATUS_TOP_REPOS];
    size_t n = metrics_top_pulls(top, STATUS_TOP_REPOS);
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++) {
        json_t *o = json_object();
        if (!o)
            break;
        put(o, "name", json_string(top[i].name));
        put(o, "pulls", count(top[i].pulls));
        json_array_append_new(a, o);
    }
    return a;
}

static void add_queue(const struct notify_queue_view *v, void *ctx)
{
    json_t *o = json_object();
    if (!o)
        return;
    put(o, "endpoint", json_string(v->name));
    put(o, "pending", count(v->pending));
    put(o, "sent", count(v->sent));
    put(o, "dropped", count(v->dropped));
    put(o, "failed", count(v->failed));
    put(o, "down", json_boolean(v->down));
    json_array_append_new(ctx, o);
}

void status_set_admin(struct status *s, struct admin *adm)
{
    s->admin = adm;
}

/* A warm or verify run of the cache admin: what it did so far, or null before any. */
static json_t *progress_json(const struct admin_progress *p)
{
    if (!p->started)
        return json_null();
    json_t *o = json_object();
    if (!o)
        return NULL;
    put(o, "running", json_boolean(p->running));
    put(o, "started", wall_time(p->started));
    put(o, "finished", p->finished ? wall_time(p->finished) : json_null());
    put(o, "done", count(p->done));
    put(o, "total", count(p->total));
    put(o, "bytes", count(p->bytes));
    put(o, "errors", count(p->errors));
    if (p->current[0])
        put(o, "current", json_string(p->current));
    return o;
}

json_t *status_json(struct status *s, time_t now, int64_t mono_ms)
{
    int64_t mono_s = mono_ms / 1000;
    metrics_history_tick(mono_s);
    json_t *o = json_object();
    json_t *fetches = json_array(), *queues = json_array();
    if (!o || !fetches || !queues) {
        json_decref(o);
        json_decref(fetches);
        json_decref(queues);
        return NULL;
    }
    if (s->px)
        proxy_each_fetch(s->px, add_fetch, fetches);
    notify_each_queue(s->nt, add_queue, queues);
    put(o, "version", json_string(s->version));
    put(o, "now", wall_time(now));
    put(o, "started", wall_time(s->started));
    put(o, "uptime_s", json_integer((mono_ms - s->started_ms) / 1000));
    put(o, "proxy", json_boolean(s->px != NULL));
    put(o, "traffic", traffic_windows(mono_s));
    put(o, "history", history_json(mono_s));
    put(o, "upstreams", upstreams_json(s, mono_ms));
    put(o, "inflight", fetches);
    put(o, "storage", storage_json(s));
    put(o, "top_repositories", top_json());
    put(o, "notifications", queues);
    if (s->admin) {
        struct admin_progress warm, verify;
        admin_warm_progress(s->admin, &warm);
        admin_verify_progress(s->admin, &verify);
        put(o, "warm", progress_json(&warm));
        put(o, "verify", progress_json(&verify));
    }
    return o;
}

/* ---- answers ---- */

static void answer(struct http_req *req, const char *type, const char *body, size_t len)
{
    http_resp_start(req, 200);
    http_resp_header(req, "Content-Type", type);
    http_resp_header(req, "Cache-Control", "no-store");
    http_resp_header(req, "X-Content-Type-Options", "nosniff");
    /* The page loads nothing from elsewhere, and the browser is told to hold it to that. */
    http_resp_header(req, "Content-Security-Policy",
                     "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                     "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                     "form-action 'none'; frame-ancestors 'none'");
    if (http_req_method(req) == HTTP_HEAD)
        http_resp_no_body(req, (int64_t)len);
    else
        http_resp_body_mem(req, body, len);
}

void status_serve_json(struct status *s, struct http_req *req)
{
    json_t *o = status_json(s, time(NULL), mono_ms_now());
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        log_error("status: out of memory");
        http_resp_start(req, 500);
        http_resp_no_body(req, -1);
        return;
    }
    answer(req, "application/json; charset=utf-8", text, strlen(text));
    free(text);
}

void status_serve_page(struct http_req *req)
{
    answer(req, "text/html; charset=utf-8", status_page_html, (size_t)status_page_size);
}
