#ifndef REGMIRROR_HTTP_H
#define REGMIRROR_HTTP_H
/*
 * http: an HTTP/1.1 server on libevent bufferevents, parsing with http_parser.
 *
 * The server owns connections and requests; the application sees one struct http_req per
 * request through http_server_handler.on_request and answers with the http_resp_* calls,
 * at once or later (asynchronously). Requests on one connection are answered in order
 * (pipelining): the next request is parsed only after the previous response is complete.
 *
 * Ownership:
 *  - struct http_req belongs to the server. It stays valid from on_request until the
 *    response is complete (http_resp_body_*, http_resp_stream_end/abort) or until the
 *    abort callback has run, whichever comes first. Never touch it after that.
 *  - Strings returned by accessors live as long as the request.
 *  - Data passed to http_resp_* is copied, except file descriptors, which the server takes.
 *
 * The server writes the status line, Content-Length or Transfer-Encoding: chunked,
 * Connection, and never sends body bytes for HEAD requests (Content-Length stays as the
 * application set it). It answers malformed requests with 400, oversized headers with 431,
 * over-long URLs with 414, sends "100 Continue" when the application accepts a body, and
 * closes idle connections after the idle timeout. A streaming download is never cut by a
 * timeout while the client keeps reading.
 *
 * Framing is strict (RFC 9112): whitespace or any non-token byte in a field name (also before
 * the colon), obs-fold lines, bare CR, chunk data without its CRLF, Transfer-Encoding whose
 * final coding is not chunked (or chunked twice, or on HTTP/1.0), and Content-Length with
 * Transfer-Encoding all get 400; bare LF ends a head line (§2.2 allows it).
 *
 * One access log line is written per request once its answer has left (or the connection
 * closed): status 0 when no byte of the head reached the transport, bytes the body bytes it
 * took. Requests that did not parse are logged as "request rejected".
 *
 * The process must ignore SIGPIPE (as the daemon does): responses are written with writev and
 * sendfile, which raise it when a client has gone away.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <http_parser.h>

struct http_server;
struct http_req;
struct bufferevent;

struct http_limits {
    size_t max_header_bytes; /* request line + headers; 431 above. Default 64 KiB */
    size_t max_url_bytes;    /* 414 above. Default 8 KiB */
    int header_timeout_ms;   /* time to receive a full header block. Default 30 s */
    int idle_timeout_ms;     /* keep-alive idle time between requests. Default 60 s */
    int body_timeout_ms;     /* max silence while reading a request body. Default 60 s */
    int send_timeout_ms;     /* max time without any write progress to a client. Default 300 s */
};

struct http_server_handler {
    /*
     * Called once the request line and headers are parsed. The application must eventually
     * answer with exactly one response, or accept a body first (http_req_read_body /
     * http_req_buffer_body) and answer from its end callback.
     */
    void (*on_request)(struct http_req *req, void *arg);
    void *arg;
    /*
     * Optional: renders an error the server decides, e.g. with the registry's JSON error
     * body: 413 from http_req_buffer_body for a parsed request, and for a request that did
     * not parse 400 (bad framing), 408 (head timeout), 414, 431, 501 (transfer coding), 505.
     * Such a request has no method, path or headers and never reached on_request. It must
     * answer with the http_resp_* calls; when NULL (or when it does not answer) a plain-text
     * body is sent. The connection is closed after that response whatever the application sets.
     */
    void (*on_error)(struct http_req *req, int status, void *arg);
    /*
     * Optional: called once per dispatched request when its response is fully queued or the
     * request was aborted (status is what was set so far), for metrics; the request accessors
     * work during the call. duration_us counts from the parsed request head.
     */
    void (*on_complete)(struct http_req *req, int status, uint64_t duration_us, void *arg);
};

/* Creates a server on base. Zero fields in limits take the defaults. NULL on error. */
struct http_server *http_server_new(struct event_base *base, const struct http_limits *limits,
                                    const struct http_server_handler *handler);
