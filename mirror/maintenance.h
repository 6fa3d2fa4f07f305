#ifndef REGMIRROR_MAINTENANCE_H
#define REGMIRROR_MAINTENANCE_H
/*
 * maintenance: the running daemon's background work, on timers of its event loop, in small
 * batches (a few milliseconds a tick) so that requests are never held up.
 *
 *  - Upload purging (storage.maintenance.uploadpurging): upload sessions older than age are
 *    removed every interval (only logged with dryrun). The age counts from the later of the
 *    session's start and its last write, so a slow push that is still sending is kept.
 *  - Eviction of proxied content (proxy.ttl, proxy.maxsize), when pulling through. A pass
 *    walks the repositories and sees each proxied image (a manifest with a pull record,
 *    repositories/<name>/_proxy/pulled/..., and nothing local tagging it) with what it
 *    reaches, and everything local (pushed manifests and what they reach, blob links without
 *    a pull record). Images not pulled within ttl go, then, while the proxied bytes exceed
 *    maxsize, the least recently pulled ones. A blob still reached by a kept image or by local
 *    content, written into any repository since the pass began (an upload or mount in
 *    progress, a new pull), or in flight in the proxy is never removed. Links go before data.
 *    Passes repeat after a pause of twenty times the time the last one took (1 s to 60 s).
 *
 * With a remote driver (the offload pool not inline) each step runs as offload work on a
 * worker (a tenth of a second of work at most, or one batch of units or blobs) and the next one is
 * scheduled from its done; what only the loop may ask (proxy_busy, cache_forget) is asked there,
 * before and after each batch. Writers then run on other workers during a pass: the wrapper and the
 * pass share a gate so that a link written after the pass looked still keeps what it names
 * (see struct watch in maintenance.c).
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
 * Wraps a storage driver so that the maintenance learns which links are written (and, with
 * worker threads, which blobs are looked up) while an eviction pass runs. The wrapper owns inner
 * (storage_free frees both). NULL in, NULL out; inner itself when out of memory (maintenance_new
 * then refuses it).
 */
struct storage *maintenance_storage_wrap(struct storage *inner);

/*
 * Starts what cfg asks for. st must come from maintenance_storage_wrap and is the one reg
 * uses; px is NULL when not pulling through. Everything is borrowed and must outlive the
 * maintenance. NULL when out of memory or st is not wrapped (logged).
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
