/* Eviction of proxied content: scan the store, plan what goes, apply it with a last look. */
#include "evict.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "cache.h"
#include "gc.h"
#include "layout.h"
#include "log.h"
#include "maintenance_int.h"
#include "metrics.h"
#include "offload.h"

/* Units and blobs per job on a worker, each checked against the proxy on the loop before. */
#define UNIT_BATCH 16
#define DATA_BATCH 64
/* Pause between eviction passes: this many times the last pass's work, within bounds. */
#define PAUSE_FACTOR 20
#define PAUSE_MIN_US 1000000LL
#define PAUSE_MAX_US 60000000LL

static const enum digest_algo algos[] = {DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512};
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

/* A cache entry to drop on the loop: repo NULL for the blob everywhere. */
struct gone {
    const char *repo;
    struct digest d;
};

/* A proxied image (a manifest revision) or a proxied blob link no manifest reaches. */
struct unit {
    size_t repo;
    struct digest d;
    time_t pulled;
    bool manifest;
    bool evicted;
    size_t parents;       /* kept manifest units of the same repository that reach it */
    struct digest *reach; /* what it keeps: itself, children, config and layers */
    size_t nreach;
    char **tags; /* proxied tags pointing at it */
    size_t ntags, captags;
};

struct erepo {
    char *name;
    struct gc_set pulled; /* pull records: val = mtime */
    struct gc_set links;  /* blob links with a pull record */
    struct gc_set units;  /* digest -> unit index + 1 */
    struct gc_set held;   /* digest -> kept units of this repository reaching it */
};

/* What a pass found and decided: filled by the scan and plan_decide. */
struct evict_plan {
    bool unsafe;   /* a manifest could not be read: delete nothing this pass */
    bool overflow; /* a blob to remove could not be noted: delete nothing this pass */
    struct erepo *repos;
    size_t nrepos, caprepos;
    struct unit *units;
    size_t nunits, capunits;
    struct gc_set local; /* reached by local content */
    struct gc_set refc;  /* val = kept units reaching it */
    struct gc_set sizes; /* val = bytes it counts in the proxied total */
    size_t *order;       /* evicted units, in eviction order */
    size_t norder;
    struct digest *data; /* blobs whose data goes */
    size_t ndata;
    uint64_t before, left; /* proxied bytes */
};

enum ephase { E_IDLE, E_SCAN, E_UNITS, E_DATA };

/* One running pass: its plan and how far applying it got. */
struct pass {
    enum ephase phase;
    int64_t busy_us; /* work done in this pass */
    struct gc_walk *walk;
    struct evict_plan plan;
    struct gc_set keep; /* found in use while applying */
    size_t next;
    size_t evicted_units;
    uint64_t freed;
    bool finished;
    /* With workers: the units or blobs before batch_end were checked on the loop; busy holds
     * those the proxy was using, gone what the batch removed (the cache forgets it after). */
    size_t batch_end;
    struct gc_set busy;
    struct gone *gone;
    size_t ngone, capgone;
};

struct evict {
    const struct config *cfg;
    struct storage_watch *w;
    /* The driver under the wrapper: the eviction's own reads are no uses of anything. */
    struct storage *st;
    struct proxy *px;
    struct cache *cache; /* told about every link and blob evicted */
    struct offload *ol;
    bool threaded; /* passes run on workers, between loop steps */
    struct event *ev;
    struct pass pass;
    unsigned refs;    /* the owner's and the job's on a worker; on the loop only */
    atomic_bool stop; /* the owner let go: work in progress returns */
};

/* ---- eviction: scan ---- */

static void plan_reset(struct evict_plan *p)
{
    for (size_t i = 0; i < p->nrepos; i++) {
        struct erepo *r = &p->repos[i];
        free(r->name);
        gc_set_free(&r->pulled);
        gc_set_free(&r->links);
        gc_set_free(&r->units);
        gc_set_free(&r->held);
    }
    free(p->repos);
    for (size_t i = 0; i < p->nunits; i++) {
        struct unit *u = &p->units[i];
        free(u->reach);
        for (size_t t = 0; t < u->ntags; t++)
            free(u->tags[t]);
        free(u->tags);
    }
    free(p->units);
    gc_set_free(&p->local);
    gc_set_free(&p->refc);
    gc_set_free(&p->sizes);
    free(p->order);
    free(p->data);
    *p = (struct evict_plan){0};
}

