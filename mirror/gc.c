/* Offline mark and sweep, the instance lock, and the helpers the maintenance shares (gc.h). */
#include "gc.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "layout.h"
#include "log.h"
#include "progress.h"
#include "registry.h"

/* Link files hold "algo:hex"; anything longer is not a link. */
#define LINK_MAX 256
/* Repository names nest at most this deep (as the catalog walk). */
#define WALK_DEPTH_MAX 64
#define V2 "/docker/registry/v2"

static const enum digest_algo algos[] = {DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512};
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

/* ---- digest set: open addressing, power-of-two capacity, at most half full ---- */

static uint64_t digest_hash(const struct digest *d)
{
    uint64_t h = 1469598103934665603ull ^ (uint64_t)d->algo; /* FNV-1a */
    for (const char *c = d->hex; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    return h;
}

static struct gc_set_entry *set_slot(struct gc_set_entry *v, size_t cap, const struct digest *d)
{
    size_t i = (size_t)digest_hash(d) & (cap - 1);
    while (v[i].used && !digest_equal(&v[i].d, d))
        i = (i + 1) & (cap - 1);
    return &v[i];
}

static int set_grow(struct gc_set *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    struct gc_set_entry *v = calloc(cap, sizeof(*v));
    if (!v)
        return -1;
    for (size_t i = 0; i < s->cap; i++) {
        if (s->v[i].used)
            *set_slot(v, cap, &s->v[i].d) = s->v[i];
    }
    free(s->v);
    s->v = v;
    s->cap = cap;
    return 0;
}

int gc_set_add(struct gc_set *s, const struct digest *d, struct gc_set_entry **e)
{
    if ((s->n + 1) * 2 > s->cap && set_grow(s) != 0)
        return -1;
    struct gc_set_entry *slot = set_slot(s->v, s->cap, d);
    if (e)
        *e = slot;
    if (slot->used)
        return 0;
    slot->used = true;
    slot->d = *d;
    slot->val = 0;
    s->n++;
    return 1;
}

struct gc_set_entry *gc_set_find(const struct gc_set *s, const struct digest *d)
{
    if (!s->cap)
        return NULL;
    struct gc_set_entry *slot = set_slot(s->v, s->cap, d);
    return slot->used ? slot : NULL;
}

void gc_set_free(struct gc_set *s)
{
    free(s->v);
    *s = (struct gc_set){0};
}

/* ---- manifest references ---- */

int gc_push_digest(struct digest **v, size_t *n, const struct digest *d)
{
    /* The array keeps no capacity: n entries fill 8, or else the next power of two. */
    size_t cap = *n == 0 ? 0 : 8;
    while (cap < *n)
        cap *= 2;
    /* bounded by the store's manifests and their references */
    if (buf_grow_items(v, &cap, *n + 1, sizeof(**v), BUF_UNCAPPED / sizeof(**v)) != BUF_OK)
        return -1;
    (*v)[(*n)++] = *d;
    return 0;
}

/* Appends the digest in the JSON string s, when s is one regmirror can store. */
static int push_json_digest(struct digest **v, size_t *n, const json_t *s)
{
    const char *str = json_string_value(s);
    struct digest d;
    if (!str || digest_parse(str, strlen(str), &d) != 0)
        return 0;
    return gc_push_digest(v, n, &d);
}

static int push_json_descs(struct digest **v, size_t *n, const json_t *arr, const char *key)
{
    size_t i;
    const json_t *e;
    if (!json_is_array(arr))
        return 0;
    json_array_foreach(arr, i, e)
    {
        if (push_json_digest(v, n, json_object_get(e, key)) != 0)
            return -1;
    }
    return 0;
}

void gc_refs_free(struct gc_refs *r)
{
    free(r->blobs);
    free(r->children);
    *r = (struct gc_refs){0};
}

enum regerr gc_manifest_refs(struct storage *st, const struct digest *d, struct gc_refs *out)
{
    char path[LAYOUT_PATH_MAX];
    char *body = NULL;
    size_t len = 0;
    json_t *root = NULL;
    memset(out, 0, sizeof(*out));
    enum regerr result =
        storage_get_content(st, layout_blob_data(path, d), REGISTRY_MANIFEST_MAX, &body, &len);
    if (result == REG_ERR_TOO_LARGE)
        result = REG_ERR_MANIFEST_INVALID;
    if (result != REG_OK)
        return result;
    root = json_loadb(body, len, 0, NULL);
    if (!json_is_object(root)) {
        result = REG_ERR_MANIFEST_INVALID;
        goto out;
    }
    /* Every field any manifest kind references content with: image config and layers, the
     * OCI artifact manifest's blobs, schema1's fsLayers, index and list entries. */
    const json_t *config = json_object_get(root, "config");
    if (push_json_digest(&out->blobs, &out->nblobs, json_object_get(config, "digest")) != 0 ||
        push_json_descs(&out->blobs, &out->nblobs, json_object_get(root, "layers"), "digest") ||
        push_json_descs(&out->blobs, &out->nblobs, json_object_get(root, "blobs"), "digest") ||
        push_json_descs(&out->blobs, &out->nblobs, json_object_get(root, "fsLayers"), "blobSum") ||
        push_json_descs(&out->children, &out->nchildren, json_object_get(root, "manifests"),
                        "digest")) {
        result = REG_ERR_INTERNAL;
        goto out;
    }
    const char *subject =
        json_string_value(json_object_get(json_object_get(root, "subject"), "digest"));
    if (subject && digest_parse(subject, strlen(subject), &out->subject) == 0)
        out->has_subject = true;
out:
    json_decref(root);
    free(body);
    if (result != REG_OK)
        gc_refs_free(out);
    return result;
}

int gc_digest_from(enum digest_algo algo, const char *hex, struct digest *out)
{
    char s[DIGEST_STR_MAX + 8];
    int n = snprintf(s, sizeof(s), "%s:%s", digest_algo_name(algo), hex);
    if (n < 0 || (size_t)n >= sizeof(s))
        return -1;
    return digest_parse(s, (size_t)n, out) == 0 ? 0 : -1;
}

/* ---- the repository walk ---- */

struct walk_frame {
    char *dir, *name;
    struct storage_list l;
    size_t i;
    bool reported;
};

struct gc_walk {
    struct storage *st;
    struct walk_frame f[WALK_DEPTH_MAX];
    int depth;
    bool started;
};

struct gc_walk *gc_walk_new(struct storage *st)
{
    struct gc_walk *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->st = st;
    w->depth = -1;
    return w;
}

static void walk_pop(struct gc_walk *w)
{
    struct walk_frame *f = &w->f[w->depth--];
    free(f->dir);
    free(f->name);
    storage_list_free(&f->l);
    memset(f, 0, sizeof(*f));
}

/* Enters dir when it is a directory; 0 also when it is not (or vanished), -1 on errors. */
static int walk_push(struct gc_walk *w, const char *dir, const char *name)
{
    if (w->depth + 1 >= WALK_DEPTH_MAX)
        return 0;
    struct walk_frame *f = &w->f[w->depth + 1];
    memset(f, 0, sizeof(*f));
    enum regerr result = storage_list(w->st, dir, &f->l);
    if (result == REG_ERR_NOT_FOUND)
        return 0;
    if (result != REG_OK)
        return -1;
    f->dir = strdup(dir);
    f->name = strdup(name);
    w->depth++;
    return f->dir && f->name ? 0 : -1;
}

int gc_walk_next(struct gc_walk *w, char *name)
{
    char root[LAYOUT_PATH_MAX];
    if (!w->started) {
        w->started = true;
        if (walk_push(w, layout_repositories(root), "") != 0)
            return -1;
    }
    while (w->depth >= 0) {
        struct walk_frame *f = &w->f[w->depth];
        if (!f->reported) {
            f->reported = true;
            bool repo = false;
            for (size_t i = 0; i < f->l.n && !repo; i++)
                repo = f->l.names[i][0] == '_';
            if (repo && f->name[0]) {
                snprintf(name, LAYOUT_PATH_MAX, "%s", f->name);
                return 1;
            }
        }
        if (f->i >= f->l.n) {
            walk_pop(w);
            continue;
        }
        const char *e = f->l.names[f->i++];
        if (e[0] == '_')
            continue;
        char sub[LAYOUT_PATH_MAX], subname[LAYOUT_PATH_MAX];
        int n1 = snprintf(sub, sizeof(sub), "%s/%s", f->dir, e);
        int n2 = snprintf(subname, sizeof(subname), "%s%s%s", f->name, f->name[0] ? "/" : "", e);
        if (n1 < 0 || (size_t)n1 >= sizeof(sub) || n2 < 0 || (size_t)n2 >= sizeof(subname))
            continue;
        if (walk_push(w, sub, subname) != 0)
            return -1;
    }
    return 0;
}

void gc_walk_free(struct gc_walk *w)
{
    if (!w)
        return;
    while (w->depth >= 0)
        walk_pop(w);
    free(w);
}

/* ---- mark ---- */

struct mdel {
    char *repo;
    struct digest d;
};

struct gc {
    struct storage *st;
    const struct gc_opts *opts;
    FILE *out;
    struct gc_set marked; /* manifests and blobs in use, store-wide */
    struct mdel *dels;    /* untagged revisions to delete */
    size_t ndels, capdels;
    char **repos;
    size_t nrepos, caprepos;
    struct gc_result *res;
    struct progress bar; /* drawn only when out is a terminal */
};

enum regerr gc_read_link(struct storage *st, const char *path, struct digest *out)
{
    char *body = NULL;
    size_t len = 0;
    enum regerr result = storage_get_content(st, path, LINK_MAX, &body, &len);
    if (result == REG_ERR_TOO_LARGE)
        result = REG_ERR_NOT_FOUND;
    if (result == REG_OK && digest_parse(body, len, out) != 0)
        result = REG_ERR_NOT_FOUND; /* not a link we can follow */
    free(body);
    return result;
}

/* The directory of a link path (its ".../link" cut off), in place. */
static char *link_dir(char *path)
{
    char *slash = strrchr(path, '/');
    if (slash)
        *slash = '\0';
    return path;
}

/* Removes path; a path already gone is fine (an earlier, interrupted run removed it). */
static enum regerr remove_path(struct storage *st, const char *path)
{
    enum regerr result = storage_remove(st, path);
    return result == REG_ERR_NOT_FOUND ? REG_OK : result;
}

enum regerr gc_revisions(struct storage *st, const char *name, struct digest **v, size_t *n)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = REG_OK;
    for (size_t a = 0; a < NALGOS && result == REG_OK; a++) {
        struct storage_list l = {0};
        result = storage_list(st, layout_revisions_dir(path, name, algos[a]), &l);
        if (result == REG_ERR_NOT_FOUND) {
            result = REG_OK;
            continue;
        }
        for (size_t i = 0; i < l.n && result == REG_OK; i++) {
            struct digest d, linked;
            struct storage_stat sst;
            if (gc_digest_from(algos[a], l.names[i], &d) != 0 ||
                gc_read_link(st, layout_revision_link(path, name, &d), &linked) != REG_OK ||
                storage_stat(st, layout_blob_data(path, &d), &sst) != REG_OK)
                continue;
            if (gc_push_digest(v, n, &d) != 0)
                result = REG_ERR_INTERNAL;
        }
        storage_list_free(&l);
    }
    return result;
}

