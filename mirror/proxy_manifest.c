/* Manifest pulls: the store's answer, tag re-checks, one upstream exchange per reference. */
#include "proxy_int.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cluster.h"
#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "offload.h"
#include "reference.h"

/* Every manifest type, so the upstream answers with what it has (indexes included); each
 * client then gets what it accepts from the cache. */
static const char *const manifest_accept[] = {
    "Accept: " MANIFEST_MT_OCI_INDEX ", " MANIFEST_MT_DOCKER_LIST ", " MANIFEST_MT_OCI_MANIFEST
    ", " MANIFEST_MT_DOCKER_V2,
    NULL};

/* Fresh proxied tags resolved within this many seconds are answered from memory (tagmemo). */
#define TAGMEMO_S 5
#define TAGMEMO_SLOTS 256
/*
 * Manifest bodies up to MBODY_FREE are covered by the fetch slots alone; a larger one
 * reserves its whole size (Content-Length, else the manifest limit) from MBODY_BUDGET before
 * its body is read, so a burst of 4 MiB manifests takes at most the budget.
 */
#define MBODY_FREE (64u * 1024)
#define MBODY_BUDGET (4u * REGISTRY_MANIFEST_MAX)

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
    struct buf body; /* capped at REGISTRY_MANIFEST_MAX */
    int64_t expect;  /* the GET's Content-Length, -1 when not given */
    size_t reserved; /* of MBODY_BUDGET, for a body over MBODY_FREE */
    bool mbody_queued;
    struct mfetch *mbody_next;
    char hdr_digest[DIGEST_STR_MAX];
    char content_type[128];
    struct mwaiter *waiters;
    /* The table's (until mfetch_close), an offload job's (store or touch) while it runs,
     * and the cluster question's or its pause's. */
    unsigned refs;
    struct digest got;  /* the verified digest being stored */
    enum regerr stored; /* the job's result */
    /* Cluster (cluster_tag_take): the question while it is asked, the pause before asking
     * again while another node checks the tag, how often it paused; whether this node
     * holds the check's lease, and whether the check succeeded (then the others read the
     * store). */
    struct cluster_op *lease_op;
    struct event *poll;
    int polls;
    bool leased, checked;
};

static void mfetch_start(struct mfetch *f);
static void mfetch_close(struct mfetch *f);

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
        mfetch_close(f);
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

static void mfetch_unref(struct mfetch *f)
{
    assert(f->refs > 0);
    if (--f->refs > 0)
        return;
    buf_free(&f->body);
    mbody_release(f);
    proxy_slot_release(f->px, &f->slot);
    if (f->poll)
        event_free(f->poll);
    free(f);
}

/* Leaves the table (new requests start another exchange), stops the upstream side, and
 * drops the table's reference. */
static void mfetch_close(struct mfetch *f)
{
    mfetch_unlink(f);
    if (f->ureq)
        upstream_cancel(f->ureq);
    f->ureq = NULL;
    if (f->leased)
        cluster_tag_drop(f->px->cluster, f->name, f->ref, f->checked);
    f->leased = false;
    if (f->lease_op) {
        cluster_op_cancel(f->lease_op);
        f->lease_op = NULL;
        assert(f->refs > 1); /* the table's holds f */
        mfetch_unref(f);     /* the question's */
    }
    if (f->poll && evtimer_pending(f->poll, NULL)) {
        evtimer_del(f->poll);
        assert(f->refs > 1);
        mfetch_unref(f); /* the pause's */
    }
    mfetch_unref(f);
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
            proxy_client_serve(&w->c);
        else
            proxy_client_error(&w->c, result, retry_after, detail);
        free(w);
        w = next;
    }
}

