/* Background maintenance of the running daemon: upload purging and proxy eviction. */
#include "maintenance.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "gc.h"
#include "layout.h"
#include "log.h"
#include "offload.h"

/* Work per timer tick before yielding to the event loop. */
#define TICK_BUDGET_US 4000
/* Work per job on a worker thread: bounds how long shutdown waits for one. */
#define WORK_BUDGET_US 100000
/* Units and blobs per job on a worker, each checked against the proxy on the loop before. */
#define UNIT_BATCH 16
#define DATA_BATCH 64
/* Pause between eviction passes: this many times the last pass's work, within bounds. */
#define PAUSE_FACTOR 20
#define PAUSE_MIN_US 1000000LL
#define PAUSE_MAX_US 60000000LL
/* The first upload purge after start: registry:2 waits up to an hour; so does this, at most. */
#define PURGE_FIRST_MAX_MS 3600000LL

static const enum digest_algo algos[] = {DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512};
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

/* ---- the storage wrapper that records what is linked (or, with workers, used) in a pass ---- */

/*
 * With worker threads, writers and readers run while a pass checks and deletes. Every
 * registry call that writes a link to blob d (mount, upload commit, import, manifest store)
 * stats d's data first, in the same call; a manifest put also stats every blob it references;
 * a reader reads a link (tag, revision, blob in a repository) before what it names. While a
 * pass records, the wrapper notes d at that stat, link write or link read, holding the gate
 * shared; the pass holds the gate exclusively from its last look (touched, pull record, tag)
 * to the end of the delete. A caller that came first is seen and d stays; one that comes later
 * waits for the delete to end, then finds the link or data gone (it goes upstream, fails, or
 * stores the bytes again) or writes a link after the old one went: a new link, which the next
 * pass sees. Recording starts before the scan, so a call that began before it is noted long
 * before any delete. On the loop alone (the filesystem) nothing comes between a check and its
 * delete: no gate there.
 */
struct watch {
    struct storage base;
    struct storage_ops ops;
    struct storage *inner;
    pthread_mutex_t mu; /* guards recording, overflow and touched */
    bool recording;
    bool overflow; /* a digest could not be recorded: nothing may be deleted this pass */
    struct gc_set touched;
    bool gated; /* set before any worker runs */
    pthread_rwlock_t gate;
};

static struct watch *W(struct storage *s)
{
    return (struct watch *)s;
}

/* Notes d as in use while a pass records. */
static void w_record(struct watch *w, const struct digest *d)
{
    pthread_mutex_lock(&w->mu);
    if (w->recording && gc_set_add(&w->touched, d, NULL) < 0)
        w->overflow = true;
    pthread_mutex_unlock(&w->mu);
}

/* The same for the digest a link's text names. */
static void w_record_link(struct watch *w, const void *text, size_t len)
{
    struct digest d;
    pthread_mutex_lock(&w->mu);
    if (w->recording && digest_parse(text, len, &d) == 0 && gc_set_add(&w->touched, &d, NULL) < 0)
        w->overflow = true;
    pthread_mutex_unlock(&w->mu);
}

/* The digest of a blob's data path (layout_blob_data); false for any other path. */
static bool blob_data_digest(const char *path, struct digest *d)
{
    char s[DIGEST_STR_MAX + 8], again[LAYOUT_PATH_MAX];
    size_t n = strlen(path);
    if (n < 5 || strcmp(path + n - 5, "/data") != 0)
        return false;
    const char *hex_end = path + n - 5, *hex = hex_end;
    while (hex > path && hex[-1] != '/')
        hex--;
    /* <algo>/<two hex>/<hex>/data */
    if (hex - path < 5 || hex[-4] != '/')
        return false;
    const char *algo_end = hex - 4, *algo = algo_end;
    while (algo > path && algo[-1] != '/')
        algo--;
    int len = snprintf(s, sizeof(s), "%.*s:%.*s", (int)(algo_end - algo), algo,
                       (int)(hex_end - hex), hex);
    return len > 0 && (size_t)len < sizeof(s) && digest_parse(s, (size_t)len, d) == 0 &&
           strcmp(layout_blob_data(again, d), path) == 0;
}

static bool is_link(const char *path)
{
    size_t n = strlen(path);
    return n >= 5 && strcmp(path + n - 5, "/link") == 0;
}

static enum regerr w_get_content(struct storage *s, const char *path, size_t max, char **out,
                                 size_t *len)
{
    struct watch *w = W(s);
    if (!w->gated || !is_link(path))
        return storage_get_content(w->inner, path, max, out, len);
    /* A reader that found a link (a tag, a blob in a repository) reads its target next. */
    pthread_rwlock_rdlock(&w->gate);
    enum regerr result = storage_get_content(w->inner, path, max, out, len);
    if (result == REG_OK)
        w_record_link(w, *out, *len);
    pthread_rwlock_unlock(&w->gate);
    return result;
}

