/*
 * cache/inmemory: the bounded in-memory blob-descriptor cache.
 *
 * One hash table (separate chaining, seeded FNV-1a, grown by doubling up to the bound) holds
 * both kinds of entries, keyed by (repo or NULL, digest); one doubly linked list orders them
 * from most to least recently used. Inserting past max_entries evicts the least recently
 * used entry, so memory is bounded by entries (each about 400 bytes plus its repo name).
 * Everything is synchronous: get answers inline and never returns an op.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"

struct entry {
    struct entry *hnext;         /* hash chain */
    struct entry *lprev, *lnext; /* LRU list: head is the most recently used */
    uint64_t hash;
    char *repo;            /* NULL: global descriptor */
    struct digest key;     /* the digest looked up */
    struct cache_desc val; /* global: the descriptor; repo: only val.media_type is used */
};

struct cache_mem {
    struct cache base;
    struct entry **buckets;
    size_t nbuckets, max_buckets; /* powers of two */
    size_t count, max_entries;
    struct entry *head, *tail;
    uint64_t seed;
};

static bool digest_ok(const struct digest *d)
{
    size_t want = digest_hex_len(d->algo);
    return want && strnlen(d->hex, sizeof(d->hex)) == want;
}

static bool repo_ok(const char *repo)
{
    return !repo || (repo[0] && strnlen(repo, CACHE_REPO_MAX + 1) <= CACHE_REPO_MAX);
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t key_hash(const struct cache_mem *m, const char *repo, const struct digest *d)
{
    unsigned char tag = repo ? 1 : 0;
    uint64_t h = fnv(m->seed, &tag, 1);
    if (repo)
        h = fnv(h, repo, strlen(repo) + 1);
    tag = (unsigned char)d->algo;
    h = fnv(h, &tag, 1);
    h = fnv(h, d->hex, strlen(d->hex));
    /* final mix, so the low bits used as the bucket index depend on every input byte */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return h;
}

static bool key_equal(const struct entry *e, uint64_t hash, const char *repo,
                      const struct digest *d)
{
    if (e->hash != hash || !digest_equal(&e->key, d))
        return false;
    if (!e->repo || !repo)
        return !e->repo && !repo;
    return strcmp(e->repo, repo) == 0;
}

static struct entry **find_slot(struct cache_mem *m, uint64_t hash, const char *repo,
                                const struct digest *d)
{
    struct entry **pp = &m->buckets[hash & (m->nbuckets - 1)];
    while (*pp && !key_equal(*pp, hash, repo, d))
        pp = &(*pp)->hnext;
    return pp;
}

static void lru_unlink(struct cache_mem *m, struct entry *e)
{
    if (e->lprev)
        e->lprev->lnext = e->lnext;
    else
        m->head = e->lnext;
    if (e->lnext)
        e->lnext->lprev = e->lprev;
    else
        m->tail = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push_front(struct cache_mem *m, struct entry *e)
{
    e->lprev = NULL;
    e->lnext = m->head;
    if (m->head)
        m->head->lprev = e;
    m->head = e;
    if (!m->tail)
        m->tail = e;
}

static void touch(struct cache_mem *m, struct entry *e)
{
    if (m->head != e) {
        lru_unlink(m, e);
        lru_push_front(m, e);
    }
}

static void entry_free(struct entry *e)
{
    free(e->repo);
    free(e);
}

/* Unlinks e from its chain and the LRU list and frees it. */
static void remove_entry(struct cache_mem *m, struct entry *e)
{
    struct entry **pp = &m->buckets[e->hash & (m->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(m, e);
    m->count--;
    entry_free(e);
}

/* Doubles the table; on allocation failure the table just stays as it is (longer chains). */
static void grow(struct cache_mem *m)
{
    size_t n = m->nbuckets * 2;
    struct entry **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        struct entry *e = m->buckets[i];
        while (e) {
            struct entry *next = e->hnext;
            size_t j = e->hash & (n - 1);
            e->hnext = b[j];
            b[j] = e;
            e = next;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

/* Returns the entry for the key, created (and the LRU tail evicted) when missing; NULL when
 * out of memory. The entry is moved to the front either way. */
static struct entry *upsert(struct cache_mem *m, const char *repo, const struct digest *d,
                            bool *created)
{
    uint64_t hash = key_hash(m, repo, d);
    struct entry **pp = find_slot(m, hash, repo, d);
    struct entry *e = *pp;

    *created = false;
    if (e) {
        touch(m, e);
        return e;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    if (repo) {
        e->repo = strdup(repo);
        if (!e->repo) {
            free(e);
            return NULL;
        }
    }
    e->hash = hash;
    e->key = *d;
    e->hnext = *pp;
    *pp = e;
    lru_push_front(m, e);
    m->count++;
    *created = true;

    while (m->count > m->max_entries && m->tail != e)
        remove_entry(m, m->tail);
    if (m->count > m->nbuckets && m->nbuckets < m->max_buckets)
        grow(m);
    return e;
}

static struct entry *lookup(struct cache_mem *m, const char *repo, const struct digest *d)
{
    return *find_slot(m, key_hash(m, repo, d), repo, d);
}

static struct cache_op *mem_get(struct cache *c, const char *repo, const struct digest *d,
                                cache_get_cb cb, void *ctx)
{
    struct cache_mem *m = (struct cache_mem *)c;
    struct entry *g, *r = NULL;
    struct cache_desc out;

    if (!digest_ok(d) || !repo_ok(repo))
        goto miss;
    if (repo) {
        r = lookup(m, repo, d);
        if (!r)
            goto miss;
    }
    g = lookup(m, NULL, d);
    if (!g)
        goto miss;
    out = g->val;
    touch(m, g);
    if (r) {
        if (r->val.media_type[0])
            memcpy(out.media_type, r->val.media_type, sizeof(out.media_type));
        touch(m, r);
    }
    cb(ctx, 1, &out);
    return NULL;
miss:
    cb(ctx, 0, NULL);
    return NULL;
}

static void mem_put(struct cache *c, const char *repo, const struct cache_desc *desc)
{
    struct cache_mem *m = (struct cache_mem *)c;
    struct entry *g, *r;
    bool created;

    if (!digest_ok(&desc->digest) || !repo_ok(repo) ||
        !memchr(desc->media_type, '\0', sizeof(desc->media_type)))
        return;
    g = upsert(m, NULL, &desc->digest, &created);
    if (!g)
        return;
    /* like registry:2: the global media type is the first one recorded */
    if (created || !g->val.media_type[0]) {
        g->val = *desc;
    } else {
        g->val.digest = desc->digest;
        g->val.size = desc->size;
    }
    if (!repo)
        return;
    /* (with max_entries 1 this evicts the global entry just written: a later get misses) */
    r = upsert(m, repo, &desc->digest, &created);
    if (r)
        r->val = *desc;
}

static void mem_forget(struct cache *c, const char *repo, const struct digest *d)
{
    struct cache_mem *m = (struct cache_mem *)c;
    struct entry *e;

    if (!digest_ok(d) || !repo_ok(repo))
        return;
    e = lookup(m, repo, d);
    if (e)
        remove_entry(m, e);
}

static void mem_cancel(struct cache_op *op)
{
    /* never reached: get answers inline and returns no op */
    (void)op;
}

static size_t mem_pending(struct cache *c)
{
    return 0;
}

static void mem_free(struct cache *c)
{
    struct cache_mem *m = (struct cache_mem *)c;
    struct entry *e = m->head;
    while (e) {
        struct entry *next = e->lnext;
        entry_free(e);
        e = next;
    }
    free(m->buckets);
    free(m);
}

static const struct cache_ops mem_ops = {
    .name = "inmemory",
    .get = mem_get,
    .put = mem_put,
    .forget = mem_forget,
    .cancel = mem_cancel,
    .pending = mem_pending,
    .free = mem_free,
};

struct cache *cache_inmemory_new(size_t max_entries)
{
    struct cache_mem *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->base.ops = &mem_ops;
    m->max_entries = max_entries ? max_entries : CACHE_INMEMORY_DEFAULT_ENTRIES;
    m->max_buckets = 16;
    while (m->max_buckets < m->max_entries && m->max_buckets < ((size_t)1 << 24))
        m->max_buckets *= 2;
    m->nbuckets = 16;
    m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
    if (!m->buckets) {
        free(m);
        return NULL;
    }
    /* a per-process seed, so chains cannot be precomputed from repository names */
    m->seed = 0xcbf29ce484222325ULL ^ ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid() ^
              (uint64_t)(uintptr_t)m;
    return &m->base;
}
