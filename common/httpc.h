#ifndef REGMIRROR_HTTPC_H
#define REGMIRROR_HTTPC_H
/*
 * httpc: an asynchronous HTTP client, libcurl's multi interface driven by a libevent loop.
 *
 * One struct httpc per event base; every request started on it shares curl's connection pool
 * (keep-alive, and HTTP/2 multiplexing on https). Nothing here blocks the loop: name
 * resolution, connects, TLS and transfers all progress from loop events.
 *
 * Callback contract (the reason for most of the shape below):
 *  - No callback ever runs inside httpc_start, httpc_pause, httpc_resume or httpc_cancel; they
 *    only record what to do, and the loop does it on its next turn. So every httpc function
 *    except httpc_free may be called from any httpc callback, on any request.
 *  - For one request the order is: on_headers at most once, then on_data zero or more times,
 *    then on_done exactly once - unless httpc_cancel (or httpc_free) came first, after which
 *    nothing is called for that request.
 *  - After on_done returns, the request is freed: the struct httpc_req pointer and the headers
 *    it handed out are invalid. httpc_cancel from inside its own on_done is a harmless no-op.
 *
 * Not thread-safe: one loop thread uses one struct httpc.
 */
#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct httpc;
struct httpc_req;
struct httpc_headers;

/* Response header bytes accepted per response (status line and all header lines). */
#define HTTPC_HEADERS_MAX (64 * 1024)
/* Response header lines accepted per response. */
#define HTTPC_HEADER_LINES_MAX 256

/* on_data return value: do not take these bytes now; they come again after httpc_resume. */
#define HTTPC_PAUSE 1

enum httpc_result {
    HTTPC_OK = 0,        /* a complete response arrived, whatever its status */
    HTTPC_ABORTED,       /* on_headers or on_data asked to stop */
    HTTPC_ERR_CONNECT,   /* name resolution, connect or TLS handshake failed */
    HTTPC_ERR_TIMEOUT,   /* connect timeout, total timeout or the low-speed limit */
    HTTPC_ERR_TRANSFER,  /* the connection broke or the peer broke HTTP (e.g. a cut body) */
    HTTPC_ERR_TOO_LARGE, /* response headers over HTTPC_HEADERS_MAX / HTTPC_HEADER_LINES_MAX */
    HTTPC_ERR_INTERNAL,  /* out of memory, or curl refused the request (e.g. a malformed URL) */
};

/* "ok", "aborted", "connect", ... for logs. */
const char *httpc_result_name(enum httpc_result res);

/*
 * Creates a client on base. Returns NULL when out of memory or when curl cannot be set up.
 * The base must outlive the client.
 */
struct httpc *httpc_new(struct event_base *base);

/*
 * Frees the client. Requests still running are cancelled without any callback, exactly as
 * httpc_cancel does; their owners must not use them afterwards (free your own users first).
 * Must not be called from inside an httpc callback. Takes NULL.
 */
void httpc_free(struct httpc *c);

/* The event base the client runs on, for callers that need timers next to their requests. */
struct event_base *httpc_base(const struct httpc *c);

struct httpc_req_opts {
    const char *method; /* NULL: "GET". "HEAD" asks for no body. */
    const char *url;    /* http:// or https:// only */
    /* "Name: value" lines, NULL-terminated; may be NULL. Copied by httpc_start. */
    const char *const *headers;
    /*
     * Request body (sent with Content-Length), or NULL. Not copied: it must stay valid until
     * on_done runs or the request is cancelled.
     */
    const void *body;
    size_t body_len;
    long connect_timeout_ms; /* 0: 10 s */
    long timeout_ms;         /* whole transfer; 0: none (blobs take as long as they take) */
    long low_speed_time_s;   /* fail after this long below 1 byte/s, pauses excluded; 0: 60 s */
    /*
     * false (the default): a 3xx answer is handed to the caller like any other. true: curl
     * follows up to 5 redirects itself (http/https only, Authorization dropped on another
     * host) and on_headers sees only the final answer.
     */
    bool follow_redirects;
};

struct httpc_callbacks {
    /*
     * The final answer's status line and headers are in (1xx answers and followed redirects
     * are not shown). Return 0 to go on to the body, non-zero to stop: on_done then gets
     * HTTPC_ABORTED. May be NULL.
     */
    int (*on_headers)(struct httpc_req *r, void *ctx, long status, const struct httpc_headers *h);
    /*
     * Body bytes, never for HEAD. Return 0 when taken, HTTPC_PAUSE when not taken (the same
     * bytes come again after httpc_resume), -1 to stop (on_done gets HTTPC_ABORTED). Calling
     * httpc_pause and returning 0 means "taken, but no more for now". May be NULL (body
     * discarded).
     */
    int (*on_data)(struct httpc_req *r, void *ctx, const char *data, size_t len);
    /*
     * The end, exactly once unless cancelled. errmsg is a short reason (never NULL, "" on
     * HTTPC_OK) valid during the call. Never called from inside httpc_start.
     */
    void (*on_done)(struct httpc_req *r, void *ctx, enum httpc_result res, const char *errmsg);
};

/*
 * Starts a request. opts and the strings it points to (except body) are copied; cb is
 * copied; ctx is passed back untouched. The transfer begins on the next loop turn.
 * Returns NULL (and no callback will ever run) when out of memory or curl refuses an option.
 */
struct httpc_req *httpc_start(struct httpc *c, const struct httpc_req_opts *opts,
                              const struct httpc_callbacks *cb, void *ctx);

/*
 * Flow control. After httpc_pause no on_data comes until httpc_resume; curl stops reading the
 * socket (at most one buffer is held). Pauses do not count against low_speed_time_s.
 * Both are cheap flags, safe from any callback and from outside, and idempotent.
 */
void httpc_pause(struct httpc_req *r);
void httpc_resume(struct httpc_req *r);

/*
 * Cancels a request: no callback runs for it afterwards and the request is freed on the next
 * loop turn (the pointer must not be used after this call). Safe from any callback, including
 * the request's own on_headers/on_data; a no-op inside its own on_done.
 */
void httpc_cancel(struct httpc_req *r);

/*
 * Response headers, owned by the request and valid from on_headers until on_done returns.
 * Names compare case-insensitively; values have surrounding whitespace trimmed.
 */
/* The first value of header name, or NULL. */
const char *httpc_header_get(const struct httpc_headers *h, const char *name);
/*
 * Iterates the values of header name in arrival order (WWW-Authenticate may repeat). Start
 * with *pos = 0; returns NULL at the end.
 */
const char *httpc_header_next(const struct httpc_headers *h, const char *name, size_t *pos);
/* Number of header lines, and the i-th one (i < count). */
size_t httpc_header_count(const struct httpc_headers *h);
void httpc_header_at(const struct httpc_headers *h, size_t i, const char **name,
                     const char **value);

#endif
