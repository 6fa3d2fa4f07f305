#include "upstream.h"
#include "upstream_int.h"

#include <ctype.h>
#include <stdarg.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "httpc.h"
#include "log.h"
#include "metrics.h"
#include "realm.h"

#define DEFAULT_ATTEMPTS 3
#define DEFAULT_RETRY_DELAY_MS 100L
#define RETRY_DELAY_CAP_MS 10000L
#define MAX_HOPS 5
/* Body bytes of an answer we act on ourselves (401, 3xx, 5xx, 404...) read to keep the
 * connection reusable; a longer body ends the transfer instead. */
#define SWALLOW_MAX (64 * 1024)
#define RETRY_AFTER_MAX_S 86400L
#define SUFFIX_MAX 512

const char *upstream_result_name(enum upstream_result res)
{
    switch (res) {
    case UPSTREAM_OK:
        return "ok";
    case UPSTREAM_NOT_FOUND:
        return "not-found";
    case UPSTREAM_UNAUTHORIZED:
        return "unauthorized";
    case UPSTREAM_TOOMANYREQUESTS:
        return "toomanyrequests";
    case UPSTREAM_UNAVAILABLE:
        return "unavailable";
    case UPSTREAM_REJECTED:
        return "rejected";
    case UPSTREAM_ABORTED:
        return "aborted";
    }
    return "unknown";
}

/* ---- small helpers ---- */

int64_t upstream_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *upstream_concat(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);
    if (!s)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc + 1);
    return s;
}

void upstream_replace(char **dst, char *v)
{
    free(*dst);
    *dst = v;
}

bool upstream_nonempty(const char *s)
{
    return s && *s;
}

/* xorshift64: jitter only, no secrets. */
static uint64_t next_random(struct upstream *up)
{
    uint64_t x = up->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    up->rng = x;
    return x;
}

/*
 * Splits url into its lowercase "scheme://host:port" origin (default ports filled in) and, if
 * wanted, its host. Returns NULL unless it is an http(s) URL. userinfo is reported through
 * *has_userinfo when that is not NULL.
 */
