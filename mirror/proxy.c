/* The proxy's decision (which upstream, the local name), the fetch cap, pull records and
 * the life cycle; manifests are in proxy_manifest.c, blobs in proxy_blob.c. */
#include "proxy_int.h"

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "offload.h"
#include "reference.h"
#include "spools.h"

#define DEFAULT_HOST "docker.io"
/* After the last fetch of a burst ends, freed memory goes back to the system this much later
 * (glibc keeps freed heap pages otherwise). */
#define TRIM_AFTER_MS 1000

/* ---- helpers ---- */

enum regerr proxy_outcome_error(const struct upstream_outcome *o, bool blob)
{
    switch (o->result) {
    case UPSTREAM_OK:
        return REG_OK;
    case UPSTREAM_NOT_FOUND:
    case UPSTREAM_UNAUTHORIZED: /* Docker Hub answers 401 for repositories that do not exist */
        return blob ? REG_ERR_BLOB_UNKNOWN : REG_ERR_MANIFEST_UNKNOWN;
    case UPSTREAM_TOOMANYREQUESTS:
        return REG_ERR_TOOMANYREQUESTS;
    default:
        return REG_ERR_UNAVAILABLE;
    }
}

void proxy_client_error(struct client *c, enum regerr e, long retry_after, const char *detail)
{
    http_req_on_abort(c->req, NULL, NULL);
    api_error_retry(c->api, c->req, e, retry_after, detail);
}

/* fd passes to api_blob_serve. */
void proxy_client_serve_looked_up(struct client *c, const struct digest *resolved,
                                  int64_t linked_size, int fd)
{
    http_req_on_abort(c->req, NULL, NULL);
    if (c->manifest)
        api_manifest_serve(c->api, c->req, &c->rt, resolved);
    else
        api_blob_serve(c->api, c->req, &c->rt, linked_size, fd);
}

void proxy_client_serve(struct client *c)
{
    proxy_client_serve_looked_up(c, NULL, -1, -1);
}

static void tags_forget(struct proxy *px)
{
    __atomic_fetch_add(&px->tag_epoch, 1, __ATOMIC_RELEASE);
}

void proxy_tags_changed(struct proxy *px)
{
    if (!px)
        return;
    tags_forget(px);
    cluster_announce_tags(px->cluster);
}

static uint64_t pulled_key(const char *name, const struct digest *d)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const char *c = name; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    for (const char *c = d->hex; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h | 1;
}

bool proxy_pulled_due(struct proxy *px, const char *name, const struct digest *d, bool create)
{
    uint64_t key = pulled_key(name, d);
    time_t now = time(NULL);
    size_t slot = key % PULLED_SLOTS;
    if (!create && px->pulled[slot].key == key && now - px->pulled[slot].at < PULLED_EVERY_S)
        return false;
    px->pulled[slot].key = key;
    px->pulled[slot].at = now;
    return true;
}

struct pulled_job {
    struct registry *reg;
    struct digest d;
    bool create;
    char name[API_NAME_MAX];
};

static void pulled_work(void *arg)
{
    struct pulled_job *j = arg;
    registry_proxy_pulled(j->reg, j->name, &j->d, j->create);
}

static void pulled_done(void *arg, bool cancelled)
{
    free(arg);
}

void proxy_note_pulled(struct proxy *px, const char *name, const struct digest *d, bool create)
{
    if (!proxy_pulled_due(px, name, d, create))
        return;
    if (offload_inline(px->offload)) {
        registry_proxy_pulled(px->reg, name, d, create);
        return;
    }
    struct pulled_job *j = malloc(sizeof(*j));
    if (!j)
        return; /* a record lost to memory only lets the content expire earlier */
    j->reg = px->reg;
    j->d = *d;
    j->create = create;
    snprintf(j->name, sizeof(j->name), "%s", name);
    offload_run(px->offload, pulled_work, pulled_done, j);
}

struct registry *proxy_spool_reg(const struct proxy *px)
{
    return px->spool ? px->spool : px->reg;
}