/* The digests the tags of name point at. */
static enum regerr list_tagged(struct storage *st, const char *name, struct digest **v, size_t *n)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_list tags = {0};
    enum regerr result = storage_list(st, layout_tags_dir(path, name), &tags);
    if (result == REG_ERR_NOT_FOUND)
        return REG_OK;
    for (size_t i = 0; i < tags.n && result == REG_OK; i++) {
        struct digest d;
        if (gc_read_link(st, layout_tag_current(path, name, tags.names[i]), &d) == REG_OK &&
            gc_push_digest(v, n, &d) != 0)
            result = REG_ERR_INTERNAL;
    }
    storage_list_free(&tags);
    return result;
}

/* Marks the manifests on the stack q (and everything they reach) in repository name. */
static enum regerr mark_from(struct gc *g, const char *name, struct gc_set *seen, struct digest **q,
                             size_t *qn)
{
    char ds[DIGEST_STR_MAX];
    enum regerr result = REG_OK;
    while (*qn > 0 && result == REG_OK) {
        struct digest d = (*q)[--*qn];
        int added = gc_set_add(seen, &d, NULL);
        if (added < 0)
            return REG_ERR_INTERNAL;
        if (added == 0)
            continue;
        struct gc_refs r;
        result = gc_manifest_refs(g->st, &d, &r);
        if (result == REG_ERR_NOT_FOUND) {
            progress_end(&g->bar);
            fprintf(g->out, "%s: manifest %s is referenced but not stored\n", name,
                    digest_str(&d, ds));
            result = REG_OK;
            continue;
        }
        if (result != REG_OK) {
            progress_end(&g->bar);
            fprintf(stderr,
                    "garbage-collect: %s: manifest %s cannot be read as a manifest; its "
                    "references are unknown, so nothing is deleted\n",
                    name, digest_str(&d, ds));
            return result == REG_ERR_INTERNAL ? result : REG_ERR_MANIFEST_INVALID;
        }
        g->res->manifests_marked++;
        if (gc_set_add(&g->marked, &d, NULL) < 0)
            result = REG_ERR_INTERNAL;
        for (size_t i = 0; i < r.nblobs && result == REG_OK; i++) {
            if (gc_set_add(&g->marked, &r.blobs[i], NULL) < 0)
                result = REG_ERR_INTERNAL;
        }
        for (size_t i = 0; i < r.nchildren && result == REG_OK; i++) {
            if (gc_push_digest(q, qn, &r.children[i]) != 0)
                result = REG_ERR_INTERNAL;
        }
        gc_refs_free(&r);
    }
    return result;
}