static void pass_reset(struct pass *ps)
{
    gc_walk_free(ps->walk);
    plan_reset(&ps->plan);
    gc_set_free(&ps->keep);
    gc_set_free(&ps->busy);
    free(ps->gone);
    *ps = (struct pass){0};
}

/* Everything manifest d reaches in st (d included) into *v; the caller frees *v. A manifest
 * that exists but cannot be read makes the pass unsafe: its blobs are unknown. */
static int reach(struct storage *st, const struct digest *d, struct digest **v, size_t *n,
                 bool *unsafe)
{
    struct gc_set seen = {0};
    struct digest *q = NULL;
    size_t qn = 0;
    int rc = gc_push_digest(&q, &qn, d);
    while (rc == 0 && qn > 0) {
        struct digest cur = q[--qn];
        int added = gc_set_add(&seen, &cur, NULL);
        if (added <= 0) {
            rc = added;
            continue;
        }
        if (gc_push_digest(v, n, &cur) != 0) {
            rc = -1;
            break;
        }
        struct gc_refs r;
        enum regerr result = gc_manifest_refs(st, &cur, &r);
        if (result == REG_ERR_NOT_FOUND)
            continue;
        if (result != REG_OK) {
            /* Only a root must be a manifest; a child that is not one reaches nothing. */
            if (digest_equal(&cur, d))
                *unsafe = true;
            continue;
        }
        for (size_t i = 0; i < r.nblobs && rc == 0; i++)
            rc = gc_push_digest(v, n, &r.blobs[i]);
        for (size_t i = 0; i < r.nchildren && rc == 0; i++)
            rc = gc_push_digest(&q, &qn, &r.children[i]);
        gc_refs_free(&r);
    }
    free(q);
    gc_set_free(&seen);
    return rc;
}

static int add_all(struct gc_set *s, const struct digest *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (gc_set_add(s, &v[i], NULL) < 0)
            return -1;
    }
    return 0;
}

static struct unit *new_unit(struct evict_plan *p, size_t repo, const struct digest *d,
                             time_t pulled, bool manifest)
{
    /* bounded by the store's revisions and links */
    if (buf_grow_items(&p->units, &p->capunits, p->nunits + 1, sizeof(*p->units),
                       BUF_UNCAPPED / sizeof(*p->units)) != BUF_OK)
        return NULL;
    struct unit *u = &p->units[p->nunits];
    memset(u, 0, sizeof(*u));
    u->repo = repo;
    u->d = *d;
    u->pulled = pulled;
    u->manifest = manifest;
    struct gc_set_entry *e;
    if (gc_set_add(&p->repos[repo].units, d, &e) < 0)
        return NULL;
    e->val = p->nunits + 1;
    p->nunits++;
    return u;
}

/* Lists <repo>/<sub>/<algo>/<hex> entries as digests into set s (val = mtime when stat_it). */
static int list_digests(struct storage *st, const char *name, const char *sub, bool stat_it,
                        struct gc_set *s)
{
    char repo[LAYOUT_PATH_MAX];
    layout_repo(repo, name);
    for (size_t a = 0; a < NALGOS; a++) {
        char dir[LAYOUT_PATH_MAX * 2];
        struct storage_list l = {0};
        snprintf(dir, sizeof(dir), "%s/%s/%s", repo, sub, digest_algo_name(algos[a]));
        if (storage_list(st, dir, &l) != REG_OK)
            continue;
        for (size_t i = 0; i < l.n; i++) {
            struct digest d;
            struct gc_set_entry *e;
            char path[LAYOUT_PATH_MAX * 3];
            struct storage_stat sst = {0};
            snprintf(path, sizeof(path), "%s/%s", dir, l.names[i]);
            if (gc_digest_from(algos[a], l.names[i], &d) != 0 ||
                (stat_it && storage_stat(st, path, &sst) != REG_OK))
                continue;
            if (gc_set_add(s, &d, &e) < 0) {
                storage_list_free(&l);
                return -1;
            }
            e->val = (uint64_t)sst.mtime;
        }
        storage_list_free(&l);
    }
    return 0;
}