char *upstream_origin_of(const char *url, char **host_out, bool *has_userinfo)
{
    CURLU *h = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *user = NULL, *origin = NULL;

    if (!h || curl_url_set(h, CURLUPART_URL, url, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(h, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
        goto out;
    if (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)
        goto out;
    if (has_userinfo)
        *has_userinfo = curl_url_get(h, CURLUPART_USER, &user, 0) == CURLUE_OK;
    size_t n = strlen(scheme) + strlen(host) + strlen(port) + 5;
    origin = malloc(n);
    if (!origin)
        goto out;
    snprintf(origin, n, "%s://%s:%s", scheme, host, port);
    for (char *p = origin; *p; p++)
        *p = (char)tolower((unsigned char)*p);
    if (host_out) {
        *host_out = strdup(host);
        if (!*host_out)
            upstream_replace(&origin, NULL);
    }
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(user);
    curl_url_cleanup(h);
    return origin;
}

/* Resolves a Location value against the URL it came from; NULL unless http(s). */
static char *resolve_location(const char *base, const char *location)
{
    CURLU *h = curl_url();
    char *u = NULL, *result = NULL;

    if (!h || curl_url_set(h, CURLUPART_URL, base, 0) != CURLUE_OK ||
        curl_url_set(h, CURLUPART_URL, location, 0) != CURLUE_OK ||
        curl_url_get(h, CURLUPART_URL, &u, 0) != CURLUE_OK)
        goto out;
    char *origin = upstream_origin_of(u, NULL, NULL);
    if (origin) {
        free(origin);
        result = strdup(u);
    }
out:
    curl_free(u);
    curl_url_cleanup(h);
    return result;
}

/* "Authorization: Basic base64(user:password)". */
static char *basic_header(const char *user, const char *password)
{
    size_t n = strlen(user) + 1 + strlen(password);
    char *plain = malloc(n + 1), *out = NULL;
    if (!plain)
        return NULL;
    snprintf(plain, n + 1, "%s:%s", user, password);
    size_t enc = 4 * ((n + 2) / 3) + 1;
    char *b64 = malloc(enc);
    if (b64) {
        EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)plain, (int)n);
        out = upstream_concat("Authorization: Basic ", b64, "");
    }
    OPENSSL_cleanse(plain, n);
    free(plain);
    if (b64) {
        OPENSSL_cleanse(b64, enc);
        free(b64);
    }
    return out;
}

/* Retry-After: delta-seconds or an HTTP-date; -1 when absent or unreadable. */
long upstream_parse_retry_after(const char *v)
{
    if (!v || !*v)
        return -1;
    if (isdigit((unsigned char)v[0])) {
        char *end;
        long s = strtol(v, &end, 10);
        if (*end != '\0' || s < 0)
            return -1;
        return s > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : s;
    }
    time_t when = curl_getdate(v, NULL);
    if (when == -1)
        return -1;
    long d = (long)(when - time(NULL));
    if (d < 0)
        return 0;
    return d > RETRY_AFTER_MAX_S ? RETRY_AFTER_MAX_S : d;
}

/* ---- request life ---- */
static void answer_reset(struct upstream_req *r)
{
    r->status = 0;
    r->pass = false;
    r->swallowed = 0;
    r->headers_in = NULL;
    r->ch_kind = UPSTREAM_CH_NONE;
    upstream_replace(&r->ch_realm, NULL);
    upstream_replace(&r->ch_service, NULL);
    r->ch_error[0] = '\0';
    upstream_replace(&r->location, NULL);
    r->retry_after_s = -1;
}

void upstream_set_auth(struct upstream_req *r, char *auth, char *bearer)
{
    if (r->auth)
        OPENSSL_cleanse(r->auth, strlen(r->auth));
    upstream_replace(&r->auth, auth);
    upstream_replace(&r->bearer, bearer);
}

static void req_dispose(struct upstream_req *r)
{
    struct upstream *up = r->up;
    if (r->prev)
        r->prev->next = r->next;
    else
        up->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    upstream_waiter_unlink(r);
    metrics_dec(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    if (r->cur)
        httpc_cancel(r->cur);
    if (r->retry_ev)
        event_free(r->retry_ev);
    answer_reset(r);
    upstream_set_auth(r, NULL, NULL);
    for (size_t i = 0; r->headers && r->headers[i]; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->repo);
    free(r->scope);
    free(r->url0);
    free(r->url);
    free(r);
}

static void req_ref(struct upstream_req *r)
{
    r->refs++;
}

static void req_unref(struct upstream_req *r)
{
    if (--r->refs == 0)
        req_dispose(r);
}

static void count_result(struct upstream *up, enum upstream_result res, const char *msg)
{
    struct upstream_stats *st = &up->stats;
    switch (res) {
    case UPSTREAM_UNAVAILABLE:
        metrics_inc(METRICS_UPSTREAM_UNAVAILABLE);
        break;
    case UPSTREAM_UNAUTHORIZED:
        metrics_inc(METRICS_UPSTREAM_UNAUTHORIZED);
        break;
    case UPSTREAM_REJECTED:
        metrics_inc(METRICS_UPSTREAM_REJECTED);
        break;
    case UPSTREAM_TOOMANYREQUESTS: /* METRICS_UPSTREAM_429 counts the answers */
    case UPSTREAM_OK:
    case UPSTREAM_NOT_FOUND:
        break;
    case UPSTREAM_ABORTED:
        return;
    }
    /* Any answer, a refusal too, shows the upstream reachable. */
    st->failing = res == UPSTREAM_UNAVAILABLE;
    if (!st->failing)
        st->last_answer = time(NULL);
    if (res == UPSTREAM_OK || res == UPSTREAM_NOT_FOUND)
        return;
    if (res != UPSTREAM_TOOMANYREQUESTS)
        st->failures++;
    st->last_error = time(NULL);
    snprintf(st->last_message, sizeof(st->last_message), "%s", msg);
}

void upstream_finish(struct upstream_req *r, enum upstream_result res, long retry_after_s,
                     const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    struct upstream_outcome o = {res, r->status, retry_after_s, msg};
    r->finished = true;
    count_result(r->up, res, msg);
    if (res != UPSTREAM_OK && res != UPSTREAM_ABORTED) {
        const char *fields[] = {"repo", r->repo, "result", upstream_result_name(res), NULL};
        log_kv(LOG_DEBUG, fields, "upstream %s: %s", r->up->host, msg);
    }
    if (r->cb.on_done)
        r->cb.on_done(r, r->ctx, &o);
    req_unref(r);
}

/*
 * Calls on_response; the caller holds a reference to r. True when the caller wants to go on;
 * false when it said stop (or cancelled: see r->cancelled).
 */
static bool deliver_response(struct upstream_req *r)
{
    r->responded = true;
    if (r->cb.on_response && r->cb.on_response(r, r->ctx, r->status, r->headers_in) != 0)
        return false;
    return !r->cancelled;
}

/* Logs Docker Hub's pull-limit headers; a debug line only when there are some to show. */
static void log_ratelimit(struct upstream_req *r, const struct httpc_headers *h, enum log_level lv,
                          const char *what)
{
    const char *limit = httpc_header_get(h, "ratelimit-limit");
    const char *remaining = httpc_header_get(h, "ratelimit-remaining");
    const char *retry = httpc_header_get(h, "Retry-After");
    const char *fields[12];
    size_t n = 0;

    if (!log_enabled(lv) || (lv == LOG_DEBUG && !limit && !remaining))
        return;
    fields[n++] = "repo";
    fields[n++] = r->repo;
    if (limit) {
        fields[n++] = "ratelimit_limit";
        fields[n++] = limit;
    }
    if (remaining) {
        fields[n++] = "ratelimit_remaining";
        fields[n++] = remaining;
    }
    if (retry) {
        fields[n++] = "retry_after";
        fields[n++] = retry;
    }
    fields[n] = NULL;
    log_kv(lv, fields, "upstream %s: %s", r->up->host, what);
}

void upstream_note_budget(struct upstream *up, long status, const struct httpc_headers *h,
                          long retry_after_s)
{
    int64_t now = upstream_now_ms();
    ratelimit_note(&up->ratelimit, httpc_header_get(h, "ratelimit-limit"),
                   httpc_header_get(h, "ratelimit-remaining"),
                   httpc_header_get(h, "docker-ratelimit-source"), now);
    if (status == 429)
        ratelimit_note_429(&up->ratelimit, retry_after_s, now);
}

static bool is_redirect(long status)
{
    return status == 301 || status == 302 || status == 303 || status == 307 || status == 308;
}

/* ---- httpc callbacks of a registry request ---- */

static int on_att_headers(struct httpc_req *hr, void *ctx, long status,
                          const struct httpc_headers *h)
{
    struct upstream_req *r = ctx;
    r->status = status;
    r->headers_in = h;
    if (r->manifest_get && !r->cross_origin)
        log_ratelimit(r, h, LOG_DEBUG, "manifest GET");
    if (status == 401) {
        upstream_read_challenge(r, h);
    } else if (is_redirect(status) && httpc_header_get(h, "Location")) {
        r->location = strdup(httpc_header_get(h, "Location"));
    } else if (status == 429) {
        metrics_inc(METRICS_UPSTREAM_429);
        r->up->stats.rate_limited++;
        r->retry_after_s = upstream_parse_retry_after(httpc_header_get(h, "Retry-After"));
        log_ratelimit(r, h, LOG_WARN, "rate limit reached (429)");
    } else {
        r->pass = (status >= 200 && status < 300) || status == 304;
    }
    /* A CDN's answer says nothing about the upstream's budget. */
    if (!r->cross_origin)
        upstream_note_budget(r->up, status, h, r->retry_after_s);
    return 0;
}

/* Hands body bytes to the caller; the caller holds a reference to r. */
static int pass_data(struct upstream_req *r, const char *data, size_t len)
{
    if (!r->responded) {
        if (!deliver_response(r))
            return -1;
        if (r->paused)
            return HTTPC_PAUSE; /* paused in on_response: these bytes come again */
    }
    if (!r->cb.on_data)
        return 0;
    int rc = r->cb.on_data(r, r->ctx, data, len);
    if (r->cancelled)
        return -1;
    if (rc == UPSTREAM_PAUSE)
        return HTTPC_PAUSE;
    return rc == 0 ? 0 : -1;
}

static int on_att_data(struct httpc_req *hr, void *ctx, const char *data, size_t len)
{
    struct upstream_req *r = ctx;

    if (!r->pass) {
        r->swallowed += len;
        return r->swallowed > SWALLOW_MAX ? -1 : 0;
    }
    req_ref(r);
    int rc = pass_data(r, data, len);
    req_unref(r);
    return rc;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct upstream_req *r = arg;
    r->attempt++;
    r->hops = 0;
    r->cross_origin = false;
    upstream_replace(&r->url, strdup(r->url0));
    if (!r->url || upstream_attempt_start(r) != 0)
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "out of memory");
}

/* Connection errors and 5xx: try again later, or give up. */
static void retry_or_fail(struct upstream_req *r, const char *why)
{
    struct upstream *up = r->up;
    if (r->attempt >= up->attempts) {
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "%s (after %d attempts)", why, r->attempt);
        return;
    }
    long delay = up->retry_delay_ms;
    for (int i = 1; i < r->attempt && delay < RETRY_DELAY_CAP_MS; i++)
        delay *= 4;
    if (delay > RETRY_DELAY_CAP_MS)
        delay = RETRY_DELAY_CAP_MS;
    delay += (long)(next_random(up) % (uint64_t)(delay / 2 + 1));
    if (!r->retry_ev)
        r->retry_ev = evtimer_new(up->base, retry_cb, r);
    struct timeval tv = {delay / 1000, (delay % 1000) * 1000};
    if (!r->retry_ev || evtimer_add(r->retry_ev, &tv) != 0) {
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "%s", why);
        return;
    }
    const char *fields[] = {"repo", r->repo, NULL};
    log_kv(LOG_DEBUG, fields, "upstream %s: %s, retrying in %ld ms", up->host, why, delay);
}