/* Listens on "host:port", ":port" or "[v6]:port"; several calls add listeners. 0 or -1 (errno). */
int http_server_listen(struct http_server *srv, const char *addr);
/*
 * Parses "host:port", ":port" or "[v6]:port" and binds a listener calling cb(arg) for each
 * connection; a wildcard prefers IPv6 (dual stack). NULL with errno set on error (logged).
 * http_server_listen and the TLS listener both bind through it.
 */
struct evconnlistener *http_listen_bind(struct event_base *base, const char *addr,
                                        evconnlistener_cb cb, void *arg);
/* Listens on an already bound, listening socket (tests). The server takes the fd. */
int http_server_listen_fd(struct http_server *srv, int fd);
/* A peer address as text for logs and http_server_adopt; IPv4-mapped IPv6 shows as IPv4. */
struct sockaddr;
void http_peer_text(const struct sockaddr *sa, char *out, size_t len);
/* The port of the first listener (for ":0" in tests), or -1. */
int http_server_port(const struct http_server *srv);
/*
 * Serves an already connected bufferevent: the seam for TLS (bufferevent_openssl) and for
 * tests. The server takes bev (freed with the connection, also on error); create it with
 * BEV_OPT_CLOSE_ON_FREE as needed. Files still go through evbuffer_add_file, which over TLS
 * maps them into memory: send large files there in bounded pieces with the stream calls.
 * remote is the peer's address as text for logs (may be NULL). 0, or -1.
 */
int http_server_adopt(struct http_server *srv, struct bufferevent *bev, const char *remote);
/* One access log line per request (log_kv at LOG_INFO, "request"): on by default. */
void http_server_set_access_log(struct http_server *srv, bool enabled);
/*
 * Graceful shutdown: closes the listeners (new connections are refused) and the connections
 * between requests. A request in progress (also one whose head is still arriving) goes on; its
 * answer says Connection: close unless its head had left already, and its connection closes
 * once the answer has left. No further request is read and no connection adopted. done(arg)
 * runs from the loop, once, when no connection is left (also when there was none).
 * http_server_free still follows and cuts what remains. A second call does nothing.
 */
typedef void (*http_drained_cb)(void *arg);
void http_server_drain(struct http_server *srv, http_drained_cb done, void *arg);
/* Closes listeners and every connection, aborting requests in flight; frees srv. */
void http_server_free(struct http_server *srv);

/* ---- the request ---- */
enum http_method http_req_method(const struct http_req *req);
const char *http_req_method_str(const struct http_req *req);
/* The path part of the request target, percent-decoding NOT applied; without the query. */
const char *http_req_path(const struct http_req *req);
/* The raw query string without '?', or "" when none. */
const char *http_req_query(const struct http_req *req);
/* The value of the first header named name (case-insensitive), or NULL. */
const char *http_req_header(const struct http_req *req, const char *name);
/* The idx-th (0-based) header named name, or NULL past the last: for repeated headers. */
const char *http_req_header_n(const struct http_req *req, const char *name, size_t idx);
/* Content-Length of the request body, or -1 when chunked or absent. */
int64_t http_req_content_length(const struct http_req *req);
/* True when the request carries a body (Content-Length > 0 or chunked). */
bool http_req_has_body(const struct http_req *req);
/* The peer's address as text ("127.0.0.1"). */
const char *http_req_remote_addr(const struct http_req *req);

/*
 * Called when the connection goes away before the response is complete. After it returns
 * req is gone: release everything tied to it, and do not call http_resp_* on it.
 */
typedef void (*http_abort_cb)(struct http_req *req, void *ctx);
/*
 * The request has one abort slot, held by whoever owns the pending request. Taking it (cb
 * not NULL) asserts that it is free: an owner hands the request over by giving the slot up
 * (cb NULL) first, so no callback is ever lost by being overwritten.
 */
