#include "http.h"

#include <assert.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "buf.h"
#include "log.h"

#define HTTP_MAX_LISTENERS 16
#define HTTP_MAX_HEADERS 256
#define HTTP_MAX_RESP_HEADER_BYTES (64 * 1024)
/* First size of the response header buffer: a manifest answer's headers are about 1 KiB. */
#define HTTP_RESP_HEADERS_FIRST 2048
/* The first allocation of a request's head. */
#define HTTP_HEAD_FIRST 512
/* One read event takes up to this much: large reads cost far less CPU per byte. */
#define HTTP_READ_SIZE (256 * 1024)
/* The first recv() of a read event on a plain connection: a request head fits. */
#define HTTP_READ_FIRST 4096
/* Reading stops while this much input waits for the parser (app not ready, paused body). */
#define HTTP_READ_HIGH (512 * 1024)
#define HTTP_WRITE_SIZE (1024 * 1024)
/* file answers from this size on are corked (conn_cork); smaller ones leave in one flush */
#define HTTP_CORK_MIN (256 * 1024)
/* Streams are refilled below this; pipelined requests wait while more output is queued. */
#define HTTP_WRITE_LOW (256 * 1024)
/* An unread request body up to this size is read and dropped to keep the connection. */
#define HTTP_DISCARD_MAX (64 * 1024)
/* http_resp_body_file over TLS: pread()s of this size, refilled below HTTP_WRITE_LOW. */
#define HTTP_FILE_PIECE (256 * 1024)
#define HTTP_LINGER_MS 2000
#define HTTP_ACCEPT_RETRY_MS 200
/* Pipelined requests wait while this many answers have not left yet (their log lines wait). */
#define HTTP_MAX_PENDING_LOGS 32

enum body_mode {
    BODY_UNDECIDED, /* the application has not said what to do with the body yet */
    BODY_READ,      /* pieces go to on_data */
    BODY_BUFFER,    /* pieces are collected for http_req_buffer_body */
    BODY_DISCARD,   /* response done before the body: read and drop the rest */
    BODY_STOPPED,   /* never read further; the connection closes after the response */
};

enum resp_state { RESP_NONE, RESP_STARTED, RESP_STREAMING, RESP_DONE };

enum parse_event { PEV_NONE, PEV_HEADERS, PEV_BODY, PEV_COMPLETE };

/*
 * The framing check (frame_scan) that runs over every byte before http_parser sees it. The
 * parser is lenient where RFC 9112 requires a 400, and a front proxy that reads such bytes
 * differently would frame the messages differently from us (request smuggling).
 */
enum frame_state {
    FR_LINE_START,    /* before the request line: empty lines are ignored */
    FR_REQ_LINE,      /* in the request line (the parser checks it) */
    FR_FIELD_START,   /* start of a field line, or the empty line that ends the section */
    FR_NAME,          /* in a field name */
    FR_VALUE,         /* after the colon, up to the end of the line */
    FR_CR,            /* after CR: LF must follow, then state `after` */
    FR_HEAD_DONE,     /* the head is over: the request's framing picks the next state */
    FR_PASS,          /* a Content-Length body or none: the parser delimits it */
    FR_CHUNK_SIZE,    /* chunk-size digits */
    FR_CHUNK_EXT,     /* chunk extensions, up to CRLF */
    FR_CHUNK_DATA,    /* `left` bytes of chunk data */
    FR_CHUNK_DATA_CR, /* the CRLF after chunk data */
    FR_DONE,          /* the chunked message is over */
};

struct frame {
    enum frame_state state, after;
    bool trailers, digits;
    uint64_t left;
};

struct hdr {
    size_t name;  /* offsets into req->head, stable across reallocations */
    size_t value; /* SIZE_MAX while the value has not started */
};

struct conn;

struct http_req {
    struct conn *conn;

    /* The request head: url, names and values as NUL-terminated strings. */
    /* The request target, header names and values, each NUL-ended; bounded by the header
     * limits (count_head), so uncapped here. */
    struct buf head;
    struct hdr *hdrs;
    size_t nhdrs, hdrs_cap;
    size_t url_off;
    bool url_done, in_field;
    const char *path, *query; /* set at dispatch, point into head */
    enum http_method method;
    int64_t content_length;
    bool chunked, keep_alive, http10, is_head, expect_continue, continue_sent;
    bool dispatched;
    struct timespec started;

    /* The request body. */
    enum body_mode body_mode;
    bool body_done, body_paused, end_pending, must_close;
    http_body_data_cb on_data;
    http_body_end_cb on_end;
    http_body_buffered_cb on_buffered;
    void *body_ctx;
    struct buf body; /* a buffered body (http_req_buffer_body), capped at its max */

    http_abort_cb on_abort;
    void *abort_ctx;
    bool aborting;

    /* The response. */
    enum resp_state resp;
    int status;
    struct buf hbuf; /* the application's header lines, "Name: value\r\n" each */
    bool close_after, chunked_out, raw_out, has_held;
    char held;        /* last byte of a Content-Length stream, sent by stream_end */
    int64_t out_left; /* body bytes a Content-Length stream may still queue */
    uint64_t sent;    /* body bytes queued, for the access log */
    /* where the head and the body begin in the connection's output stream (offsets as
     * conn.out_added counts them); set once the head is queued */
    uint64_t out_head, out_body;
    bool head_queued, rejected;
    http_writable_cb on_writable;
    void *wr_ctx;
    /* http_resp_body_file on a non-socket (TLS) connection: the rest of the file, sent by
     * file_pump; file_fd is -1 otherwise. */
    int file_fd;
    off_t file_off, file_left;
};

struct conn {
    struct http_server *srv;
    struct conn *prev, *next;
    struct bufferevent *bev;
    struct event *kick;  /* deferred work: never re-enter the application from its own calls */
    struct event *timer; /* header, idle and linger deadlines */
    http_parser parser;
    struct http_req *req;
    char remote[INET6_ADDRSTRLEN];
    size_t head_bytes;
    int parse_status;   /* set by parser callbacks that stop parsing: 414, 431, 501, ... */
    struct frame frame; /* where frame_scan is in the bytes fed to the parser */
    enum parse_event event;
    const char *ev_data;
    size_t ev_len;
    /* Plain connections read with rd (recv() straight into the input buffer; libevent's own
     * reads ask FIONREAD first, one syscall more per request) while the bufferevent's EV_READ
     * stays off. rd_want: reading is wanted; rd_added: rd is pending; rd_timeout: the body
     * read timeout (rd_timer) runs while reading. */
    struct event *rd, *rd_timer;
    bool rd_want, rd_added, rd_timeout;
    /* Plain connections: output is written by conn_flush while the bufferevent's EV_WRITE is
     * off; write_on while the bufferevent writes instead (a stream, or what the socket did
     * not take). out_cb kicks the connection when output is queued. */
    bool write_on;
    /* TCP_CORK is on while a large file answer leaves (nginx's tcp_nopush): the head rides
     * in the first full segment and no partial segment goes out at the end of each sendfile
     * call. Lifted once the output is empty, which pushes the last partial segment. */
    bool corked;
    struct evbuffer_cb_entry *out_cb;
    /* Bytes queued on the output so far (a retracted answer taken off again): what the
     * transport took is out_added minus what the output still holds (conn_written). And the
     * access log lines waiting for their answers to leave (see struct logrec). */
    uint64_t out_added;
    struct logrec *logs;
    int nlogs;
    bool retracting;
    bool plain; /* a socket bufferevent: shutdown() and sendfile apply */
    bool processing, eof, closing, lingering, closed;
};

struct http_server {
    struct event_base *base;
    struct http_limits limits;
    struct http_server_handler handler;
    struct evconnlistener *listeners[HTTP_MAX_LISTENERS];
    int nlisteners;
    struct event *accept_retry;
    /* accept() failing (EMFILE): since when, and how many retries failed, logged at the end */
    bool accept_failing;
    unsigned accept_failures;
    struct timespec accept_failing_since;
    struct event *reap;
    struct conn *conns, *dead;
    bool access_log, freeing;
    /* http_server_drain: no connection is taken any more, and each one closes once it is
     * between requests; drained runs done(arg) from the loop when the last one has gone. */
    bool draining;
    struct event *drained;
    http_drained_cb on_drained;
    void *drained_arg;
    time_t date_at;
    char date[64];
};

static int on_message_begin(http_parser *p);
static int on_url(http_parser *p, const char *at, size_t len);
static int on_header_field(http_parser *p, const char *at, size_t len);
static int on_header_value(http_parser *p, const char *at, size_t len);
static int on_headers_complete(http_parser *p);
static int on_body(http_parser *p, const char *at, size_t len);
static int on_message_complete(http_parser *p);

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void conn_process(struct conn *conn);
static void conn_close(struct conn *conn);
static void conn_close_after_flush(struct conn *conn);
static void resp_complete(struct http_req *req);

/* ---- small helpers ---- */

static struct timeval ms_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

static void conn_kick(struct conn *conn)
{
    if (!conn->closed)
        event_active(conn->kick, EV_TIMEOUT, 0);
}

static void conn_arm_timer(struct conn *conn, int ms)
{
    struct timeval tv = ms_tv(ms);
    evtimer_add(conn->timer, &tv);
}

/* Adds or removes rd (and the read timeout) as reading is wanted and the input has room. */
static void conn_read_update(struct conn *conn)
{
    if (!conn->plain)
        return;
    bool on = conn->rd_want && !conn->eof && !conn->closed &&
              evbuffer_get_length(bufferevent_get_input(conn->bev)) < HTTP_READ_HIGH;
    if (on != conn->rd_added) {
        if (on)
            event_add(conn->rd, NULL);
        else
            event_del(conn->rd);
        conn->rd_added = on;
    }
    if (on && conn->rd_timeout) {
        if (!evtimer_pending(conn->rd_timer, NULL)) {
            struct timeval tv = ms_tv(conn->srv->limits.body_timeout_ms);
            evtimer_add(conn->rd_timer, &tv);
        }
    } else {
        evtimer_del(conn->rd_timer);
    }
}

static void conn_read_enable(struct conn *conn, bool on)
{
    if (!conn->plain) {
        if (on)
            bufferevent_enable(conn->bev, EV_READ);
        else
            bufferevent_disable(conn->bev, EV_READ);
        return;
    }
    conn->rd_want = on;
    conn_read_update(conn);
}