static void on_redirect(struct upstream_req *r)
{
    struct upstream *up = r->up;

    if (++r->hops > MAX_HOPS) {
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "more than %d redirects", MAX_HOPS);
        return;
    }
    char *next = resolve_location(r->url, r->location);
    if (!next) {
        upstream_finish(r, UPSTREAM_REJECTED, -1, "redirect to an unusable location");
        return;
    }
    char *origin = upstream_origin_of(next, NULL, NULL);
    if (!origin || strcmp(origin, up->origin) != 0)
        r->cross_origin = true; /* for good: a later hop back does not earn the token back */
    free(origin);
    upstream_replace(&r->url, next);
    if (upstream_attempt_start(r) != 0)
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "out of memory");
}

/* Acts on an answer that is not handed to the caller. */
static void on_answer(struct upstream_req *r)
{
    long s = r->status;

    if (s == 401)
        upstream_on_unauthorized(r);
    else if (r->location)
        on_redirect(r);
    else if (s == 429)
        upstream_finish(r, UPSTREAM_TOOMANYREQUESTS, r->retry_after_s, "upstream rate limit (429)");
    else if (s >= 500) {
        char why[64];
        snprintf(why, sizeof(why), "upstream answered %ld", s);
        retry_or_fail(r, why);
    } else if (s == 404)
        upstream_finish(r, UPSTREAM_NOT_FOUND, -1, "not found upstream");
    else if (s == 403)
        upstream_finish(r, UPSTREAM_UNAUTHORIZED, -1, "upstream denied access (403)");
    else
        upstream_finish(r, UPSTREAM_REJECTED, -1, "upstream answered %ld", s);
}

