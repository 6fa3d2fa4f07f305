#ifndef REGMIRROR_HEALTH_H
#define REGMIRROR_HEALTH_H
/*
 * health: registry:2's health checks (config health.*), run on timers of the event loop, and
 * the two pages that report them.
 *
 * Checks, each with its interval and threshold (a check counts as failing once `threshold`
 * runs in a row failed; 0 or 1: at the first failure; one success clears it):
 *  - storagedriver: stat and list the storage root through the driver; a root that is gone,
 *    is no directory or cannot be read fails. Key "storagedriver_<driver>".
 *  - file: fails while the file exists (registry:2's way to drain an instance). Key: the path.
 *  - http: a HEAD of the URI (with its headers) must answer statuscode. Key: the URI.
 *  - tcp: a connection to addr must open within the timeout. Key: the address.
 *  - upstream (regmirror): when proxying, GET <remoteurl>/v2/ of every upstream every
 *    HEALTH_UPSTREAM_INTERVAL_MS; any HTTP answer below 500 counts as reachable. Reported, but
 *    never makes the mirror unhealthy: it still serves its cache. Key "upstream_<url>".
 * Every check runs once right after start, then at its interval. The file check is a stat on
 * the loop; the storage check goes through the offload pool (inline for the filesystem driver,
 * a worker thread for a remote one); http, tcp and upstream checks are asynchronous.
 *
 * Pages:
 *  - /debug/health (on http.debug.addr): registry:2's JSON, an object of failing check ->
 *    error text ({} when all pass); 503 when a check that counts fails, else 200 (an
 *    unreachable upstream appears in the object with a 200).
 *  - /healthz (on the main listener): "ok" with 200, or "unhealthy" with 503, then one
 *    "key: error" line per failing check.
 *
 * The module borrows base, cfg, st and the pool; they outlive it (a storage probe still running
 * at health_free ends in the pool's done, which offload_free runs at the latest).
 */
#include <stdbool.h>

struct config;
struct event_base;
struct http_req;
struct storage;
struct health;
struct httpc;
struct offload;

#define HEALTH_UPSTREAM_INTERVAL_MS 30000
#define HEALTH_DEFAULT_TIMEOUT_MS 3000

/*
 * Creates the checks and starts their timers; http probes go through client (the daemon's
 * shared client, borrowed: it outlives h). NULL when out of memory (logged).
 */
struct health *health_new(struct event_base *base, const struct config *cfg, struct storage *st,
                          struct httpc *client, struct offload *ol);
/* Stops every check (in-flight probes are cancelled) and frees h. Takes NULL. */
void health_free(struct health *h);

/* True when no check that counts is failing. NULL (no checks) is healthy. */
bool health_ok(const struct health *h);

/* Answers /debug/health and /healthz as described above; h may be NULL (healthy). */
void health_serve_debug(const struct health *h, struct http_req *req);
void health_serve_healthz(const struct health *h, struct http_req *req);

#endif