/* The body read timeout runs only while a body is being read; sends are always timed. */
static void conn_set_read_timeout(struct conn *conn, bool on)
{
    struct timeval rd = ms_tv(conn->srv->limits.body_timeout_ms);
    struct timeval wr = ms_tv(conn->srv->limits.send_timeout_ms);
    bufferevent_set_timeouts(conn->bev, on && !conn->plain ? &rd : NULL, &wr);
    if (conn->plain && conn->rd_timeout != on) {
        conn->rd_timeout = on;
        evtimer_del(conn->rd_timer);
        conn_read_update(conn);
    }
}

static size_t conn_output_len(const struct conn *conn)
{
    return evbuffer_get_length(bufferevent_get_output(conn->bev));
}

/* Bytes the transport has taken from the output (counted here, not from evbuffer callbacks,
 * which a bufferevent may defer). */
static uint64_t conn_written(const struct conn *conn)
{
    return conn->out_added - conn_output_len(conn);
}

/* Every byte of an answer is queued through these, so that conn.out_added counts it. */
static int out_add(struct conn *conn, const void *data, size_t len)
{
    if (evbuffer_add(bufferevent_get_output(conn->bev), data, len) < 0)
        return -1;
    conn->out_added += len;
    return 0;
}

static int out_add_file(struct conn *conn, int fd, off_t off, off_t len)
{
    if (evbuffer_add_file(bufferevent_get_output(conn->bev), fd, off, len) < 0)
        return -1;
    conn->out_added += (uint64_t)len;
    return 0;
}

/* The size line of a chunk. */
static void out_chunk_size(struct conn *conn, uint64_t len)
{
    char line[24];
    int n = snprintf(line, sizeof(line), "%llx\r\n", (unsigned long long)len);
    out_add(conn, line, (size_t)n);
}

static bool conn_streaming(const struct conn *conn)
{
    return conn->req && conn->req->resp == RESP_STREAMING;
}

/* Sets TCP_CORK (see conn.corked); a socket that refuses it is left as it is. */
static void conn_cork(struct conn *conn, bool on)
{
    int v = on;
    if (conn->corked != on &&
        setsockopt(bufferevent_getfd(conn->bev), IPPROTO_TCP, TCP_CORK, &v, sizeof(v)) == 0)
        conn->corked = on;
}

/*
 * Writes the queued output of a plain connection straight to the socket, from the loop
 * callback that queued it: a small answer costs one writev instead of an EPOLLOUT round (two
 * epoll_ctl and a wakeup). At most HTTP_WRITE_SIZE per call, as the bufferevent would. What
 * the socket does not take, a write error, and streams (refilled from the write callback, one
 * write per loop turn) are left to the bufferevent: EV_WRITE stays on until the output is
 * empty again. Writing anything kicks the connection, as the write callback does.
 */
static void conn_flush(struct conn *conn)
{
    if (!conn->plain || conn->closed)
        return;
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    size_t before = evbuffer_get_length(out);
    if (before == 0 && conn->corked)
        conn_cork(conn, false);
    if (conn->write_on) {
        if (before == 0 && !conn_streaming(conn)) {
            bufferevent_disable(conn->bev, EV_WRITE);
            conn->write_on = false;
        }
        return;
    }
    if (before == 0)
        return;
    if (!conn_streaming(conn)) {
        evutil_socket_t fd = bufferevent_getfd(conn->bev);
        ev_ssize_t total = 0;
        int n;
        /* the bufferevent keeps its output's start frozen outside its own writes */
        evbuffer_unfreeze(out, 1);
        do {
            n = evbuffer_write_atmost(out, fd, HTTP_WRITE_SIZE - total);
            total += n > 0 ? n : 0;
        } while (n > 0 && total < HTTP_WRITE_SIZE && evbuffer_get_length(out) > 0);
        evbuffer_freeze(out, 1);
    }
    size_t left = evbuffer_get_length(out);
    if (left == 0 && conn->corked)
        conn_cork(conn, false);
    if (left > 0) {
        conn->write_on = true;
        bufferevent_enable(conn->bev, EV_WRITE);
    }
    if (left < before)
        conn_kick(conn);
}

static void conn_logs_flush(struct conn *conn, bool closing);

/* Counts what the transport takes from the output (for the access log); output queued on a
 * plain connection has conn_flush write it from the loop. */
static void conn_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct conn *conn = arg;
    if (conn->retracting)
        return;
    if (info->n_deleted > 0)
        conn_logs_flush(conn, false);
    if (conn->plain && info->n_added > 0 && !conn->write_on)
        conn_kick(conn);
}

static const char *reason_phrase(int status)
{
    const char *s = http_status_str((enum http_status)status);
    if (strcmp(s, "<unknown>") != 0)
        return s;
    switch (status / 100) {
    case 2:
        return "OK";
    case 3:
        return "Redirect";
    case 4:
        return "Client Error";
    default:
        return "Server Error";
    }
}