/* Records one repository: its proxied units and what its local content reaches. */
static int scan_repo(struct evict_plan *p, struct storage *st, const char *name)
{
    char path[LAYOUT_PATH_MAX];
    struct digest *revs = NULL;
    size_t nrevs = 0;
    struct gc_set local_tagged = {0};
    struct gc_set reached = {0}; /* by any revision of this repository */
    struct storage_list tags = {0};
    struct gc_set layers = {0};
    int rc = -1;
    /* bounded by the store's repositories */
    if (buf_grow_items(&p->repos, &p->caprepos, p->nrepos + 1, sizeof(*p->repos),
                       BUF_UNCAPPED / sizeof(*p->repos)) != BUF_OK)
        return -1;
    size_t ri = p->nrepos;
    struct erepo *r = &p->repos[ri];
    memset(r, 0, sizeof(*r));
    if (!(r->name = strdup(name)))
        return -1;
    p->nrepos++;
    if (list_digests(st, name, "_proxy/pulled", true, &r->pulled) != 0 ||
        gc_revisions(st, name, &revs, &nrevs) != REG_OK)
        goto out;
    /* A revision a local tag points at is local, whatever its pull record says. */
    if (storage_list(st, layout_tags_dir(path, name), &tags) == REG_OK) {
        for (size_t i = 0; i < tags.n; i++) {
            struct digest d;
            struct storage_stat sst;
            if (gc_read_link(st, layout_tag_current(path, name, tags.names[i]), &d) != REG_OK)
                continue;
            bool proxied =
                storage_stat(st, layout_proxy_tag(path, name, tags.names[i]), &sst) == REG_OK;
            if (!proxied && gc_set_add(&local_tagged, &d, NULL) < 0)
                goto out;
        }
    }
    for (size_t i = 0; i < nrevs; i++) {
        struct digest *v = NULL;
        size_t n = 0;
        if (reach(st, &revs[i], &v, &n, &p->unsafe) != 0 || add_all(&reached, v, n) != 0) {
            free(v);
            goto out;
        }
        struct gc_set_entry *rec = gc_set_find(&r->pulled, &revs[i]);
        if (!rec || gc_set_find(&local_tagged, &revs[i])) {
            int added = add_all(&p->local, v, n);
            free(v);
            if (added != 0)
                goto out;
            continue;
        }
        struct unit *u = new_unit(p, ri, &revs[i], (time_t)rec->val, true);
        if (!u) {
            free(v);
            goto out;
        }
        u->reach = v;
        u->nreach = n;
    }
    /* The proxied tags of each unit, to go with it. */
    for (size_t i = 0; i < tags.n; i++) {
        struct digest d;
        struct storage_stat sst;
        struct gc_set_entry *e;
        if (gc_read_link(st, layout_tag_current(path, name, tags.names[i]), &d) != REG_OK ||
            storage_stat(st, layout_proxy_tag(path, name, tags.names[i]), &sst) != REG_OK ||
            !(e = gc_set_find(&r->units, &d)))
            continue;
        struct unit *u = &p->units[e->val - 1];
        /* bounded by the repository's tags */
        if (buf_grow_items(&u->tags, &u->captags, u->ntags + 1, sizeof(*u->tags),
                           BUF_UNCAPPED / sizeof(*u->tags)) != BUF_OK)
            goto out;
        if (!(u->tags[u->ntags] = strdup(tags.names[i])))
            goto out;
        u->ntags++;
    }
    /* Blob links: local without a pull record; a proxied one no manifest reaches is a unit. */
    if (list_digests(st, name, "_layers", false, &layers) != 0)
        goto out;
    for (size_t i = 0; i < layers.cap; i++) {
        if (!layers.v[i].used)
            continue;
        const struct digest *d = &layers.v[i].d;
        struct gc_set_entry *rec = gc_set_find(&r->pulled, d);
        if (!rec) {
            if (gc_set_add(&p->local, d, NULL) < 0)
                goto out;
            continue;
        }
        if (gc_set_add(&r->links, d, NULL) < 0)
            goto out;
        if (gc_set_find(&reached, d))
            continue;
        struct unit *u = new_unit(p, ri, d, (time_t)rec->val, false);
        if (!u || gc_push_digest(&u->reach, &u->nreach, d) != 0)
            goto out;
    }
    rc = 0;
out:
    free(revs);
    storage_list_free(&tags);
    gc_set_free(&local_tagged);
    gc_set_free(&reached);
    gc_set_free(&layers);
    return rc;
}

