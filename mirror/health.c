#include "health.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "http.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "offload.h"
#include "storage.h"

enum check_kind { CHECK_STORAGE, CHECK_FILE, CHECK_HTTP, CHECK_TCP, CHECK_UPSTREAM };

struct check {
    struct health *h;
    enum check_kind kind;
    char *key;    /* the name in /debug/health */
    char *target; /* file path, URL or host:port */
    const struct config_header *headers;
    size_t nheaders;
    int statuscode;
    int64_t interval_ms, timeout_ms;
    int threshold;
    bool fatal; /* counts for the mirror's health */

    int failures;  /* runs in a row that failed */
    bool failing;  /* failures reached the threshold */
    char err[256]; /* the last failure, shown while failing */
    struct event *timer;
    bool running;
    /* http and upstream probes */
    struct httpc_req *req;
    long status;
    /* tcp probes */
    struct bufferevent *bev;
    /* storage probes */
    struct probe *probe;
};

/* A storage probe on a worker: it outlives its check when health_free comes first. */
struct probe {
    struct check *c; /* NULL once the check is gone */
    struct storage *st;
    bool failed;
    char err[128];
};

struct health {
    struct event_base *base;
    const struct config *cfg;
    struct storage *st;
    struct httpc *httpc;
    struct offload *ol;
    struct evdns_base *dns;
    struct check *checks;
    size_t nchecks;
};

/* ---- outcomes ---- */

