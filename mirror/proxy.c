#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "httpc.h"
#include "layout.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "offload.h"
#include "reference.h"
#include "spools.h"
#include "upstream.h"

/* Every manifest type, so the upstream answers with what it has (indexes included); each
 * client then gets what it accepts from the cache. */
static const char *const manifest_accept[] = {
    "Accept: " MANIFEST_MT_OCI_INDEX ", " MANIFEST_MT_DOCKER_LIST ", " MANIFEST_MT_OCI_MANIFEST
    ", " MANIFEST_MT_DOCKER_V2,
    NULL};

/* A reader queues at most this much of the spool in its connection's output at a time. */
#define PUMP_HIGH (1024 * 1024)
#define DEFAULT_HOST "docker.io"
/* Pull records (proxy.ttl) are written at most this often per repository and digest. */
#define PULLED_EVERY_S 600
#define PULLED_SLOTS 4096
/* A lookup that ran while a fetch of what it looks for ended is repeated, at most this often,
 * rather than starting a second upstream fetch. */
#define LOOKUP_TRIES 4
/* Fresh proxied tags resolved within this many seconds are answered from memory (tagmemo). */
#define TAGMEMO_S 5
#define TAGMEMO_SLOTS 256
/* Retry-After of a request that waited proxy.fetchqueuetimeout for a fetch slot. */
#define QUEUE_RETRY_AFTER_S 5
/*
 * Manifest bodies up to MBODY_FREE are covered by the fetch slots alone; a larger one
 * reserves its whole size (Content-Length, else the manifest limit) from MBODY_BUDGET before
 * its body is read, so a burst of 4 MiB manifests takes at most the budget.
 */
#define MBODY_FREE (64u * 1024)
#define MBODY_BUDGET (4u * REGISTRY_MANIFEST_MAX)
/* After the last fetch of a burst ends, freed memory goes back to the system this much later
 * (glibc keeps freed heap pages otherwise). */
#define TRIM_AFTER_MS 1000

struct remote {
    char *host; /* what ?ns= names; the main upstream is DEFAULT_HOST */
    struct upstream *up;
    bool main;
};

struct mfetch;
struct bfetch;
struct bhead;

/*
 * One upstream exchange's place under proxy.maxfetches: it holds a slot while it runs, or
 * waits for one in the proxy's FIFO (at most proxy.fetchqueuetimeout). Embedded in the
 * exchange; go and expire get it back.
 */
struct slot {
    struct slot *prev, *next; /* px->wait_head .. wait_tail while queued */
    int64_t deadline_ms;      /* monotonic */
    bool queued, held;
    void (*go)(struct slot *s);     /* the slot is granted: start the exchange */
    void (*expire)(struct slot *s); /* waited too long: answer 503 */
};

struct proxy {
    struct event_base *base;
    const struct config *cfg;
    struct registry *reg;
    struct httpc *httpc;
    struct offload *offload;
    /* With a remote store (threaded pool) blobs are spooled in a registry of their own on
     * the local disk, then imported; NULL on the filesystem, where the store is the spool. */
    struct storage *spool_st;
    struct registry *spool;
    int spool_lock; /* flock'd spool directory, or -1 */
    unsigned jobs;  /* offload jobs that use px */
    bool closing;   /* proxy_free ran: the last job's done frees px */
    /* Bumped whenever a manifest / blob fetch leaves its table (see LOOKUP_TRIES). */
    unsigned mseq, bseq;
    struct remote *remotes;
    size_t nremotes;
    struct mfetch *mfetches;
    struct bfetch *bfetches;
    struct bhead *bheads;
    /* Recently recorded pulls: a lossy table that keeps the records to one write per
     * PULLED_EVERY_S for busy content. */
    struct {
        uint64_t key;
        time_t at;
    } pulled[PULLED_SLOTS];
    struct tagmemo *tagmemo; /* TAGMEMO_SLOTS, allocated at the first fresh tag */
    unsigned tag_epoch;      /* bumped (atomically) by proxy_tags_changed */
    /* Filesystem store: the record of this process's spools in the store (spools.h). */
    struct spools *spools;
    /* proxy.maxfetches: slots held, the FIFO of waiters, its timer */
    unsigned active;
    bool granting;
    struct slot *wait_head, *wait_tail;
    struct event *wait_timer;
    struct event *trim_timer;
    /* MBODY_BUDGET: bytes reserved by large manifest bodies, and the fetches waiting */
    size_t mbody_used;
    struct mfetch *mbody_head, *mbody_tail;
};

/*
 * A proxied tag found fresh (within proxy.tagfreshness) at `at`: for TAGMEMO_S seconds it
 * is answered without reading its link and marker again. Any tag or manifest written or
 * removed outside the proxy bumps the epoch, which voids every entry; the short life bounds
 * what another instance on the same storage may change meanwhile.
 */
struct tagmemo {
    const struct remote *rm;
    unsigned epoch;
    time_t at, checked;
    struct digest d;
    char name[API_NAME_MAX];
    char tag[API_REF_MAX];
};

/* The request as the proxy sees it: which upstream, and the local (cache) route. */
struct target {
    struct remote *rm;
    struct api_route rt; /* rt.name is the local name */
};

/* Shared parts of one client request waiting on an upstream exchange. */
struct client {
    const struct api *api;
    struct http_req *req;
    struct api_route rt;
    proxy_blob_serve_fn serve_blob;
    proxy_manifest_serve_fn serve_manifest;
};

/* ---- helpers ---- */

static enum regerr outcome_error(const struct upstream_outcome *o, bool blob)
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

static void client_error(struct client *c, enum regerr e, long retry_after, const char *detail)
{
    char ra[32];
    const char *hdrs[3] = {NULL};
    if ((e == REG_ERR_TOOMANYREQUESTS || e == REG_ERR_UNAVAILABLE) && retry_after >= 0) {
        snprintf(ra, sizeof(ra), "%ld", retry_after);
        hdrs[0] = "Retry-After";
        hdrs[1] = ra;
    }
    http_req_on_abort(c->req, NULL, NULL);
    api_error_headers(c->api, c->req, e, detail, hdrs);
}

/* resolved, linked_size, fd: what this same call has just looked up (see
 * proxy_*_serve_fn), or NULL, -1 and -1; fd passes to the blob's serve_local. */
static void client_serve_looked_up(struct client *c, const struct digest *resolved,
                                   int64_t linked_size, int fd)
{
    http_req_on_abort(c->req, NULL, NULL);
    if (c->serve_manifest)
        c->serve_manifest(c->api, c->req, &c->rt, resolved);
    else if (c->serve_blob)
        c->serve_blob(c->api, c->req, &c->rt, linked_size, fd);
}

