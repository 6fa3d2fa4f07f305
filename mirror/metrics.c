#include "metrics.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>

#include "http.h"
#include "ratelimit.h"
#include "storage.h"
#include "storage_wrap.h"

uint64_t metrics_counters[METRICS__COUNT];

/* ---- requests ---- */

/* Statuses with their own slot; anything else counts as "other". */
static const int status_codes[] = {0,   200, 201, 202, 204, 206, 301, 302, 304, 307, 308,
                                   400, 401, 403, 404, 405, 406, 408, 409, 411, 413, 414,
                                   415, 416, 429, 431, 500, 501, 502, 503, 504};
#define NSTATUS (sizeof(status_codes) / sizeof(status_codes[0]))
#define STATUS_OTHER NSTATUS
#define NSTATUS_SLOTS (NSTATUS + 1)

enum { M_GET, M_HEAD, M_PUT, M_POST, M_PATCH, M_DELETE, M_OTHER, M__COUNT };
static const char *const method_names[M__COUNT] = {"GET",   "HEAD",   "PUT",  "POST",
                                                   "PATCH", "DELETE", "OTHER"};

/* Upper bounds of the latency buckets, in microseconds (+Inf is the last slot). */
static const uint64_t bucket_us[] = {5000,     10000,    25000,    50000,    100000,
                                     250000,   500000,   1000000,  2500000,  5000000,
                                     10000000, 30000000, 60000000, 300000000};
static const char *const bucket_names[] = {"0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
                                           "1",     "2.5",  "5",     "10",   "30",  "60",   "300"};
#define NBUCKETS (sizeof(bucket_us) / sizeof(bucket_us[0]))

struct histogram {
    uint64_t buckets[NBUCKETS + 1]; /* non-cumulative; the last is above every bound */
    uint64_t count;
    uint64_t sum_us;
};

static uint64_t requests[METRICS_ROUTE__COUNT][M__COUNT][NSTATUS_SLOTS];
static struct histogram latency[METRICS_ROUTE__COUNT][M__COUNT];
static uint64_t storage_errors[METRICS_OP__COUNT];

/* Status -> slot, filled on first use: 600 bytes instead of a search per request. */
static uint8_t status_slot[600];
static bool status_slot_ready;

static const char *const route_names[METRICS_ROUTE__COUNT] = {
    [METRICS_ROUTE_BASE] = "base",           [METRICS_ROUTE_CATALOG] = "catalog",
    [METRICS_ROUTE_TAGS] = "tags",           [METRICS_ROUTE_MANIFEST] = "manifest",
    [METRICS_ROUTE_BLOB] = "blob",           [METRICS_ROUTE_UPLOAD] = "blob_upload",
    [METRICS_ROUTE_REFERRERS] = "referrers", [METRICS_ROUTE_HEALTHZ] = "healthz",
    [METRICS_ROUTE_OTHER] = "other",
};

static const char *const storage_op_names[METRICS_OP__COUNT] = {
    "get_content", "put_content", "stat", "list", "move", "remove", "open_read", "open_writer",
};