/* ---- eviction: plan ---- */

struct by_age {
    time_t pulled;
    size_t unit;
};

static int cmp_age(const void *a, const void *b)
{
    const struct by_age *x = a, *y = b;
    if (x->pulled != y->pulled)
        return x->pulled < y->pulled ? -1 : 1;
    return x->unit < y->unit ? -1 : x->unit > y->unit;
}

/* Size of blob d when only proxied content holds it, else 0. */
static uint64_t proxied_size(const struct evict_plan *p, struct storage *st, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    if (gc_set_find(&p->local, d) || storage_stat(st, layout_blob_data(path, d), &sst) != REG_OK)
        return 0;
    return sst.size;
}

static void evict_unit(struct evict_plan *p, struct unit *u, uint64_t *total)
{
    struct erepo *r = &p->repos[u->repo];
    u->evicted = true;
    for (size_t i = 0; i < u->nreach; i++) {
        const struct digest *d = &u->reach[i];
        struct gc_set_entry *c = gc_set_find(&p->refc, d);
        if (c && c->val > 0 && --c->val == 0) {
            struct gc_set_entry *z = gc_set_find(&p->sizes, d);
            *total -= z && z->val <= *total ? z->val : *total;
            if (!gc_set_find(&p->local, d) && gc_push_digest(&p->data, &p->ndata, d) != 0)
                p->overflow = true; /* deletes nothing rather than too much */
        }
        struct gc_set_entry *h = gc_set_find(&r->held, d);
        if (h && h->val > 0)
            h->val--;
        struct gc_set_entry *e = gc_set_find(&r->units, d);
        if (e && !digest_equal(d, &u->d) && p->units[e->val - 1].parents > 0)
            p->units[e->val - 1].parents--;
    }
}

/* Decides what goes: expired units first, then the least recently pulled while over the
 * bound; a unit a kept image of its repository reaches waits for that image. */
