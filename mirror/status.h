#ifndef REGMIRROR_STATUS_H
#define REGMIRROR_STATUS_H
/*
 * status: the operator's view of the mirror, on http.debug.addr.
 *
 *  - GET /status: one HTML page (mirror/status_page.html, assembled into the binary) with
 *    its own style and script and nothing loaded from anywhere else, so it works on an
 *    air-gapped host. It reads /status.json every few seconds and draws the last hour.
 *  - GET /status.json: the figures, built from what other modules already keep:
 *      version, start time and uptime;
 *      traffic over the last minute, the last hour and since start (metrics history):
 *        requests, cache hits and misses of blobs and manifests and their ratios, blob
 *        bytes served from the store and fetched from an upstream, the share saved;
 *      the last hour per minute (the chart);
 *      each upstream (proxy_upstream): origin, health as its own requests saw it, last
 *        error, requests, token fetches, 429s, the pull budget and its hold;
 *      the blob fetches in flight (proxy_each_fetch): digest, repository, bytes so far of
 *        the size, clients reading;
 *      storage: the proxied bytes at the last eviction pass against proxy.maxsize, and what
 *        eviction removed;
 *      the most pulled repositories (metrics_top_pulls);
 *      the webhook queues (notify_each_queue).
 *
 * Never a secret: upstreams show as scheme://host:port (upstream_new refuses URLs with
 * credentials), webhooks by their configured name, and no other configuration value than
 * proxy.maxsize and the reserve appears; the debug listener has no authentication of its own.
 *
 * The module borrows version (the daemon's, as `regmirror version` prints it), cfg, px (NULL
 * when not proxying) and nt (may be NULL); they outlive it.
 * It samples the metrics history on a timer of base (METRICS_HISTORY_STEP_S). Loop thread.
 */
#include <stdint.h>
#include <time.h>

#include <jansson.h>

struct admin;
struct config;
struct event_base;
struct http_req;
struct notify;
struct proxy;
struct status;

/* Rows of the top repositories table. */
#define STATUS_TOP_REPOS 10

/* Starts the sampling timer (the first sample marks the start). NULL when out of memory. */
struct status *status_new(struct event_base *base, const char *version, const struct config *cfg,
                          const struct proxy *px, const struct notify *nt);
/* The cache admin whose warm and verify runs the JSON shows (borrowed; it outlives s's
 * answers: both belong to the debug listener). */
void status_set_admin(struct status *s, struct admin *adm);
/* Stops the timer and frees s. Takes NULL. */
void status_free(struct status *s);

/* The figures at wall time now and monotonic time mono_ms; a new reference, NULL when out
 * of memory. */
json_t *status_json(struct status *s, time_t now, int64_t mono_ms);

/* Answer GET and HEAD of /status.json and /status. */
void status_serve_json(struct status *s, struct http_req *req);
void status_serve_page(struct http_req *req);

#endif