static const char *http_date(struct http_server *srv)
{
    time_t now = time(NULL);
    if (now != srv->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(srv->date, sizeof(srv->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        srv->date_at = now;
    }
    return srv->date;
}

static long elapsed_ms(const struct timespec *since)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)(now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

/*
 * One access log line waiting for its answer to leave: the line tells the bytes the
 * transport took, not the bytes queued, so it is written once the output has drained past
 * the answer's end, or when the connection closes.
 */
struct logrec {
    struct logrec *next;
    uint64_t head_at, body_at, end_at; /* offsets in the connection's output stream */
    uint64_t body_len;                 /* body bytes queued */
    int status;
    bool aborted, rejected;
    struct timespec started;
    char text[]; /* method, path and user agent, each NUL-terminated */
};

static void log_write(struct conn *conn, const struct logrec *rec, uint64_t written)
{
    uint64_t out = written < rec->end_at ? written : rec->end_at;
    uint64_t body = out > rec->body_at ? out - rec->body_at : 0;
    /* a cut chunked answer counts its chunk framing too */
    if (body > rec->body_len)
        body = rec->body_len;
    char status[16], bytes[32], ms[32];
    /* no byte of the head left: the client saw no status */
    snprintf(status, sizeof(status), "%d", out > rec->head_at ? rec->status : 0);
    snprintf(bytes, sizeof(bytes), "%llu", (unsigned long long)body);
    snprintf(ms, sizeof(ms), "%ld", elapsed_ms(&rec->started));
    const char *method = rec->text, *path = method + strlen(method) + 1;
    const char *ua = path + strlen(path) + 1;
    bool aborted = rec->aborted || written < rec->end_at;
    const char *fields[] = {"method",     method,   "path",
                            path,         "status", status,
                            "bytes",      bytes,    "duration_ms",
                            ms,           "remote", conn->remote,
                            "user_agent", ua,       aborted ? "aborted" : NULL,
                            "true",       NULL};
    log_kv(LOG_INFO, fields, rec->rejected ? "request rejected" : "request");
}

/* Writes the lines whose answers have left (all of them when closing, as they stand). */
static void conn_logs_flush(struct conn *conn, bool closing)
{
    uint64_t written = conn->logs ? conn_written(conn) : 0;
    while (conn->logs && (closing || written >= conn->logs->end_at)) {
        struct logrec *rec = conn->logs;
        conn->logs = rec->next;
        conn->nlogs--;
        log_write(conn, rec, written);
        free(rec);
    }
}

static void access_log(const struct http_req *req, bool aborted)
{
    struct conn *conn = req->conn;
    if (conn->srv->handler.on_complete && !req->rejected) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t us = (int64_t)(now.tv_sec - req->started.tv_sec) * 1000000 +
                     (now.tv_nsec - req->started.tv_nsec) / 1000;
        conn->srv->handler.on_complete((struct http_req *)req, req->status,
                                       us > 0 ? (uint64_t)us : 0, conn->srv->handler.arg);
    }
    if (!conn->srv->access_log || !log_enabled(LOG_INFO))
        return;
    const char *method = req->rejected ? "" : http_req_method_str(req);
    const char *path = req->path ? req->path : "";
    const char *ua = req->rejected ? NULL : http_req_header(req, "User-Agent");
    ua = ua ? ua : "";
    size_t ml = strlen(method) + 1, pl = strlen(path) + 1, ul = strlen(ua) + 1;
    struct logrec *rec = malloc(sizeof(*rec) + ml + pl + ul);
    if (!rec)
        return;
    *rec = (struct logrec){.status = req->status,
                           .aborted = aborted,
                           .rejected = req->rejected,
                           .started = req->started,
                           .body_len = req->sent};
    memcpy(rec->text, method, ml);
    memcpy(rec->text + ml, path, pl);
    memcpy(rec->text + ml + pl, ua, ul);
    /* an answer that never queued its head (aborted early) starts where the output ends */
    uint64_t end = conn->out_added;
    rec->head_at = req->head_queued ? req->out_head : end;
    rec->body_at = req->head_queued ? req->out_body : end;
    rec->end_at = end;
    struct logrec **tail = &conn->logs;
    while (*tail)
        tail = &(*tail)->next;
    *tail = rec;
    conn->nlogs++;
    conn_logs_flush(conn, conn->closed);
}

/* ---- requests ---- */

static struct http_req *req_new(struct conn *conn)
{
    struct http_req *req = calloc(1, sizeof(*req));
    if (!req)
        return NULL;
    req->conn = conn;
    req->content_length = -1;
    req->status = 200;
    req->file_fd = -1;
    req->head = BUF_INIT(BUF_UNCAPPED);
    req->hbuf = BUF_INIT(HTTP_MAX_RESP_HEADER_BYTES);
    clock_gettime(CLOCK_MONOTONIC, &req->started);
    return req;
}

static void req_free(struct http_req *req)
{
    if (!req)
        return;
    buf_free(&req->hbuf);
    if (req->file_fd >= 0)
        close(req->file_fd);
    buf_free(&req->body);
    free(req->hdrs);
    buf_free(&req->head);
    free(req);
}

/* Makes room for len more bytes (512 at first: most heads need no second allocation). */
static int head_reserve(struct http_req *req, size_t len)
{
    if (!req->head.p && len < HTTP_HEAD_FIRST)
        len = HTTP_HEAD_FIRST;
    return buf_reserve(&req->head, len) == BUF_OK ? 0 : -1;
}

/* data may point into req->head only when head_reserve made room first. */
static int head_append(struct http_req *req, const char *data, size_t len)
{
    if (head_reserve(req, len) < 0)
        return -1;
    memcpy(req->head.p + req->head.len, data, len);
    buf_commit(&req->head, len);
    return 0;
}

static int head_terminate(struct http_req *req)
{
    return head_append(req, "", 1);
}

/* Ends the header value being collected: drops trailing blanks, adds the NUL. */
static int head_end_value(struct http_req *req)
{
    struct hdr *h = &req->hdrs[req->nhdrs - 1];
    if (h->value == SIZE_MAX) {
        /* "Name:" with an empty value: the parser never called on_header_value */
        if (head_terminate(req) < 0)
            return -1;
        h->value = req->head.len;
    }
    size_t end = req->head.len;
    while (end > h->value && (req->head.p[end - 1] == ' ' || req->head.p[end - 1] == '\t'))
        end--;
    buf_truncate(&req->head, end);
    return head_terminate(req);
}

static void req_finish(struct http_req *req)
{
    struct conn *conn = req->conn;
    conn->req = NULL;
    req_free(req);
    if (conn->closing || conn->closed)
        return;
    if (conn->srv->draining) {
        /* no next request: the answer leaves, then the connection closes */
        conn_close_after_flush(conn);
        return;
    }
    conn_arm_timer(conn, conn->srv->limits.idle_timeout_ms);
    conn_kick(conn);
}

/* ---- strict framing ---- */

static bool is_tchar(unsigned char c);

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* A CRLF (or in the head a bare LF, which RFC 9112 §2.2 lets a recipient accept) ends a line. */
static void frame_eol(struct frame *fr, unsigned char c, enum frame_state after)
{
    if (c == '\r') {
        fr->state = FR_CR;
        fr->after = after;
    } else {
        fr->state = after;
    }
}

/* After the chunk-size line: its data, or for the last chunk the trailer section. */
static enum frame_state frame_after_size(struct frame *fr)
{
    if (fr->left > 0)
        return FR_CHUNK_DATA;
    fr->trailers = true;
    return FR_FIELD_START;
}

/* The head and trailer states, where the header and URL limits apply (see frame_budget). */
static bool frame_in_head(enum frame_state s)
{
    switch (s) {
    case FR_LINE_START:
    case FR_REQ_LINE:
    case FR_FIELD_START:
    case FR_NAME:
    case FR_VALUE:
    case FR_CR:
        return true;
    default:
        return false;
    }
}

/*
 * Advances fr over up to n bytes of p. Returns how many it took: all n, fewer when the head or
 * a chunked message ends there or a chunk line ends (the caller decides what follows, and
 * sets the budget of a trailer section before it is scanned), or the offset of a byte that
 * breaks the framing rules, with *bad set. Rejected (RFC 9112): whitespace or any other
 * non-token byte in a field name, before the colon too (§5.1); NUL in the request line or a
 * field value (RFC 9110 §5.5); obs-fold continuation lines
 * (§5.2); a bare CR (§2.2); chunk lines without CRLF, chunk data not followed by CRLF, and
 * chunk sizes above 2^64 (§7.1). The state depends only on the bytes, never on how they were
 * split.
 */
static size_t frame_scan(struct frame *fr, const char *p, size_t n, bool *bad)
{
    *bad = false;
    size_t i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)p[i];
        bool in_head = frame_in_head(fr->state);
        switch (fr->state) {
        case FR_LINE_START:
            if (c == '\r' || c == '\n')
                frame_eol(fr, c, FR_LINE_START);
            else
                fr->state = FR_REQ_LINE;
            break;
        case FR_REQ_LINE:
        case FR_VALUE:
            if (c == '\r' || c == '\n')
                frame_eol(fr, c, FR_FIELD_START);
            else if (c == '\0')
                goto bad; /* RFC 9110 §5.5; the parser's own check depends on the split */
            break;
        case FR_FIELD_START:
            if (c == '\r' || c == '\n')
                frame_eol(fr, c, fr->trailers ? FR_DONE : FR_HEAD_DONE);
            else if (is_tchar(c))
                fr->state = FR_NAME;
            else
                goto bad; /* obs-fold, whitespace before the first field, an empty name */
            break;
        case FR_NAME:
            if (c == ':')
                fr->state = FR_VALUE;
            else if (!is_tchar(c))
                goto bad;
            break;
        case FR_CR:
            if (c != '\n')
                goto bad;
            fr->state = fr->after;
            break;
        case FR_CHUNK_SIZE: {
            int h = hex_value(c);
            if (h >= 0 && fr->left <= UINT64_MAX >> 4) {
                fr->left = fr->left << 4 | (uint64_t)h;
                fr->digits = true;
            } else if (!fr->digits || h >= 0) {
                goto bad;
            } else if (c == ';' || c == ' ' || c == '\t') {
                fr->state = FR_CHUNK_EXT;
            } else if (c == '\r') {
                fr->state = FR_CR;
                fr->after = frame_after_size(fr);
            } else {
                goto bad;
            }
            break;
        }
        case FR_CHUNK_EXT:
            if (c == '\r') {
                fr->state = FR_CR;
                fr->after = frame_after_size(fr);
            } else if (c == '\n') {
                goto bad;
            }
            break;
        case FR_CHUNK_DATA: {
            uint64_t take = n - i < fr->left ? n - i : fr->left;
            fr->left -= take;
            i += take;
            if (fr->left == 0)
                fr->state = FR_CHUNK_DATA_CR;
            continue;
        }
        case FR_CHUNK_DATA_CR:
            if (c != '\r')
                goto bad;
            fr->state = FR_CR;
            fr->after = FR_CHUNK_SIZE;
            fr->digits = false;
            break;
        case FR_PASS:
            return n;
        case FR_HEAD_DONE:
        case FR_DONE:
            return i;
        }
        i++;
        if (fr->state == FR_HEAD_DONE || fr->state == FR_DONE ||
            (!in_head && frame_in_head(fr->state)))
            return i;
    }
    return i;
bad:
    *bad = true;
    return i;
}

/*
 * How many bytes the parser may take now. In a head (or trailers) at most one byte past the
 * header and URL limits, so that it judges a limit at the byte that crosses it, before any
 * later byte, whichever way the input was split.
 */
static size_t frame_budget(const struct conn *conn, size_t avail)
{
    if (!frame_in_head(conn->frame.state))
        return avail;
    const struct http_limits *lim = &conn->srv->limits;
    size_t head =
        conn->head_bytes < lim->max_header_bytes ? conn->head_bytes : lim->max_header_bytes;
    size_t left = lim->max_header_bytes - head + 1;
    const struct http_req *req = conn->req;
    if (!req || !req->url_done) {
        size_t url = !req                                 ? 0
                     : req->head.len < lim->max_url_bytes ? req->head.len
                                                          : lim->max_url_bytes;
        if (lim->max_url_bytes - url + 1 < left)
            left = lim->max_url_bytes - url + 1;
    }
    return avail < left ? avail : left;
}

/* The head has been parsed: the request's framing says how to check what follows. */
static void frame_body(struct frame *fr, const struct http_req *req)
{
    if (fr->state != FR_HEAD_DONE || !req)
        return;
    *fr = (struct frame){.state = req->chunked ? FR_CHUNK_SIZE : FR_PASS};
}

/* ---- parser callbacks: they only record; the application runs from conn_process ---- */

static int count_head(struct conn *conn, size_t len)
{
    conn->head_bytes += len;
    if (conn->head_bytes > conn->srv->limits.max_header_bytes) {
        conn->parse_status = 431;
        return -1;
    }
    return 0;
}