static enum regerr w_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    struct watch *w = W(s);
    if (w->gated)
        pthread_rwlock_rdlock(&w->gate);
    /* Every link (blob into a repository, revision, tag) names its target: that target is
     * in use from now on, whatever the pass saw before. */
    if (is_link(path))
        w_record_link(w, data, len);
    enum regerr result = storage_put_content(w->inner, path, data, len);
    if (w->gated)
        pthread_rwlock_unlock(&w->gate);
    return result;
}

static enum regerr w_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    struct watch *w = W(s);
    struct digest d;
    /* A writer's existence check before its link (see struct watch). */
    if (w->gated && blob_data_digest(path, &d)) {
        pthread_rwlock_rdlock(&w->gate);
        w_record(w, &d);
        pthread_rwlock_unlock(&w->gate);
    }
    return storage_stat(w->inner, path, out);
}

static enum regerr w_list(struct storage *s, const char *path, struct storage_list *out)
{
    return storage_list(W(s)->inner, path, out);
}

static enum regerr w_move(struct storage *s, const char *src, const char *dst)
{
    return storage_move(W(s)->inner, src, dst);
}

static enum regerr w_remove(struct storage *s, const char *path)
{
    return storage_remove(W(s)->inner, path);
}

static enum regerr w_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    return storage_open_read(W(s)->inner, path, fd, size);
}

static enum regerr w_open_writer(struct storage *s, const char *path, bool append,
                                 struct storage_writer **out)
{
    return storage_open_writer(W(s)->inner, path, append, out);
}

/* The optional ops pass through untouched when the wrapped driver has them. */
static enum regerr w_presign_get(struct storage *s, const char *path, long expires_s, char **url)
{
    return storage_presign_get(W(s)->inner, path, expires_s, url);
}

static enum regerr w_read_range(struct storage *s, const char *path, uint64_t off, uint64_t len,
                                storage_read_cb cb, void *ctx)
{
    return storage_read_range(W(s)->inner, path, off, len, cb, ctx);
}

static void w_free(struct storage *s)
{
    struct watch *w = W(s);
    storage_free(w->inner);
    gc_set_free(&w->touched);
    pthread_mutex_destroy(&w->mu);
    pthread_rwlock_destroy(&w->gate);
    free(w);
}

struct storage *maintenance_storage_wrap(struct storage *inner)
{
    if (!inner)
        return NULL;
    struct watch *w = calloc(1, sizeof(*w));
    if (!w)
        return inner;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A delete waits for the writers in progress, not for every later one. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        pthread_rwlockattr_destroy(&attr);
        free(w);
        return inner;
    }
    if (pthread_rwlock_init(&w->gate, &attr) != 0) {
        pthread_rwlockattr_destroy(&attr);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return inner;
    }
    pthread_rwlockattr_destroy(&attr);
    w->inner = inner;
    w->ops = (struct storage_ops){
        .name = inner->ops->name,
        .get_content = w_get_content,
        .put_content = w_put_content,
        .stat = w_stat,
        .list = w_list,
        .move = w_move,
        .remove = w_remove,
        .open_read = w_open_read,
        .open_writer = w_open_writer,
        .presign_get = inner->ops->presign_get ? w_presign_get : NULL,
        .read_range = inner->ops->read_range ? w_read_range : NULL,
        .free = w_free,
    };
    w->base.ops = &w->ops;
    w->base.local = inner->local;
    return &w->base;
}

/* ---- the maintenance ---- */

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
    size_t ntags;
};

struct erepo {
    char *name;
    struct gc_set pulled; /* pull records: val = mtime */
    struct gc_set links;  /* blob links with a pull record */
    struct gc_set units;  /* digest -> unit index + 1 */
    struct gc_set held;   /* digest -> kept units of this repository reaching it */
};

enum ephase { E_IDLE, E_SCAN, E_UNITS, E_DATA };

