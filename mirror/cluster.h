#ifndef REGMIRROR_CLUSTER_H
#define REGMIRROR_CLUSTER_H
/*
 * cluster: what the nodes of one mirror (one store, one Redis, each with its own
 * cluster.advertise) agree on through Redis: the fetch lease of a blob, so that one node
 * fetches it from the upstream while the others read that node's spool (proxy_blob.c, and
 * proxy_blob_peer for the endpoint that serves it).
 *
 * Redis is never the truth and never a reason to fail: when it is down, slow or unreachable,
 * a question is answered CLUSTER_ALONE within a short timeout and the node fetches on its own
 * (one fetch per node at worst, as without a cluster). A lease lives LEASE_TTL_MS unless its
 * holder renews it, which it does while the fetch runs, so a node that dies frees its leases
 * within seconds.
 *
 * Keys: regmirror:lease:<digest> = "<advertise URL> <nonce>" while a node fetches, then
 * "stored" for a short while once the blob is in the store; regmirror:tagcheck:<name>:<tag>
 * the same for a tag's upstream check.
 *
 * One loop thread uses a cluster. Answers never come inline, always from the loop.
 */
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include "config.h"
#include "digest.h"

struct event_base;
struct cluster;
struct cluster_op;

enum cluster_lease {
    CLUSTER_ALONE,  /* no answer (Redis unavailable): fetch on your own */
    CLUSTER_OURS,   /* this node holds the lease, renewed until cluster_lease_drop */
    CLUSTER_HELD,   /* another node fetches it: holder is that node's URL */
    CLUSTER_STORED, /* the blob was stored a moment ago: look in the store */
};

/* holder: for CLUSTER_HELD, valid during the call. */
typedef void (*cluster_lease_cb)(void *ctx, enum cluster_lease r, const char *holder);

/* NULL when cluster.advertise is unset (no cluster) or out of memory (logged). */
struct cluster *cluster_new(struct event_base *base, const struct config *cfg);
/* Cancels nothing: every op must be cancelled or answered first. Takes NULL. */
void cluster_free(struct cluster *c);

/* Asks for d's lease. cb runs once, later, unless cluster_op_cancel comes first. */
struct cluster_op *cluster_lease_take(struct cluster *c, const struct digest *d,
                                      cluster_lease_cb cb, void *ctx);
void cluster_op_cancel(struct cluster_op *op);
/* Gives up a lease this node holds; stored: the blob is in the store now. */
void cluster_lease_drop(struct cluster *c, const struct digest *d, bool stored);
/*
 * The same for the upstream check of a proxied tag (name is the local name): one node asks
 * the upstream, the others wait and then answer from the store. CLUSTER_STORED: checked a
 * moment ago (the lease stays "stored" for a second after a good check).
 */
struct cluster_op *cluster_tag_take(struct cluster *c, const char *name, const char *tag,
                                    cluster_lease_cb cb, void *ctx);
void cluster_tag_drop(struct cluster *c, const char *name, const char *tag, bool checked);

/*
 * The events channel (Redis pub/sub, regmirror:events): a tag pushed, moved or deleted on one
 * node makes every other node forget what it remembers of tags (cluster_announce_tags, then
 * fn on the others); a fetch in flight on another node is "busy" there, announced while its
 * lease lives and once more when it ends (cluster_busy: not to be evicted for a while).
 */
void cluster_on_tags(struct cluster *c, void (*fn)(void *ctx), void *ctx);
void cluster_announce_tags(struct cluster *c);
bool cluster_busy(const struct cluster *c, const struct digest *d);
/* This node serves or links d now (a read from the store, a link of a blob stored for
 * another repository): the evicting node keeps it for a while. Takes NULL. */
void cluster_announce_busy(struct cluster *c, const struct digest *d);
/* Whether this node runs eviction: one node of the cluster does, the one holding the leader
 * key in Redis (renewed with the leases); true without a cluster. While Redis is away no
 * node evicts. */
bool cluster_evicts(const struct cluster *c);

/* What a node sends to read a peer's spool of d, and what the peer checks: an HMAC with
 * http.secret over the digest and the time, good for a few minutes. */
#define CLUSTER_TOKEN_MAX 96
void cluster_peer_token(const char *secret, const struct digest *d, time_t now,
                        char out[CLUSTER_TOKEN_MAX]);
bool cluster_peer_check(const char *secret, const struct digest *d, const char *token, time_t now);

#endif