void http_req_on_abort(struct http_req *req, http_abort_cb cb, void *ctx);

/*
 * Streams the request body. on_data gets each piece as it arrives (chunked framing removed);
 * returning non-zero stops reading (the application then answers with an error, and the
 * connection is closed after that response). on_end runs once the whole body has arrived;
 * the application answers from there (or later). Sends 100 Continue when asked for.
 */
typedef int (*http_body_data_cb)(struct http_req *req, void *ctx, const char *data, size_t len);
typedef void (*http_body_end_cb)(struct http_req *req, void *ctx);
void http_req_read_body(struct http_req *req, http_body_data_cb on_data, http_body_end_cb on_end,
                        void *ctx);
/* Stops and restarts reading the body from the socket (backpressure). */
void http_req_pause_body(struct http_req *req);
void http_req_resume_body(struct http_req *req);

/*
 * Reads the whole body into memory, at most max bytes; above that the server answers 413
 * itself: the callback is not called, the abort callback (if set) runs instead so the
 * application can release what it tied to the request. data is valid during the callback only and
 * is NUL-terminated for convenience (len excludes the NUL).
 */
typedef void (*http_body_buffered_cb)(struct http_req *req, void *ctx, const char *data,
                                      size_t len);
void http_req_buffer_body(struct http_req *req, size_t max, http_body_buffered_cb cb, void *ctx);

/* ---- the response ----
 * http_resp_start, then any http_resp_header calls, then exactly one of:
 *   http_resp_body_mem, http_resp_body_file, http_resp_no_body, or a stream.
 * If the application answers before reading a request body, the server discards the body
 * (or closes the connection after the response when the body is large or unknown).
 */
void http_resp_start(struct http_req *req, int status);
void http_resp_header(struct http_req *req, const char *name, const char *value);
void http_resp_headerf(struct http_req *req, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sends len bytes copied from data with Content-Length: len. Completes the response. */
void http_resp_body_mem(struct http_req *req, const void *data, size_t len);
/* Sends len bytes of fd from offset off (sendfile on plain connections). Takes fd. */
void http_resp_body_file(struct http_req *req, int fd, off_t off, off_t len);
/*
 * Completes a response without body bytes. content_length >= 0 is sent as Content-Length
 * (HEAD answers, 202s); -1 sends "Content-Length: 0" unless status is 204 or 1xx/304.
 */
void http_resp_no_body(struct http_req *req, int64_t content_length);

/*
 * Streamed body: content_length >= 0 sends Content-Length, -1 uses chunked encoding.
 * on_writable is called whenever the output buffer drained below the low watermark and
 * more data may be written; write with http_resp_stream_write, finish with _end, or
 * cut the connection with _abort (the client then sees a truncated or unterminated body,
 * never a complete-looking one).
 */
typedef void (*http_writable_cb)(struct http_req *req, void *ctx);
void http_resp_stream_begin(struct http_req *req, int64_t content_length, http_writable_cb cb,
                            void *ctx);
void http_resp_stream_write(struct http_req *req, const void *data, size_t len);
/* Appends a file range to the stream (sendfile where possible). Takes fd. */
void http_resp_stream_file(struct http_req *req, int fd, off_t off, off_t len);
/* Bytes queued in the output buffer, for the producer to bound its own pace. */
size_t http_resp_stream_pending(const struct http_req *req);
void http_resp_stream_end(struct http_req *req);
void http_resp_stream_abort(struct http_req *req);
/*
 * Takes back a streamed answer of which no byte has reached the transport yet (its head and
 * body are only queued): they are dropped and the request is as before http_resp_start, so
 * the application answers it again, e.g. with an error instead of a cut connection. False
 * when some of it has left already (only http_resp_stream_abort is honest then) or no stream
 * is in progress; the answer is unchanged then.
 */
bool http_resp_retract(struct http_req *req);

#endif
