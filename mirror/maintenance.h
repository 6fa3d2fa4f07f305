#ifndef REGMIRROR_MAINTENANCE_H
#define REGMIRROR_MAINTENANCE_H
/*
 * maintenance: the running daemon's background work, on timers of its event loop, in small
 * batches (a few milliseconds a tick) so that requests are never held up. It starts what the
 * configuration asks for:
 *
 *  - upload purging (storage.maintenance.uploadpurging): purge.h;
 *  - eviction of proxied content (proxy.ttl, proxy.maxsize), when pulling through: evict.h,
 *    which learns what comes into use during a pass through the storage_watch.h wrapper.
 *
 * Read-only mode (storage.maintenance.readonly) runs none of it.
 */
#include <event2/event.h>

#include "config.h"
#include "proxy.h"
#include "registry.h"
#include "storage.h"

struct maintenance;
struct cache;
struct offload;

/*
 * Starts what cfg asks for. st must come from storage_watch_wrap and is the one reg uses; px
 * is NULL when not pulling through. Everything is borrowed and must outlive the maintenance.
 * NULL when out of memory or st is not wrapped (logged).
 */
struct maintenance *maintenance_new(struct event_base *base, const struct config *cfg,
                                    struct storage *st, struct registry *reg, struct proxy *px,
                                    struct cache *cache, struct offload *ol);
/*
 * Stops the timers; work in progress is dropped (a pass leaves a consistent store any time).
 * A step still on a worker stops early and frees the rest in its done, so call it before
 * offload_free.
 */
void maintenance_free(struct maintenance *m);

#endif