static enum regerr mark_repo(struct gc *g, const char *name)
{
    struct digest *revs = NULL, *q = NULL;
    size_t nrevs = 0, qn = 0;
    struct gc_set seen = {0};
    struct gc_set noref = {0}; /* revisions known to refer to nothing marked */
    enum regerr result = gc_revisions(g->st, name, &revs, &nrevs);
    if (result != REG_OK)
        goto out;
    if (g->opts->delete_untagged) {
        result = list_tagged(g->st, name, &q, &qn);
    } else {
        for (size_t i = 0; i < nrevs && result == REG_OK; i++) {
            if (gc_push_digest(&q, &qn, &revs[i]) != 0)
                result = REG_ERR_INTERNAL;
        }
    }
    if (result == REG_OK)
        result = mark_from(g, name, &seen, &q, &qn);
    /* Referrers stay with their subject, and referrers of referrers with them: repeat until
     * a round adds nothing. */
    bool changed = g->opts->delete_untagged;
    while (changed && result == REG_OK) {
        changed = false;
        for (size_t i = 0; i < nrevs && result == REG_OK; i++) {
            if (gc_set_find(&seen, &revs[i]) || gc_set_find(&noref, &revs[i]))
                continue;
            struct gc_refs r;
            bool refers = false;
            if (gc_manifest_refs(g->st, &revs[i], &r) != REG_OK || !r.has_subject) {
                /* Unreadable or without a subject: it never refers, ask no more. */
                if (gc_set_add(&noref, &revs[i], NULL) < 0)
                    result = REG_ERR_INTERNAL;
            } else {
                refers = gc_set_find(&seen, &r.subject) != NULL;
            }
            gc_refs_free(&r);
            if (!refers)
                continue;
            changed = true;
            if (gc_push_digest(&q, &qn, &revs[i]) != 0)
                result = REG_ERR_INTERNAL;
            else
                result = mark_from(g, name, &seen, &q, &qn);
        }
    }
    for (size_t i = 0; i < nrevs && result == REG_OK; i++) {
        if (gc_set_find(&seen, &revs[i]))
            continue;
        /* bounded by the store's revisions */
        if (buf_grow_items(&g->dels, &g->capdels, g->ndels + 1, sizeof(*g->dels),
                           BUF_UNCAPPED / sizeof(*g->dels)) != BUF_OK) {
            result = REG_ERR_INTERNAL;
            break;
        }
        g->dels[g->ndels].repo = strdup(name);
        g->dels[g->ndels].d = revs[i];
        if (!g->dels[g->ndels].repo)
            result = REG_ERR_INTERNAL;
        else
            g->ndels++;
    }
out:
    free(revs);
    free(q);
    gc_set_free(&seen);
    gc_set_free(&noref);
    return result;
}

