#ifndef REGMIRROR_METRICS_H
#define REGMIRROR_METRICS_H
/*
 * metrics: process-wide counters rendered in the Prometheus text format (version 0.0.4) on
 * http.debug.addr at http.debug.prometheus.path.
 *
 * Cost on the hot path: every counter is a plain uint64_t in a static array, bumped with one
 * add (metrics_add / metrics_inc); a finished request costs a route classification (a few
 * byte compares on the path), one table lookup for the status and one histogram bucket
 * search. Nothing allocates per request. The counters belong to the event-loop thread that
 * does all of the daemon's work, so they need no atomics.
 *
 * Values that live in other modules (notification queues, health checks) are pulled at
 * scrape time through collectors (metrics_add_collector), so those modules need no hook on
 * their own hot paths.
 *
 * For the status page (status.h) the module also keeps a short history of the traffic
 * counters (samples taken by metrics_history_tick, so figures over the last minute and hour
 * are differences of two samples) and the pulls per repository in a small table.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <http_parser.h>

struct evbuffer;
struct http_req;
struct storage;

/* Monotonic counters (and gauges kept with add/sub), one slot each. */
enum metrics_counter {
    METRICS_BYTES_FROM_CACHE,        /* blob body bytes served from the local store */
    METRICS_BYTES_FROM_UPSTREAM,     /* blob body bytes fetched from an upstream */
    METRICS_CACHE_HIT_BLOB,          /* proxied blob GET/HEAD answered from the store */
    METRICS_CACHE_MISS_BLOB,         /* ... that needed the upstream */
    METRICS_CACHE_HIT_MANIFEST,      /* proxied manifest GET/HEAD with a cached manifest */
    METRICS_CACHE_MISS_MANIFEST,     /* ... without one */
    METRICS_JOINED_WAITERS,          /* clients that joined a running upstream fetch */
    METRICS_TOKEN_FETCHES,           /* token requests sent to an upstream's realm */
    METRICS_UPSTREAM_429,            /* 429 answers from an upstream or its token realm */
    METRICS_UPSTREAM_REQUESTS,       /* upstream requests started */
    METRICS_GAUGE_UPSTREAM_INFLIGHT, /* gauge: upstream requests running now */
    METRICS_GAUGE_FETCHES_ACTIVE,    /* gauge: proxy fetches holding a proxy.maxfetches slot */
    METRICS_GAUGE_FETCH_QUEUE,       /* gauge: proxy fetches waiting for a slot */
    METRICS_FETCHES_QUEUED,          /* proxy fetches that had to wait for a slot */
    METRICS_FETCH_QUEUE_TIMEOUTS,    /* ... and gave up after proxy.fetchqueuetimeout */
    METRICS_UPSTREAM_UNAVAILABLE,    /* upstream requests that ended unavailable */
    METRICS_UPSTREAM_UNAUTHORIZED,   /* ... refused (401 after the token, 403) */
    METRICS_UPSTREAM_REJECTED,       /* ... with another 4xx or an unusable 3xx */
    METRICS_GAUGE_PROXIED_BYTES,     /* gauge: proxied bytes in the store at the last eviction
                                        pass */
    METRICS_GAUGE_MAXSIZE,           /* gauge: proxy.maxsize (0: none) */
    METRICS_CLUSTER_LEASES_TAKEN,    /* blob fetch leases this node took (cluster.advertise) */
    METRICS_CLUSTER_LEASES_WAITED,   /* fetches that read another node's spool instead */
    METRICS_CLUSTER_TAKEN_OVER,      /* ... whose holder went away, so this node fetched */
    METRICS_CLUSTER_PEER_BYTES,      /* blob bytes read from other nodes' spools */
    METRICS_REQUESTS,                /* requests on the registry listener */
    METRICS_EVICTED_ITEMS,           /* images and blob links eviction removed */
    METRICS_EVICTED_BYTES,           /* blob bytes eviction freed */
    METRICS__COUNT
};

/* Storage driver operations, for storage error counts. */
enum metrics_storage_op {
    METRICS_OP_GET_CONTENT,
    METRICS_OP_PUT_CONTENT,
    METRICS_OP_STAT,
    METRICS_OP_LIST,
    METRICS_OP_MOVE,
    METRICS_OP_REMOVE,
    METRICS_OP_OPEN_READ,
    METRICS_OP_OPEN_WRITER,
    METRICS_OP__COUNT
};

/* Request routes as labelled in regmirror_http_requests_total. */
enum metrics_route {
    METRICS_ROUTE_BASE,
    METRICS_ROUTE_CATALOG,
    METRICS_ROUTE_TAGS,
    METRICS_ROUTE_MANIFEST,
    METRICS_ROUTE_BLOB,
    METRICS_ROUTE_UPLOAD,
    METRICS_ROUTE_REFERRERS,
    METRICS_ROUTE_HEALTHZ,
    METRICS_ROUTE_OTHER,
    METRICS_ROUTE__COUNT
};

/* Updated atomically: storage work also runs on offload threads (offload.h). */
extern uint64_t metrics_counters[METRICS__COUNT];