static int on_message_begin(http_parser *p)
{
    struct conn *conn = p->data;
    if (conn->req) {
        conn->parse_status = 500;
        return -1;
    }
    conn->req = req_new(conn);
    if (!conn->req) {
        conn->parse_status = 503;
        return -1;
    }
    conn->head_bytes = 0;
    conn_arm_timer(conn, conn->srv->limits.header_timeout_ms);
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    struct conn *conn = p->data;
    struct http_req *req = conn->req;
    if (req->head.len + len > conn->srv->limits.max_url_bytes) {
        conn->parse_status = 414;
        return -1;
    }
    if (count_head(conn, len) < 0 || head_append(req, at, len) < 0)
        return -1;
    return 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    struct conn *conn = p->data;
    struct http_req *req = conn->req;
    /* Trailers after a chunked body count against the limit but are not kept. */
    if (req->dispatched)
        return count_head(conn, len);
    if (count_head(conn, len) < 0)
        return -1;
    if (!req->in_field) {
        if (!req->url_done) {
            if (head_terminate(req) < 0)
                return -1;
            req->url_done = true;
        } else if (head_end_value(req) < 0) {
            return -1;
        }
        if (req->nhdrs == HTTP_MAX_HEADERS) {
            conn->parse_status = 431;
            return -1;
        }
        /* 16 at first: most requests then need no second allocation. */
        size_t need = req->nhdrs < 16 ? 16 : req->nhdrs + 1;
        if (buf_grow_items(&req->hdrs, &req->hdrs_cap, need, sizeof(*req->hdrs),
                           HTTP_MAX_HEADERS) != BUF_OK)
            return -1;
        req->hdrs[req->nhdrs].name = req->head.len;
        req->hdrs[req->nhdrs].value = SIZE_MAX;
        req->nhdrs++;
        req->in_field = true;
        /* ": " and CRLF are not passed to callbacks; count them too */
        if (count_head(conn, 4) < 0)
            return -1;
    }
    return head_append(req, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    struct conn *conn = p->data;
    struct http_req *req = conn->req;
    if (req->dispatched)
        return count_head(conn, len);
    if (count_head(conn, len) < 0)
        return -1;
    if (req->in_field) {
        if (head_terminate(req) < 0)
            return -1;
        req->hdrs[req->nhdrs - 1].value = req->head.len;
        req->in_field = false;
    }
    return head_append(req, at, len);
}

/* Splits the request target into path and query, copied after the headers in head. */
static int split_target(struct conn *conn, struct http_req *req)
{
    const char *url = req->head.p + req->url_off;
    size_t url_len = strlen(url);
    size_t path_at = 0, path_len, query_at = 0, query_len = 0;
    if (url[0] == '/' || strcmp(url, "*") == 0) {
        path_len = strcspn(url, "?#");
        if (url[path_len] == '?') {
            query_at = path_len + 1;
            query_len = strcspn(url + query_at, "#");
        }
    } else {
        /* absolute-form (or authority-form for CONNECT) */
        struct http_parser_url u;
        http_parser_url_init(&u);
        if (http_parser_parse_url(url, url_len, req->method == HTTP_CONNECT, &u) != 0) {
            conn->parse_status = 400;
            return -1;
        }
        path_at = u.field_data[UF_PATH].off;
        path_len = (u.field_set & (1 << UF_PATH)) ? u.field_data[UF_PATH].len : 0;
        if (u.field_set & (1 << UF_QUERY)) {
            query_at = u.field_data[UF_QUERY].off;
            query_len = u.field_data[UF_QUERY].len;
        }
    }
    /* the copies come from head itself: reserve first so it does not move under them */
    if (head_reserve(req, path_len + query_len + 3) < 0)
        return -1;
    size_t p_off = req->head.len;
    if (path_len == 0)
        head_append(req, "/", 1);
    else
        head_append(req, req->head.p + req->url_off + path_at, path_len);
    size_t q_off = req->head.len + 1;
    head_terminate(req);
    head_append(req, req->head.p + req->url_off + query_at, query_len);
    head_terminate(req);
    req->path = req->head.p + p_off;
    req->query = req->head.p + q_off;
    return 0;
}

/*
 * Transfer-Encoding (RFC 9112 §6.1, §6.3): chunked must be the final coding and applied once,
 * or the body cannot be delimited (400); HTTP/1.0 has no transfer codings, so its framing is
 * faulty (400); any other coding is not implemented here (501). 0 when the framing is fine.
 */
static int transfer_coding_status(const struct http_req *req)
{
    bool present = false, last_chunked = false, other = false;
    int chunked = 0;
    const char *v;
    for (size_t i = 0; (v = http_req_header_n(req, "Transfer-Encoding", i)); i++) {
        present = true;
        while (*v) {
            size_t len = strcspn(v, ",");
            size_t a = 0, b = len;
            while (a < b && (v[a] == ' ' || v[a] == '\t'))
                a++;
            while (b > a && (v[b - 1] == ' ' || v[b - 1] == '\t'))
                b--;
            if (b > a) {
                last_chunked = b - a == 7 && strncasecmp(v + a, "chunked", 7) == 0;
                chunked += last_chunked;
                other = other || !last_chunked;
            }
            v += len + (v[len] == ',');
        }
    }
    if (!present)
        return 0;
    if (req->http10 || !last_chunked || chunked > 1)
        return 400;
    return other ? 501 : 0;
}

static int on_headers_complete(http_parser *p)
{
    struct conn *conn = p->data;
    struct http_req *req = conn->req;
    if (!req->url_done) {
        if (head_terminate(req) < 0)
            return -1;
        req->url_done = true;
    } else if (req->nhdrs > 0 && head_end_value(req) < 0) {
        return -1;
    }
    if (p->http_major != 1) {
        conn->parse_status = 505;
        return -1;
    }
    req->method = (enum http_method)p->method;
    req->is_head = req->method == HTTP_HEAD;
    req->http10 = p->http_minor == 0;
    req->keep_alive = http_should_keep_alive(p) != 0;
    req->chunked = (p->flags & F_CHUNKED) != 0;
    if (p->flags & F_CONTENTLENGTH) {
        if (p->content_length > INT64_MAX) {
            conn->parse_status = 400;
            return -1;
        }
        req->content_length = (int64_t)p->content_length;
    }
    int te = transfer_coding_status(req);
    if (te != 0) {
        conn->parse_status = te;
        return -1;
    }
    const char *expect = http_req_header(req, "Expect");
    req->expect_continue =
        expect && strcasecmp(expect, "100-continue") == 0 && !req->http10 && http_req_has_body(req);
    if (split_target(conn, req) < 0)
        return -1;
    conn->event = PEV_HEADERS;
    http_parser_pause(p, 1);
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    struct conn *conn = p->data;
    if (conn->req->body_mode == BODY_DISCARD)
        return 0;
    conn->event = PEV_BODY;
    conn->ev_data = at;
    conn->ev_len = len;
    http_parser_pause(p, 1);
    return 0;
}

static int on_message_complete(http_parser *p)
{
    struct conn *conn = p->data;
    conn->event = PEV_COMPLETE;
    http_parser_pause(p, 1);
    return 0;
}

/* ---- connection ---- */

static bool req_live(const struct http_req *req);

/*
 * Answers an error the server decides itself: through the application's on_error (the
 * registry's error body), or as plain text when it does not answer. The request's body is
 * never complete, so req outlives the answer.
 */
static void answer_error(struct http_req *req, int status)
{
    const struct http_server_handler *h = &req->conn->srv->handler;
    if (h->on_error)
        h->on_error(req, status, h->arg);
    if (!req_live(req) || req->resp == RESP_STREAMING)
        return;
    char msg[64];
    int n = snprintf(msg, sizeof(msg), "%s\n", reason_phrase(status));
    http_resp_start(req, status);
    http_resp_header(req, "Content-Type", "text/plain");
    http_resp_body_mem(req, msg, (size_t)n);
}

/*
 * Answers a request the parser rejected (or that timed out) and closes. A request the
 * application already holds is aborted first; if its response has begun, the connection is
 * just cut. The answer goes out for a fresh request with no method, path or headers.
 */
static void conn_fail(struct conn *conn, int status)
{
    struct http_req *req = conn->req;
    if (req && req->dispatched) {
        /* a streamed head may be on the wire already: only cutting the connection is left */
        if (req->resp == RESP_STREAMING) {
            conn_close(conn);
            return;
        }
        /* answered already (the rest of its body is broken): no second answer */
        if (req->resp == RESP_DONE) {
            req->body_mode = BODY_STOPPED;
            conn_close_after_flush(conn);
            return;
        }
        req->aborting = true;
        if (req->on_abort)
            req->on_abort(req, req->abort_ctx);
        if (conn->closed)
            return;
    }
    req_free(req);
    conn->req = req = req_new(conn);
    if (!req) {
        conn_close(conn);
        return;
    }
    req->dispatched = req->rejected = req->must_close = true;
    req->body_mode = BODY_STOPPED;
    evtimer_del(conn->timer);
    answer_error(req, status);
}

static int parse_error_status(struct conn *conn, enum http_errno err)
{
    if (conn->parse_status)
        return conn->parse_status;
    switch (err) {
    case HPE_HEADER_OVERFLOW:
        return 431;
    case HPE_INVALID_TRANSFER_ENCODING:
        return 400; /* chunked is not the final coding */
    default:
        return 400;
    }
}

/* Whether the parser may run now: strictly one request at a time, and only when wanted. */
static bool conn_can_parse(const struct conn *conn)
{
    const struct http_req *req = conn->req;
    if (conn->closed || conn->closing)
        return false;
    if (!req)
        return conn_output_len(conn) < HTTP_WRITE_LOW && conn->nlogs < HTTP_MAX_PENDING_LOGS;
    if (!req->dispatched)
        return true;
    if (req->body_done)
        return false;
    switch (req->body_mode) {
    case BODY_UNDECIDED:
        /* a bodiless request only lacks its message-complete step */
        return !http_req_has_body(req);
    case BODY_READ:
    case BODY_BUFFER:
        return !req->body_paused;
    case BODY_DISCARD:
        return true;
    default:
        return false;
    }
}

static void deliver_buffered(struct http_req *req)
{
    /* Detached first: the callback may complete (and so free) the request. */
    struct buf body = req->body;
    buf_init(&req->body, body.max);
    req->on_buffered(req, req->body_ctx, buf_cstr(&body), body.len);
    buf_free(&body);
}

/* Runs the application's end-of-body callback; req may be gone afterwards. */
static void deliver_end(struct http_req *req)
{
    if (req->body_mode == BODY_READ && req->on_end)
        req->on_end(req, req->body_ctx);
    else if (req->body_mode == BODY_BUFFER)
        deliver_buffered(req);
}

static void reject_body(struct http_req *req);

static int buffer_piece(struct http_req *req, const char *data, size_t len)
{
    return buf_append(&req->body, data, len) == BUF_OK ? 0 : -1;
}

static void handle_event(struct conn *conn, enum parse_event ev)
{
    struct http_req *req = conn->req;
    switch (ev) {
    case PEV_HEADERS:
        req->dispatched = true;
        evtimer_del(conn->timer);
        conn->srv->handler.on_request(req, conn->srv->handler.arg);
        break;
    case PEV_BODY:
        if (req->body_mode == BODY_READ) {
            int r = req->on_data(req, req->body_ctx, conn->ev_data, conn->ev_len);
            /* on_data cannot free req: the body is not complete yet */
            if (r != 0 && !conn->closed && req->resp != RESP_DONE) {
                req->body_mode = BODY_STOPPED;
                req->must_close = true;
                conn_set_read_timeout(conn, false);
            }
        } else if (req->body_mode == BODY_BUFFER) {
            if (buffer_piece(req, conn->ev_data, conn->ev_len) < 0)
                reject_body(req);
        }
        break;
    case PEV_COMPLETE:
        req->body_done = true;
        conn_set_read_timeout(conn, false);
        if (req->resp == RESP_DONE)
            req_finish(req);
        else if (req->body_mode == BODY_READ || req->body_mode == BODY_BUFFER)
            deliver_end(req);
        break;
    default:
        break;
    }
}

/*
 * Feeds buffered input to the parser while the current request allows it, and runs the
 * application for each parser event. Never re-entered: calls from the application only
 * schedule it (conn_kick).
 */
static void conn_process(struct conn *conn)
{
    if (conn->processing || conn->closed)
        return;
    conn->processing = true;
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    while (!conn->closed && conn_can_parse(conn)) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        if (HTTP_PARSER_ERRNO(&conn->parser) == HPE_PAUSED)
            http_parser_pause(&conn->parser, 0);
        /* the parser sees only bytes the framing check passed; a bad byte waits until the
         * parser has judged everything before it, so any split gives the same answer */
        frame_body(&conn->frame, conn->req);
        struct frame ahead = conn->frame;
        bool bad;
        size_t ok = frame_scan(&ahead, v.iov_base, frame_budget(conn, v.iov_len), &bad);
        if (ok == 0) {
            /* a bad byte, or the parser did not end a message where the framing did */
            conn_fail(conn, 400);
            break;
        }
        conn->event = PEV_NONE;
        size_t n = http_parser_execute(&conn->parser, &parser_settings, v.iov_base, ok);
        enum http_errno err = HTTP_PARSER_ERRNO(&conn->parser);
        if ((err != HPE_OK && err != HPE_PAUSED) || (n == 0 && conn->event == PEV_NONE)) {
            conn_fail(conn, parse_error_status(conn, err));
            break;
        }
        if (n == ok)
            conn->frame = ahead;
        else
            frame_scan(&conn->frame, v.iov_base, n, &bad);
        enum parse_event ev = conn->event;
        conn->event = PEV_NONE;
        if (ev == PEV_COMPLETE) {
            if (conn->frame.state != FR_PASS && conn->frame.state != FR_DONE &&
                conn->frame.state != FR_HEAD_DONE) {
                conn_fail(conn, 400);
                break;
            }
            conn->frame = (struct frame){.state = FR_LINE_START};
            conn->head_bytes = 0;
        }
        handle_event(conn, ev);
        /* body data pointed into the buffer: drop it only now */
        evbuffer_drain(in, n);
    }
    conn->processing = false;
    conn_read_update(conn);
    if (conn->closed || conn->closing || !conn->eof)
        return;
    /* The peer sent EOF: answer what could be parsed, abort what waits for an answer. */
    struct http_req *req = conn->req;
    if (req && req->dispatched && req->resp != RESP_DONE)
        conn_close(conn);
    else if (evbuffer_get_length(in) == 0 || conn_can_parse(conn))
        conn_close_after_flush(conn);
    /* else requests wait for queued output to drain; the write callback resumes */
}