/* ---- sweep ---- */

static const char *human(uint64_t n, char buf[32])
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)n;
    size_t u = 0;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    snprintf(buf, 32, u ? "%.1f %s" : "%.0f %s", v, units[u]);
    return buf;
}

/* Unmarked blobs with their sizes (the set's values). */
static enum regerr find_unmarked(struct gc *g, struct gc_set *gone)
{
    enum regerr result = REG_OK;
    for (size_t a = 0; a < NALGOS && result == REG_OK; a++) {
        char dir[LAYOUT_PATH_MAX];
        struct storage_list prefixes = {0};
        snprintf(dir, sizeof(dir), V2 "/blobs/%s", digest_algo_name(algos[a]));
        result = storage_list(g->st, dir, &prefixes);
        if (result == REG_ERR_NOT_FOUND) {
            result = REG_OK;
            continue;
        }
        for (size_t p = 0; p < prefixes.n && result == REG_OK; p++) {
            char sub[LAYOUT_PATH_MAX * 2];
            struct storage_list l = {0};
            snprintf(sub, sizeof(sub), "%s/%s", dir, prefixes.names[p]);
            if (storage_list(g->st, sub, &l) != REG_OK)
                continue;
            for (size_t i = 0; i < l.n && result == REG_OK; i++) {
                struct digest d;
                struct storage_stat sst;
                char path[LAYOUT_PATH_MAX];
                struct gc_set_entry *e;
                if (gc_digest_from(algos[a], l.names[i], &d) != 0 || gc_set_find(&g->marked, &d) ||
                    storage_stat(g->st, layout_blob_data(path, &d), &sst) != REG_OK)
                    continue;
                if (gc_set_add(gone, &d, &e) < 0)
                    result = REG_ERR_INTERNAL;
                else
                    e->val = sst.size;
            }
            storage_list_free(&l);
        }
        storage_list_free(&prefixes);
    }
    return result;
}

