/* The cache's inventory: images per repository, purging one, verifying stored bytes. */
#include "inventory.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "gc.h"
#include "layout.h"

/* Index nesting followed when collecting an image's manifests (an index of indexes at most). */
#define REACH_DEPTH_MAX 4

static const enum digest_algo algos[] = {DIGEST_SHA256, DIGEST_SHA384, DIGEST_SHA512};
#define NALGOS (sizeof(algos) / sizeof(algos[0]))

/* ---- reading an image ---- */

/* What one image reaches: its manifests and their blobs. */
struct reach {
    struct gc_set manifests, blobs;
};

static void reach_free(struct reach *r)
{
    gc_set_free(&r->manifests);
    gc_set_free(&r->blobs);
}

static enum regerr reach_add(struct storage *st, const struct digest *d, struct reach *r, int depth)
{
    int added = gc_set_add(&r->manifests, d, NULL);
    if (added < 0)
        return REG_ERR_INTERNAL;
    if (added == 0 || depth > REACH_DEPTH_MAX)
        return REG_OK;
    struct gc_refs refs;
    enum regerr result = gc_manifest_refs(st, d, &refs);
    if (result == REG_ERR_NOT_FOUND || result == REG_ERR_MANIFEST_INVALID)
        return REG_OK; /* nothing known beyond the manifest itself */
    if (result != REG_OK)
        return result;
    for (size_t i = 0; i < refs.nblobs && result == REG_OK; i++) {
        if (gc_set_add(&r->blobs, &refs.blobs[i], NULL) < 0)
            result = REG_ERR_INTERNAL;
    }
    for (size_t i = 0; i < refs.nchildren && result == REG_OK; i++)
        result = reach_add(st, &refs.children[i], r, depth + 1);
    gc_refs_free(&refs);
    return result;
}

static uint64_t blob_size(struct storage *st, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_stat sst;
    return storage_stat(st, layout_blob_data(path, d), &sst) == REG_OK ? sst.size : 0;
}

static bool exists(struct storage *st, const char *path, time_t *mtime)
{
    struct storage_stat sst;
    if (storage_stat(st, path, &sst) != REG_OK)
        return false;
    if (mtime)
        *mtime = sst.mtime;
    return true;
}

/* Size, manifests, pull time and source of img, whose tag and digest are set. */
static enum regerr image_fill(struct storage *st, const char *name, struct inventory_image *img)
{
    char path[LAYOUT_PATH_MAX];
    struct reach r = {0};
    enum regerr result = reach_add(st, &img->digest, &r, 0);
    if (result != REG_OK)
        goto out;
    img->manifests = calloc(r.manifests.n ? r.manifests.n : 1, sizeof(*img->manifests));
    if (!img->manifests) {
        result = REG_ERR_INTERNAL;
        goto out;
    }
    /* The image's own digest first, then its children in set order. */
    img->manifests[img->nmanifests++] = img->digest;
    for (size_t i = 0; i < r.manifests.cap; i++) {
        const struct gc_set_entry *e = &r.manifests.v[i];
        if (!e->used)
            continue;
        img->size += blob_size(st, &e->d);
        time_t t;
        if (exists(st, layout_proxy_pulled(path, name, &e->d), &t) && t > img->last_pulled)
            img->last_pulled = t;
        if (!digest_equal(&e->d, &img->digest))
            img->manifests[img->nmanifests++] = e->d;
    }
    for (size_t i = 0; i < r.blobs.cap; i++) {
        if (r.blobs.v[i].used)
            img->size += blob_size(st, &r.blobs.v[i].d);
    }
    if (img->tag[0])
        img->local = !exists(st, layout_proxy_tag(path, name, img->tag), NULL);
    else
        img->local = !exists(st, layout_proxy_pulled(path, name, &img->digest), NULL);
out:
    reach_free(&r);
    return result;
}

static struct inventory_image *repo_push(struct inventory_repo *r, size_t *cap)
{
    if (buf_grow_items(&r->images, cap, r->n + 1, sizeof(*r->images),
                       BUF_UNCAPPED / sizeof(*r->images)) != BUF_OK)
        return NULL;
    struct inventory_image *img = &r->images[r->n++];
    memset(img, 0, sizeof(*img));
    return img;
}

