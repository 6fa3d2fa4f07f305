#ifndef REGMIRROR_UPSTREAM_H
#define REGMIRROR_UPSTREAM_H
/*
 * upstream: the client of the remote registry a pull-through mirror fetches from, on top of
 * httpc. It hides the registry's auth and transport quirks from the caller:
 *
 *  - Auth: a 401 is answered by parsing WWW-Authenticate. Bearer: a token for
 *    "repository:<name>:pull" is fetched from the realm (GET with service and scope, HTTP
 *    Basic with the configured account when the realm qualifies for it (realm.h: the
 *    upstream's registrable domain, https unless the upstream is http; a warning names a
 *    realm that does not), anonymous otherwise; never following a redirect), cached per
 *    realm+service+scope
 *    until shortly before it expires, and the request is retried once with it. Concurrent
 *    requests that need the same token wait for one token fetch. Once a realm is known, later
 *    requests send a cached (or freshly fetched) token up front. Basic: the configured
 *    account is sent. Credentials and tokens never reach the log.
 *  - Redirects of GET/HEAD are followed here (at most 5 hops), and the Authorization header
 *    is dropped for good once a hop leaves the upstream's scheme+host+port (Docker Hub sends
 *    blob GETs to a CDN with a signed URL).
 *  - Connection errors and 5xx answers are retried with backoff (3 attempts by default:
 *    100 ms, then 400 ms, plus jitter) as long as nothing was handed to the caller yet.
 *  - 429 ends the request with UPSTREAM_TOOMANYREQUESTS and the Retry-After value; it and
 *    Docker Hub's ratelimit-limit / ratelimit-remaining headers are logged (at debug on every
 *    manifest GET, as a warning on a 429).
 *  - The pull budget: every answer of the upstream's origin or its token realm that carries
 *    ratelimit-limit / ratelimit-remaining updates the client's record (ratelimit.h), and a
 *    429 starts a block until the window resets; upstream_hold reads them.
 *
 * Callback contract, the same shape as httpc's: no callback runs inside upstream_fetch,
 * upstream_pause, upstream_resume or upstream_cancel. For one request: on_response at most
 * once, then on_data zero or more times, then on_done exactly once, unless upstream_cancel
 * came first. After on_done returns the request is freed. Every upstream function except
 * upstream_free may be called from inside these callbacks.
 *
 * Not thread-safe: one loop thread.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "ratelimit.h"

struct httpc;
struct httpc_headers;
struct upstream;
struct upstream_req;

#define UPSTREAM_DEFAULT_URL "https://registry-1.docker.io"
/* Longest repository name (distribution's limit), with its NUL. */
#define UPSTREAM_NAME_MAX 256

struct upstream_config {
    const char *remoteurl;           /* NULL or "": UPSTREAM_DEFAULT_URL */
    const char *username, *password; /* NULL or "": anonymous */
    int attempts;                    /* tries for connection errors and 5xx; 0: 3 */
    long retry_delay_ms;             /* first backoff, x4 per try, +0..50% jitter; 0: 100 */
    long connect_timeout_ms;         /* 0: httpc's default */
    /* The upstream's label in metrics (regmirror_upstream_ratelimit_*); NULL: not exported. */
    const char *name;
};

/*
 * Creates the client; the strings in cfg are copied, c must outlive it. Returns NULL when out
 * of memory or when remoteurl is not an http(s) URL or carries user:password@ (credentials
 * belong in username/password, where they are kept out of logs and off redirects).
 */
struct upstream *upstream_new(struct httpc *c, const struct upstream_config *cfg);

/*
 * Cancels every running request without callbacks (as upstream_cancel does) and frees the
 * client and its token cache. Must not be called from inside an upstream callback. Takes NULL.
 */
void upstream_free(struct upstream *u);

/*
 * Which token realms get the configured account, in words (realm_describe), for the start
 * log; "" for an anonymous client.
 */
const char *upstream_credentials_rule(const struct upstream *u);

/* Is the remote Docker Hub (registry-1.docker.io, docker.io, index.docker.io)? */
bool upstream_is_docker_hub(const struct upstream *u);

/*
 * The name the upstream knows a repository by: on Docker Hub a single-segment name is an
 * official image, "alpine" -> "library/alpine"; otherwise the name itself. Idempotent, so a
 * caller can key its cache and in-flight tables by this name and pass either form to
 * upstream_fetch. Writes a NUL-terminated string into buf; returns 0, or -1 when it does not
 * fit in cap bytes (buf is then "").
 */
int upstream_repo_name(const struct upstream *u, const char *name, char *buf, size_t cap);

/*
 * What the client's requests did since it was created, for the status page. Owned by u,
 * valid as long as it. Times are wall clock, 0 for never.
 */
