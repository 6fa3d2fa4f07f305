#ifndef REGMIRROR_PROXY_H
#define REGMIRROR_PROXY_H
/*
 * proxy: the pull-through cache. When proxy.remoteurl is set, manifest and blob pulls that
 * the local store cannot answer are fetched from the upstream, verified, stored, and served.
 *
 *  - Manifests by digest are immutable once cached. A tag fetched from the upstream carries
 *    a marker (registry_proxy_tag_*); on a pull it is re-checked with an upstream HEAD unless
 *    younger than proxy.tagfreshness, re-fetched only when the digest changed, and served
 *    from the cache when the upstream fails. A tag pushed here has no marker and is never
 *    touched. Concurrent checks and fetches of one reference share one upstream request.
 *    Whether anyone may push, and over a proxied tag: writepolicy.h.
 *  - Blobs: one upstream fetch per digest at a time. The bytes go into an upload session
 *    (the spool, hashed as it fills) and every client attached to the fetch reads the spool
 *    at its own pace, late joiners from the start. The blob is committed only after its
 *    digest matched; a mismatch or a cut upstream commits nothing and cuts every attached
 *    response short, never ending one that looks complete. On a remote store (OSS) the
 *    session lives in a filesystem registry of the proxy's own under proxy.spooldir; once
 *    verified there, the file is imported into the store off the loop while the clients
 *    read on, and only then is the blob stored (new clients meanwhile read the spool).
 *  - HEAD of an uncached blob answers from an upstream HEAD without fetching the body.
 *  - containerd's ?ns=<host> picks the upstream from proxy.remotes; no ns, or docker.io, the
 *    main one.
 *
 * The proxy borrows base, reg and cfg; they outlive it. Its storage work runs as offload
 * jobs (their done continues on the loop). proxy_free cuts what is in flight; a proxy with
 * jobs still queued is freed by the last one's done (offload_free, after proxy_free).
 */
#include <stdbool.h>

#include <event2/event.h>

#include "api.h"

struct proxy;
struct httpc;
struct offload;

/* Upstream requests go through hc (the daemon's shared client, borrowed); storage work
 * through ol (borrowed, see offload.h). NULL when out of memory or an upstream URL is
 * unusable (logged). */
struct proxy *proxy_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                        struct httpc *hc, struct offload *ol);
void proxy_free(struct proxy *px);

/*
 * Answers a manifest GET/HEAD. serve_local is how the API answers from the store once the
 * proxy made sure the store holds what should be served; resolved, when not NULL, is the
 * digest rt->ref was resolved to in the store just now (registry_manifest_get_resolved), so
 * it need not be looked up again.
 */
typedef void (*proxy_manifest_serve_fn)(const struct api *api, struct http_req *req,
                                        const struct api_route *rt, const struct digest *resolved);
void proxy_manifest(struct proxy *px, const struct api *api, struct http_req *req,
                    const struct api_route *rt, proxy_manifest_serve_fn serve_local);
/* serve_local for blobs; linked_size, when >= 0, is the size of the blob the proxy has just
 * found linked in rt->name, so it need not be looked up again; fd, when >= 0, is its data,
 * opened by that lookup for a GET from local storage (registry_blob_open): serve_local owns
 * it. */
typedef void (*proxy_blob_serve_fn)(const struct api *api, struct http_req *req,
                                    const struct api_route *rt, int64_t linked_size, int fd);
/* Answers a blob GET/HEAD that the store could not answer for rt->name. */
void proxy_blob(struct proxy *px, const struct api *api, struct http_req *req,
                const struct api_route *rt, proxy_blob_serve_fn serve_local);

/*
 * Whether d is in flight: a blob fetched from an upstream (not committed yet) or looked up
 * with a HEAD, or a cached manifest whose tag is being re-checked (served from the store when
 * the upstream answers). The maintenance never removes it then.
 */
bool proxy_busy(const struct proxy *px, const struct digest *d);
/*
 * A blob of the main upstream found in name by the blob-descriptor cache: counts the hit and
 * records the pull for proxy.ttl, as a lookup in storage would.
 */
void proxy_blob_hit(struct proxy *px, const char *name, const struct digest *d);
/*
 * A tag or manifest was written or removed outside the proxy (a push, a delete, eviction):
 * the tags the proxy resolved in memory are forgotten. Thread-safe; px may be NULL.
 */
void proxy_tags_changed(struct proxy *px);

#endif