/* The children of every revision: they belong to their index's image. */
static enum regerr children_of(struct storage *st, const struct digest *revs, size_t nrevs,
                               struct gc_set *kids)
{
    for (size_t i = 0; i < nrevs; i++) {
        struct gc_refs refs;
        enum regerr result = gc_manifest_refs(st, &revs[i], &refs);
        if (result != REG_OK)
            continue;
        for (size_t k = 0; k < refs.nchildren; k++) {
            if (gc_set_add(kids, &refs.children[k], NULL) < 0)
                result = REG_ERR_INTERNAL;
        }
        gc_refs_free(&refs);
        if (result != REG_OK)
            return result;
    }
    return REG_OK;
}

static enum regerr read_tags(struct storage *st, const char *name, struct inventory_repo *out,
                             size_t *cap, struct gc_set *targets)
{
    char path[LAYOUT_PATH_MAX];
    struct storage_list tags = {0};
    enum regerr result = storage_list(st, layout_tags_dir(path, name), &tags);
    if (result == REG_ERR_NOT_FOUND)
        return REG_OK;
    for (size_t i = 0; i < tags.n && result == REG_OK; i++) {
        struct digest d;
        if (gc_read_link(st, layout_tag_current(path, name, tags.names[i]), &d) != REG_OK)
            continue;
        struct inventory_image *img = repo_push(out, cap);
        if (!img || gc_set_add(targets, &d, NULL) < 0) {
            result = REG_ERR_INTERNAL;
            break;
        }
        snprintf(img->tag, sizeof(img->tag), "%s", tags.names[i]);
        img->digest = d;
        result = image_fill(st, name, img);
    }
    storage_list_free(&tags);
    return result;
}

enum regerr inventory_repo_read(struct storage *st, const char *name, struct inventory_repo *out)
{
    char path[LAYOUT_PATH_MAX];
    struct digest *revs = NULL;
    size_t nrevs = 0, cap = 0;
    struct gc_set kids = {0}, targets = {0};
    memset(out, 0, sizeof(*out));
    if (!exists(st, layout_repo(path, name), NULL))
        return REG_ERR_NAME_UNKNOWN;
    enum regerr result = gc_revisions(st, name, &revs, &nrevs);
    if (result == REG_OK)
        result = children_of(st, revs, nrevs, &kids);
    if (result == REG_OK)
        result = read_tags(st, name, out, &cap, &targets);
    for (size_t i = 0; i < nrevs && result == REG_OK; i++) {
        if (gc_set_find(&kids, &revs[i]) || gc_set_find(&targets, &revs[i]))
            continue;
        struct inventory_image *img = repo_push(out, &cap);
        if (!img) {
            result = REG_ERR_INTERNAL;
            break;
        }
        img->digest = revs[i];
        result = image_fill(st, name, img);
    }
    free(revs);
    gc_set_free(&kids);
    gc_set_free(&targets);
    if (result != REG_OK)
        inventory_repo_free(out);
    return result;
}

void inventory_repo_free(struct inventory_repo *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->images[i].manifests);
    free(r->images);
    memset(r, 0, sizeof(*r));
}

const char *inventory_upstream(const struct config *cfg, const char *name)
{
    if (!cfg->proxy.remoteurl || !cfg->proxy.remoteurl[0])
        return NULL;
    for (size_t i = 0; i < cfg->proxy.nremotes; i++) {
        const char *host = cfg->proxy.remotes[i].host;
        size_t n = strlen(host);
        if (strlen(name) <= n || name[n] != '/')
            continue;
        bool same = true;
        for (size_t k = 0; k < n && same; k++)
            same = name[k] == (host[k] == ':' ? '-' : host[k]);
        if (same)
            return cfg->proxy.remotes[i].remoteurl;
    }
    return cfg->proxy.remoteurl;
}

/* ---- purging one image ---- */

void inventory_removed_free(struct inventory_removed *r)
{
    free(r->digests);
    memset(r, 0, sizeof(*r));
}

static enum regerr removed_push(struct inventory_removed *r, const struct digest *d)
{
    return gc_push_digest(&r->digests, &r->n, d) == 0 ? REG_OK : REG_ERR_INTERNAL;
}

/* A link's directory: the link path without its last "/link". */
static char *link_dir(char *path)
{
    char *slash = strrchr(path, '/');
    if (slash)
        *slash = '\0';
    return path;
}

/* Marks (val 1) the entries of cands that repository repo links, as a layer or a revision:
 * one listing per kind and algorithm, however many candidates there are. */