/* Removes an untagged revision: its entries in tag histories, its link, its pull record. */
static enum regerr delete_manifest(struct gc *g, const char *name, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    enum regerr result = REG_OK;
    struct storage_list tags = {0};
    if (storage_list(g->st, layout_tags_dir(path, name), &tags) == REG_OK) {
        for (size_t i = 0; i < tags.n && result == REG_OK; i++)
            result =
                remove_path(g->st, link_dir(layout_tag_index_link(path, name, tags.names[i], d)));
        storage_list_free(&tags);
    }
    if (result == REG_OK)
        result = remove_path(g->st, link_dir(layout_revision_link(path, name, d)));
    if (result == REG_OK)
        result = remove_path(g->st, layout_proxy_pulled(path, name, d));
    return result;
}

/* Removes the repository links and pull records of the blobs in gone. */
static enum regerr unlink_gone(struct gc *g, const char *name, const struct gc_set *gone)
{
    enum regerr result = REG_OK;
    char repo[LAYOUT_PATH_MAX];
    layout_repo(repo, name);
    for (size_t a = 0; a < NALGOS && result == REG_OK; a++) {
        static const char *const kinds[] = {"_layers", "_proxy/pulled"};
        for (size_t k = 0; k < 2 && result == REG_OK; k++) {
            char dir[LAYOUT_PATH_MAX + 64];
            struct storage_list l = {0};
            snprintf(dir, sizeof(dir), "%s/%s/%s", repo, kinds[k], digest_algo_name(algos[a]));
            if (storage_list(g->st, dir, &l) != REG_OK)
                continue;
            for (size_t i = 0; i < l.n && result == REG_OK; i++) {
                struct digest d;
                char path[LAYOUT_PATH_MAX * 2];
                if (gc_digest_from(algos[a], l.names[i], &d) != 0 || !gc_set_find(gone, &d))
                    continue;
                snprintf(path, sizeof(path), "%s/%s", dir, l.names[i]);
                result = remove_path(g->st, path);
            }
            storage_list_free(&l);
        }
    }
    return result;
}