/* Answers every waiter and closes the fetch. */
static void mfetch_finish(struct mfetch *f, enum regerr result, long retry_after,
                          const char *detail)
{
    mfetch_answer(f, result, retry_after, detail);
    mfetch_close(f);
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
    size_t size = f->expect >= 0 ? (size_t)f->expect : f->body.len + len;
    if (size > MBODY_FREE && !f->reserved && !mbody_reserve(f, mbody_need(f)))
        return UPSTREAM_PAUSE;
    /* The announced size at once; without one, the buffer doubles up to the limit. */
    if (f->expect > 0 && (size_t)f->expect > f->body.len &&
        buf_reserve(&f->body, (size_t)f->expect - f->body.len) != BUF_OK)
        return -1;
    if (buf_append(&f->body, data, len) != BUF_OK)
        return -1;
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
    f->stored = registry_manifest_store(reg, f->name, NULL, f->body.p, f->body.len, &f->got);
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
    if (px->closing) {
        mfetch_unref(f); /* proxy_free has answered and closed it */
        proxy_unref(px);
        return;
    }
    assert(f->refs > 1); /* the table's holds f */
    mfetch_unref(f);     /* the job's */
    proxy_unref(px);
    if (f->head) {
        f->checked = true;
        mfetch_finish(f, REG_OK, -1, NULL);
        return;
    }
    if (f->stored != REG_OK) {
        mfetch_fail(f, f->stored, -1, "storing the manifest failed");
        return;
    }
    proxy_pulled_due(px, f->name, &f->got, true);
    f->checked = true;
    mfetch_finish(f, REG_OK, -1, NULL);
}

/* Runs mfetch_work off the loop; new clients keep joining the fetch meanwhile. */
static void mfetch_job(struct mfetch *f)
{
    f->refs++;
    f->stored = REG_ERR_UNAVAILABLE; /* what a job cancelled before it ran leaves */
    proxy_ref(f->px);
    offload_run(f->px->offload, mfetch_work, mfetch_done, f);
}