static void mark_linked(struct storage *st, const char *repo, struct gc_set *cands)
{
    char revs[LAYOUT_PATH_MAX], base[LAYOUT_PATH_MAX], layers[LAYOUT_PATH_MAX + 32];
    for (size_t a = 0; a < NALGOS; a++) {
        snprintf(layers, sizeof(layers), "%s/_layers/%s", layout_repo(base, repo),
                 digest_algo_name(algos[a]));
        const char *dirs[2] = {layout_revisions_dir(revs, repo, algos[a]), layers};
        for (size_t k = 0; k < 2; k++) {
            struct storage_list l = {0};
            if (storage_list(st, dirs[k], &l) != REG_OK)
                continue;
            for (size_t i = 0; i < l.n; i++) {
                struct digest d;
                struct gc_set_entry *e;
                if (gc_digest_from(algos[a], l.names[i], &d) == 0 &&
                    (e = gc_set_find(cands, &d)) != NULL)
                    e->val = 1;
            }
            storage_list_free(&l);
        }
    }
}

/* Marks the candidates any repository other than name links; all of them when the walk
 * fails (what is unknown is kept). */
static void mark_linked_elsewhere(struct storage *st, const char *name, struct gc_set *cands)
{
    char repo[LAYOUT_PATH_MAX];
    struct gc_walk *w = gc_walk_new(st);
    int rc = w ? 1 : -1;
    while (w && (rc = gc_walk_next(w, repo)) > 0) {
        if (strcmp(repo, name) != 0)
            mark_linked(st, repo, cands);
    }
    gc_walk_free(w);
    for (size_t i = 0; rc < 0 && i < cands->cap; i++)
        cands->v[i].val = 1;
}

/* What every image of repo r except those of digest d reaches. */
static enum regerr reach_others(struct storage *st, const struct inventory_repo *r,
                                const struct digest *d, struct reach *keep)
{
    enum regerr result = REG_OK;
    for (size_t i = 0; i < r->n && result == REG_OK; i++) {
        if (!digest_equal(&r->images[i].digest, d))
            result = reach_add(st, &r->images[i].digest, keep, 0);
    }
    return result;
}

/* Unlinks one manifest or blob of name and its pull record; its data is a candidate. */
static enum regerr unlink_one(struct storage *st, const char *name, const struct digest *d,
                              bool manifest, struct gc_set *cands, struct inventory_removed *out)
{
    char path[LAYOUT_PATH_MAX];
    if (manifest)
        layout_revision_link(path, name, d);
    else
        layout_layer_link(path, name, d);
    enum regerr result = storage_remove(st, link_dir(path));
    if (result != REG_OK && result != REG_ERR_NOT_FOUND)
        return result;
    if (result == REG_OK && manifest)
        out->manifests++;
    storage_remove(st, layout_proxy_pulled(path, name, d));
    if (gc_set_add(cands, d, NULL) < 0)
        return REG_ERR_INTERNAL;
    return removed_push(out, d);
}

/* Removes the data of the candidates no repository links (val 0). */
static enum regerr remove_unlinked(struct storage *st, const struct gc_set *cands,
                                   struct inventory_removed *out)
{
    char path[LAYOUT_PATH_MAX];
    for (size_t i = 0; i < cands->cap; i++) {
        const struct gc_set_entry *e = &cands->v[i];
        if (!e->used || e->val)
            continue;
        uint64_t size = blob_size(st, &e->d);
        enum regerr result = storage_remove(st, layout_blob_dir(path, &e->d));
        if (result == REG_OK) {
            out->blobs++;
            out->bytes += size;
        } else if (result != REG_ERR_NOT_FOUND) {
            return result;
        }
    }
    return REG_OK;
}

static enum regerr resolve(struct storage *st, const char *name, const char *ref, struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    if (digest_parse(ref, strlen(ref), d) == 0)
        return exists(st, layout_revision_link(path, name, d), NULL) ? REG_OK
                                                                     : REG_ERR_MANIFEST_UNKNOWN;
    enum regerr result = gc_read_link(st, layout_tag_current(path, name, ref), d);
    return result == REG_ERR_NOT_FOUND ? REG_ERR_MANIFEST_UNKNOWN : result;
}

/* Removes the tags of d (they go first: never a tag naming a missing manifest). */
static enum regerr untag_all(struct storage *st, const char *name, const struct inventory_repo *r,
                             const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    for (size_t i = 0; i < r->n; i++) {
        const struct inventory_image *img = &r->images[i];
        if (!img->tag[0] || !digest_equal(&img->digest, d))
            continue;
        enum regerr result = storage_remove(st, layout_tag_dir(path, name, img->tag));
        if (result != REG_OK && result != REG_ERR_NOT_FOUND)
            return result;
        storage_remove(st, layout_proxy_tag(path, name, img->tag));
    }
    return REG_OK;
}