/* Closes now. A request still waiting for its response is aborted (its callback runs once). */
static void conn_close(struct conn *conn)
{
    if (conn->closed)
        return;
    conn->closed = true;
    struct http_req *req = conn->req;
    if (req && req->dispatched && req->resp != RESP_DONE && !req->aborting) {
        req->aborting = true;
        access_log(req, true);
        if (req->on_abort)
            req->on_abort(req, req->abort_ctx);
    }
    bufferevent_setcb(conn->bev, NULL, NULL, NULL, NULL);
    bufferevent_disable(conn->bev, EV_READ | EV_WRITE);
    if (conn->plain) {
        event_del(conn->rd);
        evtimer_del(conn->rd_timer);
        conn->rd_added = false;
    }
    if (conn->out_cb) {
        evbuffer_remove_cb_entry(bufferevent_get_output(conn->bev), conn->out_cb);
        conn->out_cb = NULL;
    }
    /* what is still queued never leaves */
    conn_logs_flush(conn, true);
    evtimer_del(conn->timer);
    event_del(conn->kick);

    struct http_server *srv = conn->srv;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    conn->prev = NULL;
    conn->next = srv->dead;
    if (srv->dead)
        srv->dead->prev = conn;
    srv->dead = conn;
    /* Freed from the loop later: callers up the stack may still hold conn or req. */
    if (!srv->freeing)
        event_active(srv->reap, EV_TIMEOUT, 0);
    if (srv->draining && !srv->conns && !srv->freeing)
        event_active(srv->drained, EV_TIMEOUT, 0);
}

static void conn_free(struct conn *conn)
{
    conn_logs_flush(conn, true);
    req_free(conn->req);
    if (conn->rd)
        event_free(conn->rd);
    if (conn->rd_timer)
        event_free(conn->rd_timer);
    event_free(conn->kick);
    event_free(conn->timer);
    bufferevent_free(conn->bev);
    free(conn);
}

/* Half-closes and reads what the client still sends for a moment, so it sees our answer
 * instead of a reset. */
static void conn_linger(struct conn *conn)
{
    evutil_socket_t fd = bufferevent_getfd(conn->bev);
    if (conn->eof || !conn->plain || fd < 0) {
        conn_close(conn);
        return;
    }
    conn->lingering = true;
    shutdown(fd, SHUT_WR);
    bufferevent_set_timeouts(conn->bev, NULL, NULL);
    conn->rd_timeout = false;
    conn_read_enable(conn, true);
    conn_arm_timer(conn, HTTP_LINGER_MS);
}

/* Stops parsing; closes once everything queued is written. */
static void conn_close_after_flush(struct conn *conn)
{
    if (conn->closing || conn->closed)
        return;
    conn->closing = true;
    evtimer_del(conn->timer);
    /* keep reading (and dropping) so a client still sending does not block on us */
    conn_set_read_timeout(conn, false);
    bufferevent_setwatermark(conn->bev, EV_WRITE, 0, 0);
    if (!conn->eof)
        conn_read_enable(conn, true);
    if (conn_output_len(conn) == 0)
        conn_linger(conn);
}

static void conn_kick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *conn = arg;
    if (conn->closed)
        return;
    if (conn->closing) {
        conn_flush(conn);
        if (!conn->closed && !conn->lingering && conn_output_len(conn) == 0)
            conn_linger(conn);
        return;
    }
    struct http_req *req = conn->req;
    if (req && req->end_pending) {
        req->end_pending = false;
        conn_kick(conn);
        deliver_end(req);
        return;
    }
    conn_process(conn);
    req = conn->req;
    if (!conn->closed && req && req->resp == RESP_STREAMING && req->on_writable &&
        conn_output_len(conn) < HTTP_WRITE_LOW)
        req->on_writable(req, req->wr_ctx);
    conn_flush(conn);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct conn *conn = arg;
    if (conn->closing) {
        evbuffer_drain(bufferevent_get_input(bev), (size_t)-1);
        return;
    }
    conn_process(conn);
    conn_flush(conn);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg);

/*
 * rd fired on a plain connection: recv() into the input buffer, a first small read (a request
 * head) and then large ones while the socket fills them (an upload arriving at speed), at most
 * HTTP_READ_SIZE per event. EOF and errors go where the bufferevent would report them.
 */
static void conn_sock_read_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *conn = arg;
    struct evbuffer *in = bufferevent_get_input(conn->bev);
    size_t total = 0, want = HTTP_READ_FIRST;
    short event = 0;
    /* a bufferevent keeps its input's end frozen outside its own reads */
    evbuffer_unfreeze(in, 0);
    for (;;) {
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(in, (ev_ssize_t)want, &v, 1) != 1) {
            event = BEV_EVENT_READING | BEV_EVENT_ERROR;
            break;
        }
        size_t room = v.iov_len < want ? v.iov_len : want;
        ssize_t n = recv(fd, v.iov_base, room, 0);
        v.iov_len = n > 0 ? (size_t)n : 0;
        evbuffer_commit_space(in, &v, 1);
        if (n == 0) {
            event = BEV_EVENT_READING | BEV_EVENT_EOF;
            break;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
                event = BEV_EVENT_READING | BEV_EVENT_ERROR;
            break;
        }
        total += (size_t)n;
        if ((size_t)n < room || total >= HTTP_READ_SIZE ||
            evbuffer_get_length(in) >= HTTP_READ_HIGH)
            break;
        want = HTTP_READ_SIZE - total;
    }
    evbuffer_freeze(in, 0);
    if (event & BEV_EVENT_EOF) {
        /* nothing more will come: stop watching before the EOF is handled */
        conn->rd_want = false;
        conn_read_update(conn);
    }
    if (total > 0) {
        if (conn->rd_timeout && !conn->closed) {
            struct timeval tv = ms_tv(conn->srv->limits.body_timeout_ms);
            evtimer_add(conn->rd_timer, &tv);
        }
        conn_read_cb(conn->bev, conn);
        conn_read_update(conn);
    }
    if (event && !conn->closed)
        conn_event_cb(conn->bev, event, conn);
}

static void conn_rd_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *conn = arg;
    conn_event_cb(conn->bev, BEV_EVENT_READING | BEV_EVENT_TIMEOUT, conn);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    /* the output drained: conn_flush takes writing back once it is empty */
    conn_flush(arg);
    conn_kick(arg);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *conn = arg;
    if (what & BEV_EVENT_EOF) {
        conn->eof = true;
        if (conn->lingering || (conn->closing && conn_output_len(conn) == 0)) {
            conn_close(conn);
            return;
        }
        /* from the loop: conn_process may be on the stack with non-deferred bufferevents */
        if (!conn->closing)
            conn_kick(conn);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        log_debug("http: %s timeout from %s", (what & BEV_EVENT_READING) ? "body read" : "send",
                  conn->remote);
    conn_close(conn);
}

static void conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *conn = arg;
    if (conn->lingering) {
        conn_close(conn);
        return;
    }
    /* A response still being written is guarded by the send timeout, not by this one. */
    if (conn_output_len(conn) > 0) {
        conn_arm_timer(conn, conn->srv->limits.idle_timeout_ms);
        return;
    }
    if (conn->req && !conn->req->dispatched)
        conn_fail(conn, 408);
    else if (!conn->req)
        conn_close(conn);
}