static void check_schedule(struct check *c, int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

/* Records one run's result (err NULL: passed) and schedules the next run. */
static void check_done(struct check *c, const char *err)
{
    c->running = false;
    if (!err) {
        if (c->failing)
            log_info("health: %s passes again", c->key);
        c->failures = 0;
        c->failing = false;
        c->err[0] = '\0';
    } else {
        c->failures++;
        snprintf(c->err, sizeof(c->err), "%s", err);
        int threshold = c->threshold > 1 ? c->threshold : 1;
        if (!c->failing && c->failures >= threshold) {
            c->failing = true;
            if (c->fatal)
                log_warn("health: %s fails: %s", c->key, err);
            else
                log_warn("health: %s fails: %s (the cache is still served)", c->key, err);
        }
    }
    check_schedule(c, c->interval_ms);
}

/* ---- the probes ---- */

/* On a worker (the driver may be remote): stat and list the root. */
static void storage_work(void *arg)
{
    struct probe *p = arg;
    struct storage_stat s;
    struct storage_list l = {0};
    enum regerr result = storage_stat(p->st, "/", &s);
    p->failed = true;
    if (result == REG_ERR_NOT_FOUND) {
        snprintf(p->err, sizeof(p->err), "storage root is missing or not a directory");
        return;
    }
    if (result != REG_OK) {
        snprintf(p->err, sizeof(p->err), "stat of the storage root failed: %s",
                 regerr_code(result));
        return;
    }
    if (!s.is_dir) {
        snprintf(p->err, sizeof(p->err), "storage root is not a directory");
        return;
    }
    result = storage_list(p->st, "/", &l);
    storage_list_free(&l);
    if (result != REG_OK) {
        snprintf(p->err, sizeof(p->err), "listing the storage root failed: %s",
                 regerr_code(result));
        return;
    }
    p->failed = false;
}

static void storage_done(void *arg, bool cancelled)
{
    struct probe *p = arg;
    struct check *c = p->c;
    if (c) {
        c->probe = NULL;
        if (cancelled)
            c->running = false; /* shutting down: no next run */
        else
            check_done(c, p->failed ? p->err : NULL);
    }
    free(p);
}

static void run_storage(struct check *c)
{
    struct probe *p = calloc(1, sizeof(*p));
    if (!p) {
        check_done(c, "out of memory");
        return;
    }
    p->c = c;
    p->st = c->h->st;
    c->probe = p;
    offload_run(c->h->ol, storage_work, storage_done, p);
}

static void run_file(struct check *c)
{
    struct stat s;
    check_done(c, stat(c->target, &s) == 0 ? "file exists" : NULL);
}

static int http_on_headers(struct httpc_req *r, void *ctx, long status,
                           const struct httpc_headers *hd)
{
    struct check *c = ctx;
    c->status = status;
    return 0;
}

static void http_on_done(struct httpc_req *r, void *ctx, enum httpc_result res, const char *msg)
{
    struct check *c = ctx;
    char err[200];
    c->req = NULL;
    if (res != HTTPC_OK) {
        snprintf(err, sizeof(err), "%s: %s", httpc_result_name(res), msg);
        check_done(c, err);
        return;
    }
    if (c->kind == CHECK_UPSTREAM) {
        if (c->status >= 500) {
            snprintf(err, sizeof(err), "upstream answered %ld", c->status);
            check_done(c, err);
        } else {
            check_done(c, NULL);
        }
        return;
    }
    if (c->status != c->statuscode) {
        snprintf(err, sizeof(err), "downstream service returned unexpected status: %ld", c->status);
        check_done(c, err);
        return;
    }
    check_done(c, NULL);
}

static const struct httpc_callbacks probe_callbacks = {http_on_headers, NULL, http_on_done};

static void run_http(struct check *c)
{
    char *lines[65] = {NULL};
    size_t k = 0;
    for (size_t i = 0; i < c->nheaders; i++) {
        for (size_t j = 0; j < c->headers[i].nvalues && k < 64; j++) {
            if (asprintf(&lines[k], "%s: %s", c->headers[i].name, c->headers[i].values[j]) >= 0)
                k++;
        }
    }
    char *url = NULL;
    if (c->kind == CHECK_UPSTREAM) {
        size_t n = strlen(c->target);
        while (n > 0 && c->target[n - 1] == '/')
            n--;
        if (asprintf(&url, "%.*s/v2/", (int)n, c->target) < 0)
            url = NULL;
    }
    struct httpc_req_opts o = {
        .method = c->kind == CHECK_UPSTREAM ? "GET" : "HEAD",
        .url = url ? url : c->target,
        .headers = (const char *const *)lines,
        .timeout_ms = c->timeout_ms,
        .connect_timeout_ms = c->timeout_ms,
    };
    c->status = 0;
    c->req = httpc_start(c->h->httpc, &o, &probe_callbacks, c);
    for (size_t i = 0; i < k; i++)
        free(lines[i]);
    free(url);
    if (!c->req)
        check_done(c, "cannot start the request");
}

static void tcp_on_event(struct bufferevent *bev, short what, void *ctx)
{
    struct check *c = ctx;
    char err[200];
    bufferevent_free(c->bev);
    c->bev = NULL;
    if (what & BEV_EVENT_CONNECTED) {
        check_done(c, NULL);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        snprintf(err, sizeof(err), "connection to %s timed out", c->target);
    else
        snprintf(err, sizeof(err), "connection to %s failed", c->target);
    check_done(c, err);
}

static void run_tcp(struct check *c)
{
    char host[256];
    const char *colon = strrchr(c->target, ':');
    if (!colon) {
        check_done(c, "bad address");
        return;
    }
    const char *h = c->target;
    size_t hl = (size_t)(colon - h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0) {
        h = "localhost";
        hl = strlen(h);
    }
    if (hl >= sizeof(host)) {
        check_done(c, "bad address");
        return;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    int port = atoi(colon + 1);
    if (!c->h->dns)
        c->h->dns = evdns_base_new(c->h->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    c->bev =
        bufferevent_socket_new(c->h->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (!c->bev) {
        check_done(c, "out of memory");
        return;
    }
    struct timeval tv = {(time_t)(c->timeout_ms / 1000),
                         (suseconds_t)(c->timeout_ms % 1000) * 1000};
    bufferevent_set_timeouts(c->bev, NULL, &tv);
    bufferevent_setcb(c->bev, NULL, NULL, tcp_on_event, c);
    bufferevent_enable(c->bev, EV_WRITE);
    if (bufferevent_socket_connect_hostname(c->bev, c->h->dns, AF_UNSPEC, host, port) != 0) {
        /* Callbacks are deferred, so none ran: freeing cancels a pending one. */
        bufferevent_free(c->bev);
        c->bev = NULL;
        char err[300];
        snprintf(err, sizeof(err), "connection to %s failed", c->target);
        check_done(c, err);
    }
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    struct check *c = arg;
    c->running = true;
    switch (c->kind) {
    case CHECK_STORAGE:
        run_storage(c);
        break;
    case CHECK_FILE:
        run_file(c);
        break;
    case CHECK_HTTP:
    case CHECK_UPSTREAM:
        run_http(c);
        break;
    case CHECK_TCP:
        run_tcp(c);
        break;
    }
}

/* ---- reporting ---- */

bool health_ok(const struct health *h)
{
    for (size_t i = 0; h && i < h->nchecks; i++) {
        if (h->checks[i].fatal && h->checks[i].failing)
            return false;
    }
    return true;
}

void health_serve_debug(const struct health *h, struct http_req *req)
{
    json_t *o = json_object();
    for (size_t i = 0; o && h && i < h->nchecks; i++) {
        const struct check *c = &h->checks[i];
        if (c->failing)
            json_object_set_new(o, c->key, json_string(c->err));
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    http_resp_start(req, health_ok(h) ? 200 : 503);
    http_resp_header(req, "Content-Type", "application/json; charset=utf-8");
    const char *body = text ? text : "{}";
    if (http_req_method(req) == HTTP_HEAD)
        http_resp_no_body(req, (int64_t)strlen(body));
    else
        http_resp_body_mem(req, body, strlen(body));
    free(text);
}

void health_serve_healthz(const struct health *h, struct http_req *req)
{
    struct evbuffer *out = evbuffer_new();
    bool ok = health_ok(h);
    if (out) {
        evbuffer_add_printf(out, "%s\n", ok ? "ok" : "unhealthy");
        for (size_t i = 0; h && i < h->nchecks; i++) {
            const struct check *c = &h->checks[i];
            if (c->failing)
                evbuffer_add_printf(out, "%s: %s%s\n", c->key, c->err,
                                    c->fatal ? "" : " (not counted: the cache is served)");
        }
    }
    size_t len = out ? evbuffer_get_length(out) : 0;
    const unsigned char *body = out ? evbuffer_pullup(out, -1) : NULL;
    http_resp_start(req, ok ? 200 : 503);
    http_resp_header(req, "Content-Type", "text/plain; charset=utf-8");
    http_resp_header(req, "Cache-Control", "no-store");
    if (http_req_method(req) == HTTP_HEAD || !body)
        http_resp_no_body(req, (int64_t)len);
    else
        http_resp_body_mem(req, body, len);
    if (out)
        evbuffer_free(out);
}

static void collect(struct evbuffer *out, void *ctx)
{
    const struct health *h = ctx;
    evbuffer_add_printf(out, "# HELP regmirror_health_check_up 1 while a health check passes "
                             "(counts=\"false\": reported only, e.g. the upstream).\n"
                             "# TYPE regmirror_health_check_up gauge\n");
    for (size_t i = 0; i < h->nchecks; i++) {
        const struct check *c = &h->checks[i];
        evbuffer_add_printf(out, "regmirror_health_check_up{check=\"");
        metrics_escape_label(out, c->key);
        evbuffer_add_printf(out, "\",counts=\"%s\"} %d\n", c->fatal ? "true" : "false",
                            c->failing ? 0 : 1);
    }
    evbuffer_add_printf(out,
                        "# HELP regmirror_healthy 1 while no counted health check fails.\n"
                        "# TYPE regmirror_healthy gauge\nregmirror_healthy %d\n",
                        health_ok(h) ? 1 : 0);
}

/* ---- life cycle ---- */

static struct check *add_check(struct health *h, enum check_kind kind, const char *key_prefix,
                               const char *target, int64_t interval_ms, int threshold)
{
    struct check *c = &h->checks[h->nchecks];
    c->h = h;
    c->kind = kind;
    c->fatal = kind != CHECK_UPSTREAM;
    c->interval_ms = interval_ms > 0 ? interval_ms : 10000;
    c->timeout_ms = HEALTH_DEFAULT_TIMEOUT_MS;
    c->threshold = threshold;
    c->target = strdup(target);
    if (asprintf(&c->key, "%s%s", key_prefix, target) < 0)
        c->key = NULL;
    c->timer = evtimer_new(h->base, on_timer, c);
    h->nchecks++;
    if (!c->target || !c->key || !c->timer)
        return NULL;
    return c;
}

struct health *health_new(struct event_base *base, const struct config *cfg, struct storage *st,
                          struct httpc *client, struct offload *ol)
{
    struct health *h = calloc(1, sizeof(*h));
    if (!h)
        goto oom;
    h->base = base;
    h->cfg = cfg;
    h->st = st;
    h->ol = ol;
    size_t n = cfg->health.nfile + cfg->health.nhttp + cfg->health.ntcp + 2 + cfg->proxy.nremotes;
    h->checks = calloc(n, sizeof(*h->checks));
    h->httpc = client;
    if (!h->checks)
        goto oom;
    struct check *c;
    if (cfg->health.storagedriver.enabled && st) {
        c = add_check(h, CHECK_STORAGE, "storagedriver_", st->ops->name,
                      cfg->health.storagedriver.interval_ms, cfg->health.storagedriver.threshold);
        if (!c)
            goto oom;
    }
    for (size_t i = 0; i < cfg->health.nfile; i++) {
        const struct config_file_check *f = &cfg->health.file[i];
        if (!add_check(h, CHECK_FILE, "", f->file, f->interval_ms, f->threshold))
            goto oom;
    }
    for (size_t i = 0; i < cfg->health.nhttp; i++) {
        const struct config_http_check *hc = &cfg->health.http[i];
        c = add_check(h, CHECK_HTTP, "", hc->uri, hc->interval_ms, hc->threshold);
        if (!c)
            goto oom;
        c->headers = hc->headers;
        c->nheaders = hc->nheaders;
        c->statuscode = hc->statuscode ? hc->statuscode : 200;
        if (hc->timeout_ms > 0)
            c->timeout_ms = hc->timeout_ms;
    }
    for (size_t i = 0; i < cfg->health.ntcp; i++) {
        const struct config_tcp_check *tc = &cfg->health.tcp[i];
        c = add_check(h, CHECK_TCP, "", tc->addr, tc->interval_ms, tc->threshold);
        if (!c)
            goto oom;
        if (tc->timeout_ms > 0)
            c->timeout_ms = tc->timeout_ms;
    }
    if (cfg->proxy.remoteurl && cfg->proxy.remoteurl[0]) {
        if (!add_check(h, CHECK_UPSTREAM, "upstream_", cfg->proxy.remoteurl,
                       HEALTH_UPSTREAM_INTERVAL_MS, 1))
            goto oom;
        for (size_t i = 0; i < cfg->proxy.nremotes; i++) {
            if (!add_check(h, CHECK_UPSTREAM, "upstream_", cfg->proxy.remotes[i].remoteurl,
                           HEALTH_UPSTREAM_INTERVAL_MS, 1))
                goto oom;
        }
    }
    for (size_t i = 0; i < h->nchecks; i++)
        check_schedule(&h->checks[i], 0);
    if (metrics_add_collector(collect, h) != 0)
        log_warn("health: no room for the metrics collector");
    return h;
oom:
    log_error("health: out of memory");
    health_free(h);
    return NULL;
}

void health_free(struct health *h)
{
    if (!h)
        return;
    metrics_remove_collector(collect, h);
    for (size_t i = 0; i < h->nchecks; i++) {
        struct check *c = &h->checks[i];
        if (c->req)
            httpc_cancel(c->req); /* no callback follows */
        if (c->bev)
            bufferevent_free(c->bev);
        if (c->probe)
            c->probe->c = NULL; /* the probe's done frees it */
        if (c->timer)
            event_free(c->timer);
        free(c->key);
        free(c->target);
    }
    if (h->dns)
        evdns_base_free(h->dns, 0);
    free(h->checks);
    free(h);
}