/* Checks that ref names an image of r that may go; DENIED for local content. */
static enum regerr purge_allowed(const struct inventory_repo *r, const struct digest *d,
                                 bool include_local)
{
    bool found = false;
    for (size_t i = 0; i < r->n; i++) {
        if (!digest_equal(&r->images[i].digest, d))
            continue;
        found = true;
        if (r->images[i].local && !include_local)
            return REG_ERR_DENIED;
    }
    /* A child of an index is part of its index's image: purging it alone breaks the index. */
    return found ? REG_OK : REG_ERR_MANIFEST_UNKNOWN;
}

enum regerr inventory_purge(struct storage *st, const char *name, const char *ref,
                            bool include_local, struct inventory_removed *out)
{
    struct inventory_repo r = {0};
    struct reach mine = {0}, keep = {0};
    struct gc_set cands = {0}; /* unlinked here: their data goes unless linked elsewhere */
    struct digest d;
    memset(out, 0, sizeof(*out));
    enum regerr result = resolve(st, name, ref, &d);
    if (result == REG_OK)
        result = inventory_repo_read(st, name, &r);
    if (result == REG_ERR_NAME_UNKNOWN)
        result = REG_ERR_MANIFEST_UNKNOWN;
    if (result == REG_OK)
        result = purge_allowed(&r, &d, include_local);
    if (result == REG_OK)
        result = reach_add(st, &d, &mine, 0);
    if (result == REG_OK)
        result = reach_others(st, &r, &d, &keep);
    if (result == REG_OK)
        result = untag_all(st, name, &r, &d);
    /* Manifests before the blobs they name, every link before any data. */
    for (size_t i = 0; i < mine.manifests.cap && result == REG_OK; i++) {
        const struct gc_set_entry *e = &mine.manifests.v[i];
        if (e->used && !gc_set_find(&keep.manifests, &e->d))
            result = unlink_one(st, name, &e->d, true, &cands, out);
    }
    for (size_t i = 0; i < mine.blobs.cap && result == REG_OK; i++) {
        const struct gc_set_entry *e = &mine.blobs.v[i];
        if (e->used && !gc_set_find(&keep.blobs, &e->d) && !gc_set_find(&keep.manifests, &e->d))
            result = unlink_one(st, name, &e->d, false, &cands, out);
    }
    if (result == REG_OK && cands.n) {
        mark_linked_elsewhere(st, name, &cands);
        result = remove_unlinked(st, &cands, out);
    }
    gc_set_free(&cands);
    reach_free(&mine);
    reach_free(&keep);
    inventory_repo_free(&r);
    return result;
}

/* ---- verifying stored bytes ---- */

static int hash_cb(void *ctx, const void *data, size_t len)
{
    return digest_hasher_update(ctx, data, len);
}

/* 1: the bytes match, 0: they do not, -1: unreadable (absent, or a storage error). */
static int blob_matches(struct storage *st, const struct digest *d, uint64_t *bytes)
{
    char path[LAYOUT_PATH_MAX];
    struct digest_hasher *h = digest_hasher_new(d->algo);
    struct digest got;
    int fd = -1, rc = -1;
    uint64_t size = 0;
    if (!h)
        return -1;
    layout_blob_data(path, d);
    enum regerr result = storage_open_read(st, path, &fd, &size);
    if (result == REG_OK) {
        char buf[64 * 1024];
        ssize_t n;
        while ((n = read(fd, buf, sizeof(buf))) > 0)
            digest_hasher_update(h, buf, (size_t)n);
        close(fd);
        if (n < 0)
            goto out;
    } else if (result == REG_ERR_UNSUPPORTED) {
        struct storage_stat sst;
        if (storage_stat(st, path, &sst) != REG_OK ||
            storage_read_range(st, path, 0, sst.size, hash_cb, h) != REG_OK)
            goto out;
        size = sst.size;
    } else {
        goto out;
    }
    *bytes = size;
    rc = digest_hasher_final(h, &got) == 0 && digest_equal(&got, d) ? 1 : 0;
out:
    digest_hasher_free(h);
    return rc;
}

/* The digests of a directory of <hex> entries (a repository's revisions or layers). */
static void push_dir(struct storage *st, const char *dir, enum digest_algo algo,
                     struct gc_set *into)
{
    struct storage_list l = {0};
    if (storage_list(st, dir, &l) != REG_OK)
        return;
    for (size_t i = 0; i < l.n; i++) {
        struct digest d;
        if (gc_digest_from(algo, l.names[i], &d) == 0)
            gc_set_add(into, &d, NULL);
    }
    storage_list_free(&l);
}