static int plan_decide(struct evict_plan *p, struct storage *st, int64_t ttl_ms, uint64_t maxsize,
                       time_t now)
{
    uint64_t total = 0;
    for (size_t i = 0; i < p->nunits; i++) {
        struct unit *u = &p->units[i];
        struct erepo *r = &p->repos[u->repo];
        for (size_t k = 0; k < u->nreach; k++) {
            const struct digest *d = &u->reach[k];
            struct gc_set_entry *c, *h;
            int added = gc_set_add(&p->refc, d, &c);
            if (added < 0)
                return -1;
            c->val++;
            if (added == 1) {
                struct gc_set_entry *z;
                uint64_t size = proxied_size(p, st, d);
                if (gc_set_add(&p->sizes, d, &z) < 0)
                    return -1;
                z->val = size;
                total += size;
            }
            if (gc_set_add(&r->held, d, &h) < 0)
                return -1;
            h->val++;
            struct gc_set_entry *e = gc_set_find(&r->units, d);
            if (e && !digest_equal(d, &u->d))
                p->units[e->val - 1].parents++;
        }
    }
    struct by_age *order = malloc((p->nunits ? p->nunits : 1) * sizeof(*order));
    p->order = malloc((p->nunits ? p->nunits : 1) * sizeof(*p->order));
    if (!order || !p->order) {
        free(order);
        return -1;
    }
    for (size_t i = 0; i < p->nunits; i++)
        order[i] = (struct by_age){p->units[i].pulled, i};
    qsort(order, p->nunits, sizeof(*order), cmp_age);
    p->before = total;
    size_t expired = 0;
    for (bool progress = true; progress;) {
        progress = false;
        for (size_t k = 0; k < p->nunits; k++) {
            struct unit *u = &p->units[order[k].unit];
            bool old = ttl_ms > 0 && (int64_t)(now - u->pulled) * 1000 > ttl_ms;
            bool over = maxsize > 0 && total > maxsize;
            if (!old && !over)
                break;
            if (u->evicted || u->parents > 0)
                continue;
            evict_unit(p, u, &total);
            expired += old;
            p->order[p->norder++] = order[k].unit;
            /* Its children waited for it: from the oldest again. */
            progress = true;
            break;
        }
    }
    free(order);
    p->left = total;
    if (p->norder)
        log_info("eviction: proxied content %" PRIu64 " bytes in %zu items; evicting %zu (%zu "
                 "not pulled within proxy.ttl), %" PRIu64 " bytes left",
                 p->before, p->nunits, p->norder, expired, total);
    return 0;
}

struct evict_plan *evict_plan_make(struct storage *st, int64_t ttl_ms, uint64_t maxsize, time_t now)
{
    char name[LAYOUT_PATH_MAX];
    struct evict_plan *p = calloc(1, sizeof(*p));
    struct gc_walk *walk = gc_walk_new(st);
    int r = walk ? 1 : -1;
    while (p && r > 0 && (r = gc_walk_next(walk, name)) > 0) {
        if (scan_repo(p, st, name) != 0)
            r = -1;
    }
    gc_walk_free(walk);
    if (p && (r < 0 || plan_decide(p, st, ttl_ms, maxsize, now) != 0)) {
        evict_plan_free(p);
        return NULL;
    }
    return p;
}

void evict_plan_free(struct evict_plan *p)
{
    if (!p)
        return;
    plan_reset(p);
    free(p);
}

size_t evict_plan_items(const struct evict_plan *p)
{
    return p->norder;
}

struct evict_item evict_plan_item(const struct evict_plan *p, size_t k)
{
    const struct unit *u = &p->units[p->order[k]];
    return (struct evict_item){p->repos[u->repo].name, u->d, u->manifest};
}

size_t evict_plan_blobs(const struct evict_plan *p)
{
    return p->ndata;
}

const struct digest *evict_plan_blob(const struct evict_plan *p, size_t k)
{
    return &p->data[k];
}

uint64_t evict_plan_bytes_before(const struct evict_plan *p)
{
    return p->before;
}

uint64_t evict_plan_bytes_left(const struct evict_plan *p)
{
    return p->left;
}

/* ---- eviction: apply ---- */

/* Whether the proxy uses d: asked on the loop, or what the loop found before the batch. */
static bool in_flight(struct evict *e, const struct digest *d)
{
    if (!e->px)
        return false;
    return e->threaded ? gc_set_find(&e->pass.busy, d) != NULL : proxy_busy(e->px, d);
}

/* The cache forgets d (in repo, or everywhere when NULL) now on the loop, else after the
 * batch (and did before it). False when that cannot be arranged: then d stays. */
static bool forget(struct evict *e, const char *repo, const struct digest *d)
{
    struct pass *ps = &e->pass;
    if (!e->threaded) {
        cache_forget(e->cache, repo, d);
        return true;
    }
    /* bounded by the batch's blobs and what they reach */
    if (buf_grow_items(&ps->gone, &ps->capgone, ps->ngone + 1, sizeof(*ps->gone),
                       BUF_UNCAPPED / sizeof(*ps->gone)) != BUF_OK)
        return false;
    ps->gone[ps->ngone++] = (struct gone){repo, *d};
    return true;
}