static void proxy_release(struct proxy *px)
{
    if (px->wait_timer)
        event_free(px->wait_timer);
    if (px->trim_timer)
        event_free(px->trim_timer);
    registry_free(px->spool);
    storage_free(px->spool_st);
    free(px->tagmemo);
    if (px->spool_lock >= 0)
        close(px->spool_lock);
    spools_close(px->spools);
    free(px);
}

void proxy_ref(struct proxy *px)
{
    px->refs++;
}

void proxy_unref(struct proxy *px)
{
    if (--px->refs == 0)
        proxy_release(px);
}

/* ---- the fetch cap (proxy.maxfetches) ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void arm_ms(struct event *ev, int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(ev, &tv);
}

static void slot_unqueue(struct proxy *px, struct slot *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        px->wait_head = s->next;
    if (s->next)
        s->next->prev = s->prev;
    else
        px->wait_tail = s->prev;
    s->prev = s->next = NULL;
    s->queued = false;
    metrics_dec(METRICS_GAUGE_FETCH_QUEUE);
}

/* Grants free slots to the queue in order. A go that ends its exchange at once releases
 * its slot again; the loop here hands it on (no recursion). */
static void slot_grant(struct proxy *px)
{
    if (px->granting || px->closing)
        return;
    px->granting = true;
    while (px->wait_head && px->active < (unsigned)px->cfg->proxy.maxfetches) {
        struct slot *s = px->wait_head;
        slot_unqueue(px, s);
        s->held = true;
        px->active++;
        metrics_inc(METRICS_GAUGE_FETCHES_ACTIVE);
        s->go(s);
    }
    px->granting = false;
    if (!px->wait_head)
        evtimer_del(px->wait_timer);
    else
        arm_ms(px->wait_timer, px->wait_head->deadline_ms > now_ms()
                                   ? px->wait_head->deadline_ms - now_ms() + 1
                                   : 0);
    if (px->active == 0 && !px->wait_head && !evtimer_pending(px->trim_timer, NULL))
        arm_ms(px->trim_timer, TRIM_AFTER_MS);
}

void proxy_slot_acquire(struct proxy *px, struct slot *s, void (*go)(struct slot *),
                        void (*expire)(struct slot *))
{
    s->go = go;
    s->expire = expire;
    if (!px->wait_head && px->active < (unsigned)px->cfg->proxy.maxfetches) {
        s->held = true;
        px->active++;
        metrics_inc(METRICS_GAUGE_FETCHES_ACTIVE);
        go(s);
        return;
    }
    s->deadline_ms = now_ms() + px->cfg->proxy.fetchqueuetimeout_ms;
    s->queued = true;
    s->next = NULL;
    s->prev = px->wait_tail;
    if (px->wait_tail)
        px->wait_tail->next = s;
    else
        px->wait_head = s;
    px->wait_tail = s;
    metrics_inc(METRICS_GAUGE_FETCH_QUEUE);
    metrics_inc(METRICS_FETCHES_QUEUED);
    if (px->wait_head == s)
        arm_ms(px->wait_timer, px->cfg->proxy.fetchqueuetimeout_ms + 1);
}

/* A no-op for a slot neither held nor queued. */
void proxy_slot_release(struct proxy *px, struct slot *s)
{
    if (s->queued) {
        slot_unqueue(px, s);
    } else if (s->held) {
        s->held = false;
        px->active--;
        metrics_dec(METRICS_GAUGE_FETCHES_ACTIVE);
    } else {
        return;
    }
    slot_grant(px);
}

/* The head of the queue waited proxy.fetchqueuetimeout: expire every waiter that did. */
static void wait_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *px = arg;
    int64_t now = now_ms();
    while (px->wait_head && px->wait_head->deadline_ms <= now) {
        struct slot *s = px->wait_head;
        slot_unqueue(px, s);
        metrics_inc(METRICS_FETCH_QUEUE_TIMEOUTS);
        s->expire(s);
    }
    slot_grant(px);
}