/* How an attempt ended; the caller holds a reference to r. */
static void att_done(struct upstream_req *r, enum httpc_result res, const char *msg)
{
    if (r->pass) {
        if (res == HTTPC_OK) {
            bool go_on = r->responded || deliver_response(r);
            if (r->cancelled)
                return;
            if (!go_on)
                upstream_finish(r, UPSTREAM_ABORTED, -1, "stopped by the caller");
            else
                upstream_finish(r, UPSTREAM_OK, -1, "%s", "");
        } else if (res == HTTPC_ABORTED) {
            upstream_finish(r, UPSTREAM_ABORTED, -1, "stopped by the caller");
        } else if (!r->responded && res != HTTPC_ERR_INTERNAL && res != HTTPC_ERR_TOO_LARGE) {
            retry_or_fail(r, msg);
        } else {
            upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "upstream transfer failed: %s", msg);
        }
        return;
    }
    if (r->status != 0) {
        on_answer(r); /* even if its body broke off, the status says what to do */
        return;
    }
    if (res == HTTPC_ERR_CONNECT || res == HTTPC_ERR_TIMEOUT || res == HTTPC_ERR_TRANSFER)
        retry_or_fail(r, msg);
    else
        upstream_finish(r, UPSTREAM_UNAVAILABLE, -1, "upstream request failed: %s", msg);
}