/* A terminal's sweep line: steps are revisions, then repositories (links), then blobs. */
static void sweep_progress(struct gc *g, size_t step, size_t steps, const char *now)
{
    char note[64];
    snprintf(note, sizeof(note), "removing %s", now);
    progress_draw(&g->bar, "sweep", step, steps, "steps", 0, note, step == steps);
}

static enum regerr sweep(struct gc *g)
{
    char ds[DIGEST_STR_MAX], hb[32], path[LAYOUT_PATH_MAX];
    struct gc_set gone = {0};
    enum regerr result = find_unmarked(g, &gone);
    progress_end(&g->bar);
    if (result != REG_OK)
        goto out;
    for (size_t i = 0; i < g->ndels; i++)
        fprintf(g->out, "manifest eligible for deletion: %s@%s\n", g->dels[i].repo,
                digest_str(&g->dels[i].d, ds));
    for (size_t i = 0; i < gone.cap; i++) {
        if (!gone.v[i].used)
            continue;
        fprintf(g->out, "blob eligible for deletion: %s (%" PRIu64 " bytes)\n",
                digest_str(&gone.v[i].d, ds), gone.v[i].val);
        g->res->bytes_freed += gone.v[i].val;
    }
    g->res->manifests_deleted = g->ndels;
    g->res->blobs_deleted = gone.n;
    g->res->blobs_marked = g->marked.n;
    fprintf(g->out, "%zu repositories, %zu manifests and %zu blobs marked\n", g->nrepos,
            g->res->manifests_marked, g->marked.n);
    if (g->opts->dry_run) {
        fprintf(g->out,
                "dry run: would delete %zu manifests and %zu blobs, freeing %" PRIu64
                " bytes (%s)\n",
                g->ndels, gone.n, g->res->bytes_freed, human(g->res->bytes_freed, hb));
        goto out;
    }
    /* Links before what they point at: tag histories and revisions, then the blobs' links in
     * every repository, then the blobs. */
    size_t steps = g->ndels + g->nrepos + gone.n, step = 0;
    for (size_t i = 0; i < g->ndels && result == REG_OK; i++) {
        result = delete_manifest(g, g->dels[i].repo, &g->dels[i].d);
        sweep_progress(g, ++step, steps, "manifests");
    }
    for (size_t i = 0; i < g->nrepos && result == REG_OK; i++) {
        result = unlink_gone(g, g->repos[i], &gone);
        sweep_progress(g, ++step, steps, "links");
    }
    for (size_t i = 0; i < gone.cap && result == REG_OK; i++) {
        if (!gone.v[i].used)
            continue;
        result = remove_path(g->st, layout_blob_dir(path, &gone.v[i].d));
        sweep_progress(g, ++step, steps, "blobs");
    }
    progress_end(&g->bar);
    if (result == REG_OK)
        fprintf(g->out, "deleted %zu manifests and %zu blobs, freed %" PRIu64 " bytes (%s)\n",
                g->ndels, gone.n, g->res->bytes_freed, human(g->res->bytes_freed, hb));
out:
    gc_set_free(&gone);
    return result;
}