/* Whether the pull record of d in repository name is newer than the pass saw. */
static bool pulled_again(struct evict *e, const char *name, const struct digest *d, time_t seen)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    return storage_stat(e->st, layout_proxy_pulled(path, name, d), &sst) == REG_OK &&
           sst.mtime > seen;
}

static void keep_reach(struct evict *e, const struct unit *u)
{
    for (size_t i = 0; i < u->nreach; i++) {
        if (gc_set_add(&e->pass.keep, &u->reach[i], NULL) < 0)
            storage_watch_overflow(e->w);
    }
}

/* Removes a proxied blob link of repository r and its pull record. */
static void unlink_blob(struct evict *e, struct erepo *r, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    if (!forget(e, r->name, d))
        return;
    layout_layer_link(path, r->name, d);
    *strrchr(path, '/') = '\0';
    storage_remove(e->st, path);
    storage_remove(e->st, layout_proxy_pulled(path, r->name, d));
}

static void apply_unit(struct evict *e, struct unit *u)
{
    struct evict_plan *p = &e->pass.plan;
    struct erepo *r = &p->repos[u->repo];
    char path[LAYOUT_PATH_MAX];
    /* Pulled, linked or asked for since the scan: it stays, with all it reaches. */
    if (pulled_again(e, r->name, &u->d, u->pulled) || storage_watch_touched(e->w, &u->d) ||
        in_flight(e, &u->d)) {
        keep_reach(e, u);
        return;
    }
    e->pass.evicted_units++;
    if (!u->manifest) {
        unlink_blob(e, r, &u->d);
        return;
    }
    /* The proxy may hold these tags resolved in memory (thread-safe call). */
    proxy_tags_changed(e->px);
    /* The tag before its marker: a tag without a marker would look local. */
    for (size_t t = 0; t < u->ntags; t++) {
        struct digest cur;
        if (gc_read_link(e->st, layout_tag_current(path, r->name, u->tags[t]), &cur) != REG_OK ||
            !digest_equal(&cur, &u->d))
            continue;
        storage_remove(e->st, layout_tag_dir(path, r->name, u->tags[t]));
        storage_remove(e->st, layout_proxy_tag(path, r->name, u->tags[t]));
    }
    layout_revision_link(path, r->name, &u->d);
    *strrchr(path, '/') = '\0';
    storage_remove(e->st, path);
    storage_remove(e->st, layout_proxy_pulled(path, r->name, &u->d));
    /* Its blobs' links in this repository, unless a kept image here still reaches them. */
    for (size_t i = 1; i < u->nreach; i++) {
        const struct digest *d = &u->reach[i];
        struct gc_set_entry *h = gc_set_find(&r->held, d);
        if (gc_set_find(&r->links, d) && (!h || h->val == 0) && !storage_watch_touched(e->w, d) &&
            !in_flight(e, d))
            unlink_blob(e, r, d);
    }
}

/* Adds what the manifests linked since the pass began reach to the keep set. Those linked
 * later are caught by storage_watch_touched: a manifest put stats each blob it references. */
static void keep_touched(struct evict *e)
{
    struct digest *seen = NULL;
    size_t nseen = 0;
    storage_watch_recorded(e->w, &seen, &nseen);
    for (size_t i = 0; i < nseen; i++) {
        struct digest *v = NULL;
        size_t n = 0;
        bool unsafe = false; /* a touched blob that is no manifest is just a blob */
        if (reach(e->st, &seen[i], &v, &n, &unsafe) != 0 || add_all(&e->pass.keep, v, n) != 0)
            storage_watch_overflow(e->w);
        free(v);
    }
    free(seen);
}

static void apply_data(struct evict *e, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    if (e->pass.plan.unsafe || storage_watch_touched(e->w, d) || gc_set_find(&e->pass.keep, d) ||
        in_flight(e, d))
        return;
    if (storage_stat(e->st, layout_blob_data(path, d), &sst) != REG_OK || !forget(e, NULL, d))
        return;
    if (storage_remove(e->st, layout_blob_dir(path, d)) == REG_OK)
        e->pass.freed += sst.size;
}