const char *metrics_route_name(enum metrics_route r)
{
    return r < METRICS_ROUTE__COUNT ? route_names[r] : "other";
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* The last occurrence of word in s[0..n), or NULL. */
static const char *last_of(const char *s, size_t n, const char *word)
{
    size_t k = strlen(word);
    for (size_t i = n >= k ? n - k + 1 : 0; i-- > 0;) {
        if (s[i] == word[0] && memcmp(s + i, word, k) == 0)
            return s + i;
    }
    return NULL;
}

enum metrics_route metrics_route_of(const char *path)
{
    size_t n = strlen(path);
    if (strcmp(path, "/healthz") == 0)
        return METRICS_ROUTE_HEALTHZ;
    const char *v2 = strstr(path, "/v2");
    if (!v2)
        return METRICS_ROUTE_OTHER;
    if (ends_with(path, n, "/v2") || ends_with(path, n, "/v2/"))
        return METRICS_ROUTE_BASE;
    if (ends_with(path, n, "/v2/_catalog"))
        return METRICS_ROUTE_CATALOG;
    if (ends_with(path, n, "/tags/list"))
        return METRICS_ROUTE_TAGS;
    /* A repository name may contain "blobs" or "manifests": the last marker is the route. */
    const char *m = last_of(path, n, "/manifests/");
    const char *b = last_of(path, n, "/blobs/");
    const char *r = last_of(path, n, "/referrers/");
    const char *best = m;
    enum metrics_route route = METRICS_ROUTE_MANIFEST;
    if (b && (!best || b > best)) {
        best = b;
        route = strncmp(b + 7, "uploads", 7) == 0 && (b[14] == '/' || b[14] == '\0')
                    ? METRICS_ROUTE_UPLOAD
                    : METRICS_ROUTE_BLOB;
    }
    if (r && (!best || r > best)) {
        best = r;
        route = METRICS_ROUTE_REFERRERS;
    }
    return best ? route : METRICS_ROUTE_OTHER;
}

static unsigned method_slot(enum http_method m)
{
    switch (m) {
    case HTTP_GET:
        return M_GET;
    case HTTP_HEAD:
        return M_HEAD;
    case HTTP_PUT:
        return M_PUT;
    case HTTP_POST:
        return M_POST;
    case HTTP_PATCH:
        return M_PATCH;
    case HTTP_DELETE:
        return M_DELETE;
    default:
        return M_OTHER;
    }
}

static unsigned status_index(int status)
{
    if (!status_slot_ready) {
        memset(status_slot, STATUS_OTHER, sizeof(status_slot));
        for (size_t i = 0; i < NSTATUS; i++)
            status_slot[status_codes[i]] = (uint8_t)i;
        status_slot_ready = true;
    }
    return status >= 0 && status < 600 ? status_slot[status] : STATUS_OTHER;
}

/* A manifest GET that succeeded is a pull of the repository between /v2/ and /manifests/. */
static void note_manifest_pull(const char *path)
{
    const char *v2 = strstr(path, "/v2/");
    const char *m = v2 ? last_of(path, strlen(path), "/manifests/") : NULL;
    if (m && m > v2 + 4)
        metrics_note_pull(v2 + 4, (size_t)(m - (v2 + 4)));
}

void metrics_request(const char *path, enum http_method method, int status, uint64_t duration_us)
{
    enum metrics_route route = metrics_route_of(path ? path : "");
    unsigned ms = method_slot(method);
    metrics_inc(METRICS_REQUESTS);
    if (route == METRICS_ROUTE_MANIFEST && method == HTTP_GET && status == 200)
        note_manifest_pull(path);
    requests[route][ms][status_index(status)]++;
    struct histogram *h = &latency[route][ms];
    size_t b = 0;
    while (b < NBUCKETS && duration_us > bucket_us[b])
        b++;
    h->buckets[b]++;
    h->count++;
    h->sum_us += duration_us;
}

void metrics_storage_error(enum metrics_storage_op op)
{
    if (op < METRICS_OP__COUNT)
        __atomic_fetch_add(&storage_errors[op], 1, __ATOMIC_RELAXED);
}

/* ---- history and pulls ---- */

/* One more than the span needs: the sample a full window's start falls on. */
#define NSAMPLES (METRICS_HISTORY_SPAN_S / METRICS_HISTORY_STEP_S + 2)

struct sample {
    int64_t t;
    struct metrics_traffic v;
};

static struct {
    struct sample ring[NSAMPLES];
    size_t next;  /* where the next sample goes */
    size_t count; /* samples kept, at most NSAMPLES */
    bool wrapped; /* a sample was overwritten: the oldest kept is no longer the start */
} history;

static struct metrics_repo_pulls pulls[METRICS_TOP_SLOTS];
static size_t npulls;

static uint64_t load(enum metrics_counter c)
{
    return __atomic_load_n(&metrics_counters[c], __ATOMIC_RELAXED);
}

void metrics_traffic_now(struct metrics_traffic *out)
{
    *out = (struct metrics_traffic){
        .requests = load(METRICS_REQUESTS),
        .blob_hits = load(METRICS_CACHE_HIT_BLOB),
        .blob_misses = load(METRICS_CACHE_MISS_BLOB),
        .manifest_hits = load(METRICS_CACHE_HIT_MANIFEST),
        .manifest_misses = load(METRICS_CACHE_MISS_MANIFEST),
        .bytes_cache = load(METRICS_BYTES_FROM_CACHE),
        .bytes_upstream = load(METRICS_BYTES_FROM_UPSTREAM),
    };
}

static const struct sample *sample_at(size_t age)
{
    return &history.ring[(history.next + NSAMPLES - 1 - age) % NSAMPLES];
}

void metrics_history_tick(int64_t now_s)
{
    if (history.count && now_s - sample_at(0)->t < METRICS_HISTORY_STEP_S)
        return;
    struct sample *s = &history.ring[history.next];
    s->t = now_s;
    metrics_traffic_now(&s->v);
    history.next = (history.next + 1) % NSAMPLES;
    if (history.count == NSAMPLES)
        history.wrapped = true;
    else
        history.count++;
}

/* The counters as they stood at time t, as far as the samples tell. */
static struct metrics_traffic value_at(int64_t t)
{
    for (size_t age = 0; age < history.count; age++) {
        const struct sample *s = sample_at(age);
        if (s->t <= t)
            return s->v;
    }
    if (history.wrapped)
        return sample_at(history.count - 1)->v;
    return (struct metrics_traffic){0};
}

static void traffic_sub(struct metrics_traffic *a, const struct metrics_traffic *b)
{
    a->requests -= b->requests;
    a->blob_hits -= b->blob_hits;
    a->blob_misses -= b->blob_misses;
    a->manifest_hits -= b->manifest_hits;
    a->manifest_misses -= b->manifest_misses;
    a->bytes_cache -= b->bytes_cache;
    a->bytes_upstream -= b->bytes_upstream;
}

void metrics_history_window(int64_t now_s, int64_t seconds, struct metrics_traffic *out)
{
    struct metrics_traffic then = value_at(now_s - seconds);
    metrics_traffic_now(out);
    traffic_sub(out, &then);
}

void metrics_history_series(int64_t now_s, int64_t step_s, struct metrics_traffic *out, size_t n)
{
    struct metrics_traffic end;
    metrics_traffic_now(&end);
    for (size_t i = n; i-- > 0;) {
        int64_t start = now_s - (int64_t)(n - i) * step_s;
        struct metrics_traffic begin = value_at(start);
        out[i] = end;
        traffic_sub(&out[i], &begin);
        end = begin;
    }
}

void metrics_note_pull(const char *name, size_t len)
{
    if (len == 0 || len >= sizeof(pulls[0].name))
        return;
    struct metrics_repo_pulls *least = NULL;
    for (size_t i = 0; i < npulls; i++) {
        struct metrics_repo_pulls *p = &pulls[i];
        if (strncmp(p->name, name, len) == 0 && p->name[len] == '\0') {
            p->pulls++;
            return;
        }
        if (!least || p->pulls < least->pulls)
            least = p;
    }
    if (npulls < METRICS_TOP_SLOTS) {
        least = &pulls[npulls++];
        least->pulls = 0;
    }
    memcpy(least->name, name, len);
    least->name[len] = '\0';
    least->pulls++;
}

static int by_pulls(const void *a, const void *b)
{
    const struct metrics_repo_pulls *x = a, *y = b;
    if (x->pulls != y->pulls)
        return x->pulls < y->pulls ? 1 : -1;
    return strcmp(x->name, y->name);
}

size_t metrics_top_pulls(struct metrics_repo_pulls *out, size_t max)
{
    /* The table has no order of its own: sorting it in place costs nothing. */
    qsort(pulls, npulls, sizeof(pulls[0]), by_pulls);
    size_t n = npulls < max ? npulls : max;
    memcpy(out, pulls, n * sizeof(pulls[0]));
    return n;
}

void metrics_reset(void)
{
    memset(metrics_counters, 0, sizeof(metrics_counters));
    memset(&history, 0, sizeof(history));
    memset(pulls, 0, sizeof(pulls));
    npulls = 0;
    memset(requests, 0, sizeof(requests));
    memset(latency, 0, sizeof(latency));
    memset(storage_errors, 0, sizeof(storage_errors));
}

/* ---- storage wrapper ---- */

static enum regerr counted(enum regerr result, enum metrics_storage_op op)
{
    if (result != REG_OK && result != REG_ERR_NOT_FOUND)
        __atomic_fetch_add(&storage_errors[op], 1, __ATOMIC_RELAXED);
    return result;
}

#define INNER(s) storage_wrap_inner(s)

static enum regerr w_get_content(struct storage *s, const char *path, size_t max, char **out,
                                 size_t *len)
{
    return counted(storage_get_content(INNER(s), path, max, out, len), METRICS_OP_GET_CONTENT);
}
static enum regerr w_put_content(struct storage *s, const char *path, const void *data, size_t len)
{
    return counted(storage_put_content(INNER(s), path, data, len), METRICS_OP_PUT_CONTENT);
}
static enum regerr w_stat(struct storage *s, const char *path, struct storage_stat *out)
{
    return counted(storage_stat(INNER(s), path, out), METRICS_OP_STAT);
}
static enum regerr w_list(struct storage *s, const char *path, struct storage_list *out)
{
    return counted(storage_list(INNER(s), path, out), METRICS_OP_LIST);
}
static enum regerr w_move(struct storage *s, const char *src, const char *dst)
{
    return counted(storage_move(INNER(s), src, dst), METRICS_OP_MOVE);
}
static enum regerr w_remove(struct storage *s, const char *path)
{
    return counted(storage_remove(INNER(s), path), METRICS_OP_REMOVE);
}
static enum regerr w_open_read(struct storage *s, const char *path, int *fd, uint64_t *size)
{
    return counted(storage_open_read(INNER(s), path, fd, size), METRICS_OP_OPEN_READ);
}
static enum regerr w_open_writer(struct storage *s, const char *path, bool append,
                                 struct storage_writer **out)
{
    return counted(storage_open_writer(INNER(s), path, append, out), METRICS_OP_OPEN_WRITER);
}

/* The counted ops; the optional ones (presign_get, read_range) pass through uncounted. */
static const struct storage_ops counted_ops = {
    .get_content = w_get_content,
    .put_content = w_put_content,
    .stat = w_stat,
    .list = w_list,
    .move = w_move,
    .remove = w_remove,
    .open_read = w_open_read,
    .open_writer = w_open_writer,
};

struct storage *metrics_storage_wrap(struct storage *inner)
{
    if (!inner)
        return NULL;
    struct storage_wrap *w = storage_wrap_new(inner, sizeof(*w), &counted_ops, NULL);
    return w ? &w->base : inner;
}

/* ---- collectors ---- */

static struct {
    metrics_collector_fn fn;
    void *ctx;
} collectors[METRICS_COLLECTORS_MAX];

int metrics_add_collector(metrics_collector_fn fn, void *ctx)
{
    for (size_t i = 0; i < METRICS_COLLECTORS_MAX; i++) {
        if (!collectors[i].fn) {
            collectors[i].fn = fn;
            collectors[i].ctx = ctx;
            return 0;
        }
    }
    return -1;
}

void metrics_remove_collector(metrics_collector_fn fn, void *ctx)
{
    for (size_t i = 0; i < METRICS_COLLECTORS_MAX; i++) {
        if (collectors[i].fn == fn && collectors[i].ctx == ctx) {
            collectors[i].fn = NULL;
            collectors[i].ctx = NULL;
        }
    }
}

/* ---- upstream budgets ---- */

static struct metrics_upstream *upstreams;

void metrics_upstream_add(struct metrics_upstream *m)
{
    m->prev = NULL;
    m->next = upstreams;
    if (upstreams)
        upstreams->prev = m;
    upstreams = m;
}

void metrics_upstream_remove(struct metrics_upstream *m)
{
    if (m->prev)
        m->prev->next = m->next;
    else if (upstreams == m)
        upstreams = m->next;
    if (m->next)
        m->next->prev = m->prev;
    m->prev = m->next = NULL;
}

/* ---- exposition ---- */

void metrics_escape_label(struct evbuffer *out, const char *value)
{
    for (const char *c = value; *c; c++) {
        if (*c == '\\')
            evbuffer_add(out, "\\\\", 2);
        else if (*c == '"')
            evbuffer_add(out, "\\\"", 2);
        else if (*c == '\n')
            evbuffer_add(out, "\\n", 2);
        else
            evbuffer_add(out, c, 1);
    }
}

static void family(struct evbuffer *out, const char *name, const char *type, const char *help)
{
    evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void simple(struct evbuffer *out, const char *name, const char *type, const char *help,
                   enum metrics_counter c)
{
    family(out, name, type, help);
    evbuffer_add_printf(out, "%s %" PRIu64 "\n", name, metrics_counters[c]);
}

static void render_requests(struct evbuffer *out)
{
    family(out, "regmirror_http_requests_total", "counter",
           "HTTP requests on the registry listener by route, method and status.");
    for (size_t r = 0; r < METRICS_ROUTE__COUNT; r++) {
        for (size_t m = 0; m < M__COUNT; m++) {
            for (size_t s = 0; s < NSTATUS_SLOTS; s++) {
                uint64_t v = requests[r][m][s];
                if (!v)
                    continue;
                char code[16];
                if (s == STATUS_OTHER)
                    memcpy(code, "other", 6);
                else
                    snprintf(code, sizeof(code), "%d", status_codes[s]);
                evbuffer_add_printf(out,
                                    "regmirror_http_requests_total{route=\"%s\",method=\"%s\","
                                    "code=\"%s\"} %" PRIu64 "\n",
                                    route_names[r], method_names[m], code, v);
            }
        }
    }
    family(out, "regmirror_http_request_duration_seconds", "histogram",
           "Time from the request head to the last response byte queued, by route and method.");
    for (size_t r = 0; r < METRICS_ROUTE__COUNT; r++) {
        for (size_t m = 0; m < M__COUNT; m++) {
            const struct histogram *h = &latency[r][m];
            if (!h->count)
                continue;
            uint64_t cum = 0;
            for (size_t b = 0; b <= NBUCKETS; b++) {
                cum += h->buckets[b];
                evbuffer_add_printf(out,
                                    "regmirror_http_request_duration_seconds_bucket{route=\"%s\","
                                    "method=\"%s\",le=\"%s\"} %" PRIu64 "\n",
                                    route_names[r], method_names[m],
                                    b < NBUCKETS ? bucket_names[b] : "+Inf", cum);
            }
            evbuffer_add_printf(out,
                                "regmirror_http_request_duration_seconds_sum{route=\"%s\","
                                "method=\"%s\"} %" PRIu64 ".%06" PRIu64 "\n",
                                route_names[r], method_names[m], h->sum_us / 1000000,
                                h->sum_us % 1000000);
            evbuffer_add_printf(out,
                                "regmirror_http_request_duration_seconds_count{route=\"%s\","
                                "method=\"%s\"} %" PRIu64 "\n",
                                route_names[r], method_names[m], h->count);
        }
    }
}

static void render_cache(struct evbuffer *out)
{
    const uint64_t *c = metrics_counters;
    family(out, "regmirror_blob_bytes_total", "counter",
           "Blob bytes served from the local store (source=cache) and fetched from an upstream "
           "(source=upstream).");
    evbuffer_add_printf(out, "regmirror_blob_bytes_total{source=\"cache\"} %" PRIu64 "\n",
                        c[METRICS_BYTES_FROM_CACHE]);
    evbuffer_add_printf(out, "regmirror_blob_bytes_total{source=\"upstream\"} %" PRIu64 "\n",
                        c[METRICS_BYTES_FROM_UPSTREAM]);
    family(out, "regmirror_proxy_cache_requests_total", "counter",
           "Pull-through requests answered from the cache (hit) or needing the upstream (miss).");
    static const struct {
        const char *kind, *result;
        enum metrics_counter c;
    } rows[] = {
        {"blob", "hit", METRICS_CACHE_HIT_BLOB},
        {"blob", "miss", METRICS_CACHE_MISS_BLOB},
        {"manifest", "hit", METRICS_CACHE_HIT_MANIFEST},
        {"manifest", "miss", METRICS_CACHE_MISS_MANIFEST},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        evbuffer_add_printf(out,
                            "regmirror_proxy_cache_requests_total{kind=\"%s\",result=\"%s\"} "
                            "%" PRIu64 "\n",
                            rows[i].kind, rows[i].result, c[rows[i].c]);
    uint64_t hits = c[METRICS_CACHE_HIT_BLOB] + c[METRICS_CACHE_HIT_MANIFEST];
    uint64_t all = hits + c[METRICS_CACHE_MISS_BLOB] + c[METRICS_CACHE_MISS_MANIFEST];
    family(out, "regmirror_proxy_cache_hit_ratio", "gauge",
           "Share of pull-through requests answered from the cache since start (0 before any).");
    evbuffer_add_printf(out, "regmirror_proxy_cache_hit_ratio %.6f\n",
                        all ? (double)hits / (double)all : 0.0);
    simple(out, "regmirror_proxy_joined_waiters_total", "counter",
           "Client requests that joined an upstream fetch already running for the same content.",
           METRICS_JOINED_WAITERS);
    simple(out, "regmirror_cluster_leases_taken_total", "counter",
           "Blob fetch leases this node took: it fetched for the whole cluster.",
           METRICS_CLUSTER_LEASES_TAKEN);
    simple(out, "regmirror_cluster_leases_waited_total", "counter",
           "Blob fetches that read another node's spool instead of the upstream.",
           METRICS_CLUSTER_LEASES_WAITED);
    simple(out, "regmirror_cluster_leases_taken_over_total", "counter",
           "Blob fetches whose lease holder went away, so this node fetched instead.",
           METRICS_CLUSTER_TAKEN_OVER);
    simple(out, "regmirror_cluster_peer_bytes_total", "counter",
           "Blob bytes read from other nodes' spools.", METRICS_CLUSTER_PEER_BYTES);
    simple(out, "regmirror_upstream_requests_total", "counter",
           "Registry requests sent to an upstream (retries and redirects not counted).",
           METRICS_UPSTREAM_REQUESTS);
    simple(out, "regmirror_upstream_requests_in_flight", "gauge",
           "Upstream registry requests running now.", METRICS_GAUGE_UPSTREAM_INFLIGHT);
    simple(out, "regmirror_upstream_fetches_active", "gauge",
           "Pull-through fetches holding one of the proxy.maxfetches slots.",
           METRICS_GAUGE_FETCHES_ACTIVE);
    simple(out, "regmirror_upstream_fetch_queue_depth", "gauge",
           "Pull-through fetches waiting for a proxy.maxfetches slot.", METRICS_GAUGE_FETCH_QUEUE);
    simple(out, "regmirror_upstream_fetches_queued_total", "counter",
           "Pull-through fetches that waited for a proxy.maxfetches slot.", METRICS_FETCHES_QUEUED);
    simple(out, "regmirror_upstream_fetch_queue_timeouts_total", "counter",
           "Queued pull-through fetches answered 503 after proxy.fetchqueuetimeout.",
           METRICS_FETCH_QUEUE_TIMEOUTS);
    simple(out, "regmirror_upstream_token_fetches_total", "counter",
           "Token requests sent to an upstream's token realm.", METRICS_TOKEN_FETCHES);
    simple(out, "regmirror_upstream_rate_limited_total", "counter",
           "429 answers from an upstream registry or its token realm.", METRICS_UPSTREAM_429);
}

static void render_upstream_errors(struct evbuffer *out)
{
    static const struct {
        const char *result;
        enum metrics_counter c;
    } rows[] = {
        {"unavailable", METRICS_UPSTREAM_UNAVAILABLE},
        {"unauthorized", METRICS_UPSTREAM_UNAUTHORIZED},
        {"rejected", METRICS_UPSTREAM_REJECTED},
    };
    family(out, "regmirror_upstream_errors_total", "counter",
           "Upstream registry requests that failed, by result (after retries; not-found is not "
           "counted, 429s are in regmirror_upstream_rate_limited_total).");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        evbuffer_add_printf(out, "regmirror_upstream_errors_total{result=\"%s\"} %" PRIu64 "\n",
                            rows[i].result, metrics_counters[rows[i].c]);
}

static void render_budget(struct evbuffer *out, const char *name, const char *help, bool limit)
{
    family(out, name, "gauge", help);
    for (const struct metrics_upstream *m = upstreams; m; m = m->next) {
        if (!m->rl->known)
            continue;
        evbuffer_add_printf(out, "%s{upstream=\"", name);
        metrics_escape_label(out, m->name);
        evbuffer_add_printf(out, "\"} %ld\n", limit ? m->rl->limit : m->rl->remaining);
    }
}

static void render_storage(struct evbuffer *out)
{
    family(out, "regmirror_storage_errors_total", "counter",
           "Storage driver operations that failed (not counting absent paths).");
    for (size_t i = 0; i < METRICS_OP__COUNT; i++)
        evbuffer_add_printf(out, "regmirror_storage_errors_total{op=\"%s\"} %" PRIu64 "\n",
                            storage_op_names[i], storage_errors[i]);
    simple(out, "regmirror_proxy_stored_bytes", "gauge",
           "Bytes of proxied content in the store, as the last eviction pass counted them.",
           METRICS_GAUGE_PROXIED_BYTES);
    simple(out, "regmirror_proxy_maxsize_bytes", "gauge",
           "proxy.maxsize: the bound on the proxied bytes (0: none).", METRICS_GAUGE_MAXSIZE);
    simple(out, "regmirror_proxy_evictions_total", "counter",
           "Proxied images and blob links removed by eviction (proxy.ttl, proxy.maxsize).",
           METRICS_EVICTED_ITEMS);
    simple(out, "regmirror_proxy_evicted_bytes_total", "counter", "Blob bytes freed by eviction.",
           METRICS_EVICTED_BYTES);
}

void metrics_render(struct evbuffer *out)
{
    render_requests(out);
    render_cache(out);
    render_upstream_errors(out);
    render_budget(
        out, "regmirror_upstream_ratelimit_limit",
        "Pulls the upstream allows per window (its ratelimit-limit header), as last seen.", true);
    render_budget(out, "regmirror_upstream_ratelimit_remaining",
                  "Pulls left in the upstream's window (its ratelimit-remaining header), as last "
                  "seen.",
                  false);
    render_storage(out);
    for (size_t i = 0; i < METRICS_COLLECTORS_MAX; i++) {
        if (collectors[i].fn)
            collectors[i].fn(out, collectors[i].ctx);
    }
}

void metrics_serve(struct http_req *req)
{
    struct evbuffer *out = evbuffer_new();
    if (!out) {
        http_resp_start(req, 500);
        http_resp_no_body(req, -1);
        return;
    }
    metrics_render(out);
    size_t len = evbuffer_get_length(out);
    const unsigned char *body = evbuffer_pullup(out, -1);
    http_resp_start(req, 200);
    http_resp_header(req, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
    if (http_req_method(req) == HTTP_HEAD)
        http_resp_no_body(req, (int64_t)len);
    else
        http_resp_body_mem(req, body ? (const char *)body : "", len);
    evbuffer_free(out);
}