/* A burst is over: hand the pages freed by its buffers back to the system. */
static void trim_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct proxy *px = arg;
    if (px->active == 0 && !px->wait_head)
        malloc_trim(0);
}

/*
 * Picks the upstream from ?ns= and builds the local name: the main upstream's content keeps
 * its name, another upstream's is cached under "<host>/<name>" so the two never mix.
 */
static enum regerr pick_target(struct proxy *px, struct http_req *req, const struct api_route *rt,
                               struct target *t, const char **why)
{
    char *ns;
    int has = reference_query_lookup(http_req_query(req), "ns", &ns);
    enum regerr result = REG_OK;
    t->rm = &px->remotes[0];
    t->rt = *rt;
    /* A malformed ns names no upstream: refused, never served from the main one. */
    if (has < 0 || (ns && *ns && !reference_host_valid(ns, strlen(ns)))) {
        result = REG_ERR_NAME_INVALID;
        *why = "ns is not a registry host name";
        goto out;
    }
    if (ns && *ns && strcmp(ns, DEFAULT_HOST) != 0) {
        t->rm = NULL;
        for (size_t i = 0; i < px->nremotes; i++) {
            if (strcmp(px->remotes[i].host, ns) == 0)
                t->rm = &px->remotes[i];
        }
        if (!t->rm) {
            result = REG_ERR_NAME_UNKNOWN;
            *why = "no upstream for this ns";
            goto out;
        }
    }
    if (!t->rm->main) {
        char host[128];
        snprintf(host, sizeof(host), "%s", t->rm->host);
        for (char *c = host; *c; c++) {
            if (*c == ':')
                *c = '-';
        }
        int n = snprintf(t->rt.name, sizeof(t->rt.name), "%s/%s", host, rt->name);
        if (n < 0 || (size_t)n >= sizeof(t->rt.name) ||
            !reference_name_valid(t->rt.name, strlen(t->rt.name))) {
            result = REG_ERR_NAME_INVALID;
            *why = "the name is too long for this ns";
        }
    }
out:
    free(ns);
    return result;
}

bool proxy_begin(struct proxy *px, const struct api *api, struct http_req *req,
                 const struct api_route *rt, bool manifest, struct target *t, struct client *c)
{
    const char *why = "";
    enum regerr result = pick_target(px, req, rt, t, &why);
    if (result != REG_OK) {
        api_errorf(api, req, result, "%s", why);
        return false;
    }
    *c = (struct client){api, req, t->rt, manifest};
    return true;
}

const struct upstream *proxy_upstream(const struct proxy *px, size_t i, const char **host)
{
    if (i >= px->nremotes)
        return NULL;
    *host = px->remotes[i].host;
    return px->remotes[i].up;
}

/* ---- life cycle ---- */

static int add_remote(struct proxy *px, const char *host, const char *url, const char *user,
                      const char *password, bool main_remote)
{
    struct upstream_config uc = {
        .remoteurl = url, .username = user, .password = password, .name = host};
    struct remote *rm = &px->remotes[px->nremotes];
    rm->host = strdup(host);
    rm->up = upstream_new(px->httpc, &uc);
    rm->main = main_remote;
    if (!rm->host || !rm->up) {
        log_error("proxy: cannot use upstream %s", url);
        free(rm->host);
        upstream_free(rm->up);
        return -1;
    }
    px->nremotes++;
    if (user && *user) {
        log_warn("proxy: upstream %s uses the account %s: anyone who can reach this mirror can "
                 "pull what that account can, unless client auth is configured",
                 url, user);
        log_info("proxy: upstream %s: the account goes to %s", url,
                 upstream_credentials_rule(rm->up));
    }
    return 0;
}

/*
 * The local spool of a remote store: a filesystem registry of its own under dir. An
 * exclusive lock on the directory keeps it to one daemon, so what a previous run left there
 * can be removed.
 */