static int conn_new(struct http_server *srv, struct bufferevent *bev, const char *remote,
                    bool plain)
{
    struct conn *conn = calloc(1, sizeof(*conn));
    if (!conn)
        goto fail;
    conn->srv = srv;
    conn->bev = bev;
    conn->plain = plain;
    snprintf(conn->remote, sizeof(conn->remote), "%s", remote ? remote : "");
    conn->kick = event_new(srv->base, -1, 0, conn_kick_cb, conn);
    conn->timer = evtimer_new(srv->base, conn_timer_cb, conn);
    if (!conn->kick || !conn->timer)
        goto fail;
    http_parser_init(&conn->parser, HTTP_REQUEST);
    conn->parser.data = conn;
    conn->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), conn_output_cb, conn);
    if (!conn->out_cb)
        goto fail;

    bufferevent_setcb(bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
    bufferevent_setwatermark(bev, EV_WRITE, HTTP_WRITE_LOW, 0);
    bufferevent_set_max_single_write(bev, HTTP_WRITE_SIZE);
    if (plain) {
        conn->rd = event_new(srv->base, bufferevent_getfd(bev), EV_READ | EV_PERSIST,
                             conn_sock_read_cb, conn);
        conn->rd_timer = evtimer_new(srv->base, conn_rd_timeout_cb, conn);
        if (!conn->rd || !conn->rd_timer)
            goto fail;
        /* a new bufferevent has EV_WRITE enabled; plain connections write with conn_flush */
        if (bufferevent_disable(bev, EV_WRITE) < 0)
            goto fail;
        conn->rd_want = true;
        conn_read_update(conn);
    } else {
        bufferevent_setwatermark(bev, EV_READ, 0, HTTP_READ_HIGH);
        bufferevent_set_max_single_read(bev, HTTP_READ_SIZE);
        if (bufferevent_enable(bev, EV_READ | EV_WRITE) < 0)
            goto fail;
    }
    conn_set_read_timeout(conn, false);
    conn_arm_timer(conn, srv->limits.header_timeout_ms);

    conn->next = srv->conns;
    if (srv->conns)
        srv->conns->prev = conn;
    srv->conns = conn;
    return 0;
fail:
    if (conn) {
        if (conn->out_cb)
            evbuffer_remove_cb_entry(bufferevent_get_output(bev), conn->out_cb);
        if (conn->rd)
            event_free(conn->rd);
        if (conn->rd_timer)
            event_free(conn->rd_timer);
        if (conn->kick)
            event_free(conn->kick);
        if (conn->timer)
            event_free(conn->timer);
        free(conn);
    }
    bufferevent_free(bev);
    return -1;
}

/* ---- server ---- */

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    while (srv->dead) {
        struct conn *conn = srv->dead;
        srv->dead = conn->next;
        conn_free(conn);
    }
}

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    srv->on_drained(srv->drained_arg);
}

void http_peer_text(const struct sockaddr *sa, char *out, size_t len)
{
    out[0] = '\0';
    if (sa->sa_family == AF_INET) {
        evutil_inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, len);
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        /* dual-stack listeners see IPv4 clients as ::ffff:a.b.c.d; log them as IPv4 */
        if (IN6_IS_ADDR_V4MAPPED(a))
            evutil_inet_ntop(AF_INET, &a->s6_addr[12], out, len);
        else
            evutil_inet_ntop(AF_INET6, a, out, len);
    }
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    struct http_server *srv = arg;
    if (srv->accept_failing) {
        log_info("http: accepting connections again after %ld ms (%u retries failed)",
                 elapsed_ms(&srv->accept_failing_since), srv->accept_failures);
        srv->accept_failing = false;
    }
    /* Nagle would hold back small writes (response heads) behind unacknowledged data. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct bufferevent *bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!bev) {
        close(fd);
        return;
    }
    char remote[INET6_ADDRSTRLEN];
    http_peer_text(sa, remote, sizeof(remote));
    if (conn_new(srv, bev, remote, true) < 0)
        log_warn("http: cannot set up a connection from %s", remote);
}

static void accept_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct http_server *srv = arg;
    for (int i = 0; i < srv->nlisteners; i++)
        evconnlistener_enable(srv->listeners[i]);
}

/*
 * accept() failing (EMFILE, ENFILE) would spin the loop: pause accepting for a moment, and
 * retry until it works again. Logged once when it starts and once when it ends: a warning
 * on every retry would flood the log while the descriptors stay taken.
 */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct http_server *srv = arg;
    int err = EVUTIL_SOCKET_ERROR();
    if (!srv->accept_failing) {
        log_warn("http: accept: %s; new connections wait until it works again",
                 evutil_socket_error_to_string(err));
        srv->accept_failing = true;
        srv->accept_failures = 0;
        clock_gettime(CLOCK_MONOTONIC, &srv->accept_failing_since);
    }
    srv->accept_failures++;
    for (int i = 0; i < srv->nlisteners; i++)
        evconnlistener_disable(srv->listeners[i]);
    struct timeval tv = ms_tv(HTTP_ACCEPT_RETRY_MS);
    evtimer_add(srv->accept_retry, &tv);
}

struct http_server *http_server_new(struct event_base *base, const struct http_limits *limits,
                                    const struct http_server_handler *handler)
{
    struct http_server *srv = NULL;
    if (!base || !handler || !handler->on_request)
        goto fail;
    srv = calloc(1, sizeof(*srv));
    if (!srv)
        goto fail;
    srv->base = base;
    srv->handler = *handler;
    srv->access_log = true;
    if (limits)
        srv->limits = *limits;
    if (!srv->limits.max_header_bytes)
        srv->limits.max_header_bytes = 64 * 1024;
    if (!srv->limits.max_url_bytes)
        srv->limits.max_url_bytes = 8 * 1024;
    if (srv->limits.header_timeout_ms <= 0)
        srv->limits.header_timeout_ms = 30 * 1000;
    if (srv->limits.idle_timeout_ms <= 0)
        srv->limits.idle_timeout_ms = 60 * 1000;
    if (srv->limits.body_timeout_ms <= 0)
        srv->limits.body_timeout_ms = 60 * 1000;
    if (srv->limits.send_timeout_ms <= 0)
        srv->limits.send_timeout_ms = 300 * 1000;
    srv->reap = event_new(base, -1, 0, reap_cb, srv);
    srv->accept_retry = evtimer_new(base, accept_retry_cb, srv);
    srv->drained = event_new(base, -1, 0, drained_cb, srv);
    if (!srv->reap || !srv->accept_retry || !srv->drained)
        goto fail;
    return srv;
fail:
    if (srv) {
        if (srv->reap)
            event_free(srv->reap);
        if (srv->accept_retry)
            event_free(srv->accept_retry);
        if (srv->drained)
            event_free(srv->drained);
        free(srv);
    }
    return NULL;
}

void http_server_set_access_log(struct http_server *srv, bool enabled)
{
    srv->access_log = enabled;
}

static int add_listener(struct http_server *srv, struct evconnlistener *l)
{
    if (!l)
        return -1;
    if (srv->nlisteners == HTTP_MAX_LISTENERS) {
        evconnlistener_free(l);
        errno = EMFILE;
        return -1;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    srv->listeners[srv->nlisteners++] = l;
    return 0;
}

struct evconnlistener *http_listen_bind(struct event_base *base, const char *addr,
                                        evconnlistener_cb cb, void *arg)
{
    struct evconnlistener *l = NULL;
    struct addrinfo *res = NULL;
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon[1] == '\0')
        goto bad;
    const char *h = addr;
    size_t hlen = (size_t)(colon - addr);
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen >= sizeof(host))
        goto bad;
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                             .ai_family = AF_UNSPEC};
    int gai = getaddrinfo(hlen ? host : NULL, colon + 1, &hints, &res);
    if (gai != 0) {
        log_error("http: cannot resolve listen address %s: %s", addr, gai_strerror(gai));
        errno = EINVAL;
        goto out;
    }
    /* A wildcard address prefers IPv6, which on Linux also accepts IPv4 (dual stack). */
    for (int pass = 0; pass < 2; pass++) {
        for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
            bool preferred = hlen == 0 && ai->ai_family == AF_INET6;
            if ((pass == 0) != preferred)
                continue;
            l = evconnlistener_new_bind(
                base, cb, arg, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
                -1, ai->ai_addr, (int)ai->ai_addrlen);
            if (l)
                goto out;
        }
    }
    log_error("http: cannot listen on %s: %s", addr, strerror(errno));
    goto out;
bad:
    log_error("http: bad listen address %s", addr);
    errno = EINVAL;
out:
    if (res)
        freeaddrinfo(res);
    return l;
}

int http_server_listen(struct http_server *srv, const char *addr)
{
    return add_listener(srv, http_listen_bind(srv->base, addr, accept_cb, srv));
}

