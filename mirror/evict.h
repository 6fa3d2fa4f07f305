#ifndef REGMIRROR_EVICT_H
#define REGMIRROR_EVICT_H
/*
 * evict: eviction of proxied content (proxy.ttl, proxy.maxsize) when pulling through, on a
 * timer of the event loop.
 *
 * A pass walks the repositories and sees each proxied image (a manifest with a pull record,
 * repositories/<name>/_proxy/pulled/..., and nothing local tagging it) with what it reaches,
 * and everything local (pushed manifests and what they reach, blob links without a pull
 * record). Images not pulled within ttl go, then, while the proxied bytes exceed maxsize, the
 * least recently pulled ones. A blob still reached by a kept image or by local content,
 * written into any repository since the pass began (an upload or mount in progress, a new
 * pull), or in flight in the proxy is never removed. Links go before data. Passes repeat
 * after a pause of twenty times the time the last one took (1 s to 60 s).
 *
 * On the loop (inline offload) a pass runs a few milliseconds a tick. Otherwise each step runs
 * as offload work on a worker (a tenth of a second of work at most, or one batch of units or
 * blobs) and the next one is scheduled from its done; what only the loop may ask (proxy_busy,
 * cache_forget) is asked there, before and after each batch. Writers then run on other workers
 * during a pass: the storage_watch wrapper and the pass share a gate so that a link written
 * after the pass looked still keeps what it names (see storage_watch.h).
 *
 * Ownership: everything passed in is borrowed and must outlive the eviction. A job on a
 * worker holds a reference; evict_free drops the owner's, so the last job's done frees the
 * rest.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <event2/event.h>

#include "config.h"
#include "digest.h"
#include "proxy.h"
#include "storage.h"
#include "storage_watch.h"

struct evict;
struct cache;
struct offload;

/* Starts passes as cfg's proxy.ttl and proxy.maxsize say. w wraps the registry's store; the
 * cache is told about every link and blob evicted. NULL when out of memory. */
struct evict *evict_new(struct event_base *base, const struct config *cfg, struct storage_watch *w,
                        struct proxy *px, struct cache *cache, struct offload *ol);
/* Stops the timer; work in progress is dropped (a pass leaves a consistent store any time).
 * A step still on a worker returns early. Call it before offload_free. */
void evict_free(struct evict *e);

/*
 * The decision of one pass, without a loop: scans every repository of st and decides what
 * goes at time now under ttl_ms and maxsize (0: no limit). NULL when out of memory or the
 * scan failed. The pass itself then checks each item again before it deletes anything.
 */
struct evict_plan;
struct evict_plan *evict_plan_make(struct storage *st, int64_t ttl_ms, uint64_t maxsize,
                                   time_t now);
void evict_plan_free(struct evict_plan *p);

/* What goes, in order: an image (a manifest revision, with its proxied tags and the links of
 * what it reaches in its repository) or a proxied blob link no manifest reaches. */
struct evict_item {
    const char *repo; /* valid as long as the plan */
    struct digest d;
    bool manifest;
};
size_t evict_plan_items(const struct evict_plan *p);
struct evict_item evict_plan_item(const struct evict_plan *p, size_t k);
/* The blobs whose data goes (nothing local or kept reaches them). */
size_t evict_plan_blobs(const struct evict_plan *p);
const struct digest *evict_plan_blob(const struct evict_plan *p, size_t k);
/* The proxied bytes before and after the plan. */
uint64_t evict_plan_bytes_before(const struct evict_plan *p);
uint64_t evict_plan_bytes_left(const struct evict_plan *p);

#endif