static void on_att_done(struct httpc_req *hr, void *ctx, enum httpc_result res, const char *msg)
{
    struct upstream_req *r = ctx;
    r->cur = NULL; /* httpc frees it when we return */
    req_ref(r);
    att_done(r, res, msg);
    req_unref(r);
}

static const struct httpc_callbacks attempt_cb = {on_att_headers, on_att_data, on_att_done};

/* Sends the request to r->url with the current credentials. 0, or -1 when out of memory. */
int upstream_attempt_start(struct upstream_req *r)
{
    struct upstream *up = r->up;
    const char *hdrs[64 + 2];
    size_t n = 0;

    answer_reset(r);
    for (size_t i = 0; r->headers && r->headers[i]; i++)
        hdrs[n++] = r->headers[i];
    if (r->auth && !r->cross_origin)
        hdrs[n++] = r->auth;
    hdrs[n] = NULL;
    struct httpc_req_opts o = {
        .method = r->head ? "HEAD" : "GET",
        .url = r->url,
        .headers = hdrs,
        .connect_timeout_ms = up->connect_timeout_ms,
    };
    r->cur = httpc_start(up->http, &o, &attempt_cb, r);
    if (!r->cur)
        return -1;
    if (r->paused)
        httpc_pause(r->cur);
    return 0;
}

/* ---- public ---- */

static bool hub_host(const char *host)
{
    static const char *const hosts[] = {"registry-1.docker.io", "docker.io", "index.docker.io",
                                        "registry.hub.docker.com"};
    for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
        if (strcasecmp(host, hosts[i]) == 0)
            return true;
    }
    return false;
}