static enum regerr collect_repos(struct gc *g)
{
    char name[LAYOUT_PATH_MAX];
    enum regerr result = REG_OK;
    struct gc_walk *w = gc_walk_new(g->st);
    if (!w)
        return REG_ERR_INTERNAL;
    for (;;) {
        int r = gc_walk_next(w, name);
        if (r <= 0) {
            result = r < 0 ? REG_ERR_INTERNAL : REG_OK;
            break;
        }
        /* bounded by the store's repositories */
        if (buf_grow_items(&g->repos, &g->caprepos, g->nrepos + 1, sizeof(*g->repos),
                           BUF_UNCAPPED / sizeof(*g->repos)) != BUF_OK) {
            result = REG_ERR_INTERNAL;
            break;
        }
        if (!(g->repos[g->nrepos] = strdup(name))) {
            result = REG_ERR_INTERNAL;
            break;
        }
        g->nrepos++;
    }
    gc_walk_free(w);
    return result;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* On a terminal, what the run did in one block at the end (the lines above scroll away). */
static void print_summary(const struct gc *g, enum regerr result, int64_t took_us)
{
    char hb[32];
    const struct gc_result *r = g->res;
    fprintf(g->out, "\nsummary%s: %zu repositories, %zu manifests and %zu blobs marked\n",
            g->opts->dry_run ? " (dry run)" : "", r->repositories, r->manifests_marked,
            r->blobs_marked);
    if (result != REG_OK) {
        fprintf(g->out, "  stopped: %s; nothing more was deleted\n", regerr_message(result));
        return;
    }
    fprintf(g->out, "  %s %zu manifests and %zu blobs, %s\n",
            g->opts->dry_run ? "would delete" : "deleted", r->manifests_deleted, r->blobs_deleted,
            human(r->bytes_freed, hb));
    fprintf(g->out, "  took %.1f s\n", (double)took_us / 1e6);
}

enum regerr gc_run(struct storage *st, const struct gc_opts *opts, FILE *out, struct gc_result *res)
{
    struct gc g = {.st = st, .opts = opts, .out = out, .res = res};
    memset(res, 0, sizeof(*res));
    progress_init(&g.bar, out);
    int64_t t0 = mono_us();
    enum regerr result = collect_repos(&g);
    if (result != REG_OK)
        fprintf(stderr, "garbage-collect: listing the repositories failed\n");
    for (size_t i = 0; i < g.nrepos && result == REG_OK; i++) {
        result = mark_repo(&g, g.repos[i]);
        char note[96];
        snprintf(note, sizeof(note), "%zu manifests, %zu blobs marked", res->manifests_marked,
                 g.marked.n);
        progress_draw(&g.bar, "mark", i + 1, g.nrepos, "repositories", 0, note, i + 1 == g.nrepos);
    }
    res->repositories = g.nrepos;
    /* Nothing is deleted unless the whole mark finished. */
    if (result == REG_OK)
        result = sweep(&g);
    progress_end(&g.bar);
    if (g.bar.tty)
        print_summary(&g, result, mono_us() - t0);
    for (size_t i = 0; i < g.ndels; i++)
        free(g.dels[i].repo);
    free(g.dels);
    for (size_t i = 0; i < g.nrepos; i++)
        free(g.repos[i]);
    free(g.repos);
    gc_set_free(&g.marked);
    return result;
}

/* ---- command line and the instance lock ---- */

static void gc_usage(FILE *f)
{
    fprintf(f, "usage: regmirror garbage-collect [--dry-run] [--delete-untagged] [--force] "
               "CONFIG\n");
}

int gc_parse_args(int argc, char **argv, struct gc_opts *opts, const char **config_path)
{
    memset(opts, 0, sizeof(*opts));
    *config_path = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--dry-run") == 0 || strcmp(a, "-d") == 0) {
            opts->dry_run = true;
        } else if (strcmp(a, "--delete-untagged") == 0 || strcmp(a, "-m") == 0) {
            opts->delete_untagged = true;
        } else if (strcmp(a, "--force") == 0 || strcmp(a, "-f") == 0) {
            opts->force = true;
        } else if (a[0] == '-' || *config_path) {
            fprintf(stderr, "garbage-collect: unexpected argument %s\n", a);
            gc_usage(stderr);
            return -1;
        } else {
            *config_path = a;
        }
    }
    if (!*config_path) {
        fprintf(stderr, "garbage-collect: CONFIG is required\n");
        gc_usage(stderr);
        return -1;
    }
    return 0;
}

