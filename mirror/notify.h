#ifndef REGMIRROR_NOTIFY_H
#define REGMIRROR_NOTIFY_H
/*
 * notify: registry:2's webhook notifications (config notifications.endpoints).
 *
 * Events for manifest and blob push, pull, delete and mount are written in registry:2's
 * envelope ({"events": [...]}, Content-Type application/vnd.docker.distribution.events.v1+json)
 * and POSTed to every enabled endpoint through httpc, on the event loop: emitting an event
 * never blocks or fails a request.
 *
 * Per endpoint:
 *  - Filters: ignoredmediatypes and ignore.mediatypes drop events whose target media type is
 *    listed (deletes carry no media type, as in registry:2); ignore.actions drops actions.
 *  - A bounded queue of NOTIFY_QUEUE_MAX events. Events go out in batches of at most
 *    NOTIFY_BATCH_MAX; a batch is delivered when the endpoint answers 2xx or 3xx (as
 *    registry:2's http sink), within the endpoint's timeout.
 *  - A failed batch is sent again, unchanged (same event ids, so a receiver can drop
 *    duplicates): at once while fewer than `threshold` attempts in a row failed, then every
 *    `backoff` (registry:2's retrying sink). The endpoint is logged as down when it reaches
 *    the threshold and as back when a batch gets through.
 *  - While the endpoint stays down and the queue is full, the oldest queued events are
 *    dropped; drops are counted and the count is logged (once per retry at most) and
 *    exported as regmirror_notifications_events_total{result="dropped"}.
 *
 * With notifications.events.includereferences, manifest push and pull events carry
 * target.references: the config and layers of an image, the manifests of an index, as
 * registry:2 writes them (mediaType, size, digest, urls, annotations, platform).
 *
 * Differences from registry:2: pull events are emitted for GET only (a HEAD is not a pull);
 * the actor is empty.
 *
 * The daemon has one notifier: notify_new makes it the one the notify_blob / notify_manifest
 * hooks use, and those hooks are a test of one pointer when no endpoint is configured.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digest.h"

struct api;
struct manifest;
struct config;
struct event_base;
struct http_req;
struct notify;
struct httpc;

#define NOTIFY_QUEUE_MAX 1024
#define NOTIFY_BATCH_MAX 32
#define NOTIFY_MEDIA_TYPE "application/vnd.docker.distribution.events.v1+json"
/* registry:2 gives blobs this media type in events. */
#define NOTIFY_BLOB_MEDIA_TYPE "application/octet-stream"

enum notify_action { NOTIFY_PUSH, NOTIFY_PULL, NOTIFY_DELETE, NOTIFY_MOUNT };

/* What an event is about; NULL / -1 fields are left out of the JSON. */
struct notify_target {
    const char *media_type;
    const struct digest *digest;
    int64_t size;
    const char *repository;
    const char *url;
    const char *tag;
    const char *from_repository;       /* mounts */
    const struct manifest *references; /* a manifest's references, or NULL */
};

/* Who asked; NULL fields are written as "". */
struct notify_request {
    const char *addr, *host, *method, *useragent;
};

/*
 * Creates the notifier for cfg->notifications (borrowed: cfg outlives it) on base and makes
 * it the active one. Deliveries go through hc (the daemon's shared client, borrowed). With no
 * enabled endpoint it does nothing at all. NULL when out of memory (logged).
 */
struct notify *notify_new(struct event_base *base, const struct config *cfg, struct httpc *hc);
/* Cancels deliveries in flight, drops what is queued, frees n. Takes NULL. */
void notify_free(struct notify *n);

/* Queues one event for every endpoint that does not filter it out. */
void notify_emit(struct notify *n, enum notify_action action, const struct notify_target *t,
                 const struct notify_request *rq);

/* Events queued or in flight, over all endpoints. */
size_t notify_queue_depth(const struct notify *n);
/* Events dropped because a queue was full, over all endpoints. */
uint64_t notify_dropped(const struct notify *n);

/* One endpoint's queue, for the status page; name is the endpoint's configured name. */
struct notify_queue_view {
    const char *name;
    size_t pending; /* queued or in flight */
    uint64_t sent, dropped, failed;
    bool down; /* failed `threshold` attempts in a row */
};
/* Calls fn for every endpoint, in configuration order. Takes NULL. */
void notify_each_queue(const struct notify *n,
                       void (*fn)(const struct notify_queue_view *v, void *ctx), void *ctx);

/* ---- hooks for the API handlers: no-ops unless a notifier with endpoints is active ---- */

/*
 * A blob event: size -1 when unknown, from only for mounts. Pulls count for GET only: the
 * hooks ignore NOTIFY_PULL on any other method.
 */
void notify_blob(const struct api *api, struct http_req *req, enum notify_action action,
                 const char *repo, const struct digest *d, int64_t size, const char *from);
/*
 * A manifest event. ref is the tag or digest the client named (a tag becomes target.tag);
 * d the manifest's digest, NULL to take it from ref (NULL for a delete by tag); media_type
 * NULL for deletes. body: the manifest's len bytes (borrowed), parsed for
 * target.references when the configuration asks for them; NULL for deletes.
 */
void notify_manifest(const struct api *api, struct http_req *req, enum notify_action action,
                     const char *repo, const char *ref, const struct digest *d,
                     const char *media_type, const char *body, size_t len);

#endif