struct upstream *upstream_new(struct httpc *c, const struct upstream_config *cfg)
{
    struct upstream *up = calloc(1, sizeof(*up));
    bool userinfo = false;
    if (!up)
        return NULL;
    up->http = c;
    up->base = httpc_base(c);
    up->remoteurl =
        strdup(upstream_nonempty(cfg->remoteurl) ? cfg->remoteurl : UPSTREAM_DEFAULT_URL);
    if (!up->remoteurl)
        goto fail;
    size_t n = strlen(up->remoteurl);
    while (n > 0 && up->remoteurl[n - 1] == '/')
        up->remoteurl[--n] = '\0';
    up->origin = upstream_origin_of(up->remoteurl, &up->host, &userinfo);
    if (!up->origin || userinfo)
        goto fail;
    up->hub = hub_host(up->host);
    if (upstream_nonempty(cfg->username)) {
        up->basic = basic_header(cfg->username, cfg->password ? cfg->password : "");
        if (!up->basic || realm_describe(up->remoteurl, up->cred_rule, sizeof(up->cred_rule)) != 0)
            goto fail;
    }
    up->attempts = cfg->attempts > 0 ? cfg->attempts : DEFAULT_ATTEMPTS;
    up->retry_delay_ms = cfg->retry_delay_ms > 0 ? cfg->retry_delay_ms : DEFAULT_RETRY_DELAY_MS;
    up->connect_timeout_ms = cfg->connect_timeout_ms;
    up->rng = (uint64_t)upstream_now_ms() * 0x9E3779B97F4A7C15ull | 1;
    if (upstream_nonempty(cfg->name)) {
        up->name = strdup(cfg->name);
        if (!up->name)
            goto fail;
        up->metrics = (struct metrics_upstream){.name = up->name, .rl = &up->ratelimit};
        metrics_upstream_add(&up->metrics);
    }
    return up;
fail:
    upstream_free(up);
    return NULL;
}

void upstream_free(struct upstream *up)
{
    if (!up)
        return;
    while (up->reqs)
        upstream_cancel(up->reqs);
    upstream_tokens_free(up);
    if (up->name)
        metrics_upstream_remove(&up->metrics);
    free(up->name);
    if (up->basic) {
        OPENSSL_cleanse(up->basic, strlen(up->basic));
        free(up->basic);
    }
    free(up->realm);
    free(up->service);
    free(up->refused_realm);
    free(up->remoteurl);
    free(up->origin);
    free(up->host);
    free(up);
}

const char *upstream_credentials_rule(const struct upstream *up)
{
    return up->basic ? up->cred_rule : "";
}

const struct upstream_stats *upstream_stats(const struct upstream *up)
{
    return &up->stats;
}

const char *upstream_origin(const struct upstream *up)
{
    return up->origin;
}

const struct ratelimit *upstream_ratelimit(const struct upstream *up)
{
    return &up->ratelimit;
}

enum ratelimit_hold upstream_hold(struct upstream *up, int64_t reserve, bool percent)
{
    struct ratelimit *rl = &up->ratelimit;
    int64_t now = upstream_now_ms();
    enum ratelimit_hold hold = ratelimit_hold(rl, reserve, percent, now);
    if (!ratelimit_log_due(rl, hold, now))
        return hold;
    if (hold == RATELIMIT_BLOCKED)
        log_warn("upstream %s: rate limited (429): cached tags are served without asking it for "
                 "the next %" PRId64 " s",
                 up->host, (rl->blocked_until_ms - now + 999) / 1000);
    else
        log_warn("upstream %s: pull budget %ld of %ld left (proxy.ratelimitreserve %" PRId64
                 "%s): cached tags are served without asking it until the window resets",
                 up->host, rl->remaining, rl->limit, reserve, percent ? "%" : "");
    return hold;
}

bool upstream_is_docker_hub(const struct upstream *up)
{
    return up->hub;
}

int upstream_repo_name(const struct upstream *up, const char *name, char *buf, size_t cap)
{
    const char *prefix = up->hub && !strchr(name, '/') ? "library/" : "";
    int n = snprintf(buf, cap, "%s%s", prefix, name);
    if (n < 0 || (size_t)n >= cap) {
        if (cap > 0)
            buf[0] = '\0';
        return -1;
    }
    return 0;
}

