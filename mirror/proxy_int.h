#ifndef REGMIRROR_PROXY_INT_H
#define REGMIRROR_PROXY_INT_H
/*
 * What proxy.c (the decision, the in-flight tables, the fetch cap, the life cycle),
 * proxy_manifest.c and proxy_blob.c share. Not for other modules: see proxy.h.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "proxy.h"
#include "upstream.h"

/* Pull records (proxy.ttl) are written at most this often per repository and digest. */
#define PULLED_EVERY_S 600
#define PULLED_SLOTS 4096
/* A lookup that ran while a fetch of what it looks for ended is repeated, at most this often,
 * rather than starting a second upstream fetch. */
#define LOOKUP_TRIES 4
/* Retry-After of a request that waited proxy.fetchqueuetimeout for a fetch slot. */
#define QUEUE_RETRY_AFTER_S 5

#define PROXY_CONTAINER(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct remote {
    char *host; /* what ?ns= names; the main upstream is DEFAULT_HOST */
    struct upstream *up;
    bool main;
};

struct mfetch;
struct bfetch;
struct bhead;

/*
 * One upstream exchange's place under proxy.maxfetches: it holds a slot while it runs, or
 * waits for one in the proxy's FIFO (at most proxy.fetchqueuetimeout). Embedded in the
 * exchange; go and expire get it back.
 */
struct slot {
    struct slot *prev, *next; /* px->wait_head .. wait_tail while queued */
    int64_t deadline_ms;      /* monotonic */
    bool queued, held;
    void (*go)(struct slot *s);     /* the slot is granted: start the exchange */
    void (*expire)(struct slot *s); /* waited too long: answer 503 */
};

struct proxy {
    struct event_base *base;
    const struct config *cfg;
    struct registry *reg;
    struct httpc *httpc;
    struct cluster *cluster; /* NULL: this node fetches on its own (proxy_set_cluster) */
    struct offload *offload;
    /* With a remote store blobs are spooled in a registry of their own on the local disk,
     * then imported; NULL on the filesystem, where the store is the spool. */
    struct storage *spool_st;
    struct registry *spool;
    int spool_lock; /* flock'd spool directory, or -1 */
    unsigned refs;  /* the owner's (until proxy_free) and one per offload job using px */
    bool closing;   /* proxy_free ran: what is in flight is being cut */
    /* Bumped whenever a manifest / blob fetch leaves its table (see LOOKUP_TRIES). */
    unsigned mseq, bseq;
    struct remote *remotes;
    size_t nremotes;
    struct mfetch *mfetches;
    struct bfetch *bfetches;
    struct bhead *bheads;
    /* Recently recorded pulls: a lossy table that keeps the records to one write per
     * PULLED_EVERY_S for busy content. */
    struct {
        uint64_t key;
        time_t at;
    } pulled[PULLED_SLOTS];
    struct tagmemo *tagmemo; /* TAGMEMO_SLOTS, allocated at the first fresh tag */
    unsigned tag_epoch;      /* bumped (atomically) by proxy_tags_changed */
    /* Filesystem store: the record of this process's spools in the store (spools.h). */
    struct spools *spools;
    /* proxy.maxfetches: slots held, the FIFO of waiters, its timer */
    unsigned active;
    bool granting;
    struct slot *wait_head, *wait_tail;
    struct event *wait_timer;
    struct event *trim_timer;
    /* MBODY_BUDGET: bytes reserved by large manifest bodies, and the fetches waiting */
    size_t mbody_used;
    struct mfetch *mbody_head, *mbody_tail;
};

/* The request as the proxy sees it: which upstream, and the local (cache) route. */
struct target {
    struct remote *rm;
    struct api_route rt; /* rt.name is the local name */
};

/* Shared parts of one client request waiting on an upstream exchange. */
struct client {
    const struct api *api;
    struct http_req *req;
    struct api_route rt;
    bool manifest; /* else a blob */
};

/* A shared object's lifetime (h2o style): proxy_ref for every offload job that will use px;
 * the last proxy_unref (proxy_free drops the owner's) frees it. */
void proxy_ref(struct proxy *px);
void proxy_unref(struct proxy *px);

/* The registry the blob spool's upload sessions live in. */
struct registry *proxy_spool_reg(const struct proxy *px);

/* Sets up the target and the client of a request; false when it was answered (bad ns). */
bool proxy_begin(struct proxy *px, const struct api *api, struct http_req *req,
                 const struct api_route *rt, bool manifest, struct target *t, struct client *c);
/* What an upstream outcome means for the client (a blob's or a manifest's error). */
enum regerr proxy_outcome_error(const struct upstream_outcome *o, bool blob);
/* Answers the client with e (and Retry-After when retry_after >= 0). */
void proxy_client_error(struct client *c, enum regerr e, long retry_after, const char *detail);
/* Answers the client from the store: api_manifest_serve or api_blob_serve. resolved,
 * linked_size, fd: what this same call has just looked up, or NULL, -1 and -1. */
void proxy_client_serve_looked_up(struct client *c, const struct digest *resolved,
                                  int64_t linked_size, int fd);
void proxy_client_serve(struct client *c);

/* Whether a pull record is due (always when create); notes it in the table when it is. */
bool proxy_pulled_due(struct proxy *px, const char *name, const struct digest *d, bool create);
/* Records a pull of proxied content for proxy.ttl (see registry_proxy_pulled). */
void proxy_note_pulled(struct proxy *px, const char *name, const struct digest *d, bool create);

/* proxy.maxfetches: starts the exchange at once when a slot is free, else queues it; go or
 * expire follows. Release gives the slot back (running) or leaves the queue (waiting). */
void proxy_slot_acquire(struct proxy *px, struct slot *s, void (*go)(struct slot *),
                        void (*expire)(struct slot *));
void proxy_slot_release(struct proxy *px, struct slot *s);

/* proxy_free: every fetch in flight is cut, its clients answered; what an offload job holds
 * is freed by the job's done. */
void proxy_manifest_close(struct proxy *px);
void proxy_blob_close(struct proxy *px);
/* See proxy_busy. */
bool proxy_manifest_busy(const struct proxy *px, const struct digest *d);
bool proxy_blob_busy(const struct proxy *px, const struct digest *d);

#endif