static void client_serve(struct client *c)
{
    client_serve_looked_up(c, NULL, -1, -1);
}

static size_t tagmemo_slot(const struct target *t)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uintptr_t)t->rm; /* FNV-1a */
    for (const char *c = t->rt.name; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    h = (h ^ ':') * 1099511628211ull;
    for (const char *c = t->rt.ref; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return (size_t)(h % TAGMEMO_SLOTS);
}

static unsigned tag_epoch(const struct proxy *px)
{
    return __atomic_load_n(&px->tag_epoch, __ATOMIC_ACQUIRE);
}

/* The digest of t's tag when the memo holds it, fresh. */
static bool tagmemo_find(const struct proxy *px, const struct target *t, struct digest *out)
{
    int64_t fresh_ms = px->cfg->proxy.tagfreshness_ms;
    if (!px->tagmemo || fresh_ms <= 0 || strchr(t->rt.ref, ':'))
        return false;
    const struct tagmemo *m = &px->tagmemo[tagmemo_slot(t)];
    time_t now = time(NULL);
    if (m->rm != t->rm || m->epoch != tag_epoch(px) || now - m->at >= TAGMEMO_S ||
        (int64_t)(now - m->checked) * 1000 >= fresh_ms || strcmp(m->name, t->rt.name) != 0 ||
        strcmp(m->tag, t->rt.ref) != 0)
        return false;
    *out = m->d;
    return true;
}

/* Notes a fresh proxied tag that a lookup begun at epoch found pointing at d. */
static void tagmemo_put(struct proxy *px, const struct target *t, unsigned epoch,
                        const struct digest *d, time_t checked)
{
    if (!px->tagmemo && !(px->tagmemo = calloc(TAGMEMO_SLOTS, sizeof(*px->tagmemo))))
        return;
    struct tagmemo *m = &px->tagmemo[tagmemo_slot(t)];
    m->rm = t->rm;
    m->epoch = epoch;
    m->at = time(NULL);
    m->checked = checked;
    m->d = *d;
    snprintf(m->name, sizeof(m->name), "%s", t->rt.name);
    snprintf(m->tag, sizeof(m->tag), "%s", t->rt.ref);
}

void proxy_tags_changed(struct proxy *px)
{
    if (px)
        __atomic_fetch_add(&px->tag_epoch, 1, __ATOMIC_RELEASE);
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

/* Whether a pull record is due (always when create); notes it in the table when it is. */
static bool pulled_due(struct proxy *px, const char *name, const struct digest *d, bool create)
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

/* Records a pull of proxied content for proxy.ttl (see registry_proxy_pulled). */
static void note_pulled(struct proxy *px, const char *name, const struct digest *d, bool create)
{
    if (!pulled_due(px, name, d, create))
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

/* The registry the blob spool's upload sessions live in. */
static struct registry *spool_reg(const struct proxy *px)
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

/* Starts an offload job that uses px: proxy_free then leaves px to the job's done. */
static void job_begin(struct proxy *px)
{
    px->jobs++;
}

/* Ends one in done. When closing, the caller frees what is its own first and touches px no
 * more: the last job frees it. */
static void job_end(struct proxy *px)
{
    px->jobs--;
    if (px->closing && px->jobs == 0)
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

/* Starts the exchange at once when a slot is free, else queues it; go or expire follows. */
static void slot_acquire(struct proxy *px, struct slot *s, void (*go)(struct slot *),
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

/* Gives the slot back (running) or leaves the queue (waiting); a no-op otherwise. */
static void slot_release(struct proxy *px, struct slot *s)
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

#define CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

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

/* Sets up the target and the client of a request; false when it was answered (bad ns). */
static bool begin(struct proxy *px, const struct api *api, struct http_req *req,
                  const struct api_route *rt, proxy_blob_serve_fn serve, struct target *t,
                  struct client *c)
{
    const char *why = "";
    enum regerr result = pick_target(px, req, rt, t, &why);
    if (result != REG_OK) {
        api_errorf(api, req, result, "%s", why);
        return false;
    }
    *c = (struct client){api, req, t->rt, serve, NULL};
    return true;
}

/* ---- manifests ---- */

struct mwaiter {
    struct mwaiter *next;
    struct mfetch *f;
    struct client c;
};

struct mfetch {
    struct mfetch *next;
    struct proxy *px;
    struct remote *rm;
    char name[API_NAME_MAX]; /* local name */
    char ref[API_REF_MAX];   /* what the clients asked for */
    bool by_tag;
    bool have_cached; /* a proxied tag with a cached manifest: failures serve it */
    struct digest cached;
    bool head;              /* the running exchange is the tag re-check */
    char want[API_REF_MAX]; /* reference of the running GET */
    struct upstream_req *ureq;
    struct slot slot;
    char *body;
    size_t len, cap;
    int64_t expect;  /* the GET's Content-Length, -1 when not given */
    size_t reserved; /* of MBODY_BUDGET, for a body over MBODY_FREE */
    bool mbody_queued;
    struct mfetch *mbody_next;
    char hdr_digest[DIGEST_STR_MAX];
    char content_type[128];
    struct mwaiter *waiters;
    bool job;           /* an offload job (store or touch) has it */
    struct digest got;  /* the verified digest being stored */
    enum regerr stored; /* the job's result */
};

static void mfetch_start(struct mfetch *f);
static void mfetch_free(struct mfetch *f);

static void mwaiter_abort(struct http_req *req, void *ctx)
{
    struct mwaiter *w = ctx;
    struct mfetch *f = w->f;
    for (struct mwaiter **p = &f->waiters; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    free(w);
    /* A fetch still waiting for a slot is not worth starting for nobody. */
    if (!f->waiters && f->slot.queued)
        mfetch_free(f);
}

/* Reserves f's body from MBODY_BUDGET, in arrival order; false: queued, resumed later. */
static bool mbody_reserve(struct mfetch *f, size_t need)
{
    struct proxy *px = f->px;
    if (!f->mbody_queued && !px->mbody_head && px->mbody_used + need <= MBODY_BUDGET) {
        px->mbody_used += need;
        f->reserved = need;
        return true;
    }
    if (!f->mbody_queued) {
        f->mbody_queued = true;
        f->mbody_next = NULL;
        if (px->mbody_tail)
            px->mbody_tail->mbody_next = f;
        else
            px->mbody_head = f;
        px->mbody_tail = f;
    }
    return false;
}

static size_t mbody_need(const struct mfetch *f)
{
    return f->expect >= 0 ? (size_t)f->expect : REGISTRY_MANIFEST_MAX;
}

/* Gives f's reservation (or its place in the line) back and lets the next ones read. */
static void mbody_release(struct mfetch *f)
{
    struct proxy *px = f->px;
    if (f->mbody_queued) {
        struct mfetch **p = &px->mbody_head, *prev = NULL;
        while (*p != f) {
            prev = *p;
            p = &(*p)->mbody_next;
        }
        *p = f->mbody_next;
        if (px->mbody_tail == f)
            px->mbody_tail = prev;
        f->mbody_queued = false;
    }
    px->mbody_used -= f->reserved;
    f->reserved = 0;
    while (px->mbody_head && px->mbody_used + mbody_need(px->mbody_head) <= MBODY_BUDGET) {
        struct mfetch *g = px->mbody_head;
        px->mbody_head = g->mbody_next;
        if (!px->mbody_head)
            px->mbody_tail = NULL;
        g->mbody_queued = false;
        g->reserved = mbody_need(g);
        px->mbody_used += g->reserved;
        if (g->ureq)
            upstream_resume(g->ureq);
    }
}

static void mfetch_unlink(struct mfetch *f)
{
    for (struct mfetch **p = &f->px->mfetches; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            f->px->mseq++;
            break;
        }
    }
}

static void mfetch_free(struct mfetch *f)
{
    mfetch_unlink(f);
    if (f->ureq)
        upstream_cancel(f->ureq);
    f->ureq = NULL;
    free(f->body);
    f->body = NULL;
    mbody_release(f);
    slot_release(f->px, &f->slot);
    free(f);
}

/* Answers every waiter (from the cache when result is REG_OK). */
static void mfetch_answer(struct mfetch *f, enum regerr result, long retry_after,
                          const char *detail)
{
    struct mwaiter *w = f->waiters;
    f->waiters = NULL;
    while (w) {
        struct mwaiter *next = w->next;
        if (result == REG_OK)
            client_serve(&w->c);
        else
            client_error(&w->c, result, retry_after, detail);
        free(w);
        w = next;
    }
}

/* Answers every waiter and frees the fetch. */
static void mfetch_finish(struct mfetch *f, enum regerr result, long retry_after,
                          const char *detail)
{
    mfetch_answer(f, result, retry_after, detail);
    mfetch_free(f);
}

static int m_on_response(struct upstream_req *r, void *ctx, long status,
                         const struct httpc_headers *h)
{
    struct mfetch *f = ctx;
    const char *d = httpc_header_get(h, "Docker-Content-Digest");
    const char *ct = httpc_header_get(h, "Content-Type");
    const char *cl = httpc_header_get(h, "Content-Length");
    snprintf(f->hdr_digest, sizeof(f->hdr_digest), "%s", d ? d : "");
    snprintf(f->content_type, sizeof(f->content_type), "%s", ct ? ct : "");
    uint64_t n;
    f->expect = -1;
    if (!f->head && cl && reference_parse_uint(cl, &n) == 0) {
        if (n > REGISTRY_MANIFEST_MAX)
            return -1;
        f->expect = (int64_t)n;
    }
    return 0;
}

static int m_on_data(struct upstream_req *r, void *ctx, const char *data, size_t len)
{
    struct mfetch *f = ctx;
    if (f->len + len > REGISTRY_MANIFEST_MAX)
        return -1;
    size_t size = f->expect >= 0 ? (size_t)f->expect : f->len + len;
    if (size > MBODY_FREE && !f->reserved && !mbody_reserve(f, mbody_need(f)))
        return UPSTREAM_PAUSE;
    if (f->len + len > f->cap) {
        /* The announced size at once; without one, doubling up to the limit. */
        size_t cap = f->expect >= 0 && (size_t)f->expect >= f->len + len ? (size_t)f->expect
                     : f->cap                                            ? f->cap
                                                                         : 16384;
        while (cap < f->len + len)
            cap *= 2;
        if (cap > REGISTRY_MANIFEST_MAX)
            cap = REGISTRY_MANIFEST_MAX;
        char *nb = realloc(f->body, cap);
        if (!nb)
            return -1;
        f->body = nb;
        f->cap = cap;
    }
    memcpy(f->body + f->len, data, len);
    f->len += len;
    return 0;
}

/* The upstream failed: serve the cached tag when there is one, else pass the error on. */
static void mfetch_fail(struct mfetch *f, enum regerr e, long retry_after, const char *why)
{
    if (f->have_cached) {
        log_warn("proxy: upstream check of %s:%s failed (%s); serving the cached manifest", f->name,
                 f->ref, why);
        mfetch_finish(f, REG_OK, -1, NULL);
        return;
    }
    log_warn("proxy: fetching manifest %s:%s failed: %s", f->name, f->ref, why);
    mfetch_finish(f, e, retry_after, why);
}

/* The storage side of a finished exchange: a GET's manifest stored (and tagged), or a
 * re-checked tag's time recorded. */
static void mfetch_work(void *arg)
{
    struct mfetch *f = arg;
    struct registry *reg = f->px->reg;
    if (f->head) {
        registry_proxy_tag_touch(reg, f->name, f->ref);
        return;
    }
    f->stored = registry_manifest_store(reg, f->name, NULL, f->body, f->len, &f->got);
    if (f->stored == REG_OK)
        registry_proxy_pulled(reg, f->name, &f->got, true);
    if (f->stored == REG_OK && f->by_tag) {
        f->stored = registry_proxy_tag_set(reg, f->name, f->ref, &f->got);
        proxy_tags_changed(f->px); /* the tag may have moved */
    }
}

static void mfetch_done(void *arg, bool cancelled)
{
    struct mfetch *f = arg;
    struct proxy *px = f->px;
    f->job = false;
    if (px->closing) {
        free(f->body);
        free(f);
        job_end(px);
        return;
    }
    job_end(px);
    if (f->head) {
        mfetch_finish(f, REG_OK, -1, NULL);
        return;
    }
    if (f->stored != REG_OK) {
        mfetch_fail(f, f->stored, -1, "storing the manifest failed");
        return;
    }
    pulled_due(px, f->name, &f->got, true);
    mfetch_finish(f, REG_OK, -1, NULL);
}

/* Runs mfetch_work off the loop; new clients keep joining the fetch meanwhile. */
static void mfetch_job(struct mfetch *f)
{
    f->job = true;
    f->stored = REG_ERR_UNAVAILABLE; /* what a job cancelled before it ran leaves */
    job_begin(f->px);
    offload_run(f->px->offload, mfetch_work, mfetch_done, f);
}

/* A GET answer arrived: verify, store, tag, answer. */
static void mfetch_store(struct mfetch *f)
{
    struct digest want, got;
    bool have_want = digest_parse(f->want, strlen(f->want), &want) == 0 ||
                     digest_parse(f->hdr_digest, strlen(f->hdr_digest), &want) == 0;
    if (digest_compute(have_want ? want.algo : DIGEST_SHA256, f->body ? f->body : "", f->len,
                       &got) != 0) {
        mfetch_fail(f, REG_ERR_INTERNAL, -1, "out of memory");
        return;
    }
    if (have_want && !digest_equal(&want, &got)) {
        mfetch_fail(f, REG_ERR_UNAVAILABLE, -1,
                    "the upstream sent a manifest with the wrong digest");
        return;
    }
    struct manifest m;
    char err[256];
    const char *ct = f->content_type[0] ? f->content_type : NULL;
    enum regerr result = manifest_parse(f->body ? f->body : "", f->len, ct, &m, err, sizeof(err));
    if (result != REG_OK) {
        char why[300];
        snprintf(why, sizeof(why), "the upstream sent an invalid manifest: %s", err);
        mfetch_fail(f, REG_ERR_UNAVAILABLE, -1, why);
        return;
    }
    manifest_free(&m);
    f->got = got;
    mfetch_job(f);
}

static void m_on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    struct mfetch *f = ctx;
    f->ureq = NULL;
    if (o->result != UPSTREAM_OK) {
        mfetch_fail(f, outcome_error(o, false), o->retry_after_s, o->message);
        return;
    }
    if (!f->head) {
        mfetch_store(f);
        return;
    }
    struct digest now;
    if (digest_parse(f->hdr_digest, strlen(f->hdr_digest), &now) == 0 &&
        digest_equal(&now, &f->cached)) {
        mfetch_job(f);
        return;
    }
    /* Changed (or no digest in the answer): fetch it, by digest when we know it. */
    f->head = false;
    snprintf(f->want, sizeof(f->want), "%s", f->hdr_digest[0] ? f->hdr_digest : f->ref);
    mfetch_start(f);
}

static void mfetch_start(struct mfetch *f)
{
    static const struct upstream_callbacks cb = {m_on_response, m_on_data, m_on_done};
    char suffix[API_REF_MAX + 16];
    snprintf(suffix, sizeof(suffix), "manifests/%s", f->head ? f->ref : f->want);
    const char *name = f->name;
    if (!f->rm->main)
        name = strchr(f->name, '/') + 1;
    f->len = 0;
    f->ureq =
        upstream_fetch(f->rm->up, f->head ? "HEAD" : "GET", name, suffix, manifest_accept, &cb, f);
    if (!f->ureq)
        mfetch_fail(f, REG_ERR_INTERNAL, -1, "cannot start the upstream request");
}

static void mfetch_go(struct slot *s)
{
    mfetch_start(CONTAINER(s, struct mfetch, slot));
}

static void mfetch_expire(struct slot *s)
{
    mfetch_fail(CONTAINER(s, struct mfetch, slot), REG_ERR_UNAVAILABLE, QUEUE_RETRY_AFTER_S,
                "too many upstream fetches at once (proxy.maxfetches)");
}

static void manifest_join(struct proxy *px, const struct target *t, struct client *c,
                          bool have_cached, const struct digest *cached)
{
    struct mfetch *f;
    for (f = px->mfetches; f; f = f->next) {
        if (f->rm == t->rm && strcmp(f->name, t->rt.name) == 0 && strcmp(f->ref, t->rt.ref) == 0)
            break;
    }
    struct mwaiter *w = calloc(1, sizeof(*w));
    if (!w) {
        client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return;
    }
    w->c = *c;
    if (!f) {
        f = calloc(1, sizeof(*f));
        if (!f) {
            free(w);
            client_error(c, REG_ERR_INTERNAL, -1, NULL);
            return;
        }
        f->px = px;
        f->rm = t->rm;
        snprintf(f->name, sizeof(f->name), "%s", t->rt.name);
        snprintf(f->ref, sizeof(f->ref), "%s", t->rt.ref);
        snprintf(f->want, sizeof(f->want), "%s", t->rt.ref);
        f->by_tag = !strchr(t->rt.ref, ':');
        f->have_cached = have_cached;
        if (have_cached)
            f->cached = *cached;
        f->head = have_cached;
        f->expect = -1;
        f->next = px->mfetches;
        px->mfetches = f;
        w->f = f;
        f->waiters = w;
        http_req_on_abort(c->req, mwaiter_abort, w);
        slot_acquire(px, &f->slot, mfetch_go, mfetch_expire);
        return;
    }
    metrics_inc(METRICS_JOINED_WAITERS);
    w->f = f;
    w->next = f->waiters;
    f->waiters = w;
    http_req_on_abort(c->req, mwaiter_abort, w);
}

/* What the store says about a pulled manifest reference. */
struct mlookup {
    struct proxy *px;
    struct target t;
    struct client c;
    unsigned seq;   /* px->mseq when the lookup was queued */
    unsigned epoch; /* px->tag_epoch then */
    int tries;
    bool cached;
    struct digest cur;
    bool proxied; /* by tag: a proxied tag, last checked at checked */
    time_t checked;
};

static void mlookup_work(void *arg)
{
    struct mlookup *l = arg;
    struct registry *reg = l->px->reg;
    l->cached = registry_manifest_resolve(reg, l->t.rt.name, l->t.rt.ref, &l->cur) == REG_OK;
    l->proxied = !strchr(l->t.rt.ref, ':') &&
                 registry_proxy_tag_checked(reg, l->t.rt.name, l->t.rt.ref, &l->checked);
}

static bool mfetch_running(const struct proxy *px, const struct target *t)
{
    for (const struct mfetch *f = px->mfetches; f; f = f->next) {
        if (f->rm == t->rm && strcmp(f->name, t->rt.name) == 0 && strcmp(f->ref, t->rt.ref) == 0)
            return true;
    }
    return false;
}

/* Serves from the store or joins the upstream exchange. false: look up again instead (a fetch
 * of this reference ended while the lookup ran, so the store may hold it now). */
static bool mlookup_finish(struct mlookup *l)
{
    struct proxy *px = l->px;
    /* By digest: immutable, so whatever is cached is right. A tag pushed here (no marker)
     * wins over the upstream's tag of the same name; a proxied one is served while fresh. */
    bool serve = l->cached;
    if (serve && !strchr(l->t.rt.ref, ':')) {
        int64_t fresh_ms = px->cfg->proxy.tagfreshness_ms;
        serve =
            !l->proxied || (fresh_ms > 0 && (int64_t)(time(NULL) - l->checked) * 1000 < fresh_ms);
    }
    if (!serve && l->seq != px->mseq && l->tries < LOOKUP_TRIES && !mfetch_running(px, &l->t))
        return false;
    if (serve && l->proxied)
        tagmemo_put(px, &l->t, l->epoch, &l->cur, l->checked);
    metrics_inc(l->cached ? METRICS_CACHE_HIT_MANIFEST : METRICS_CACHE_MISS_MANIFEST);
    if (l->cached)
        note_pulled(px, l->t.rt.name, &l->cur, false);
    if (serve)
        client_serve_looked_up(&l->c, &l->cur, -1, -1);
    else
        manifest_join(px, &l->t, &l->c, l->cached, &l->cur);
    return true;
}

static void mlookup_queue(struct mlookup *l);

static void mlookup_done(void *arg, struct http_req *req)
{
    struct mlookup *l = arg;
    struct proxy *px = l->px;
    if (!req || px->closing) {
        free(l);
        job_end(px);
        return;
    }
    job_end(px);
    if (!mlookup_finish(l)) {
        mlookup_queue(l);
        return;
    }
    free(l);
}

static void mlookup_queue(struct mlookup *l)
{
    l->seq = l->px->mseq;
    l->epoch = tag_epoch(l->px);
    l->tries++;
    job_begin(l->px);
    offload_req(l->px->offload, l->c.req, mlookup_work, mlookup_done, l);
}

void proxy_manifest(struct proxy *px, const struct api *api, struct http_req *req,
                    const struct api_route *rt, proxy_manifest_serve_fn serve_local)
{
    /* The filesystem answers at once: look up on the stack, with no job. */
    bool now = offload_inline(px->offload);
    struct mlookup stack = {0}, *l = now ? &stack : malloc(sizeof(*l));
    if (!l) {
        api_errorf(api, req, REG_ERR_INTERNAL, "out of memory");
        return;
    }
    if (!begin(px, api, req, rt, NULL, &l->t, &l->c)) {
        if (!now)
            free(l);
        return;
    }
    l->px = px;
    l->c.serve_manifest = serve_local;
    l->tries = 0;
    if (tagmemo_find(px, &l->t, &l->cur)) {
        metrics_inc(METRICS_CACHE_HIT_MANIFEST);
        note_pulled(px, l->t.rt.name, &l->cur, false);
        client_serve_looked_up(&l->c, &l->cur, -1, -1);
        if (!now)
            free(l);
        return;
    }
    if (now) {
        l->seq = px->mseq;
        l->epoch = tag_epoch(px);
        mlookup_work(l);
        mlookup_finish(l);
        return;
    }
    mlookup_queue(l);
}

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
    bool job;    /* its link job runs (the job holds the request's abort callback) */
    bool linked; /* the job's result */
};

static void blob_fetch(struct proxy *px, const struct target *t, struct client *c,
                       const struct digest *d);
static void bhead_work(void *arg);
static void bhead_done(void *arg, struct http_req *req);

static void bhead_free(struct bhead *b)
{
    for (struct bhead **p = &b->px->bheads; *p; p = &(*p)->next) {
        if (*p == b) {
            *p = b->next;
            break;
        }
    }
    if (b->ureq)
        upstream_cancel(b->ureq);
    slot_release(b->px, &b->slot);
    free(b);
}

static void bhead_abort(struct http_req *req, void *ctx)
{
    bhead_free(ctx);
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
    slot_release(px, &b->slot);
    if (o->result != UPSTREAM_OK) {
        bhead_free(b);
        client_error(&c, outcome_error(o, true), o->retry_after_s, o->message);
        return;
    }
    /* The upstream has the blob in this repository: link the stored copy and serve it. */
    b->job = true;
    b->linked = false;
    job_begin(px);
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
    b->job = false;
    if (!req || px->closing) {
        bhead_free(b);
        job_end(px);
        return;
    }
    job_end(px);
    if (b->linked) {
        pulled_due(px, c.rt.name, &b->d, true);
        bhead_free(b);
        client_serve(&c);
        return;
    }
    if (http_req_method(c.req) == HTTP_GET) {
        struct target t = {b->rm, c.rt};
        struct digest d = b->d;
        bhead_free(b);
        http_req_on_abort(c.req, NULL, NULL);
        blob_fetch(px, &t, &c, &d);
        return;
    }
    int64_t size = b->size;
    bhead_free(b);
    if (size < 0) {
        /* Never answer a size that was not read. */
        client_error(&c, REG_ERR_BAD_GATEWAY, -1, "the upstream's blob HEAD has no usable size");
        return;
    }
    http_req_on_abort(c.req, NULL, NULL);
    api_start(c.api, c.req, 200);
    http_resp_header(c.req, "Content-Type", "application/octet-stream");
    http_resp_header(c.req, "Docker-Content-Digest", c.rt.ref);
    http_resp_header(c.req, "Accept-Ranges", "bytes");
    http_resp_no_body(c.req, size);
}

/* The slot is granted: send the HEAD. */
static void bhead_go(struct slot *s)
{
    static const struct upstream_callbacks cb = {bh_on_response, NULL, bh_on_done};
    struct bhead *b = CONTAINER(s, struct bhead, slot);
    char suffix[API_REF_MAX + 8];
    snprintf(suffix, sizeof(suffix), "blobs/%s", b->c.rt.ref);
    const char *name = b->rm->main ? b->c.rt.name : strchr(b->c.rt.name, '/') + 1;
    b->ureq = upstream_fetch(b->rm->up, "HEAD", name, suffix, NULL, &cb, b);
    if (!b->ureq) {
        struct client c = b->c;
        bhead_free(b);
        client_error(&c, REG_ERR_INTERNAL, -1, NULL);
    }
}

static void bhead_expire(struct slot *s)
{
    struct bhead *b = CONTAINER(s, struct bhead, slot);
    struct client c = b->c;
    bhead_free(b);
    client_error(&c, REG_ERR_UNAVAILABLE, QUEUE_RETRY_AFTER_S,
                 "too many upstream fetches at once (proxy.maxfetches)");
}

static void blob_head(struct proxy *px, const struct target *t, struct client *c,
                      const struct digest *d)
{
    struct bhead *b = calloc(1, sizeof(*b));
    if (!b) {
        client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return;
    }
    b->px = px;
    b->c = *c;
    b->rm = t->rm;
    b->d = *d;
    b->size = -1;
    b->next = px->bheads;
    px->bheads = b;
    http_req_on_abort(c->req, bhead_abort, b);
    slot_acquire(px, &b->slot, bhead_go, bhead_expire);
}

/* ---- blobs: one fetch per digest, every client reading the spool ---- */

enum bstate { B_QUEUED, B_HEADERS, B_STREAMING, B_DONE, B_FAILED };

struct breader {
    struct breader *next;
    struct bfetch *f;
    struct client c;
    bool started;
    bool pumping, again;
    uint64_t off, end; /* end is exclusive; UINT64_MAX while the length is unknown */
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
    bool listed;    /* in px->bfetches: new requests join it */
    bool pinned;    /* being walked: readers finishing must not free it under the walker */
    bool importing; /* the verified spool is being stored (remote store); readers go on */
    enum regerr imported;
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

/* Frees the fetch once the upstream side and any import are over and no reader is left. */
static void bfetch_maybe_free(struct bfetch *f)
{
    if (f->pinned || f->readers || f->importing || f->state == B_HEADERS || f->state == B_STREAMING)
        return;
    bfetch_unlist(f);
    slot_release(f->px, &f->slot); /* still queued: nobody wants it any more */
    if (f->fd >= 0)
        close(f->fd);
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

static void reader_abort(struct http_req *req, void *ctx)
{
    struct breader *rd = ctx;
    struct bfetch *f = rd->f;
    reader_unlink(rd);
    free(rd);
    bfetch_maybe_free(f);
}

/* The reader is finished (its response complete or cut, so its request is gone): forget it. */
static void reader_done(struct breader *rd)
{
    struct bfetch *f = rd->f;
    reader_unlink(rd);
    free(rd);
    bfetch_maybe_free(f);
}

static void reader_pump(struct breader *rd);

static void reader_writable(struct http_req *req, void *ctx)
{
    reader_pump(ctx);
}

/* Sends the response head once the upstream's length is known. Returns false when the reader
 * was answered with an error and is gone. */
static bool reader_begin(struct breader *rd)
{
    struct bfetch *f = rd->f;
    struct http_req *req = rd->c.req;
    int status = 200;
    uint64_t start = 0, last = 0;
    const char *range = http_req_header(req, "Range");
    if (range && f->total >= 0) {
        switch (reference_parse_range(range, (uint64_t)f->total, &start, &last)) {
        case REFERENCE_RANGE_OK:
            status = 206;
            break;
        case REFERENCE_RANGE_UNSATISFIABLE: {
            char cr[64];
            snprintf(cr, sizeof(cr), "bytes */%" PRId64, f->total);
            const char *hdrs[] = {"Content-Range", cr, NULL};
            http_req_on_abort(req, NULL, NULL);
            api_error_headers(rd->c.api, req, REG_ERR_RANGE_INVALID, range, hdrs);
            reader_done(rd);
            return false;
        }
        case REFERENCE_RANGE_IGNORE:
            break;
        }
    }
    rd->off = start;
    rd->end = status == 206 ? last + 1 : (f->total >= 0 ? (uint64_t)f->total : UINT64_MAX);
    char etag[DIGEST_STR_MAX + 2], ds[DIGEST_STR_MAX];
    digest_str(&f->d, ds);
    snprintf(etag, sizeof(etag), "\"%s\"", ds);
    api_start(rd->c.api, req, status);
    http_resp_header(req, "Content-Type", "application/octet-stream");
    http_resp_header(req, "Docker-Content-Digest", ds);
    http_resp_header(req, "ETag", etag);
    http_resp_header(req, "Accept-Ranges", "bytes");
    if (status == 206)
        http_resp_headerf(req, "Content-Range", "bytes %" PRIu64 "-%" PRIu64 "/%" PRId64, start,
                          last, f->total);
    rd->started = true;
    notify_blob(rd->c.api, req, NOTIFY_PULL, rd->c.rt.name, &f->d, f->total, NULL);
    int64_t len = rd->end == UINT64_MAX ? -1 : (int64_t)(rd->end - rd->off);
    http_resp_stream_begin(req, len, reader_writable, rd);
    return true;
}

/* Moves spool bytes into the reader's connection, and ends the response when it can. */
static void reader_pump(struct breader *rd)
{
    if (rd->pumping) {
        rd->again = true;
        return;
    }
    struct bfetch *f = rd->f;
    if (!rd->started) {
        if (f->state == B_FAILED) {
            client_error(&rd->c, f->err, f->retry_after, f->why);
            reader_done(rd);
            return;
        }
        if (f->state == B_QUEUED || f->state == B_HEADERS || !reader_begin(rd))
            return;
    }
    rd->pumping = true;
    do {
        rd->again = false;
        uint64_t limit = f->written < rd->end ? f->written : rd->end;
        while (rd->off < limit && http_resp_stream_pending(rd->c.req) < PUMP_HIGH) {
            uint64_t n = limit - rd->off;
            if (n > PUMP_HIGH)
                n = PUMP_HIGH;
            int fd = dup(f->fd);
            if (fd < 0)
                break; /* out of descriptors: the writable callback tries again */
            http_resp_stream_file(rd->c.req, fd, (off_t)rd->off, (off_t)n);
            rd->off += n;
        }
    } while (rd->again);
    rd->pumping = false;
    if (f->state == B_FAILED && http_resp_retract(rd->c.req)) {
        /* nothing of the answer has left yet: the client gets a status instead of a cut */
        client_error(&rd->c, f->err, f->retry_after, f->why);
        reader_done(rd);
        return;
    }
    if (f->state == B_FAILED) {
        log_warn("proxy: cutting the response for %s: %s", rd->c.rt.ref, f->why);
        http_req_on_abort(rd->c.req, NULL, NULL);
        http_resp_stream_abort(rd->c.req);
        reader_done(rd);
        return;
    }
    bool complete = rd->end == UINT64_MAX ? rd->off == f->written : rd->off == rd->end;
    if (f->state == B_DONE && complete) {
        http_req_on_abort(rd->c.req, NULL, NULL);
        http_resp_stream_end(rd->c.req);
        reader_done(rd);
    }
}

/* Pumps every reader; the caller calls bfetch_maybe_free afterwards when it may be over. */
static void bfetch_pump_all(struct bfetch *f)
{
    f->pinned = true;
    struct breader *rd = f->readers;
    while (rd) {
        struct breader *next = rd->next; /* pumping may finish and free rd */
        reader_pump(rd);
        rd = next;
    }
    f->pinned = false;
}

static int b_on_response(struct upstream_req *r, void *ctx, long status,
                         const struct httpc_headers *h)
{
    struct bfetch *f = ctx;
    const char *cl = httpc_header_get(h, "Content-Length");
    uint64_t n;
    if (cl && (reference_parse_uint(cl, &n) != 0 || n > INT64_MAX)) {
        f->bad_answer = true;
        snprintf(f->why, sizeof(f->why), "the upstream sent an unreadable Content-Length");
        return -1;
    }
    f->total = cl ? (int64_t)n : -1;
    f->state = B_STREAMING;
    bfetch_pump_all(f);
    return 0;
}

static int b_on_data(struct upstream_req *r, void *ctx, const char *data, size_t len)
{
    struct bfetch *f = ctx;
    if (f->total >= 0 && f->written + len > (uint64_t)f->total) {
        snprintf(f->why, sizeof(f->why), "the upstream sent more bytes than announced");
        f->err = REG_ERR_BAD_GATEWAY;
        return -1;
    }
    if (registry_upload_write(f->up, data, len) != REG_OK) {
        snprintf(f->why, sizeof(f->why), "writing the spool failed");
        f->err = REG_ERR_UNAVAILABLE;
        return -1;
    }
    f->written += len;
    metrics_add(METRICS_BYTES_FROM_UPSTREAM, len);
    bfetch_pump_all(f);
    return 0;
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
    if (px->closing) {
        bfetch_maybe_free(f);
        job_end(px);
        return;
    }
    job_end(px);
    if (f->imported == REG_OK) {
        pulled_due(px, f->name, &f->d, true);
        log_info("proxy: cached %s for %s (%" PRIu64 " bytes)", ds, f->name, f->written);
    } else {
        log_warn("proxy: storing %s for %s failed; its clients were served from the spool", ds,
                 f->name);
    }
    /* Stored now (or not at all): new requests find it in the store (or fetch again). */
    bfetch_unlist(f);
    bfetch_maybe_free(f);
}

/*
 * Remote store: the blob is verified in the local spool; store it from there off the loop.
 * The fetch stays listed meanwhile, so new requests read the spool rather than fetch again.
 */
static void bfetch_import(struct bfetch *f)
{
    f->importing = true;
    f->imported = REG_ERR_UNAVAILABLE; /* what a job cancelled before it ran leaves */
    job_begin(f->px);
    offload_run(f->px->offload, bimport_work, bimport_done, f);
}

static void b_on_done(struct upstream_req *r, void *ctx, const struct upstream_outcome *o)
{
    struct bfetch *f = ctx;
    struct proxy *px = f->px;
    struct registry *sreg = spool_reg(px);
    char ds[DIGEST_STR_MAX];
    digest_str(&f->d, ds);
    f->ureq = NULL;
    slot_release(px, &f->slot);
    if (!px->spool)
        bfetch_unlist(f);
    enum regerr result = outcome_error(o, true);
    if (result == REG_OK && f->total >= 0 && f->written != (uint64_t)f->total) {
        result = REG_ERR_BAD_GATEWAY;
        snprintf(f->why, sizeof(f->why), "the upstream sent %" PRIu64 " of %" PRId64 " bytes",
                 f->written, f->total);
    }
    if (result == REG_OK) {
        struct registry_upload *up = f->up;
        f->up = NULL;
        result = registry_upload_commit(up, &f->d);
        if (result == REG_ERR_DIGEST_INVALID)
            snprintf(f->why, sizeof(f->why), "the upstream sent bytes that do not match %s", ds);
        else if (result != REG_OK)
            snprintf(f->why, sizeof(f->why), "storing the blob failed");
        if (result != REG_OK) {
            registry_upload_cancel(sreg, f->name, f->id);
            result = result == REG_ERR_DIGEST_INVALID ? REG_ERR_BAD_GATEWAY : REG_ERR_UNAVAILABLE;
        }
    } else {
        if (f->err != REG_OK) {
            result = f->err; /* b_on_data stopped the transfer */
        } else if (f->bad_answer) {
            result = REG_ERR_BAD_GATEWAY;
        } else if (result == REG_ERR_UNAVAILABLE && f->total >= 0 &&
                   f->written < (uint64_t)f->total) {
            result = REG_ERR_BAD_GATEWAY;
            snprintf(f->why, sizeof(f->why), "the upstream sent %" PRIu64 " of %" PRId64 " bytes",
                     f->written, f->total);
        }
        if (!f->why[0])
            snprintf(f->why, sizeof(f->why), "%s", o->message);
        registry_upload_close(f->up);
        f->up = NULL;
        registry_upload_cancel(sreg, f->name, f->id);
    }
    spools_drop(px->spools, f->id);
    if (result == REG_OK && px->spool) {
        /* Readers finish from the spool; the import's done frees f (perhaps before
         * offload_run returns), so it comes last. */
        f->state = B_DONE;
        bfetch_pump_all(f);
        bfetch_import(f);
        return;
    }
    if (result == REG_OK) {
        note_pulled(px, f->name, &f->d, true);
        f->state = B_DONE;
        log_info("proxy: cached %s for %s (%" PRIu64 " bytes)", ds, f->name, f->written);
    } else {
        bfetch_unlist(f);
        f->state = B_FAILED;
        f->err = result;
        f->retry_after = o->retry_after_s;
        log_warn("proxy: fetching %s for %s failed: %s", ds, f->name, f->why);
    }
    bfetch_pump_all(f);
    bfetch_maybe_free(f);
}

/* A fetch that could not start (or waited too long): its readers get the error. */
static void bfetch_fail_early(struct bfetch *f, enum regerr e, long retry_after, const char *why)
{
    struct registry *sreg = spool_reg(f->px);
    if (f->up)
        registry_upload_close(f->up);
    f->up = NULL;
    if (f->id[0]) {
        registry_upload_cancel(sreg, f->name, f->id);
        spools_drop(f->px->spools, f->id);
    }
    bfetch_unlist(f);
    slot_release(f->px, &f->slot);
    f->state = B_FAILED;
    f->err = e;
    f->retry_after = retry_after;
    snprintf(f->why, sizeof(f->why), "%s", why);
    bfetch_pump_all(f);
    bfetch_maybe_free(f);
}

/* The slot is granted: open the spool and start the upstream GET. */
static void bfetch_go(struct slot *s)
{
    static const struct upstream_callbacks cb = {b_on_response, b_on_data, b_on_done};
    struct bfetch *f = CONTAINER(s, struct bfetch, slot);
    /* The spool is local (see spool_reg): these are a few syscalls on the loop. */
    struct registry *sreg = spool_reg(f->px);
    enum regerr result = registry_upload_start(sreg, f->name, f->id);
    if (result == REG_OK)
        spools_add(f->px->spools, f->name, f->id);
    if (result == REG_OK)
        result = registry_upload_open(sreg, f->name, f->id, &f->up);
    if (result == REG_OK)
        result = registry_upload_reader(sreg, f->name, f->id, &f->fd);
    if (result == REG_OK) {
        char suffix[API_REF_MAX + 8], ds[DIGEST_STR_MAX];
        snprintf(suffix, sizeof(suffix), "blobs/%s", digest_str(&f->d, ds));
        const char *name = f->rm->main ? f->name : strchr(f->name, '/') + 1;
        f->state = B_HEADERS;
        f->ureq = upstream_fetch(f->rm->up, "GET", name, suffix, NULL, &cb, f);
        if (f->ureq)
            return;
        result = REG_ERR_INTERNAL;
    }
    bfetch_fail_early(f, result, -1, "cannot start the upstream fetch");
}

static void bfetch_expire(struct slot *s)
{
    bfetch_fail_early(CONTAINER(s, struct bfetch, slot), REG_ERR_UNAVAILABLE, QUEUE_RETRY_AFTER_S,
                      "too many upstream fetches at once (proxy.maxfetches)");
}

static void blob_fetch(struct proxy *px, const struct target *t, struct client *c,
                       const struct digest *d)
{
    struct bfetch *f;
    for (f = px->bfetches; f; f = f->next) {
        if (f->rm == t->rm && digest_equal(&f->d, d))
            break;
    }
    struct breader *rd = calloc(1, sizeof(*rd));
    if (!rd) {
        client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return;
    }
    rd->c = *c;
    if (f) {
        /* Joining a fetch, running or queued, takes no slot of its own. */
        metrics_inc(METRICS_JOINED_WAITERS);
        rd->f = f;
        rd->next = f->readers;
        f->readers = rd;
        http_req_on_abort(c->req, reader_abort, rd);
        reader_pump(rd);
        return;
    }
    f = calloc(1, sizeof(*f));
    if (!f) {
        free(rd);
        client_error(c, REG_ERR_INTERNAL, -1, "cannot start the upstream fetch");
        return;
    }
    f->px = px;
    f->rm = t->rm;
    f->d = *d;
    f->fd = -1;
    f->total = -1;
    f->state = B_QUEUED;
    snprintf(f->name, sizeof(f->name), "%s", t->rt.name);
    f->listed = true;
    f->next = px->bfetches;
    px->bfetches = f;
    rd->f = f;
    f->readers = rd;
    http_req_on_abort(c->req, reader_abort, rd);
    /* Last: go may fail at once, answer the reader and free f. */
    slot_acquire(px, &f->slot, bfetch_go, bfetch_expire);
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
};

static void blookup_work(void *arg)
{
    struct blookup *l = arg;
    struct registry *reg = l->px->reg;
    /* A GET from local storage opens the data right away: serving it needs no second look. */
    if (!l->head && offload_inline(l->px->offload))
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
        client_serve_looked_up(&l->c, NULL, (int64_t)l->size, l->fd);
        l->fd = -1;
        return true;
    }
    if (!l->head && !l->stored && l->seq != px->bseq && l->tries < LOOKUP_TRIES &&
        !bfetch_running(px, l->t.rm, &l->d))
        return false;
    metrics_inc(METRICS_CACHE_MISS_BLOB);
    if (l->head || l->stored)
        blob_head(px, &l->t, &l->c, &l->d);
    else
        blob_fetch(px, &l->t, &l->c, &l->d);
    return true;
}

static void blookup_queue(struct blookup *l);

static void blookup_done(void *arg, struct http_req *req)
{
    struct blookup *l = arg;
    struct proxy *px = l->px;
    if (!req || px->closing) {
        free(l);
        job_end(px);
        return;
    }
    job_end(px);
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
    job_begin(l->px);
    offload_req(l->px->offload, l->c.req, blookup_work, blookup_done, l);
}

void proxy_blob(struct proxy *px, const struct api *api, struct http_req *req,
                const struct api_route *rt, proxy_blob_serve_fn serve_local)
{
    /* The filesystem answers at once: look up on the stack, with no job. */
    bool now = offload_inline(px->offload);
    struct blookup stack = {0}, *l = now ? &stack : malloc(sizeof(*l));
    if (!l) {
        api_errorf(api, req, REG_ERR_INTERNAL, "out of memory");
        return;
    }
    if (!begin(px, api, req, rt, serve_local, &l->t, &l->c)) {
        if (!now)
            free(l);
        return;
    }
    l->px = px;
    digest_parse(l->t.rt.ref, strlen(l->t.rt.ref), &l->d);
    l->head = http_req_method(req) == HTTP_HEAD;
    l->tries = 0;
    l->fd = -1;
    if (now) {
        l->seq = px->bseq;
        blookup_work(l);
        blookup_finish(l);
        return;
    }
    blookup_queue(l);
}

void proxy_blob_hit(struct proxy *px, const char *name, const struct digest *d)
{
    metrics_inc(METRICS_CACHE_HIT_BLOB);
    note_pulled(px, name, d, false);
}

bool proxy_busy(const struct proxy *px, const struct digest *d)
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
    /* A tag re-check serves its cached manifest when the upstream answers. */
    for (const struct mfetch *m = px->mfetches; m; m = m->next) {
        if (m->have_cached && digest_equal(&m->cached, d))
            return true;
    }
    return false;
}

/* ---- life cycle ---- */

static int add_remote(struct proxy *px, const char *host, const char *url, const char *user,
                      const char *password, bool main_remote)
{
    struct upstream_config uc = {.remoteurl = url, .username = user, .password = password};
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

struct proxy *proxy_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                        struct httpc *hc, struct offload *ol)
{
    struct proxy *px = calloc(1, sizeof(*px));
    if (!px)
        return NULL;
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
    if (!offload_inline(ol) && spool_open(px, cfg->proxy.spooldir) != 0)
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
    /* What an offload job holds leaves the tables here and is freed by the job's done. */
    while (px->mfetches) {
        struct mfetch *f = px->mfetches;
        px->mfetches = f->next; /* the head: no search (mfetch_free's finds nothing) */
        px->mseq++;
        mfetch_answer(f, REG_ERR_UNAVAILABLE, -1, "shutting down");
        if (!f->job)
            mfetch_free(f);
    }
    while (px->bheads) {
        struct bhead *b = px->bheads;
        px->bheads = b->next;
        if (!b->job)
            bhead_free(b);
    }
    while (px->bfetches) {
        struct bfetch *f = px->bfetches;
        px->bfetches = f->next; /* the head: as bfetch_unlist, without its search */
        f->listed = false;
        px->bseq++;
        if (f->importing)
            continue;
        if (f->ureq)
            upstream_cancel(f->ureq);
        f->ureq = NULL;
        if (f->up)
            registry_upload_close(f->up);
        f->up = NULL;
        if (f->id[0]) {
            registry_upload_cancel(spool_reg(px), f->name, f->id);
            spools_drop(px->spools, f->id);
        }
        f->state = B_FAILED;
        snprintf(f->why, sizeof(f->why), "shutting down");
        bfetch_pump_all(f);
        bfetch_maybe_free(f);
    }
    for (size_t i = 0; i < px->nremotes; i++) {
        upstream_free(px->remotes[i].up);
        free(px->remotes[i].host);
    }
    free(px->remotes);
    px->remotes = NULL;
    px->nremotes = 0;
    if (px->jobs == 0)
        proxy_release(px);
}