/* A GET answer arrived: verify, store, tag, answer. */
static void mfetch_store(struct mfetch *f)
{
    struct digest want, got;
    bool have_want = digest_parse(f->want, strlen(f->want), &want) == 0 ||
                     digest_parse(f->hdr_digest, strlen(f->hdr_digest), &want) == 0;
    if (digest_compute(have_want ? want.algo : DIGEST_SHA256, buf_cstr(&f->body), f->body.len,
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
    enum regerr result = manifest_parse(buf_cstr(&f->body), f->body.len, ct, &m, err, sizeof(err));
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
        mfetch_fail(f, proxy_outcome_error(o, false), o->retry_after_s, o->message);
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
    buf_clear(&f->body);
    f->ureq =
        upstream_fetch(f->rm->up, f->head ? "HEAD" : "GET", name, suffix, manifest_accept, &cb, f);
    if (!f->ureq)
        mfetch_fail(f, REG_ERR_INTERNAL, -1, "cannot start the upstream request");
}

/* Another node checks the tag: ask again this often, at most this many times (then check
 * here too). */
#define TAG_POLL_MS 50
#define TAG_POLLS_MAX 100

static void mfetch_ask(struct mfetch *f);

static void on_tag_poll(evutil_socket_t fd, short what, void *arg)
{
    struct mfetch *f = arg;
    mfetch_ask(f);
    mfetch_unref(f); /* the pause's */
}

static void on_tag_lease(void *ctx, enum cluster_lease r, const char *holder)
{
    struct mfetch *f = ctx;
    f->lease_op = NULL;
    struct timeval tv = {0, TAG_POLL_MS * 1000};
    switch (r) {
    case CLUSTER_OURS:
        f->leased = true;
        mfetch_start(f);
        break;
    case CLUSTER_STORED:
        /* Checked by another node a moment ago: the store has its answer. */
        mfetch_finish(f, REG_OK, -1, NULL);
        break;
    case CLUSTER_HELD:
        if (f->polls++ == 0)
            metrics_inc(METRICS_CLUSTER_LEASES_WAITED);
        if (f->polls <= TAG_POLLS_MAX && evtimer_add(f->poll, &tv) == 0) {
            f->refs++; /* the pause's */
            break;
        }
        mfetch_start(f);
        break;
    case CLUSTER_ALONE:
        mfetch_start(f);
        break;
    }
    mfetch_unref(f); /* the question's */
}

/* A tag's re-check in a cluster: one node asks the upstream, the others wait for it. */
static void mfetch_ask(struct mfetch *f)
{
    struct cluster *cl = f->px->cluster;
    if (!f->poll)
        f->poll = evtimer_new(f->px->base, on_tag_poll, f);
    f->lease_op = f->poll ? cluster_tag_take(cl, f->name, f->ref, on_tag_lease, f) : NULL;
    if (!f->lease_op) {
        mfetch_start(f);
        return;
    }
    f->refs++; /* the question's */
}

static void mfetch_go(struct slot *s)
{
    struct mfetch *f = PROXY_CONTAINER(s, struct mfetch, slot);
    if (f->head && f->px->cluster)
        mfetch_ask(f);
    else
        mfetch_start(f);
}

static void mfetch_expire(struct slot *s)
{
    mfetch_fail(PROXY_CONTAINER(s, struct mfetch, slot), REG_ERR_UNAVAILABLE, QUEUE_RETRY_AFTER_S,
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
        proxy_client_error(c, REG_ERR_INTERNAL, -1, NULL);
        return;
    }
    w->c = *c;
    if (!f) {
        f = calloc(1, sizeof(*f));
        if (!f) {
            free(w);
            proxy_client_error(c, REG_ERR_INTERNAL, -1, NULL);
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
        f->refs = 1;
        f->body = BUF_INIT(REGISTRY_MANIFEST_MAX);
        f->next = px->mfetches;
        px->mfetches = f;
        w->f = f;
        f->waiters = w;
        http_req_on_abort(c->req, mwaiter_abort, w);
        proxy_slot_acquire(px, &f->slot, mfetch_go, mfetch_expire);
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

/* A proxied tag due for its check: the upstream's pull budget is at or under
 * proxy.ratelimitreserve, or a 429 asked us to wait; the cached copy is served as if fresh. */
static bool budget_holds(struct proxy *px, const struct target *t)
{
    const struct config_amount *reserve = &px->cfg->proxy.ratelimitreserve;
    return upstream_hold(t->rm->up, reserve->value, reserve->percent) != RATELIMIT_OPEN;
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
        serve = !l->proxied ||
                (fresh_ms > 0 && (int64_t)(time(NULL) - l->checked) * 1000 < fresh_ms) ||
                budget_holds(px, &l->t);
    }
    if (!serve && l->seq != px->mseq && l->tries < LOOKUP_TRIES && !mfetch_running(px, &l->t))
        return false;
    if (serve && l->proxied)
        tagmemo_put(px, &l->t, l->epoch, &l->cur, l->checked);
    metrics_inc(l->cached ? METRICS_CACHE_HIT_MANIFEST : METRICS_CACHE_MISS_MANIFEST);
    if (l->cached)
        proxy_note_pulled(px, l->t.rt.name, &l->cur, false);
    if (serve)
        proxy_client_serve_looked_up(&l->c, &l->cur, -1, -1);
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
        proxy_unref(px);
        return;
    }
    proxy_unref(px);
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
    proxy_ref(l->px);
    offload_req(l->px->offload, l->c.req, mlookup_work, mlookup_done, l);
}

void proxy_manifest(struct proxy *px, const struct api *api, struct http_req *req,
                    const struct api_route *rt)
{
    /* The filesystem answers at once: look up on the stack, with no job. */
    bool now = offload_inline(px->offload);
    struct mlookup stack = {0}, *l = now ? &stack : malloc(sizeof(*l));
    if (!l) {
        api_errorf(api, req, REG_ERR_INTERNAL, "out of memory");
        return;
    }
    if (!proxy_begin(px, api, req, rt, true, &l->t, &l->c)) {
        if (!now)
            free(l);
        return;
    }
    l->px = px;
    l->tries = 0;
    if (tagmemo_find(px, &l->t, &l->cur)) {
        metrics_inc(METRICS_CACHE_HIT_MANIFEST);
        proxy_note_pulled(px, l->t.rt.name, &l->cur, false);
        proxy_client_serve_looked_up(&l->c, &l->cur, -1, -1);
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

void proxy_manifest_close(struct proxy *px)
{
    /* A fetch whose job runs stays until the job's done. */
    while (px->mfetches) {
        struct mfetch *f = px->mfetches;
        px->mfetches = f->next; /* the head: mfetch_close's search finds nothing */
        px->mseq++;
        mfetch_answer(f, REG_ERR_UNAVAILABLE, -1, "shutting down");
        mfetch_close(f);
    }
}

bool proxy_manifest_busy(const struct proxy *px, const struct digest *d)
{
    /* A tag re-check serves its cached manifest when the upstream answers. */
    for (const struct mfetch *m = px->mfetches; m; m = m->next) {
        if (m->have_cached && digest_equal(&m->cached, d))
            return true;
    }
    return false;
}
