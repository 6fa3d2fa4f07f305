#ifndef REGMIRROR_CACHE_H
#define REGMIRROR_CACHE_H
/*
 * cache: the blob-descriptor cache (storage.cache.blobdescriptor), one interface with two
 * backends: "inmemory" (bounded LRU, the default) and "redis" (hiredis async on libevent,
 * registry:2's key layout, so regmirror and registry:2 instances can share one Redis).
 *
 * The cache is never the truth. A hit saves a storage stat; a miss (0) or "unavailable" (-1)
 * sends the caller to storage, and the answer must come from there. Writes are fire and
 * forget. When Redis is down, slow or flushed, gets answer -1 or 0 quickly and the backend
 * reconnects by itself.
 *
 * Two kinds of entries, as in registry:2:
 *   global      (repo == NULL): the blob's descriptor (digest, size, media type) -- "the
 *               blob exists in storage with this size".
 *   repository  (repo != NULL): "the blob is linked into repo", plus an optional per-repo
 *               media type. A repository get hits only when BOTH the repository membership
 *               and the global descriptor are present, so forgetting the global descriptor
 *               (blob data deleted) makes every repository miss.
 *
 * Threading: a cache belongs to one event base and is used from that loop's thread only.
 *
 * Callbacks (cache_get):
 *   - cb runs exactly once per cache_get, unless the op is cancelled first.
 *   - cb may run inline, before cache_get returns; cache_get then returns NULL. The in-memory
 *     backend always answers inline. The redis backend answers later from the loop (also for
 *     "unavailable"), except when out of memory, when it answers -1 inline.
 *   - Otherwise cache_get returns an op handle, valid until cb has been called or
 *     cache_op_cancel has been called, whichever comes first. After cancel, cb never runs.
 *     Do not cancel from inside the op's own cb (it is already finished).
 *   - d (the descriptor) is only valid during cb; copy what you need.
 *   - cb may call cache_get/put/forget and cache_op_cancel on other ops; it must not call
 *     cache_free.
 *   Pattern (req may be finished and freed by an inline cb, so store the handle only when
 *   one is returned):
 *       struct cache_op *op = cache_get(cache, name, &dg, on_desc, req);
 *       if (op) req->cache_op = op;
 *   in on_desc: req->cache_op = NULL first; on request teardown:
 *       if (req->cache_op) cache_op_cancel(req->cache_op);
 *
 * Strings (repo) and structs passed in are copied; the caller keeps ownership.
 *
 * A NULL cache is valid everywhere and means "no cache": cache_get answers -1 inline,
 * put/forget do nothing. So storage.cache.blobdescriptor unset needs no special case.
 */
#include <stddef.h>
#include <stdint.h>

#include "digest.h"
#include "redis_sentinel.h"

struct event_base;
struct config;

/* Longest media type cached, NUL included; longer ones are not cached (put ignores them). */
#define CACHE_MEDIA_TYPE_MAX 128
/* Longest repository name accepted (distribution's limit is 255). */
#define CACHE_REPO_MAX 255
/* Default in-memory size (distribution's storage.cache.blobdescriptorsize). */
#define CACHE_INMEMORY_DEFAULT_ENTRIES 10000

struct cache_desc {
    struct digest digest; /* the canonical digest (may differ in algorithm from the key) */
    uint64_t size;
    char media_type[CACHE_MEDIA_TYPE_MAX]; /* NUL-terminated; "" when unknown */
};

/* found: 1 hit (d set), 0 miss (d NULL), -1 cache unavailable (d NULL). Treat -1 like 0. */
typedef void (*cache_get_cb)(void *ctx, int found, const struct cache_desc *d);

struct cache;
struct cache_op;

struct cache_ops {
    const char *name;
    struct cache_op *(*get)(struct cache *c, const char *repo, const struct digest *d,
                            cache_get_cb cb, void *ctx);
    void (*put)(struct cache *c, const char *repo, const struct cache_desc *d);
    void (*forget)(struct cache *c, const char *repo, const struct digest *d);
    void (*cancel)(struct cache_op *op);
    size_t (*pending)(struct cache *c);
    void (*free)(struct cache *c);
};

struct cache {
    const struct cache_ops *ops;
};

/* Backends embed this first in their op; callers only hold the pointer. */
struct cache_op {
    struct cache *_cache;
};

/*
 * The in-memory backend: a hash table and an LRU list bounded by max_entries (global and
 * repository entries count alike; 0 means CACHE_INMEMORY_DEFAULT_ENTRIES). get/put/forget
 * are O(1). NULL when out of memory.
 */
