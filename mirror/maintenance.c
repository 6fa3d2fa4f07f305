/* Background maintenance of the running daemon: starts upload purging and proxy eviction. */
#include "maintenance.h"

#include <stdlib.h>

#include "evict.h"
#include "log.h"
#include "purge.h"
#include "storage_watch.h"

struct maintenance {
    struct purge *purge; /* NULL when not configured */
    struct evict *evict; /* NULL when not configured */
};

struct maintenance *maintenance_new(struct event_base *base, const struct config *cfg,
                                    struct storage *st, struct registry *reg, struct proxy *px,
                                    struct cache *cache, struct offload *ol)
{
    struct storage_watch *w = storage_watch_of(st);
    if (!w) {
        log_error("maintenance: the storage is not wrapped for it");
        return NULL;
    }
    struct maintenance *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    if (cfg->storage.maintenance.readonly)
        return m;
    bool purge = cfg->storage.maintenance.uploadpurging.enabled;
    int64_t age_ms = cfg->storage.maintenance.uploadpurging.age_ms;
    int64_t interval_ms = cfg->storage.maintenance.uploadpurging.interval_ms;
    if (purge && age_ms > 0 && interval_ms > 0 &&
        !(m->purge = purge_new(base, cfg, storage_watch_inner(w), reg, ol)))
        goto fail;
    if (px && (cfg->proxy.ttl_ms > 0 || cfg->proxy.maxsize > 0) &&
        !(m->evict = evict_new(base, cfg, w, px, cache, ol)))
        goto fail;
    return m;
fail:
    maintenance_free(m);
    return NULL;
}

void maintenance_free(struct maintenance *m)
{
    if (!m)
        return;
    purge_free(m->purge);
    evict_free(m->evict);
    free(m);
}