static int lock_path(const struct config *cfg, char *buf, size_t size)
{
    if (cfg->storage.driver != CONFIG_STORAGE_FILESYSTEM)
        return -1;
    int n = snprintf(buf, size, "%s/%s", cfg->storage.filesystem.rootdirectory, GC_LOCK_NAME);
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

int gc_main(const struct config *cfg, struct storage *st, const struct gc_opts *opts)
{
    char path[PATH_MAX], holder[128] = "";
    bool busy = false, nolock = false;
    int rc = 1, fd = -1;
    if (lock_path(cfg, path, sizeof(path)) == 0) {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0) {
            fprintf(stderr, "garbage-collect: cannot open the lock %s: %s\n", path,
                    strerror(errno));
            return 1;
        }
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            if (errno != EWOULDBLOCK) {
                fprintf(stderr, "garbage-collect: cannot lock %s: %s\n", path, strerror(errno));
                goto out;
            }
            busy = true;
            ssize_t n = pread(fd, holder, sizeof(holder) - 1, 0);
            holder[n > 0 ? n : 0] = '\0';
            holder[strcspn(holder, "\n")] = '\0';
        }
    } else {
        busy = nolock = true;
        snprintf(path, sizeof(path), "the %s storage",
                 cfg->storage.driver_name ? cfg->storage.driver_name : "configured");
        snprintf(holder, sizeof(holder), "this driver has no lock to tell");
    }
    if (busy && !opts->force && !opts->dry_run && nolock) {
        /* Read-only instances do not help here: nothing tells that they are. */
        fprintf(stderr,
                "garbage-collect: refusing to run: %s has no instance lock, so whether a "
                "regmirror that is not read-only is writing to it cannot be told.\n"
                "Stop every regmirror on it (or make them read-only: "
                "storage.maintenance.readonly.enabled: true), then run again with --force "
                "(blobs being pushed meanwhile can be lost).\n",
                path);
        rc = GC_EXIT_BUSY;
        goto out;
    }
    if (busy && !opts->force && !opts->dry_run) {
        fprintf(stderr,
                "garbage-collect: refusing to run: a regmirror that is not read-only may be "
                "writing to this storage (%s: %s).\n"
                "Stop it, or set storage.maintenance.readonly.enabled: true and restart it; "
                "--force runs anyway (blobs being pushed meanwhile can be lost).\n",
                path, holder[0] ? holder : "locked");
        rc = GC_EXIT_BUSY;
        goto out;
    }
    if (busy)
        fprintf(stderr,
                "garbage-collect: warning: a writable regmirror may be running (%s); "
                "going on (%s)\n",
                holder[0] ? holder : "locked", opts->force ? "--force" : "dry run");
    struct gc_result res;
    rc = gc_run(st, opts, stdout, &res) == REG_OK ? 0 : 1;
out:
    if (fd >= 0)
        close(fd);
    return rc;
}

int gc_serve_lock(const struct config *cfg, int *fd)
{
    char path[PATH_MAX], info[64];
    *fd = -1;
    if (cfg->storage.maintenance.readonly || lock_path(cfg, path, sizeof(path)) != 0)
        return 0;
    int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (f < 0) {
        log_error("cannot open the instance lock %s: %s", path, strerror(errno));
        return -1;
    }
    if (flock(f, LOCK_SH | LOCK_NB) != 0) {
        log_error("%s is locked: a garbage-collect is running on this storage; start again when "
                  "it is done, or serve read-only (storage.maintenance.readonly)",
                  path);
        close(f);
        return -1;
    }
    /* For garbage-collect's message only: several writable instances overwrite each other. */
    int n = snprintf(info, sizeof(info), "regmirror serve pid %ld\n", (long)getpid());
    if (ftruncate(f, 0) != 0 || pwrite(f, info, (size_t)n, 0) != n)
        log_warn("cannot write %s: %s", path, strerror(errno));
    *fd = f;
    return 0;
}

void gc_serve_unlock(int fd)
{
    if (fd >= 0)
        close(fd);
}