struct cache *cache_inmemory_new(size_t max_entries);

struct cache_redis_config {
    const char *addr; /* "host:port", "[v6addr]:port"; a host name is resolved with evdns */
    /* With a mastername, addr is unused: every connection asks these sentinels for the
     * master, and asks again after it drops or finds a server that is not the master. */
    struct redis_sentinel_config sentinel;
    const char *username; /* AUTH username (Redis 6 ACL); NULL or "" for none */
    const char *password; /* NULL or "" for no AUTH */
    int db;               /* SELECT db when not 0 */
    /* 0 means the default: dial 1000 ms (TCP connect + AUTH + SELECT + PING), read 500 ms,
     * write 500 ms. A command not answered within write + read timeout fails its connection:
     * every command in flight on it is answered -1 and the connection is re-dialled. */
    int64_t dialtimeout_ms, readtimeout_ms, writetimeout_ms;
    /* Connections are pipelined, so a few go a long way: maxactive connections at most
     * (0: 4; capped at 16). A connection with nothing in flight for idletimeout_ms is closed
     * while more than maxidle are open (idletimeout 0: never). */
    int maxidle, maxactive;
    int64_t idletimeout_ms;
    const char *key_prefix; /* prepended to every key; NULL or "" for registry:2's keys */
    int64_t ttl_s;          /* EXPIRE on every key written; 0: no expiry (registry:2) */
    size_t max_pending;     /* commands in flight per connection; 0: 1024. Beyond it gets
                               answer -1 and puts are dropped. */
};

/* Recommended TTL for cache entries: a stale entry cannot outlive this. */
#define CACHE_REDIS_DEFAULT_TTL_S (7 * 24 * 3600)

/*
 * Fills *out from cfg->redis (addr, username, password, db, timeouts, pool), with no key
 * prefix and CACHE_REDIS_DEFAULT_TTL_S. The strings point into cfg, which must outlive the
 * call to cache_redis_new (it copies them).
 */
void cache_redis_config_from(struct cache_redis_config *out, const struct config *cfg);

/*
 * The redis backend on base. Connects lazily (the first operation dials), so it succeeds
 * with Redis down. NULL when out of memory or when cfg->addr is not "host:port" (logged).
 * The password is never logged.
 */
struct cache *cache_redis_new(struct event_base *base, const struct cache_redis_config *cfg);

/*
 * Looks up the descriptor of digest d, globally (repo NULL) or as linked into repo.
 * See "Callbacks" above for when cb runs and what the returned handle means.
 */
static inline struct cache_op *cache_get(struct cache *c, const char *repo, const struct digest *d,
                                         cache_get_cb cb, void *ctx)
{
    if (!c) {
        cb(ctx, -1, NULL);
        return NULL;
    }
    return c->ops->get(c, repo, d, cb, ctx);
}

/*
 * Records desc->digest's descriptor (globally) and, when repo is not NULL, that the blob is
 * linked into repo, with desc->media_type as that repository's media type. Fire and forget:
 * call it only once storage holds the blob (after the commit/link succeeded).
 */
static inline void cache_put(struct cache *c, const char *repo, const struct cache_desc *desc)
{
    if (c)
        c->ops->put(c, repo, desc);
}

/*
 * repo NULL: forgets the global descriptor of d (the blob's data is gone: GC sweep), which
 * makes every repository lookup of d miss too. repo set: forgets that d is linked into
 * repo (blob unlinked / deleted through the API). Call it before or right after the storage
 * change. The redis backend retries a forget that its connection lost until Redis
 * acknowledges it (bounded; an overflow is logged), so a deleted blob does not stay cached.
 */
static inline void cache_forget(struct cache *c, const char *repo, const struct digest *d)
{
    if (c)
        c->ops->forget(c, repo, d);
}

/* Drops a pending get: its cb will not run. op must be a live handle (see above). */
static inline void cache_op_cancel(struct cache_op *op)
{
    op->_cache->ops->cancel(op);
}

/*
 * Writes (puts, forgets) and gets not yet acknowledged by the backend, forgets waiting for a
 * reconnection included; always 0 for the in-memory backend. A short-lived user (the
 * garbage-collect command) runs its loop until this is 0, or a deadline, before cache_free.
 */
static inline size_t cache_pending(struct cache *c)
{
    return c ? c->ops->pending(c) : 0;
}

/*
 * Frees the cache. Every get still pending is answered -1 before this returns (callbacks run
 * inside cache_free), so a caller waiting on it falls back to storage. Takes NULL.
 */
static inline void cache_free(struct cache *c)
{
    if (c)
        c->ops->free(c);
}

#endif