/* blobs/<algo>/<xx>/<hex>: every stored blob of algo. */
static void push_all_blobs(struct storage *st, enum digest_algo algo, struct gc_set *into)
{
    char root[LAYOUT_PATH_MAX], dir[LAYOUT_PATH_MAX + 8];
    struct digest probe = {.algo = algo};
    memset(probe.hex, '0', digest_hex_len(algo));
    /* .../blobs/<algo>/00/000...: two components up is the algorithm's directory */
    layout_blob_dir(root, &probe);
    for (int k = 0; k < 2; k++)
        *strrchr(root, '/') = '\0';
    struct storage_list l = {0};
    if (storage_list(st, root, &l) != REG_OK)
        return;
    for (size_t i = 0; i < l.n; i++) {
        snprintf(dir, sizeof(dir), "%s/%s", root, l.names[i]);
        push_dir(st, dir, algo, into);
    }
    storage_list_free(&l);
}

static void verify_candidates(struct storage *st, const char *name, struct gc_set *into)
{
    char path[LAYOUT_PATH_MAX], dir[LAYOUT_PATH_MAX + 32];
    for (size_t a = 0; a < NALGOS; a++) {
        if (!name) {
            push_all_blobs(st, algos[a], into);
            continue;
        }
        push_dir(st, layout_revisions_dir(path, name, algos[a]), algos[a], into);
        snprintf(dir, sizeof(dir), "%s/_layers/%s", layout_repo(path, name),
                 digest_algo_name(algos[a]));
        push_dir(st, dir, algos[a], into);
    }
}

/*
 * A manifest whose data went: its revision link and the tags naming it go too in repo, so a
 * pull of the tag fetches it again instead of finding a tag without its manifest.
 */
static void drop_manifest(struct storage *st, const char *repo, const struct digest *d)
{
    char path[LAYOUT_PATH_MAX];
    if (!exists(st, layout_revision_link(path, repo, d), NULL))
        return;
    struct storage_list tags = {0};
    if (storage_list(st, layout_tags_dir(path, repo), &tags) == REG_OK) {
        for (size_t i = 0; i < tags.n; i++) {
            struct digest cur;
            if (gc_read_link(st, layout_tag_current(path, repo, tags.names[i]), &cur) != REG_OK ||
                !digest_equal(&cur, d))
                continue;
            storage_remove(st, layout_tag_dir(path, repo, tags.names[i]));
            storage_remove(st, layout_proxy_tag(path, repo, tags.names[i]));
        }
        storage_list_free(&tags);
    }
    storage_remove(st, link_dir(layout_revision_link(path, repo, d)));
    storage_remove(st, layout_proxy_pulled(path, repo, d));
}

/* drop_manifest of every removed digest, in name or in every repository. */
static void drop_manifests(struct storage *st, const char *name, const struct inventory_removed *r)
{
    char repo[LAYOUT_PATH_MAX];
    if (name) {
        for (size_t i = 0; i < r->n; i++)
            drop_manifest(st, name, &r->digests[i]);
        return;
    }
    struct gc_walk *w = gc_walk_new(st);
    while (w && gc_walk_next(w, repo) > 0) {
        for (size_t i = 0; i < r->n; i++)
            drop_manifest(st, repo, &r->digests[i]);
    }
    gc_walk_free(w);
}

enum regerr inventory_verify(struct storage *st, const char *name, inventory_progress_fn progress,
                             void *ctx, const atomic_bool *stop, size_t *checked,
                             struct inventory_removed *out)
{
    char path[LAYOUT_PATH_MAX];
    struct gc_set all = {0};
    enum regerr result = REG_OK;
    uint64_t total_bytes = 0;
    size_t done = 0;
    memset(out, 0, sizeof(*out));
    *checked = 0;
    verify_candidates(st, name, &all);
    for (size_t i = 0; i < all.cap && result == REG_OK; i++) {
        const struct gc_set_entry *e = &all.v[i];
        if (!e->used)
            continue;
        if (stop && atomic_load(stop))
            break;
        uint64_t bytes = 0;
        int rc = blob_matches(st, &e->d, &bytes);
        if (rc >= 0) {
            (*checked)++;
            total_bytes += bytes;
        }
        if (rc == 0) {
            result = storage_remove(st, layout_blob_dir(path, &e->d));
            if (result == REG_ERR_NOT_FOUND)
                result = REG_OK;
            out->blobs++;
            out->bytes += bytes;
            if (result == REG_OK)
                result = removed_push(out, &e->d);
        }
        if (progress)
            progress(ctx, ++done, all.n, total_bytes);
    }
    gc_set_free(&all);
    if (out->n)
        drop_manifests(st, name, out);
    return result;
}