int http_server_listen_fd(struct http_server *srv, int fd)
{
    if (evutil_make_socket_nonblocking(fd) < 0) {
        close(fd);
        return -1;
    }
    struct evconnlistener *l = evconnlistener_new(
        srv->base, accept_cb, srv, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (!l) {
        close(fd);
        return -1;
    }
    return add_listener(srv, l);
}

int http_server_adopt(struct http_server *srv, struct bufferevent *bev, const char *remote)
{
    if (srv->draining) {
        bufferevent_free(bev);
        return -1;
    }
    return conn_new(srv, bev, remote, false);
}

int http_server_port(const struct http_server *srv)
{
    if (srv->nlisteners == 0)
        return -1;
    struct sockaddr_storage ss = {0};
    socklen_t len = sizeof(ss);
    if (getsockname(evconnlistener_get_fd(srv->listeners[0]), (struct sockaddr *)&ss, &len) < 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

static void close_listeners(struct http_server *srv)
{
    for (int i = 0; i < srv->nlisteners; i++)
        evconnlistener_free(srv->listeners[i]);
    srv->nlisteners = 0;
    evtimer_del(srv->accept_retry);
}

/*
 * A connection of a draining server: one between requests closes now, or once the answer it
 * still sends has left; one with a request in progress closes after that request (req_finish),
 * whose answer says Connection: close (resp_must_close).
 */
static void conn_drain(struct conn *conn)
{
    if (conn->closing || conn->closed || conn->req)
        return;
    if (conn_output_len(conn) == 0 && evbuffer_get_length(bufferevent_get_input(conn->bev)) == 0)
        conn_close(conn);
    else
        conn_close_after_flush(conn);
}

void http_server_drain(struct http_server *srv, http_drained_cb done, void *arg)
{
    if (srv->draining)
        return;
    srv->draining = true;
    srv->on_drained = done;
    srv->drained_arg = arg;
    close_listeners(srv);
    /* conn_drain closes only connections without a request: no application code runs */
    for (struct conn *conn = srv->conns, *next; conn; conn = next) {
        next = conn->next;
        conn_drain(conn);
    }
    if (!srv->conns)
        event_active(srv->drained, EV_TIMEOUT, 0);
}

void http_server_free(struct http_server *srv)
{
    if (!srv)
        return;
    srv->freeing = true;
    close_listeners(srv);
    while (srv->conns)
        conn_close(srv->conns);
    reap_cb(-1, 0, srv);
    event_free(srv->reap);
    event_free(srv->accept_retry);
    event_free(srv->drained);
    free(srv);
}

/* ---- request accessors ---- */

enum http_method http_req_method(const struct http_req *req)
{
    return req->method;
}

const char *http_req_method_str(const struct http_req *req)
{
    return http_method_str(req->method);
}

const char *http_req_path(const struct http_req *req)
{
    return req->path ? req->path : "";
}

const char *http_req_query(const struct http_req *req)
{
    return req->query ? req->query : "";
}

const char *http_req_header(const struct http_req *req, const char *name)
{
    return http_req_header_n(req, name, 0);
}

const char *http_req_header_n(const struct http_req *req, const char *name, size_t idx)
{
    for (size_t i = 0; i < req->nhdrs; i++) {
        const struct hdr *h = &req->hdrs[i];
        if (h->value == SIZE_MAX || strcasecmp(req->head.p + h->name, name) != 0)
            continue;
        if (idx-- == 0)
            return req->head.p + h->value;
    }
    return NULL;
}

int64_t http_req_content_length(const struct http_req *req)
{
    return req->chunked ? -1 : req->content_length;
}

bool http_req_has_body(const struct http_req *req)
{
    return req->chunked || req->content_length > 0;
}

const char *http_req_remote_addr(const struct http_req *req)
{
    return req->conn->remote;
}

void http_req_on_abort(struct http_req *req, http_abort_cb cb, void *ctx)
{
    assert(!cb || !req->on_abort);
    req->on_abort = cb;
    req->abort_ctx = ctx;
}

/* Whether the application may still act on req. */
static bool req_live(const struct http_req *req)
{
    return req && !req->conn->closed && !req->aborting && req->resp != RESP_DONE;
}

/* The application takes the body: say 100 Continue if the client waits for it, start reading. */
static void req_accept_body(struct http_req *req)
{
    struct conn *conn = req->conn;
    if (req->body_done) {
        req->end_pending = true;
    } else {
        if (req->expect_continue && !req->continue_sent && req->resp == RESP_NONE) {
            out_add(conn, "HTTP/1.1 100 Continue\r\n\r\n", 25);
            req->continue_sent = true;
        }
        conn_set_read_timeout(conn, true);
    }
    conn_kick(conn);
}

void http_req_read_body(struct http_req *req, http_body_data_cb on_data, http_body_end_cb on_end,
                        void *ctx)
{
    if (!req_live(req) || req->body_mode != BODY_UNDECIDED || !on_data)
        return;
    req->body_mode = BODY_READ;
    req->on_data = on_data;
    req->on_end = on_end;
    req->body_ctx = ctx;
    req_accept_body(req);
}

void http_req_pause_body(struct http_req *req)
{
    if (!req_live(req) || req->body_paused)
        return;
    req->body_paused = true;
    conn_read_enable(req->conn, false);
}

void http_req_resume_body(struct http_req *req)
{
    if (!req_live(req) || !req->body_paused)
        return;
    req->body_paused = false;
    conn_read_enable(req->conn, true);
    conn_kick(req->conn);
}

/* Answers 413 for a body over the http_req_buffer_body limit, then closes. */
static void reject_body(struct http_req *req)
{
    struct conn *conn = req->conn;
    req->body_mode = BODY_STOPPED;
    req->must_close = true;
    buf_free(&req->body);
    conn_set_read_timeout(conn, false);
    /* The buffered-body callback will never run: the abort callback releases its context. */
    http_abort_cb abort_cb = req->on_abort;
    req->on_abort = NULL;
    if (abort_cb)
        abort_cb(req, req->abort_ctx);
    answer_error(req, 413);
}

void http_req_buffer_body(struct http_req *req, size_t max, http_body_buffered_cb cb, void *ctx)
{
    if (!req_live(req) || req->body_mode != BODY_UNDECIDED || !cb)
        return;
    req->body_mode = BODY_BUFFER;
    req->on_buffered = cb;
    req->body_ctx = ctx;
    buf_init(&req->body, max);
    if (req->content_length > 0 && (uint64_t)req->content_length > max) {
        reject_body(req);
        return;
    }
    req_accept_body(req);
}

/* ---- responses ---- */

/* Checks the response may begin now; a missing http_resp_start means 200. */
static bool resp_begin(struct http_req *req)
{
    if (!req_live(req))
        return false;
    if (req->resp != RESP_NONE && req->resp != RESP_STARTED) {
        log_error("http: response already sent for %s %s", http_req_method_str(req),
                  http_req_path(req));
        return false;
    }
    return true;
}

static bool resp_must_close(const struct http_req *req)
{
    const struct conn *conn = req->conn;
    if (conn->eof || !req->keep_alive || req->must_close || conn->srv->freeing ||
        conn->srv->draining)
        return true;
    if (!req->body_done) {
        /* the unread rest of the body must be read and dropped, or the connection closed */
        if (req->body_mode == BODY_STOPPED || (req->expect_continue && !req->continue_sent))
            return true;
        if (http_req_has_body(req) &&
            (req->chunked || conn->parser.content_length > HTTP_DISCARD_MAX))
            return true;
    }
    return false;
}

static char *put_bytes(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do
        tmp[n++] = (char)('0' + v % 10);
    while ((v /= 10) != 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

#define PUT_LIT(p, lit) put_bytes(p, lit, sizeof(lit) - 1)

/*
 * Queues the status line and headers, and body bytes when given, as one piece of the output:
 * a small answer leaves in one write from one buffer. content_length < 0 and !chunked: no
 * length header.
 */
static void resp_write_head(struct http_req *req, int64_t content_length, bool chunked,
                            const void *body, size_t body_len)
{
    struct conn *conn = req->conn;
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    if (!req->close_after)
        req->close_after = resp_must_close(req);
    const char *reason = reason_phrase(req->status);
    const char *date = http_date(conn->srv);
    size_t reason_len = strlen(reason), date_len = strlen(date);
    /* "HTTP/1.1 200 " reason CRLF "Date: " date CRLF, headers, framing, connection, CRLF */
    size_t need = 13 + reason_len + 2 + 6 + date_len + 2 + req->hbuf.len + 48 + 24 + 2 + body_len;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)need, &v, 1) != 1 || v.iov_len < need) {
        log_error("http: out of memory for the response to %s", http_req_path(req));
        return;
    }
    char *p = v.iov_base;
    req->out_head = conn->out_added;
    req->head_queued = true;
    p = PUT_LIT(p, "HTTP/1.1 ");
    p = put_u64(p, (uint64_t)req->status);
    *p++ = ' ';
    p = put_bytes(p, reason, reason_len);
    p = PUT_LIT(p, "\r\nDate: ");
    p = put_bytes(p, date, date_len);
    p = PUT_LIT(p, "\r\n");
    if (req->hbuf.len > 0)
        p = put_bytes(p, req->hbuf.p, req->hbuf.len);
    if (chunked) {
        p = PUT_LIT(p, "Transfer-Encoding: chunked\r\n");
    } else if (content_length >= 0) {
        p = PUT_LIT(p, "Content-Length: ");
        p = put_u64(p, (uint64_t)content_length);
        p = PUT_LIT(p, "\r\n");
    }
    if (req->close_after)
        p = PUT_LIT(p, "Connection: close\r\n");
    else if (req->http10)
        p = PUT_LIT(p, "Connection: keep-alive\r\n");
    p = PUT_LIT(p, "\r\n");
    req->out_body = req->out_head + (uint64_t)(p - (char *)v.iov_base);
    if (body && body_len > 0)
        p = put_bytes(p, body, body_len);
    v.iov_len = (size_t)(p - (char *)v.iov_base);
    evbuffer_commit_space(out, &v, 1);
    conn->out_added += v.iov_len;
}

/* The whole response is queued: log it, then go on with the connection. May free req. */
static void resp_complete(struct http_req *req)
{
    struct conn *conn = req->conn;
    req->resp = RESP_DONE;
    req->on_writable = NULL;
    access_log(req, false);
    if (req->body_done) {
        bool close = req->close_after;
        req_finish(req);
        if (close)
            conn_close_after_flush(conn);
        return;
    }
    if (req->close_after) {
        req->body_mode = BODY_STOPPED;
        conn_close_after_flush(conn);
        return;
    }
    /* answered before the (small) body was read: read and drop it, then the next request */
    req->body_mode = BODY_DISCARD;
    req->body_paused = false;
    buf_free(&req->body);
    conn_read_enable(conn, true);
    conn_set_read_timeout(conn, true);
    conn_kick(conn);
}

void http_resp_start(struct http_req *req, int status)
{
    if (!resp_begin(req))
        return;
    if (status < 200 || status > 999) {
        log_error("http: invalid response status %d", status);
        status = 500;
    }
    req->status = status;
    req->resp = RESP_STARTED;
}

static bool is_tchar(unsigned char c)
{
    if (c <= ' ' || c >= 127)
        return false;
    switch (c) {
    case '(':
    case ')':
    case '<':
    case '>':
    case '@':
    case ',':
    case ';':
    case ':':
    case '\\':
    case '"':
    case '/':
    case '[':
    case ']':
    case '?':
    case '=':
    case '{':
    case '}':
        return false;
    default:
        return true;
    }
}

/* The length of name when it is an HTTP token, else 0. */
static size_t token_len(const char *name)
{
    size_t n = 0;
    while (name[n] && is_tchar((unsigned char)name[n]))
        n++;
    return name[n] ? 0 : n;
}

/* Content-Length, Transfer-Encoding and Connection: the framing is the server's. */
static bool is_framing(const char *name)
{
    switch (name[0]) {
    case 'C':
    case 'c':
        return strcasecmp(name, "Content-Length") == 0 || strcasecmp(name, "Connection") == 0;
    case 'T':
    case 't':
        return strcasecmp(name, "Transfer-Encoding") == 0;
    default:
        return false;
    }
}

void http_resp_header(struct http_req *req, const char *name, const char *value)
{
    if (!resp_begin(req))
        return;
    /* CR or LF in a value would split the header */
    size_t name_len = token_len(name), value_len = strcspn(value, "\r\n");
    if (name_len == 0 || value[value_len] != '\0' || is_framing(name)) {
        log_warn("http: response header %s dropped", name);
        return;
    }
    size_t len = name_len + value_len + 4;
    enum buf_rc rc = buf_reserve(
        &req->hbuf, !req->hbuf.p && len < HTTP_RESP_HEADERS_FIRST ? HTTP_RESP_HEADERS_FIRST : len);
    if (rc == BUF_TOO_BIG) {
        log_warn("http: response headers too large, %s dropped", name);
        return;
    }
    if (rc != BUF_OK)
        return;
    char *p = req->hbuf.p + req->hbuf.len;
    p = put_bytes(p, name, name_len);
    p = PUT_LIT(p, ": ");
    p = put_bytes(p, value, value_len);
    p = PUT_LIT(p, "\r\n");
    buf_commit(&req->hbuf, (size_t)(p - (req->hbuf.p + req->hbuf.len)));
}

void http_resp_headerf(struct http_req *req, const char *name, const char *fmt, ...)
{
    char small[512];
    char *value = small;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(small)) {
        if (n > HTTP_MAX_RESP_HEADER_BYTES || !(value = malloc((size_t)n + 1)))
            goto out;
        va_start(ap, fmt);
        vsnprintf(value, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    http_resp_header(req, name, value);
out:
    if (value != small)
        free(value);
}

void http_resp_body_mem(struct http_req *req, const void *data, size_t len)
{
    if (!resp_begin(req))
        return;
    bool send = !req->is_head && len > 0;
    resp_write_head(req, (int64_t)len, false, send ? data : NULL, send ? len : 0);
    if (send)
        req->sent = len;
    resp_complete(req);
}

/*
 * Refills the output of a TLS connection from req->file_fd (see http_resp_body_file): at
 * most about HTTP_WRITE_LOW + HTTP_FILE_PIECE bytes are ever queued. Completes the response
 * after the last piece; a read error cuts the connection (the client sees a short body).
 */
static void file_pump(struct http_req *req, void *ctx)
{
    struct evbuffer *out = bufferevent_get_output(req->conn->bev);
    while (req->file_left > 0 && evbuffer_get_length(out) < HTTP_WRITE_LOW) {
        size_t want = req->file_left < HTTP_FILE_PIECE ? (size_t)req->file_left : HTTP_FILE_PIECE;
        struct evbuffer_iovec v;
        if (evbuffer_reserve_space(out, (ev_ssize_t)want, &v, 1) < 1)
            goto fail;
        ssize_t n;
        do
            n = pread(req->file_fd, v.iov_base, want, req->file_off);
        while (n < 0 && errno == EINTR);
        if (n <= 0) {
            log_error("http: cannot read the file for %s: %s", http_req_path(req),
                      n == 0 ? "unexpected end of file" : strerror(errno));
            goto fail;
        }
        v.iov_len = (size_t)n;
        evbuffer_commit_space(out, &v, 1);
        req->conn->out_added += (uint64_t)n;
        req->file_off += n;
        req->file_left -= n;
        req->sent += (uint64_t)n;
    }
    if (req->file_left == 0) {
        close(req->file_fd);
        req->file_fd = -1;
        resp_complete(req);
    }
    return;
fail:
    http_resp_stream_abort(req);
}

void http_resp_body_file(struct http_req *req, int fd, off_t off, off_t len)
{
    if (!resp_begin(req)) {
        close(fd);
        return;
    }
    if (off < 0 || len < 0) {
        log_error("http: invalid file range for %s", http_req_path(req));
        close(fd);
        http_resp_stream_abort(req);
        return;
    }
    if (req->conn->plain && !req->is_head && len >= HTTP_CORK_MIN)
        conn_cork(req->conn, true);
    resp_write_head(req, (int64_t)len, false, NULL, 0);
    if (req->is_head || len == 0) {
        close(fd);
    } else if (!req->conn->plain) {
        /*
         * evbuffer_add_file on a buffer that is not written straight to a socket (TLS) maps
         * the whole range into memory, so RSS would grow with the file: stream it instead in
         * bounded pieces. The application is done with req, so its abort callback must not run.
         */
        req->file_fd = fd;
        req->file_off = off;
        req->file_left = len;
        req->on_abort = NULL;
        req->on_writable = file_pump;
        req->wr_ctx = NULL;
        req->resp = RESP_STREAMING;
        conn_kick(req->conn);
        return;
    } else if (out_add_file(req->conn, fd, off, len) < 0) {
        log_error("http: cannot queue file for %s", http_req_path(req));
        http_resp_stream_abort(req);
        return;
    } else {
        req->sent = (uint64_t)len;
    }
    resp_complete(req);
}

void http_resp_no_body(struct http_req *req, int64_t content_length)
{
    if (!resp_begin(req))
        return;
    bool bodiless = req->status == 204 || req->status == 304 || req->status < 200;
    resp_write_head(req, content_length >= 0 ? content_length : (bodiless ? -1 : 0), false, NULL,
                    0);
    resp_complete(req);
}

void http_resp_stream_begin(struct http_req *req, int64_t content_length, http_writable_cb cb,
                            void *ctx)
{
    if (!resp_begin(req))
        return;
    req->on_writable = cb;
    req->wr_ctx = ctx;
    req->out_left = content_length;
    if (content_length < 0 && req->http10) {
        /* HTTP/1.0 has no chunked encoding: the end of the connection ends the body */
        req->raw_out = true;
        req->close_after = true;
    } else if (content_length < 0) {
        req->chunked_out = true;
    }
    resp_write_head(req, content_length, req->chunked_out, NULL, 0);
    req->resp = RESP_STREAMING;
    conn_kick(req->conn);
}

static bool stream_live(const struct http_req *req)
{
    return req_live(req) && req->resp == RESP_STREAMING;
}

/*
 * Accounts n body bytes against a Content-Length stream. Returns how many to queue now; the
 * last byte of the body is held back until stream_end (*hold), so that an aborted stream can
 * never look complete. -1 when the application writes past the length.
 */
static int64_t stream_account(struct http_req *req, int64_t n, bool *hold)
{
    *hold = false;
    if (req->chunked_out || req->raw_out)
        return n;
    if (n > req->out_left)
        return -1;
    req->out_left -= n;
    if (req->out_left == 0 && n > 0) {
        *hold = true;
        return n - 1;
    }
    return n;
}

void http_resp_stream_write(struct http_req *req, const void *data, size_t len)
{
    if (!stream_live(req) || len == 0)
        return;
    if (req->is_head)
        return;
    bool hold;
    int64_t now = stream_account(req, (int64_t)len, &hold);
    if (now < 0) {
        log_error("http: stream for %s exceeds its Content-Length", http_req_path(req));
        http_resp_stream_abort(req);
        return;
    }
    if (req->chunked_out)
        out_chunk_size(req->conn, len);
    out_add(req->conn, data, (size_t)now);
    if (req->chunked_out)
        out_add(req->conn, "\r\n", 2);
    if (hold) {
        req->held = ((const char *)data)[len - 1];
        req->has_held = true;
    }
    req->sent += len;
}

void http_resp_stream_file(struct http_req *req, int fd, off_t off, off_t len)
{
    if (!stream_live(req) || req->is_head || len <= 0 || off < 0) {
        close(fd);
        if (stream_live(req) && (len < 0 || off < 0))
            http_resp_stream_abort(req);
        return;
    }
    bool hold;
    int64_t now = stream_account(req, (int64_t)len, &hold);
    if (now < 0)
        goto fail;
    if (hold && pread(fd, &req->held, 1, off + len - 1) != 1)
        goto fail;
    if (req->chunked_out)
        out_chunk_size(req->conn, (uint64_t)len);
    if (now > 0) {
        if (out_add_file(req->conn, fd, off, now) < 0)
            goto fail;
    } else {
        close(fd);
    }
    if (req->chunked_out)
        out_add(req->conn, "\r\n", 2);
    req->has_held = hold;
    req->sent += (uint64_t)len;
    return;
fail:
    log_error("http: cannot stream file range for %s", http_req_path(req));
    close(fd);
    http_resp_stream_abort(req);
}

size_t http_resp_stream_pending(const struct http_req *req)
{
    if (!req || req->conn->closed)
        return 0;
    return conn_output_len(req->conn);
}

void http_resp_stream_end(struct http_req *req)
{
    if (!stream_live(req))
        return;
    if (!req->is_head && !req->chunked_out && !req->raw_out && req->out_left > 0) {
        log_error("http: stream for %s ended %lld bytes short", http_req_path(req),
                  (long long)req->out_left);
        http_resp_stream_abort(req);
        return;
    }
    if (req->has_held)
        out_add(req->conn, &req->held, 1);
    if (req->chunked_out && !req->is_head)
        out_add(req->conn, "0\r\n\r\n", 5);
    resp_complete(req);
}

/* Drops the output from offset keep on (it holds nothing but this answer), uncounted. */
static bool conn_truncate_output(struct conn *conn, size_t keep)
{
    struct evbuffer *out = bufferevent_get_output(conn->bev);
    struct evbuffer *front = keep > 0 ? evbuffer_new() : NULL;
    if (keep > 0 && !front)
        return false;
    conn->retracting = true;
    /* a socket bufferevent keeps its output's start frozen outside its own writes */
    if (conn->plain)
        evbuffer_unfreeze(out, 1);
    if (front)
        evbuffer_remove_buffer(out, front, keep);
    evbuffer_drain(out, evbuffer_get_length(out));
    if (front) {
        evbuffer_add_buffer(out, front);
        evbuffer_free(front);
    }
    if (conn->plain)
        evbuffer_freeze(out, 1);
    conn->retracting = false;
    return true;
}

bool http_resp_retract(struct http_req *req)
{
    if (!stream_live(req) || !req->head_queued || req->file_fd >= 0)
        return false;
    struct conn *conn = req->conn;
    uint64_t answer = conn->out_added - req->out_head; /* the tail of the output */
    size_t queued = conn_output_len(conn);
    if (queued < answer || !conn_truncate_output(conn, queued - (size_t)answer))
        return false;
    conn->out_added = req->out_head;
    conn_cork(conn, false);
    buf_free(&req->hbuf);
    req->hbuf = BUF_INIT(HTTP_MAX_RESP_HEADER_BYTES);
    req->resp = RESP_NONE;
    req->status = 200;
    req->close_after = req->chunked_out = req->raw_out = req->has_held = false;
    req->head_queued = false;
    req->out_left = 0;
    req->sent = 0;
    req->on_writable = NULL;
    req->wr_ctx = NULL;
    return true;
}

void http_resp_stream_abort(struct http_req *req)
{
    if (!req_live(req))
        return;
    struct conn *conn = req->conn;
    req->resp = RESP_DONE;
    access_log(req, true);
    conn_close(conn);
}
