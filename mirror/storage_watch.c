/* The storage wrapper that records what is linked (or, with workers, used) in a pass. */
#include "storage_watch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gc.h"
#include "layout.h"
#include "storage_wrap.h"

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
struct storage_watch {
    struct storage_wrap wrap;
    pthread_mutex_t mu; /* guards recording, overflow and touched */
    bool recording;
    bool overflow; /* a digest could not be recorded: nothing may be deleted this pass */
    struct gc_set touched;
    bool gated; /* set before any worker runs */
    pthread_rwlock_t gate;
};

static struct storage_watch *W(struct storage *s)
{
    return (struct storage_watch *)s;
}

/* Notes d as in use while a pass records. */
static void w_record(struct storage_watch *w, const struct digest *d)
{
    pthread_mutex_lock(&w->mu);
    if (w->recording && gc_set_add(&w->touched, d, NULL) < 0)
        w->overflow = true;
    pthread_mutex_unlock(&w->mu);
}

/* The same for the digest a link's text names. */
static void w_record_link(struct storage_watch *w, const void *text, size_t len)
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
    struct storage_watch *w = W(s);
    if (!w->gated || !is_link(path))
        return storage_get_content(w->wrap.inner, path, max, out, len);
    /* A reader that found a link (a tag, a blob in a repository) reads its target next. */
    pthread_rwlock_rdlock(&w->gate);
    enum regerr result = storage_get_content(w->wrap.inner, path, max, out, len);
    if (result == REG_OK)
        w_record_link(w, *out, *len);
    pthread_rwlock_unlock(&w->gate);
    return result;
}

static enum regerr w_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    struct storage_watch *w = W(s);
    if (w->gated)
        pthread_rwlock_rdlock(&w->gate);
    /* Every link (blob into a repository, revision, tag) names its target: that target is
     * in use from now on, whatever the pass saw before. */
    if (is_link(path))
        w_record_link(w, data, len);
    enum regerr result = storage_put_content(w->wrap.inner, path, data, len);
    if (w->gated)
        pthread_rwlock_unlock(&w->gate);
    return result;
}

static enum regerr w_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    struct storage_watch *w = W(s);
    struct digest d;
    /* A writer's existence check before its link (see struct storage_watch). */
    if (w->gated && blob_data_digest(path, &d)) {
        pthread_rwlock_rdlock(&w->gate);
        w_record(w, &d);
        pthread_rwlock_unlock(&w->gate);
    }
    return storage_stat(w->wrap.inner, path, out);
}

static void w_dispose(struct storage_wrap *wrap)
{
    struct storage_watch *w = (struct storage_watch *)wrap;
    gc_set_free(&w->touched);
    pthread_mutex_destroy(&w->mu);
    pthread_rwlock_destroy(&w->gate);
}

static const struct storage_ops watch_ops = {
    .get_content = w_get_content,
    .put_content = w_put_content,
    .stat = w_stat,
};

struct storage *storage_watch_wrap(struct storage *inner)
{
    if (!inner)
        return NULL;
    struct storage_wrap *wrap =
        storage_wrap_new(inner, sizeof(struct storage_watch), &watch_ops, w_dispose);
    if (!wrap)
        return inner;
    struct storage_watch *w = (struct storage_watch *)wrap;
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* A delete waits for the writers in progress, not for every later one. */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        pthread_rwlockattr_destroy(&attr);
        free(w); /* nothing else is held yet; inner is not the wrapper's */
        return inner;
    }
    if (pthread_rwlock_init(&w->gate, &attr) != 0) {
        pthread_rwlockattr_destroy(&attr);
        pthread_mutex_destroy(&w->mu);
        free(w);
        return inner;
    }
    pthread_rwlockattr_destroy(&attr);
    return &wrap->base;
}

struct storage_watch *storage_watch_of(struct storage *st)
{
    return st && st->ops->put_content == w_put_content ? W(st) : NULL;
}

struct storage *storage_watch_inner(struct storage_watch *w)
{
    return w->wrap.inner;
}

void storage_watch_set_gated(struct storage_watch *w, bool gated)
{
    w->gated = gated;
}

void storage_watch_overflow(struct storage_watch *w)
{
    pthread_mutex_lock(&w->mu);
    w->overflow = true;
    pthread_mutex_unlock(&w->mu);
}

void storage_watch_record(struct storage_watch *w, bool on)
{
    pthread_mutex_lock(&w->mu);
    w->recording = on;
    w->overflow = false;
    gc_set_free(&w->touched);
    pthread_mutex_unlock(&w->mu);
}

bool storage_watch_touched(struct storage_watch *w, const struct digest *d)
{
    pthread_mutex_lock(&w->mu);
    bool t = w->overflow || gc_set_find(&w->touched, d) != NULL;
    pthread_mutex_unlock(&w->mu);
    return t;
}

void storage_watch_recorded(struct storage_watch *w, struct digest **v, size_t *n)
{
    struct gc_set *t = &w->touched;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < t->cap && !w->overflow; i++) {
        if (t->v[i].used && gc_push_digest(v, n, &t->v[i].d) != 0)
            w->overflow = true;
    }
    pthread_mutex_unlock(&w->mu);
}

void storage_watch_gate_close(struct storage_watch *w)
{
    if (w->gated)
        pthread_rwlock_wrlock(&w->gate);
}

void storage_watch_gate_open(struct storage_watch *w)
{
    if (w->gated)
        pthread_rwlock_unlock(&w->gate);
}