static inline void metrics_add(enum metrics_counter c, uint64_t n)
{
    __atomic_fetch_add(&metrics_counters[c], n, __ATOMIC_RELAXED);
}
static inline void metrics_inc(enum metrics_counter c)
{
    __atomic_fetch_add(&metrics_counters[c], 1, __ATOMIC_RELAXED);
}
static inline void metrics_set(enum metrics_counter c, uint64_t v)
{
    __atomic_store_n(&metrics_counters[c], v, __ATOMIC_RELAXED);
}
static inline void metrics_dec(enum metrics_counter c)
{
    if (metrics_counters[c])
        metrics_counters[c]--;
}

/* The route of a request path (http.prefix already removed, or not: only the tail counts). */
enum metrics_route metrics_route_of(const char *path);
const char *metrics_route_name(enum metrics_route r);

/*
 * Records one finished request: its route, method, status and duration. Called once per
 * request by the server (aborted requests included, with the status set so far, 0 if none).
 */
void metrics_request(const char *path, enum http_method method, int status, uint64_t duration_us);

/* Counts a failed storage operation (a result other than OK and NOT_FOUND). */
void metrics_storage_error(enum metrics_storage_op op);

/*
 * Wraps a storage driver so that every failed operation is counted. Takes inner: freeing
 * the wrapper frees inner. Returns inner itself when out of memory (nothing counted then).
 */
struct storage *metrics_storage_wrap(struct storage *inner);

/*
 * A collector appends its own metric families (complete with # HELP / # TYPE lines) at
 * scrape time. At most METRICS_COLLECTORS_MAX at once; the owner removes it before going
 * away. Returns 0, or -1 when the table is full.
 */
#define METRICS_COLLECTORS_MAX 8
typedef void (*metrics_collector_fn)(struct evbuffer *out, void *ctx);
int metrics_add_collector(metrics_collector_fn fn, void *ctx);
void metrics_remove_collector(metrics_collector_fn fn, void *ctx);

/*
 * One upstream's pull budget in the exposition (regmirror_upstream_ratelimit_limit and
 * _remaining, labelled upstream="<name>", once the budget is known). The owner embeds it,
 * fills name and rl (both must outlive the registration), adds it, and removes it before
 * either goes away. Loop thread only.
 */
struct ratelimit;
struct metrics_upstream {
    const char *name;
    const struct ratelimit *rl;
    struct metrics_upstream *prev, *next;
};
void metrics_upstream_add(struct metrics_upstream *m);
void metrics_upstream_remove(struct metrics_upstream *m);

/* Appends the whole exposition (every family and every collector) to out. */
void metrics_render(struct evbuffer *out);

/* Answers req with the exposition (text/plain; version=0.0.4). */
void metrics_serve(struct http_req *req);

/* Appends a label value escaped as the text format wants (\\, \", \n). */
void metrics_escape_label(struct evbuffer *out, const char *value);

/* ---- history and pulls, for the status page ---- */

/* The traffic counters the status page shows over time. */
struct metrics_traffic {
    uint64_t requests;               /* METRICS_REQUESTS */
    uint64_t blob_hits, blob_misses; /* METRICS_CACHE_HIT_BLOB, ..._MISS_BLOB */
    uint64_t manifest_hits, manifest_misses;
    uint64_t bytes_cache, bytes_upstream; /* METRICS_BYTES_FROM_CACHE, ..._UPSTREAM */
};

/* A sample every METRICS_HISTORY_STEP_S at most, kept for METRICS_HISTORY_SPAN_S. */
#define METRICS_HISTORY_STEP_S 10
#define METRICS_HISTORY_SPAN_S 3600

/* The counters' values now (since start). */
void metrics_traffic_now(struct metrics_traffic *out);
/*
 * Takes a sample at now_s (monotonic seconds) unless the last one is younger than a step.
 * The first call marks the start: windows reach back to it at most. Loop thread.
 */
void metrics_history_tick(int64_t now_s);
/*
 * What the counters did in the `seconds` before now_s: now's values less the newest sample
 * taken at or before now_s - seconds (so the window is up to a step longer), or less zero
 * when there is none since the start. Once more than the span has passed, the oldest sample
 * kept bounds the window.
 */
void metrics_history_window(int64_t now_s, int64_t seconds, struct metrics_traffic *out);
/* The last n windows of `step_s` seconds each, ending at now_s, oldest first. */
void metrics_history_series(int64_t now_s, int64_t step_s, struct metrics_traffic *out, size_t n);

/*
 * Manifest GETs answered 200 per repository, in a table of METRICS_TOP_SLOTS names: once it
 * is full, a new name takes the place of the least pulled one and its count plus one (the
 * "space saving" count: exact while fewer names were pulled, an upper bound after).
 */
#define METRICS_TOP_SLOTS 64
struct metrics_repo_pulls {
    char name[256];
    uint64_t pulls;
};
/* Counts one pull of name. Loop thread (metrics_request calls it). */
void metrics_note_pull(const char *name, size_t len);
/* The (at most) max most pulled repositories, most pulled first; returns how many. */
size_t metrics_top_pulls(struct metrics_repo_pulls *out, size_t max);

/* Zeroes every counter, the history and the pulls (tests). */
void metrics_reset(void);

#endif