struct evict {
    enum ephase phase;
    int64_t busy_us; /* work done in this pass */
    bool unsafe;     /* a manifest could not be read: delete nothing this pass */
    struct gc_walk *walk;
    struct erepo *repos;
    size_t nrepos;
    struct unit *units;
    size_t nunits;
    struct gc_set local; /* reached by local content */
    struct gc_set refc;  /* val = kept units reaching it */
    struct gc_set sizes; /* val = bytes it counts in the proxied total */
    struct gc_set keep;  /* found in use while applying */
    size_t *order;       /* evicted units, in eviction order */
    size_t norder, next;
    struct digest *data; /* blobs whose data goes */
    size_t ndata;
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

struct maintenance {
    struct event_base *base;
    const struct config *cfg;
    struct watch *w;
    /* The driver under the wrapper: the maintenance's own reads are no uses of anything. */
    struct storage *st;
    struct registry *reg;
    struct proxy *px;
    struct cache *cache; /* told about every link and blob evicted */
    struct offload *ol;
    bool threaded; /* passes run on workers, between loop steps */
    struct event *purge_ev, *evict_ev;
    struct gc_walk *purge_walk;
    size_t purged;
    bool purge_finished;
    struct evict ev;
    unsigned jobs;    /* on workers now */
    bool dying;       /* freed while jobs ran: the last one's done frees it */
    atomic_bool stop; /* tells work in progress to return */
};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void schedule(struct event *ev, int64_t us)
{
    struct timeval tv = {(time_t)(us / 1000000), (suseconds_t)(us % 1000000)};
    evtimer_add(ev, &tv);
}

/* ---- upload purging ---- */

static time_t parse_startedat(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    return end ? timegm(&tm) : 0;
}

/* The last sign of life of an upload session: its start or its last write. */
static time_t upload_last(struct storage *st, const char *name, const char *id)
{
    char path[LAYOUT_PATH_MAX];
    char *body = NULL;
    size_t len = 0;
    time_t last = 0;
    struct storage_stat sst;
    if (storage_get_content(st, layout_upload_startedat(path, name, id), 64, &body, &len) == REG_OK)
        last = parse_startedat(body);
    free(body);
    if (storage_stat(st, layout_upload_startedat(path, name, id), &sst) == REG_OK && !last)
        last = sst.mtime;
    if (storage_stat(st, layout_upload_data(path, name, id), &sst) == REG_OK && sst.mtime > last)
        last = sst.mtime;
    return last;
}

static void purge_repo(struct maintenance *m, const char *name)
{
    char repo[LAYOUT_PATH_MAX], dir[LAYOUT_PATH_MAX + 16];
    struct storage_list l = {0};
    snprintf(dir, sizeof(dir), "%s/_uploads", layout_repo(repo, name));
    if (storage_list(m->st, dir, &l) != REG_OK)
        return;
    time_t now = time(NULL);
    for (size_t i = 0; i < l.n; i++) {
        time_t last = upload_last(m->st, name, l.names[i]);
        if ((int64_t)(now - last) * 1000 <= m->cfg->storage.maintenance.uploadpurging.age_ms)
            continue;
        if (m->cfg->storage.maintenance.uploadpurging.dryrun) {
            log_info("uploadpurging (dry run): would remove upload %s of %s", l.names[i], name);
            continue;
        }
        if (registry_upload_cancel(m->reg, name, l.names[i]) == REG_OK) {
            log_info("uploadpurging: removed upload %s of %s", l.names[i], name);
            m->purged++;
        }
    }
    storage_list_free(&l);
}

/* Purges repositories until budget_us is spent or the walk ends (purge_finished). */
static void purge_run(struct maintenance *m, int64_t budget_us)
{
    int64_t t0 = now_us();
    char name[LAYOUT_PATH_MAX];
    if (!m->purge_walk) {
        m->purge_walk = gc_walk_new(m->st);
        m->purged = 0;
        if (!m->purge_walk) {
            m->purge_finished = true;
            return;
        }
    }
    while (!atomic_load(&m->stop)) {
        if (gc_walk_next(m->purge_walk, name) <= 0) {
            log_info("uploadpurging: pass done, %zu stale uploads removed", m->purged);
            m->purge_finished = true;
            return;
        }
        purge_repo(m, name);
        if (now_us() - t0 > budget_us)
            return;
    }
}

/* On the loop after a step: the next step now, or the next pass after the interval. */
static void purge_next(struct maintenance *m)
{
    if (!m->purge_finished) {
        schedule(m->purge_ev, 0);
        return;
    }
    gc_walk_free(m->purge_walk);
    m->purge_walk = NULL;
    m->purge_finished = false;
    schedule(m->purge_ev, m->cfg->storage.maintenance.uploadpurging.interval_ms * 1000);
}

static void maintenance_release(struct maintenance *m);

/* Ends a job on the loop; false when the maintenance is gone or the pool stopping. */
static bool job_end(struct maintenance *m, bool cancelled)
{
    m->jobs--;
    if (m->dying) {
        if (m->jobs == 0)
            maintenance_release(m);
        return false;
    }
    return !cancelled;
}

static void purge_work(void *arg)
{
    purge_run(arg, WORK_BUDGET_US);
}

static void purge_done(void *arg, bool cancelled)
{
    struct maintenance *m = arg;
    if (job_end(m, cancelled))
        purge_next(m);
}

static void purge_tick(evutil_socket_t fd, short what, void *arg)
{
    struct maintenance *m = arg;
    if (!m->threaded) {
        purge_run(m, TICK_BUDGET_US);
        purge_next(m);
        return;
    }
    m->jobs++;
    offload_run(m->ol, purge_work, purge_done, m);
}

/* ---- eviction: scan ---- */

static void set_overflow(struct watch *w)
{
    pthread_mutex_lock(&w->mu);
    w->overflow = true;
    pthread_mutex_unlock(&w->mu);
}

static void set_recording(struct watch *w, bool on)
{
    pthread_mutex_lock(&w->mu);
    w->recording = on;
    w->overflow = false;
    gc_set_free(&w->touched);
    pthread_mutex_unlock(&w->mu);
}

static void evict_reset(struct evict *ev)
{
    gc_walk_free(ev->walk);
    for (size_t i = 0; i < ev->nrepos; i++) {
        struct erepo *r = &ev->repos[i];
        free(r->name);
        gc_set_free(&r->pulled);
        gc_set_free(&r->links);
        gc_set_free(&r->units);
        gc_set_free(&r->held);
    }
    free(ev->repos);
    for (size_t i = 0; i < ev->nunits; i++) {
        struct unit *u = &ev->units[i];
        free(u->reach);
        for (size_t t = 0; t < u->ntags; t++)
            free(u->tags[t]);
        free(u->tags);
    }
    free(ev->units);
    gc_set_free(&ev->local);
    gc_set_free(&ev->refc);
    gc_set_free(&ev->sizes);
    gc_set_free(&ev->keep);
    free(ev->order);
    free(ev->data);
    gc_set_free(&ev->busy);
    free(ev->gone);
    *ev = (struct evict){0};
}

/* Everything manifest d reaches in st (d included) into *v; the caller frees *v. A manifest
 * that exists but cannot be read makes the pass unsafe: its blobs are unknown. */
static int reach(struct maintenance *m, const struct digest *d, struct digest **v, size_t *n)
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
        enum regerr result = gc_manifest_refs(m->st, &cur, &r);
        if (result == REG_ERR_NOT_FOUND)
            continue;
        if (result != REG_OK) {
            /* Only a root must be a manifest; a child that is not one reaches nothing. */
            if (digest_equal(&cur, d))
                m->ev.unsafe = true;
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

static struct unit *new_unit(struct evict *ev, size_t repo, const struct digest *d, time_t pulled,
                             bool manifest)
{
    if ((ev->nunits & (ev->nunits - 1)) == 0) {
        size_t cap = ev->nunits ? ev->nunits * 2 : 16;
        struct unit *nu = realloc(ev->units, cap * sizeof(*nu));
        if (!nu)
            return NULL;
        ev->units = nu;
    }
    struct unit *u = &ev->units[ev->nunits];
    memset(u, 0, sizeof(*u));
    u->repo = repo;
    u->d = *d;
    u->pulled = pulled;
    u->manifest = manifest;
    struct gc_set_entry *e;
    if (gc_set_add(&ev->repos[repo].units, d, &e) < 0)
        return NULL;
    e->val = ev->nunits + 1;
    ev->nunits++;
    return u;
}

/* Lists <repo>/<sub>/<algo>/<hex> entries as digests into set s (val = mtime when stat_it). */
static int list_digests(struct maintenance *m, const char *name, const char *sub, bool stat_it,
                        struct gc_set *s)
{
    char repo[LAYOUT_PATH_MAX];
    layout_repo(repo, name);
    for (size_t a = 0; a < NALGOS; a++) {
        char dir[LAYOUT_PATH_MAX * 2];
        struct storage_list l = {0};
        snprintf(dir, sizeof(dir), "%s/%s/%s", repo, sub, digest_algo_name(algos[a]));
        if (storage_list(m->st, dir, &l) != REG_OK)
            continue;
        for (size_t i = 0; i < l.n; i++) {
            struct digest d;
            struct gc_set_entry *e;
            char path[LAYOUT_PATH_MAX * 3];
            struct storage_stat sst = {0};
            snprintf(path, sizeof(path), "%s/%s", dir, l.names[i]);
            if (gc_digest_from(algos[a], l.names[i], &d) != 0 ||
                (stat_it && storage_stat(m->st, path, &sst) != REG_OK))
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
static int scan_repo(struct maintenance *m, const char *name)
{
    struct evict *ev = &m->ev;
    char path[LAYOUT_PATH_MAX];
    struct digest *revs = NULL;
    size_t nrevs = 0;
    struct gc_set local_tagged = {0};
    struct gc_set reached = {0}; /* by any revision of this repository */
    struct storage_list tags = {0};
    struct gc_set layers = {0};
    int rc = -1;
    struct erepo *nr = realloc(ev->repos, (ev->nrepos + 1) * sizeof(*nr));
    if (!nr)
        return -1;
    ev->repos = nr;
    size_t ri = ev->nrepos;
    struct erepo *r = &ev->repos[ri];
    memset(r, 0, sizeof(*r));
    if (!(r->name = strdup(name)))
        return -1;
    ev->nrepos++;
    if (list_digests(m, name, "_proxy/pulled", true, &r->pulled) != 0 ||
        gc_revisions(m->st, name, &revs, &nrevs) != REG_OK)
        goto out;
    /* A revision a local tag points at is local, whatever its pull record says. */
    if (storage_list(m->st, layout_tags_dir(path, name), &tags) == REG_OK) {
        for (size_t i = 0; i < tags.n; i++) {
            struct digest d;
            struct storage_stat sst;
            if (gc_read_link(m->st, layout_tag_current(path, name, tags.names[i]), &d) != REG_OK)
                continue;
            bool proxied =
                storage_stat(m->st, layout_proxy_tag(path, name, tags.names[i]), &sst) == REG_OK;
            if (!proxied && gc_set_add(&local_tagged, &d, NULL) < 0)
                goto out;
        }
    }
    for (size_t i = 0; i < nrevs; i++) {
        struct digest *v = NULL;
        size_t n = 0;
        if (reach(m, &revs[i], &v, &n) != 0 || add_all(&reached, v, n) != 0) {
            free(v);
            goto out;
        }
        struct gc_set_entry *rec = gc_set_find(&r->pulled, &revs[i]);
        if (!rec || gc_set_find(&local_tagged, &revs[i])) {
            int added = add_all(&ev->local, v, n);
            free(v);
            if (added != 0)
                goto out;
            continue;
        }
        struct unit *u = new_unit(ev, ri, &revs[i], (time_t)rec->val, true);
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
        if (gc_read_link(m->st, layout_tag_current(path, name, tags.names[i]), &d) != REG_OK ||
            storage_stat(m->st, layout_proxy_tag(path, name, tags.names[i]), &sst) != REG_OK ||
            !(e = gc_set_find(&r->units, &d)))
            continue;
        struct unit *u = &ev->units[e->val - 1];
        char **nt = realloc(u->tags, (u->ntags + 1) * sizeof(*nt));
        if (!nt)
            goto out;
        u->tags = nt;
        if (!(u->tags[u->ntags] = strdup(tags.names[i])))
            goto out;
        u->ntags++;
    }
    /* Blob links: local without a pull record; a proxied one no manifest reaches is a unit. */
    if (list_digests(m, name, "_layers", false, &layers) != 0)
        goto out;
    for (size_t i = 0; i < layers.cap; i++) {
        if (!layers.v[i].used)
            continue;
        const struct digest *d = &layers.v[i].d;
        struct gc_set_entry *rec = gc_set_find(&r->pulled, d);
        if (!rec) {
            if (gc_set_add(&ev->local, d, NULL) < 0)
                goto out;
            continue;
        }
        if (gc_set_add(&r->links, d, NULL) < 0)
            goto out;
        if (gc_set_find(&reached, d))
            continue;
        struct unit *u = new_unit(ev, ri, d, (time_t)rec->val, false);
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
static uint64_t proxied_size(struct maintenance *m, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    if (gc_set_find(&m->ev.local, d) ||
        storage_stat(m->st, layout_blob_data(path, d), &sst) != REG_OK)
        return 0;
    return sst.size;
}

static void evict_unit(struct maintenance *m, struct unit *u, uint64_t *total)
{
    struct evict *ev = &m->ev;
    struct erepo *r = &ev->repos[u->repo];
    u->evicted = true;
    for (size_t i = 0; i < u->nreach; i++) {
        const struct digest *d = &u->reach[i];
        struct gc_set_entry *c = gc_set_find(&ev->refc, d);
        if (c && c->val > 0 && --c->val == 0) {
            struct gc_set_entry *z = gc_set_find(&ev->sizes, d);
            *total -= z && z->val <= *total ? z->val : *total;
            if (!gc_set_find(&ev->local, d) && gc_push_digest(&ev->data, &ev->ndata, d) != 0)
                set_overflow(m->w); /* deletes nothing rather than too much */
        }
        struct gc_set_entry *h = gc_set_find(&r->held, d);
        if (h && h->val > 0)
            h->val--;
        struct gc_set_entry *e = gc_set_find(&r->units, d);
        if (e && !digest_equal(d, &u->d) && ev->units[e->val - 1].parents > 0)
            ev->units[e->val - 1].parents--;
    }
}

/* Decides what goes: expired units first, then the least recently pulled while over the
 * bound; a unit a kept image of its repository reaches waits for that image. */
static int plan(struct maintenance *m)
{
    struct evict *ev = &m->ev;
    uint64_t total = 0;
    time_t now = time(NULL);
    int64_t ttl_ms = m->cfg->proxy.ttl_ms;
    uint64_t maxsize = (uint64_t)m->cfg->proxy.maxsize;
    for (size_t i = 0; i < ev->nunits; i++) {
        struct unit *u = &ev->units[i];
        struct erepo *r = &ev->repos[u->repo];
        for (size_t k = 0; k < u->nreach; k++) {
            const struct digest *d = &u->reach[k];
            struct gc_set_entry *c, *h;
            int added = gc_set_add(&ev->refc, d, &c);
            if (added < 0)
                return -1;
            c->val++;
            if (added == 1) {
                struct gc_set_entry *z;
                uint64_t size = proxied_size(m, d);
                if (gc_set_add(&ev->sizes, d, &z) < 0)
                    return -1;
                z->val = size;
                total += size;
            }
            if (gc_set_add(&r->held, d, &h) < 0)
                return -1;
            h->val++;
            struct gc_set_entry *e = gc_set_find(&r->units, d);
            if (e && !digest_equal(d, &u->d))
                ev->units[e->val - 1].parents++;
        }
    }
    struct by_age *order = malloc((ev->nunits ? ev->nunits : 1) * sizeof(*order));
    ev->order = malloc((ev->nunits ? ev->nunits : 1) * sizeof(*ev->order));
    if (!order || !ev->order) {
        free(order);
        return -1;
    }
    for (size_t i = 0; i < ev->nunits; i++)
        order[i] = (struct by_age){ev->units[i].pulled, i};
    qsort(order, ev->nunits, sizeof(*order), cmp_age);
    uint64_t before = total;
    size_t expired = 0;
    for (bool progress = true; progress;) {
        progress = false;
        for (size_t k = 0; k < ev->nunits; k++) {
            struct unit *u = &ev->units[order[k].unit];
            bool old = ttl_ms > 0 && (int64_t)(now - u->pulled) * 1000 > ttl_ms;
            bool over = maxsize > 0 && total > maxsize;
            if (!old && !over)
                break;
            if (u->evicted || u->parents > 0)
                continue;
            evict_unit(m, u, &total);
            expired += old;
            ev->order[ev->norder++] = order[k].unit;
            /* Its children waited for it: from the oldest again. */
            progress = true;
            break;
        }
    }
    free(order);
    if (ev->norder)
        log_info("eviction: proxied content %" PRIu64 " bytes in %zu items; evicting %zu (%zu "
                 "not pulled within proxy.ttl), %" PRIu64 " bytes left",
                 before, ev->nunits, ev->norder, expired, total);
    return 0;
}

/* ---- eviction: apply ---- */

static bool touched(struct maintenance *m, const struct digest *d)
{
    pthread_mutex_lock(&m->w->mu);
    bool t = m->w->overflow || gc_set_find(&m->w->touched, d) != NULL;
    pthread_mutex_unlock(&m->w->mu);
    return t;
}

/* Whether the proxy uses d: asked on the loop, or what the loop found before the batch. */
static bool in_flight(struct maintenance *m, const struct digest *d)
{
    if (!m->px)
        return false;
    return m->threaded ? gc_set_find(&m->ev.busy, d) != NULL : proxy_busy(m->px, d);
}

/* The cache forgets d (in repo, or everywhere when NULL) now on the loop, else after the
 * batch (and did before it). False when that cannot be arranged: then d stays. */
static bool forget(struct maintenance *m, const char *repo, const struct digest *d)
{
    struct evict *ev = &m->ev;
    if (!m->threaded) {
        cache_forget(m->cache, repo, d);
        return true;
    }
    if (ev->ngone == ev->capgone) {
        size_t cap = ev->capgone ? ev->capgone * 2 : 64;
        struct gone *ng = realloc(ev->gone, cap * sizeof(*ng));
        if (!ng)
            return false;
        ev->gone = ng;
        ev->capgone = cap;
    }
    ev->gone[ev->ngone++] = (struct gone){repo, *d};
    return true;
}

/* The exclusive side of the gate (see struct watch) around one check-and-delete. */
static void gate_close(struct maintenance *m)
{
    if (m->w->gated)
        pthread_rwlock_wrlock(&m->w->gate);
}

static void gate_open(struct maintenance *m)
{
    if (m->w->gated)
        pthread_rwlock_unlock(&m->w->gate);
}

/* Whether the pull record of d in repository name is newer than the pass saw. */
static bool pulled_again(struct maintenance *m, const char *name, const struct digest *d,
                         time_t seen)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    return storage_stat(m->st, layout_proxy_pulled(path, name, d), &sst) == REG_OK &&
           sst.mtime > seen;
}

static void keep_reach(struct maintenance *m, const struct unit *u)
{
    for (size_t i = 0; i < u->nreach; i++) {
        if (gc_set_add(&m->ev.keep, &u->reach[i], NULL) < 0)
            set_overflow(m->w);
    }
}

/* Removes a proxied blob link of repository r and its pull record. */
static void unlink_blob(struct maintenance *m, struct erepo *r, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    if (!forget(m, r->name, d))
        return;
    layout_layer_link(path, r->name, d);
    *strrchr(path, '/') = '\0';
    storage_remove(m->st, path);
    storage_remove(m->st, layout_proxy_pulled(path, r->name, d));
}

static void apply_unit(struct maintenance *m, struct unit *u)
{
    struct evict *ev = &m->ev;
    struct erepo *r = &ev->repos[u->repo];
    char path[LAYOUT_PATH_MAX];
    /* Pulled, linked or asked for since the scan: it stays, with all it reaches. */
    if (pulled_again(m, r->name, &u->d, u->pulled) || touched(m, &u->d) || in_flight(m, &u->d)) {
        keep_reach(m, u);
        return;
    }
    ev->evicted_units++;
    if (!u->manifest) {
        unlink_blob(m, r, &u->d);
        return;
    }
    /* The proxy may hold these tags resolved in memory (thread-safe call). */
    proxy_tags_changed(m->px);
    /* The tag before its marker: a tag without a marker would look local. */
    for (size_t t = 0; t < u->ntags; t++) {
        struct digest cur;
        if (gc_read_link(m->st, layout_tag_current(path, r->name, u->tags[t]), &cur) != REG_OK ||
            !digest_equal(&cur, &u->d))
            continue;
        storage_remove(m->st, layout_tag_dir(path, r->name, u->tags[t]));
        storage_remove(m->st, layout_proxy_tag(path, r->name, u->tags[t]));
    }
    layout_revision_link(path, r->name, &u->d);
    *strrchr(path, '/') = '\0';
    storage_remove(m->st, path);
    storage_remove(m->st, layout_proxy_pulled(path, r->name, &u->d));
    /* Its blobs' links in this repository, unless a kept image here still reaches them. */
    for (size_t i = 1; i < u->nreach; i++) {
        const struct digest *d = &u->reach[i];
        struct gc_set_entry *h = gc_set_find(&r->held, d);
        if (gc_set_find(&r->links, d) && (!h || h->val == 0) && !touched(m, d) && !in_flight(m, d))
            unlink_blob(m, r, d);
    }
}

/* Adds what the manifests linked since the pass began reach to the keep set. Those linked
 * later are caught by touched(): a manifest put stats each blob it references. */
static void keep_touched(struct maintenance *m)
{
    struct gc_set *t = &m->w->touched;
    struct digest *seen = NULL;
    size_t nseen = 0;
    pthread_mutex_lock(&m->w->mu);
    for (size_t i = 0; i < t->cap && !m->w->overflow; i++) {
        if (t->v[i].used && gc_push_digest(&seen, &nseen, &t->v[i].d) != 0)
            m->w->overflow = true;
    }
    pthread_mutex_unlock(&m->w->mu);
    for (size_t i = 0; i < nseen; i++) {
        struct digest *v = NULL;
        size_t n = 0;
        bool unsafe = m->ev.unsafe;
        if (reach(m, &seen[i], &v, &n) != 0 || add_all(&m->ev.keep, v, n) != 0)
            set_overflow(m->w);
        m->ev.unsafe = unsafe; /* a touched blob that is no manifest is just a blob */
        free(v);
    }
    free(seen);
}

static void apply_data(struct maintenance *m, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    if (m->ev.unsafe || touched(m, d) || gc_set_find(&m->ev.keep, d) || in_flight(m, d))
        return;
    if (storage_stat(m->st, layout_blob_data(path, d), &sst) != REG_OK || !forget(m, NULL, d))
        return;
    if (storage_remove(m->st, layout_blob_dir(path, d)) == REG_OK)
        m->ev.freed += sst.size;
}

static void evict_done(struct maintenance *m)
{
    struct evict *ev = &m->ev;
    if (ev->norder || ev->unsafe)
        log_info("eviction: pass done: %zu items evicted, %" PRIu64 " bytes freed%s",
                 ev->evicted_units, ev->freed,
                 ev->unsafe ? " (no data removed: a manifest could not be read)" : "");
    int64_t pause = ev->busy_us * PAUSE_FACTOR;
    pause = pause < PAUSE_MIN_US ? PAUSE_MIN_US : pause > PAUSE_MAX_US ? PAUSE_MAX_US : pause;
    set_recording(m->w, false);
    evict_reset(ev);
    schedule(m->evict_ev, pause);
}

/* The units or blobs of the next batch, on the loop before a worker takes it: which the proxy
 * uses, and the cache entries the batch may remove go now (a miss at worst). */
static void evict_prepare(struct maintenance *m)
{
    struct evict *ev = &m->ev;
    gc_set_free(&ev->busy);
    if (ev->phase == E_UNITS) {
        size_t end = ev->next + UNIT_BATCH < ev->norder ? ev->next + UNIT_BATCH : ev->norder;
        for (size_t k = ev->next; k < end; k++) {
            const struct unit *u = &ev->units[ev->order[k]];
            const struct erepo *r = &ev->repos[u->repo];
            for (size_t i = 0; i < u->nreach; i++) {
                const struct digest *d = &u->reach[i];
                if (m->px && proxy_busy(m->px, d) && gc_set_add(&ev->busy, d, NULL) < 0)
                    set_overflow(m->w);
                if (gc_set_find(&r->links, d))
                    cache_forget(m->cache, r->name, d);
            }
        }
        ev->batch_end = end;
    } else if (ev->phase == E_DATA) {
        size_t end = ev->next + DATA_BATCH < ev->ndata ? ev->next + DATA_BATCH : ev->ndata;
        for (size_t k = ev->next; k < end; k++) {
            const struct digest *d = &ev->data[k];
            if (m->px && proxy_busy(m->px, d) && gc_set_add(&ev->busy, d, NULL) < 0)
                set_overflow(m->w);
            cache_forget(m->cache, NULL, d);
        }
        ev->batch_end = end;
    }
}

/* Enters a phase of units or blobs: on the loop all at once, with workers batch by batch. */
static void evict_phase(struct maintenance *m, enum ephase phase)
{
    m->ev.phase = phase;
    m->ev.next = 0;
    m->ev.batch_end = m->threaded ? 0 : SIZE_MAX;
}

/* Runs the pass for budget_us, or until the next batch needs the loop, or to its end
 * (finished). The last looks and the deletes hold the gate. */
static void evict_run(struct maintenance *m, int64_t budget_us)
{
    struct evict *ev = &m->ev;
    int64_t t0 = now_us();
    char name[LAYOUT_PATH_MAX];
    while (now_us() - t0 < budget_us && !atomic_load(&m->stop)) {
        if (ev->phase == E_SCAN) {
            int r = gc_walk_next(ev->walk, name);
            if (r < 0 || (r > 0 && scan_repo(m, name) != 0)) {
                log_warn("eviction: scanning the store failed; trying again later");
                ev->finished = true;
                break;
            }
            if (r == 0) {
                if (plan(m) != 0) {
                    ev->finished = true;
                    break;
                }
                evict_phase(m, E_UNITS);
            }
        } else if (ev->phase == E_UNITS) {
            if (ev->next < ev->norder) {
                if (ev->next >= ev->batch_end)
                    break;
                gate_close(m);
                apply_unit(m, &ev->units[ev->order[ev->next++]]);
                gate_open(m);
                continue;
            }
            keep_touched(m);
            evict_phase(m, E_DATA);
        } else {
            if (ev->next >= ev->ndata) {
                ev->finished = true;
                break;
            }
            if (ev->next >= ev->batch_end)
                break;
            gate_close(m);
            apply_data(m, &ev->data[ev->next++]);
            gate_open(m);
        }
    }
    ev->busy_us += now_us() - t0;
}

/* On the loop after a step: the cache forgets what the step removed; then the next step, or
 * the pause before the next pass. */
static void evict_next(struct maintenance *m)
{
    struct evict *ev = &m->ev;
    for (size_t i = 0; i < ev->ngone; i++)
        cache_forget(m->cache, ev->gone[i].repo, &ev->gone[i].d);
    ev->ngone = 0;
    if (ev->finished)
        evict_done(m);
    else
        schedule(m->evict_ev, 0);
}

static void evict_work(void *arg)
{
    evict_run(arg, WORK_BUDGET_US);
}

static void evict_after(void *arg, bool cancelled)
{
    struct maintenance *m = arg;
    if (job_end(m, cancelled))
        evict_next(m);
}

static void evict_tick(evutil_socket_t fd, short what, void *arg)
{
    struct maintenance *m = arg;
    struct evict *ev = &m->ev;
    if (ev->phase == E_IDLE) {
        ev->walk = gc_walk_new(m->st);
        if (!ev->walk) {
            evict_done(m);
            return;
        }
        ev->phase = E_SCAN;
        set_recording(m->w, true);
    }
    if (!m->threaded) {
        evict_run(m, TICK_BUDGET_US);
        evict_next(m);
        return;
    }
    evict_prepare(m);
    m->jobs++;
    offload_run(m->ol, evict_work, evict_after, m);
}

/* ---- life cycle ---- */

struct maintenance *maintenance_new(struct event_base *base, const struct config *cfg,
                                    struct storage *st, struct registry *reg, struct proxy *px,
                                    struct cache *cache, struct offload *ol)
{
    if (st->ops->put_content != w_put_content) {
        log_error("maintenance: the storage is not wrapped for it");
        return NULL;
    }
    struct maintenance *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->base = base;
    m->cfg = cfg;
    m->cache = cache;
    m->w = W(st);
    m->st = m->w->inner;
    m->reg = reg;
    m->px = px;
    m->ol = ol;
    m->threaded = !offload_inline(ol);
    atomic_init(&m->stop, false);
    if (cfg->storage.maintenance.readonly)
        return m;
    bool purge = cfg->storage.maintenance.uploadpurging.enabled;
    int64_t age_ms = cfg->storage.maintenance.uploadpurging.age_ms;
    int64_t interval_ms = cfg->storage.maintenance.uploadpurging.interval_ms;
    if (purge && age_ms > 0 && interval_ms > 0) {
        m->purge_ev = evtimer_new(base, purge_tick, m);
        if (!m->purge_ev)
            goto fail;
        int64_t first = interval_ms < PURGE_FIRST_MAX_MS ? interval_ms : PURGE_FIRST_MAX_MS;
        schedule(m->purge_ev, first * 1000);
        log_info("uploadpurging: uploads older than %" PRId64 " ms go every %" PRId64 " ms%s",
                 age_ms, interval_ms,
                 cfg->storage.maintenance.uploadpurging.dryrun ? " (dry run)" : "");
    }
    if (px && (cfg->proxy.ttl_ms > 0 || cfg->proxy.maxsize > 0)) {
        m->evict_ev = evtimer_new(base, evict_tick, m);
        if (!m->evict_ev)
            goto fail;
        /* Workers start taking jobs only once the loop runs, after this. */
        m->w->gated = m->threaded;
        schedule(m->evict_ev, PAUSE_MIN_US);
        log_info("eviction: proxy.ttl %" PRId64 " ms, proxy.maxsize %" PRId64 " bytes (0: none)",
                 cfg->proxy.ttl_ms, cfg->proxy.maxsize);
    }
    return m;
fail:
    maintenance_free(m);
    return NULL;
}

static void maintenance_release(struct maintenance *m)
{
    gc_walk_free(m->purge_walk);
    evict_reset(&m->ev);
    set_recording(m->w, false);
    free(m);
}

void maintenance_free(struct maintenance *m)
{
    if (!m)
        return;
    if (m->purge_ev)
        event_free(m->purge_ev);
    if (m->evict_ev)
        event_free(m->evict_ev);
    m->purge_ev = m->evict_ev = NULL;
    if (m->jobs > 0) {
        /* The jobs use m: their done frees it (offload_free runs it at the latest). */
        atomic_store(&m->stop, true);
        m->dying = true;
        return;
    }
    maintenance_release(m);
}