static void evict_done(struct evict *e)
{
    struct pass *ps = &e->pass;
    metrics_add(METRICS_EVICTED_ITEMS, ps->evicted_units);
    metrics_add(METRICS_EVICTED_BYTES, ps->freed);
    if (ps->plan.norder || ps->plan.unsafe)
        log_info("eviction: pass done: %zu items evicted, %" PRIu64 " bytes freed%s",
                 ps->evicted_units, ps->freed,
                 ps->plan.unsafe ? " (no data removed: a manifest could not be read)" : "");
    int64_t pause = ps->busy_us * PAUSE_FACTOR;
    pause = pause < PAUSE_MIN_US ? PAUSE_MIN_US : pause > PAUSE_MAX_US ? PAUSE_MAX_US : pause;
    storage_watch_record(e->w, false);
    pass_reset(ps);
    maintenance_schedule(e->ev, pause);
}

/* The units or blobs of the next batch, on the loop before a worker takes it: which the proxy
 * uses, and the cache entries the batch may remove go now (a miss at worst). */
static void evict_prepare(struct evict *e)
{
    struct pass *ps = &e->pass;
    const struct evict_plan *p = &ps->plan;
    gc_set_free(&ps->busy);
    if (ps->phase == E_UNITS) {
        size_t end = ps->next + UNIT_BATCH < p->norder ? ps->next + UNIT_BATCH : p->norder;
        for (size_t k = ps->next; k < end; k++) {
            const struct unit *u = &p->units[p->order[k]];
            const struct erepo *r = &p->repos[u->repo];
            for (size_t i = 0; i < u->nreach; i++) {
                const struct digest *d = &u->reach[i];
                if (e->px && proxy_busy(e->px, d) && gc_set_add(&ps->busy, d, NULL) < 0)
                    storage_watch_overflow(e->w);
                if (gc_set_find(&r->links, d))
                    cache_forget(e->cache, r->name, d);
            }
        }
        ps->batch_end = end;
    } else if (ps->phase == E_DATA) {
        size_t end = ps->next + DATA_BATCH < p->ndata ? ps->next + DATA_BATCH : p->ndata;
        for (size_t k = ps->next; k < end; k++) {
            const struct digest *d = &p->data[k];
            if (e->px && proxy_busy(e->px, d) && gc_set_add(&ps->busy, d, NULL) < 0)
                storage_watch_overflow(e->w);
            cache_forget(e->cache, NULL, d);
        }
        ps->batch_end = end;
    }
}

/* Enters a phase of units or blobs: on the loop all at once, with workers batch by batch. */
static void evict_phase(struct evict *e, enum ephase phase)
{
    e->pass.phase = phase;
    e->pass.next = 0;
    e->pass.batch_end = e->threaded ? 0 : SIZE_MAX;
}

/* Runs the pass for budget_us, or until the next batch needs the loop, or to its end
 * (finished). The last looks and the deletes hold the gate. */
static void evict_run(struct evict *e, int64_t budget_us)
{
    struct pass *ps = &e->pass;
    struct evict_plan *p = &ps->plan;
    int64_t t0 = maintenance_now_us();
    char name[LAYOUT_PATH_MAX];
    while (maintenance_now_us() - t0 < budget_us && !atomic_load(&e->stop)) {
        if (ps->phase == E_SCAN) {
            int r = gc_walk_next(ps->walk, name);
            if (r < 0 || (r > 0 && scan_repo(p, e->st, name) != 0)) {
                log_warn("eviction: scanning the store failed; trying again later");
                ps->finished = true;
                break;
            }
            if (r == 0) {
                if (plan_decide(p, e->st, e->cfg->proxy.ttl_ms, (uint64_t)e->cfg->proxy.maxsize,
                                time(NULL)) != 0) {
                    ps->finished = true;
                    break;
                }
                if (p->overflow)
                    storage_watch_overflow(e->w);
                metrics_set(METRICS_GAUGE_PROXIED_BYTES, p->left);
                evict_phase(e, E_UNITS);
            }
        } else if (ps->phase == E_UNITS) {
            if (ps->next < p->norder) {
                if (ps->next >= ps->batch_end)
                    break;
                storage_watch_gate_close(e->w);
                apply_unit(e, &p->units[p->order[ps->next++]]);
                storage_watch_gate_open(e->w);
                continue;
            }
            keep_touched(e);
            evict_phase(e, E_DATA);
        } else {
            if (ps->next >= p->ndata) {
                ps->finished = true;
                break;
            }
            if (ps->next >= ps->batch_end)
                break;
            storage_watch_gate_close(e->w);
            apply_data(e, &p->data[ps->next++]);
            storage_watch_gate_open(e->w);
        }
    }
    ps->busy_us += maintenance_now_us() - t0;
}