static int spool_open(struct proxy *px, const char *dir)
{
    px->spool_st = storage_fs_new(dir);
    if (!px->spool_st) {
        log_error("proxy: cannot use proxy.spooldir %s", dir);
        return -1;
    }
    px->spool_lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (px->spool_lock < 0 || flock(px->spool_lock, LOCK_EX | LOCK_NB) != 0) {
        log_error("proxy: proxy.spooldir %s is in use by another regmirror (each instance needs "
                  "its own): %s",
                  dir, strerror(errno));
        return -1;
    }
    enum regerr result = storage_remove(px->spool_st, "/docker");
    if (result != REG_OK && result != REG_ERR_NOT_FOUND) {
        log_error("proxy: cannot clear proxy.spooldir %s", dir);
        return -1;
    }
    struct registry_opts opts = {.delete_enabled = true};
    px->spool = registry_new(px->spool_st, &opts);
    if (!px->spool)
        return -1;
    log_info("proxy: spooling blobs in %s", dir);
    return 0;
}

/* Another node changed a tag: forget, without telling the others again. */
static void on_cluster_tags(void *ctx)
{
    tags_forget(ctx);
}

void proxy_set_cluster(struct proxy *px, struct cluster *cl)
{
    px->cluster = cl;
    if (cl)
        cluster_on_tags(cl, on_cluster_tags, px);
}

bool proxy_evicts(const struct proxy *px)
{
    return !px || cluster_evicts(px->cluster);
}

struct proxy *proxy_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                        struct httpc *hc, struct offload *ol)
{
    struct proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return NULL;
    px->refs = 1;
    px->spool_lock = -1;
    px->base = base;
    px->cfg = cfg;
    px->reg = reg;
    px->httpc = hc;
    px->offload = ol;
    px->remotes = calloc(1 + cfg->proxy.nremotes, sizeof(*px->remotes));
    if (!px->remotes)
        goto fail;
    if (add_remote(px, DEFAULT_HOST, cfg->proxy.remoteurl, cfg->proxy.username, cfg->proxy.password,
                   true) != 0)
        goto fail;
    for (size_t i = 0; i < cfg->proxy.nremotes; i++) {
        const struct config_proxy_remote *r = &cfg->proxy.remotes[i];
        if (add_remote(px, r->host, r->remoteurl, r->username, r->password, false) != 0)
            goto fail;
    }
    /* Buffers of 128 KiB and more (manifest bodies, gathered blob pieces) are mapped on
     * their own and unmapped when freed: glibc would otherwise raise the threshold after the
     * first free and keep a burst's buffers in the heap. */
    mallopt(M_MMAP_THRESHOLD, 128 * 1024);
    px->wait_timer = evtimer_new(base, wait_timer_cb, px);
    px->trim_timer = evtimer_new(base, trim_timer_cb, px);
    if (!px->wait_timer || !px->trim_timer)
        goto fail;
    if (!registry_is_local(reg) && spool_open(px, cfg->proxy.spooldir) != 0)
        goto fail;
    /* On the filesystem the store is the spool: remove what a killed instance left there
     * (not in read-only mode, which writes nothing). */
    if (!px->spool && cfg->storage.driver == CONFIG_STORAGE_FILESYSTEM &&
        !cfg->storage.maintenance.readonly)
        px->spools = spools_open(cfg->storage.filesystem.rootdirectory, reg);
    log_info("proxy: pulling through from %s", cfg->proxy.remoteurl);
    return px;
fail:
    proxy_free(px);
    return NULL;
}

void proxy_free(struct proxy *px)
{
    if (!px)
        return;
    px->closing = true;
    proxy_manifest_close(px);
    proxy_blob_close(px);
    for (size_t i = 0; i < px->nremotes; i++) {
        upstream_free(px->remotes[i].up);
        free(px->remotes[i].host);
    }
    free(px->remotes);
    px->remotes = NULL;
    px->nremotes = 0;
    proxy_unref(px);
}

bool proxy_busy(const struct proxy *px, const struct digest *d)
{
    return proxy_blob_busy(px, d) || proxy_manifest_busy(px, d) || cluster_busy(px->cluster, d);
}
