#ifndef REGMIRROR_PROXY_H
#define REGMIRROR_PROXY_H
/*
 * proxy: the pull-through cache. When proxy.remoteurl is set, manifest and blob pulls that
 * the local store cannot answer are fetched from the upstream, verified, stored, and served.
 * proxy.c decides where a request goes (which upstream, the local name, the fetch cap);
 * proxy_manifest.c and proxy_blob.c run the exchanges. The proxy decides where the bytes come
 * from and never writes HTTP: the API writes every answer (api.h), from the store
 * (api_blob_serve, api_manifest_serve), from an upstream HEAD (api_blob_head) or from an
 * in-flight fetch's spool (api_stream: the proxy is its source).
 *
 * A cold blob GET, step by step:
 *   1. server.c on_request: auth, api_route_parse, write policy; api_blob (api_blobs.c)
 *      sees a proxy and calls proxy_blob.
 *   2. proxy_blob: proxy_begin picks the upstream from ?ns= and the local name (pick_target);
 *      blookup_work asks the store (registry_blob_open on the filesystem, inline; stat off the
 *      loop on OSS). blookup_finish: linked -> api_blob_serve, done; stored for another
 *      repository -> blob_head (an upstream HEAD, then a link job); absent -> blob_fetch.
 *   3. blob_fetch: a fetch of that digest in px->bfetches is joined (reader_new: a breader
 *      on it, the source of the client's api_stream; late joiners read from the start);
 *      else a new bfetch takes a slot of proxy.maxfetches
 *      (proxy_slot_acquire; queued up to proxy.fetchqueuetimeout, then 503). A Range that
 *      starts well beyond the fetch's spool (side_wanted) also gets a side fetch of its own
 *      (side_start: the client's Range to the upstream, into a spool of its own, no slot,
 *      past the cluster's lease): the reader's source until it ends; the reader goes back to
 *      the fetch if the upstream's answer is not the 206 of the span asked.
 *   4. bfetch_go: an upload session is the spool (registry_upload_start/open/reader, in the
 *      proxy's own spool registry on OSS), then upstream_fetch GET (upstream.c: challenge,
 *      token for repository:<name>:pull, retries, redirects).
 *   5. b_on_response: the length is known; bfetch_pump_all wakes every reader's stream,
 *      which polls its source (reader_poll) and sends its status and headers (api_stream.c:
 *      api_blob_span, api_blob_start). b_on_data writes the spool (hashed as it fills) and
 *      wakes the streams again; each sends the new spool bytes at its connection's pace.
 *   6. b_on_done: the digest matched -> registry_upload_commit (the blob is stored; on OSS
 *      bfetch_import stores it off the loop while readers go on from the spool), readers end
 *      their responses; a mismatch or a cut commits nothing and cuts every reader short
 *      (http_resp_retract turns an answer that has not left yet into an error).
 *
 * A tag GET (or HEAD), step by step:
 *   1. api_manifest (api_manifests.c) calls proxy_manifest; proxy_begin as above.
 *   2. A proxied tag resolved fresh a moment ago is answered from memory (tagmemo_find) via
 *      api_manifest_serve. Else mlookup_work resolves the tag in the store and reads its
 *      marker (registry_proxy_tag_checked).
 *   3. mlookup_finish: a pushed tag (no marker), or a proxied one younger than
 *      proxy.tagfreshness or whose upstream's pull budget holds it (upstream_hold:
 *      proxy.ratelimitreserve reached, or after a 429) -> api_manifest_serve. Else manifest_join:
 * one mfetch per reference; with a cached copy it starts as an upstream HEAD (the re-check).
 *   4. m_on_done: the HEAD's digest is the cached one -> mfetch_job touches the marker;
 *      changed -> a GET by digest; mfetch_store checks the digest and parses the manifest,
 *      then the job stores and tags it (registry_manifest_store, registry_proxy_tag_set).
 *   5. mfetch_done -> mfetch_finish: every waiter is served from the store
 *      (api_manifest_serve); when the upstream failed, the cached manifest if there is one,
 *      else the error.
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
 *  - A 206 from an in-flight source ends once its bytes are in: a part cannot be checked
 *    against the digest (a side fetch's bytes are never stored).
 *  - containerd's ?ns=<host> picks the upstream from proxy.remotes; no ns, or docker.io, the
 *    main one.
 *
 * Lifetimes: the proxy and every exchange it shares (a blob fetch, a manifest fetch, a blob
 * HEAD) are refcounted, with one dispose function each: an offload job, a reader or a
 * running upstream request holds a reference. The proxy borrows base, reg and cfg; they
 * outlive it. proxy_free cuts what is in flight; the last job's done frees the proxy.
 */