/* On the loop after a step: the cache forgets what the step removed; then the next step, or
 * the pause before the next pass. */
static void evict_next(struct evict *e)
{
    struct pass *ps = &e->pass;
    for (size_t i = 0; i < ps->ngone; i++)
        cache_forget(e->cache, ps->gone[i].repo, &ps->gone[i].d);
    ps->ngone = 0;
    if (ps->finished)
        evict_done(e);
    else
        maintenance_schedule(e->ev, 0);
}

/* ---- life cycle ---- */

static void evict_unref(struct evict *e)
{
    if (--e->refs > 0)
        return;
    pass_reset(&e->pass);
    storage_watch_record(e->w, false);
    free(e);
}

static void evict_work(void *arg)
{
    evict_run(arg, MAINTENANCE_WORK_BUDGET_US);
}

static void evict_after(void *arg, bool cancelled)
{
    struct evict *e = arg;
    if (!cancelled && !atomic_load(&e->stop))
        evict_next(e);
    evict_unref(e);
}

static void evict_tick(evutil_socket_t fd, short what, void *arg)
{
    struct evict *e = arg;
    struct pass *ps = &e->pass;
    if (ps->phase == E_IDLE && !proxy_evicts(e->px)) {
        /* Another node of the cluster evicts (or Redis is away: nobody does for now). */
        maintenance_schedule(e->ev, PAUSE_MIN_US);
        return;
    }
    if (ps->phase == E_IDLE) {
        ps->walk = gc_walk_new(e->st);
        if (!ps->walk) {
            evict_done(e);
            return;
        }
        ps->phase = E_SCAN;
        storage_watch_record(e->w, true);
    }
    if (!e->threaded) {
        evict_run(e, MAINTENANCE_TICK_BUDGET_US);
        evict_next(e);
        return;
    }
    evict_prepare(e);
    e->refs++;
    offload_run(e->ol, evict_work, evict_after, e);
}

struct evict *evict_new(struct event_base *base, const struct config *cfg, struct storage_watch *w,
                        struct proxy *px, struct cache *cache, struct offload *ol)
{
    struct evict *e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->cfg = cfg;
    e->w = w;
    e->st = storage_watch_inner(w);
    e->px = px;
    e->cache = cache;
    e->ol = ol;
    e->threaded = !offload_inline(ol);
    e->refs = 1;
    atomic_init(&e->stop, false);
    e->ev = evtimer_new(base, evict_tick, e);
    if (!e->ev) {
        free(e);
        return NULL;
    }
    /* Workers start taking jobs only once the loop runs, after this. */
    storage_watch_set_gated(w, e->threaded);
    maintenance_schedule(e->ev, PAUSE_MIN_US);
    metrics_set(METRICS_GAUGE_MAXSIZE, (uint64_t)cfg->proxy.maxsize);
    log_info("eviction: proxy.ttl %" PRId64 " ms, proxy.maxsize %" PRId64 " bytes (0: none)",
             cfg->proxy.ttl_ms, cfg->proxy.maxsize);
    return e;
}

void evict_free(struct evict *e)
{
    if (!e)
        return;
    event_free(e->ev);
    e->ev = NULL;
    atomic_store(&e->stop, true);
    evict_unref(e);
}