struct upstream_stats {
    uint64_t requests;      /* registry requests started */
    uint64_t token_fetches; /* requests sent to a token realm */
    uint64_t rate_limited;  /* 429 answers, from the registry or its token realm */
    uint64_t failures;      /* requests that ended unavailable, unauthorized or rejected */
    time_t last_answer;     /* the last request the upstream answered (not unavailable) */
    time_t last_error;      /* the last one that failed (a 429 included) */
    bool failing;           /* the last request that ended found it unavailable */
    char last_message[256]; /* its outcome's message (no secrets, see upstream_outcome) */
};
const struct upstream_stats *upstream_stats(const struct upstream *u);

/* The remote's scheme://host:port; never carries credentials (upstream_new refuses them). */
const char *upstream_origin(const struct upstream *u);

/* The pull budget the upstream's answers announced; owned by u, valid as long as it. */
const struct ratelimit *upstream_ratelimit(const struct upstream *u);

/*
 * Whether a cached tag that is due for its upstream check should be served without asking:
 * the remaining budget is at or under the reserve (reserve pulls, or reserve percent of the
 * limit when percent is set), or a 429's block runs. A hold is logged once per window.
 */
enum ratelimit_hold upstream_hold(struct upstream *u, int64_t reserve, bool percent);

enum upstream_result {
    UPSTREAM_OK = 0,          /* 2xx or 304: on_response ran and the body went to on_data */
    UPSTREAM_NOT_FOUND,       /* 404 */
    UPSTREAM_UNAUTHORIZED,    /* 401 after the token retry, 403, or the token realm said no */
    UPSTREAM_TOOMANYREQUESTS, /* 429 (from the registry or the token realm); see retry_after_s */
    UPSTREAM_UNAVAILABLE,     /* network errors or 5xx after the retries, a body cut short,
                                 too many redirects, an unusable token answer */
    UPSTREAM_REJECTED,        /* another 4xx, or a 3xx that cannot be followed; see status */
    UPSTREAM_ABORTED,         /* on_response or on_data asked to stop */
};

/* "ok", "not-found", ... for logs. */
const char *upstream_result_name(enum upstream_result res);

struct upstream_outcome {
    enum upstream_result result;
    long status;         /* the last HTTP status seen, 0 when no answer came */
    long retry_after_s;  /* UPSTREAM_TOOMANYREQUESTS: Retry-After in seconds; -1 when absent */
    const char *message; /* short reason for logs and error bodies, never NULL, no secrets */
};

/* on_data return value: do not take these bytes now; they come again after upstream_resume. */
#define UPSTREAM_PAUSE 1

struct upstream_callbacks {
    /*
     * The upstream's answer is a success (2xx or 304): status and headers (valid until on_done
     * returns). Called right before the first on_data, or before on_done for an answer with
     * no body (HEAD), so that retries can still happen while no byte went out. Return 0 to go
     * on, non-zero to stop (on_done gets UPSTREAM_ABORTED). May be NULL.
     */
    int (*on_response)(struct upstream_req *r, void *ctx, long status,
                       const struct httpc_headers *h);
    /*
     * Body bytes. Return 0 when taken, UPSTREAM_PAUSE when not taken (they come again after
     * upstream_resume), -1 to stop (on_done gets UPSTREAM_ABORTED). May be NULL.
     */
    int (*on_data)(struct upstream_req *r, void *ctx, const char *data, size_t len);
    /* The end, exactly once unless cancelled; o and its message are valid during the call. */
    void (*on_done)(struct upstream_req *r, void *ctx, const struct upstream_outcome *o);
};

/*
 * Fetches <remoteurl>/v2/<repo>/<path_suffix>. method is "GET" or "HEAD"; repo goes through
 * upstream_repo_name; path_suffix is "manifests/<reference>" or "blobs/<digest>" (checked
 * against a conservative character set); extra_headers ("Accept: ...", "Range: ...",
 * NULL-terminated, may be NULL) are copied and sent on every hop. cb is copied; ctx is passed
 * back. Returns NULL, with no callback ever, on bad arguments or when out of memory.
 */
struct upstream_req *upstream_fetch(struct upstream *u, const char *method, const char *repo,
                                    const char *path_suffix, const char *const *extra_headers,
                                    const struct upstream_callbacks *cb, void *ctx);

/* Flow control through to the socket (see httpc_pause). Cheap, idempotent, safe anywhere. */
void upstream_pause(struct upstream_req *r);
void upstream_resume(struct upstream_req *r);

/*
 * No callback runs for r afterwards and r is freed (at once, or when the callback running
 * for it returns). Safe from any callback; a no-op inside r's own on_done.
 */
void upstream_cancel(struct upstream_req *r);

#endif