#include <stdbool.h>

#include <event2/event.h>

#include "api.h"

struct proxy;
struct cluster;
struct httpc;
struct offload;

/* Upstream requests go through hc (the daemon's shared client, borrowed); storage work
 * through ol (borrowed, see offload.h). NULL when out of memory or an upstream URL is
 * unusable (logged). */
struct proxy *proxy_new(struct event_base *base, const struct config *cfg, struct registry *reg,
                        struct httpc *hc, struct offload *ol);
void proxy_free(struct proxy *px);
/* cluster.advertise: blob fetches take a lease in Redis first (cluster.h), so one node of the
 * cluster fetches and the others read its spool. cl is borrowed and outlives px. */
void proxy_set_cluster(struct proxy *px, struct cluster *cl);

/* Answers a manifest GET/HEAD: from the store once it holds what should be served
 * (api_manifest_serve), else from the upstream's answer. */
void proxy_manifest(struct proxy *px, const struct api *api, struct http_req *req,
                    const struct api_route *rt);
/* Answers a blob GET/HEAD that the store could not answer for rt->name: from the store once
 * linked (api_blob_serve), from the spool of the fetch in flight, or from an upstream HEAD. */
void proxy_blob(struct proxy *px, const struct api *api, struct http_req *req,
                const struct api_route *rt);
/* The same for a request whose fetch's lease said "stored": a lease that says so again is
 * not trusted (the blob may be evicted since), the blob is fetched. */
void proxy_blob_again(struct proxy *px, const struct api *api, struct http_req *req,
                      const struct api_route *rt);
/* Where the other nodes read a fetch in flight here: PROXY_PEER_PATH<digest>, with the
 * X-Regmirror-Peer header (cluster_peer_token). */
#define PROXY_PEER_PATH "/_regmirror/spool/"
/* Answers another node's read of d's spool (ref, the path's rest): the bytes as they arrive,
 * 404 when no fetch of d runs here, 401 without a valid token. */
void proxy_blob_peer(struct proxy *px, const struct api *api, struct http_req *req,
                     const char *ref);

/*
 * Whether d is in flight: a blob fetched from an upstream (not committed yet) or looked up
 * with a HEAD, or a cached manifest whose tag is being re-checked (served from the store when
 * the upstream answers), or a blob another node of the cluster announced as in use. The
 * maintenance never removes it then.
 */
bool proxy_busy(const struct proxy *px, const struct digest *d);
/*
 * A blob of the main upstream found in name by the blob-descriptor cache: counts the hit and
 * records the pull for proxy.ttl, as a lookup in storage would.
 */
void proxy_blob_hit(struct proxy *px, const char *name, const struct digest *d);
/* ---- read-only views for the status page (status.h); loop thread ---- */

struct upstream;
/* The i-th upstream (0: the main one) and the host ?ns= names it by; NULL past the last. */
const struct upstream *proxy_upstream(const struct proxy *px, size_t i, const char **host);

/* One blob fetch in flight, as proxy_each_fetch shows it; valid during the call only. */
struct proxy_fetch_view {
    const struct digest *digest;
    const char *repository; /* the local name it is fetched for */
    const char *upstream;   /* the host of its upstream */
    const char *state;      /* "queued" (for a proxy.maxfetches slot), "connecting",
                               "streaming", "storing" (verified, being stored: remote store) */
    uint64_t bytes;         /* received so far */
    int64_t size;           /* as the upstream announced it; -1 while unknown */
    size_t clients;         /* client answers reading it */
    bool from_peer;         /* read from the spool of the cluster node that holds the fetch */
};
/* Calls fn for every blob fetch new pulls would join, newest first. fn must not call into
 * the proxy. */
void proxy_each_fetch(const struct proxy *px,
                      void (*fn)(const struct proxy_fetch_view *v, void *ctx), void *ctx);

/*
 * A tag or manifest was written or removed outside the proxy (a push, a delete, eviction):
 * the tags the proxy resolved in memory are forgotten, here and, before this returns, on the
 * other nodes of the cluster (cluster_announce_tags). Thread-safe; px may be NULL.
 */
void proxy_tags_changed(struct proxy *px);
/* Whether eviction runs on this node: always alone, on one node in a cluster. */
bool proxy_evicts(const struct proxy *px);

#endif