static bool chars_ok(const char *s, const char *extra, size_t max)
{
    size_t n = 0;
    for (; *s; s++, n++) {
        unsigned char c = (unsigned char)*s;
        if (!isalnum(c) && !strchr(extra, c))
            return false;
    }
    return n > 0 && n < max;
}

static size_t count_headers(const char *const *h)
{
    size_t n = 0;
    while (h && h[n])
        n++;
    return n;
}

struct upstream_req *upstream_fetch(struct upstream *up, const char *method, const char *repo,
                                    const char *path_suffix, const char *const *extra_headers,
                                    const struct upstream_callbacks *cb, void *ctx)
{
    char name[UPSTREAM_NAME_MAX];
    size_t nh = count_headers(extra_headers);
    bool head = strcmp(method, "HEAD") == 0;

    if ((!head && strcmp(method, "GET") != 0) || nh > 64 ||
        upstream_repo_name(up, repo, name, sizeof(name)) != 0 ||
        !chars_ok(name, "._-/", UPSTREAM_NAME_MAX) || !chars_ok(path_suffix, "._-/:+=", SUFFIX_MAX))
        return NULL;

    struct upstream_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->up = up;
    r->refs = 1;
    r->cb = *cb;
    r->ctx = ctx;
    r->head = head;
    r->manifest_get = !head && strncmp(path_suffix, "manifests/", 10) == 0;
    r->attempt = 1;
    r->retry_after_s = -1;
    r->repo = strdup(name);
    r->scope = upstream_concat("repository:", name, ":pull");
    size_t un = strlen(up->remoteurl) + strlen(name) + strlen(path_suffix) + 6;
    r->url0 = malloc(un);
    r->headers = calloc(nh + 1, sizeof(char *));
    if (!r->repo || !r->scope || !r->url0 || !r->headers)
        goto fail;
    snprintf(r->url0, un, "%s/v2/%s/%s", up->remoteurl, name, path_suffix);
    r->url = strdup(r->url0);
    if (!r->url)
        goto fail;
    for (size_t i = 0; i < nh; i++) {
        r->headers[i] = strdup(extra_headers[i]);
        if (!r->headers[i])
            goto fail;
    }
    r->next = up->reqs;
    if (up->reqs)
        up->reqs->prev = r;
    up->reqs = r;
    metrics_inc(METRICS_UPSTREAM_REQUESTS);
    metrics_inc(METRICS_GAUGE_UPSTREAM_INFLIGHT);
    up->stats.requests++;

    int rc;
    if (up->realm) {
        rc = upstream_acquire_token(r, up->realm, up->service);
    } else {
        if (up->basic_wanted) {
            upstream_set_auth(r, strdup(up->basic), NULL);
            r->auth_fresh = true; /* Basic credentials do not go stale */
        }
        rc = upstream_attempt_start(r);
    }
    if (rc != 0) {
        req_unref(r);
        return NULL;
    }
    return r;
fail:
    for (size_t i = 0; r->headers && i < nh; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->repo);
    free(r->scope);
    free(r->url0);
    free(r->url);
    free(r);
    return NULL;
}

void upstream_pause(struct upstream_req *r)
{
    r->paused = true;
    if (r->cur)
        httpc_pause(r->cur);
}

void upstream_resume(struct upstream_req *r)
{
    r->paused = false;
    if (r->cur)
        httpc_resume(r->cur);
}

void upstream_cancel(struct upstream_req *r)
{
    if (!r || r->finished || r->cancelled)
        return;
    /* Stop everything now; a callback for r still on the stack keeps the memory until it
     * returns. */
    r->cancelled = true;
    upstream_waiter_unlink(r);
    if (r->cur)
        httpc_cancel(r->cur);
    r->cur = NULL;
    if (r->retry_ev)
        event_del(r->retry_ev);
    req_unref(r);
}
