#include "httpc.h"

#include <curl/curl.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"

#ifndef REGMIRROR_VERSION
#define REGMIRROR_VERSION "dev"
#endif

#define DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define DEFAULT_LOW_SPEED_TIME_S 60L
#define MAX_REDIRECTS 5L
/* Idle connections curl keeps for reuse across all hosts. */
#define POOL_SIZE 64L
/*
 * curl's receive buffer for GETs whose body the caller takes (blobs): one recv() and one
 * poll() per buffer instead of per 16 KiB, and curl reads on while the socket has more. It is
 * fixed for a transfer, so it stays modest: many slow transfers each hold one.
 */
#define BODY_BUFFER_SIZE (64L * 1024)
/*
 * curl hands the body over in 16 KiB pieces, so these requests gather them and pass them on
 * once per loop event: the caller writes a blob spool in large pieces. The gathering buffer
 * starts at GATHER_MIN and doubles, up to GATHER_MAX, each time one loop event brought more
 * than it holds (a fast transfer), as long as all requests' gathering buffers together stay
 * within GATHER_BUDGET; a slow transfer keeps the small one.
 */
#define GATHER_MIN (16u * 1024)
#define GATHER_MAX (512u * 1024)
#define GATHER_BUDGET (16u * 1024 * 1024)

/*
 * A request's life: PENDING (created, waiting for the loop to add it to curl), RUNNING (in the
 * multi handle), DEAD (finished or cancelled; no callback will run; freed by the loop).
 */
enum req_state { REQ_PENDING, REQ_RUNNING, REQ_DEAD };

struct header_line {
    char *name; /* one allocation holding "name\0value\0"; value points inside it */
    char *value;
};

struct httpc_headers {
    struct header_line *v;
    size_t n, cap;
    size_t bytes; /* header bytes of the current response, for HTTPC_HEADERS_MAX */
};

struct httpc_req {
    struct httpc *c;
    struct httpc_req *prev, *next; /* c->reqs */
    CURL *easy;
    struct curl_slist *hdrs;
    struct httpc_callbacks cb;
    void *ctx;
    bool follow;
    enum req_state state;
    bool in_multi;
    bool headers_dispatched;  /* on_headers ran (or would have): later header lines are trailers */
    bool paused;              /* the caller wants no on_data now */
    bool curl_paused;         /* curl holds bytes we declined; a resume must unpause curl */
    enum httpc_result forced; /* a reason decided in a callback, beats curl's result code */
    /* Gathered body bytes not yet passed to on_data (gather: this request gathers; acc is
     * allocated with the first bytes). */
    bool gather;
    struct buf acc;    /* capped at GATHER_MAX; grows only within GATHER_BUDGET */
    bool done_pending; /* curl finished while gathered bytes wait for a resume */
    CURLcode done_code;
    struct httpc_headers headers;
    char errbuf[CURL_ERROR_SIZE];
};

struct httpc {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct event *work; /* deferred adds, resumes and frees, run from a clean stack */
    struct httpc_req *reqs;
    size_t gathered; /* sum of the requests' acc.cap, within GATHER_BUDGET */
};

/* The per-socket event curl asked us to watch. */
struct sock_watch {
    struct event ev;
};

const char *httpc_result_name(enum httpc_result res)
{
    switch (res) {
    case HTTPC_OK:
        return "ok";
    case HTTPC_ABORTED:
        return "aborted";
    case HTTPC_ERR_CONNECT:
        return "connect";
    case HTTPC_ERR_TIMEOUT:
        return "timeout";
    case HTTPC_ERR_TRANSFER:
        return "transfer";
    case HTTPC_ERR_TOO_LARGE:
        return "too-large";
    case HTTPC_ERR_INTERNAL:
        return "internal";
    }
    return "unknown";
}

/* ---- headers ---- */

static void headers_clear(struct httpc_headers *h)
{
    for (size_t i = 0; i < h->n; i++)
        free(h->v[i].name);
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
    h->bytes = 0;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Appends one "Name: value" line (no CRLF). Lines without a colon are ignored. */
static int headers_add(struct httpc_headers *h, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return 0;
    size_t nlen = (size_t)(colon - line);
    const char *val = colon + 1, *end = line + len;
    while (val < end && is_ows(*val))
        val++;
    while (end > val && is_ows(end[-1]))
        end--;
    size_t vlen = (size_t)(end - val);

    if (buf_grow_items(&h->v, &h->cap, h->n + 1, sizeof(*h->v), HTTPC_HEADER_LINES_MAX) != BUF_OK)
        return -1;
    char *mem = malloc(nlen + vlen + 2);
    if (!mem)
        return -1;
    memcpy(mem, line, nlen);
    mem[nlen] = '\0';
    memcpy(mem + nlen + 1, val, vlen);
    mem[nlen + 1 + vlen] = '\0';
    h->v[h->n].name = mem;
    h->v[h->n].value = mem + nlen + 1;
    h->n++;
    return 0;
}

/* An obs-fold continuation line: joined to the previous value with one space. */
static int headers_continue(struct httpc_headers *h, const char *line, size_t len)
{
    if (h->n == 0)
        return 0;
    while (len > 0 && is_ows(*line)) {
        line++;
        len--;
    }
    while (len > 0 && is_ows(line[len - 1]))
        len--;
    struct header_line *last = &h->v[h->n - 1];
    size_t nlen = strlen(last->name), vlen = strlen(last->value);
    char *mem = realloc(last->name, nlen + 1 + vlen + 1 + len + 1);
    if (!mem)
        return -1;
    char *v = mem + nlen + 1;
    v[vlen] = ' ';
    memcpy(v + vlen + 1, line, len);
    v[vlen + 1 + len] = '\0';
    last->name = mem;
    last->value = v;
    return 0;
}

const char *httpc_header_next(const struct httpc_headers *h, const char *name, size_t *pos)
{
    for (size_t i = *pos; i < h->n; i++) {
        if (strcasecmp(h->v[i].name, name) == 0) {
            *pos = i + 1;
            return h->v[i].value;
        }
    }
    *pos = h->n;
    return NULL;
}

const char *httpc_header_get(const struct httpc_headers *h, const char *name)
{
    size_t pos = 0;
    return httpc_header_next(h, name, &pos);
}

size_t httpc_header_count(const struct httpc_headers *h)
{
    return h->n;
}

void httpc_header_at(const struct httpc_headers *h, size_t i, const char **name, const char **value)
{
    *name = h->v[i].name;
    *value = h->v[i].value;
}

/* ---- the deferred work queue ---- */

static void schedule_work(struct httpc *c)
{
    event_active(c->work, 0, 0);
}

static void req_free(struct httpc_req *r)
{
    struct httpc *c = r->c;
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next;
    if (r->next)
        r->next->prev = r->prev;
    if (r->in_multi)
        curl_multi_remove_handle(c->multi, r->easy);
    curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->hdrs);
    headers_clear(&r->headers);
    c->gathered -= r->acc.cap;
    buf_free(&r->acc);
    free(r);
}

static enum httpc_result map_result(const struct httpc_req *r, CURLcode code);
static const char *result_message(struct httpc_req *r, enum httpc_result res, CURLcode code);

/* The request is over: nothing more runs for it but on_done, and the loop frees it. */
static void req_report_done(struct httpc_req *r, CURLcode code)
{
    enum httpc_result res = map_result(r, code);
    r->state = REQ_DEAD;
    schedule_work(r->c);
    if (r->cb.on_done)
        r->cb.on_done(r, r->ctx, res, result_message(r, res, code));
}

/*
 * Passes the gathered bytes to on_data. Afterwards acc is empty unless the caller declined
 * them (HTTPC_PAUSE: r->paused is set and they come again after httpc_resume). A refusal
 * sets r->forced; the request may be dead (cancelled from on_data).
 */
static void acc_deliver(struct httpc_req *r)
{
    if (r->acc.len == 0 || r->paused || r->state == REQ_DEAD)
        return;
    int rc = r->cb.on_data(r, r->ctx, r->acc.p, r->acc.len);
    if (r->state == REQ_DEAD)
        return;
    if (rc == HTTPC_PAUSE) {
        r->paused = true;
        return;
    }
    buf_clear(&r->acc);
    if (rc != 0)
        r->forced = HTTPC_ABORTED;
}

/*
 * Outside curl callbacks: hands over what a request gathered. A refusal ends the transfer
 * here (curl would only notice at its next write); a transfer curl already finished is
 * reported once its last bytes are taken.
 */
static void acc_flush(struct httpc_req *r)
{
    if (r->state != REQ_RUNNING)
        return;
    acc_deliver(r);
    if (r->state != REQ_RUNNING)
        return;
    if (r->forced == HTTPC_ABORTED)
        req_report_done(r, CURLE_WRITE_ERROR);
    else if (r->done_pending && r->acc.len == 0)
        req_report_done(r, r->done_code);
}

/* Passes on the bytes gathered during curl's last call, for every request that has some. */
static void flush_all(struct httpc *c)
{
    /* Callbacks only set flags or add requests at the head: the walk stays valid. */
    for (struct httpc_req *r = c->reqs; r; r = r->next) {
        if (r->acc.len > 0 && !r->paused)
            acc_flush(r);
    }
}

/* httpc_resume's work: gathered bytes first, then curl's held ones. */
static void resume_gathered(struct httpc_req *r)
{
    if (r->acc.len > 0 || r->done_pending) {
        acc_flush(r);
        if (r->state != REQ_RUNNING || r->paused || r->done_pending)
            return;
    }
    if (r->curl_paused) {
        /* curl may hand the held bytes to write_cb right here. */
        r->curl_paused = false;
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
        acc_flush(r);
    }
}

/*
 * Runs on its own loop turn, never inside a curl callback, so it may add and remove easy
 * handles (curl forbids both from inside its callbacks) and unpause. Callbacks run by the
 * unpause only set flags on requests, so the walk stays valid: only this function unlinks.
 */
static void work_cb(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *c = arg;
    struct httpc_req *r = c->reqs, *next;

    for (; r; r = next) {
        next = r->next;
        if (r->state == REQ_DEAD) {
            req_free(r);
        } else if (r->state == REQ_PENDING) {
            if (curl_multi_add_handle(c->multi, r->easy) == CURLM_OK) {
                r->in_multi = true;
                r->state = REQ_RUNNING;
            } else {
                r->state = REQ_DEAD;
                if (r->cb.on_done)
                    r->cb.on_done(r, r->ctx, HTTPC_ERR_INTERNAL, "curl refused the transfer");
                schedule_work(c);
            }
        } else if (!r->paused) {
            resume_gathered(r);
        }
    }
}

/* ---- curl callbacks ---- */

static bool will_follow(const struct httpc_req *r, long status)
{
    if (!r->follow)
        return false;
    if (status != 301 && status != 302 && status != 303 && status != 307 && status != 308)
        return false;
    return httpc_header_get(&r->headers, "Location") != NULL;
}

/* The blank line after a header block: hand over the final answer's headers. */
static size_t headers_end(struct httpc_req *r, size_t len)
{
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (status < 200 || will_follow(r, status)) {
        /* A 1xx or a redirect curl follows: the real answer comes next. */
        headers_clear(&r->headers);
        return len;
    }
    r->headers_dispatched = true;
    if (!r->cb.on_headers)
        return len;
    int rc = r->cb.on_headers(r, r->ctx, status, &r->headers);
    if (r->state == REQ_DEAD)
        return 0;
    if (rc != 0) {
        r->forced = HTTPC_ABORTED;
        return 0;
    }
    return len;
}

static size_t header_cb(char *buf, size_t size, size_t n, void *arg)
{
    struct httpc_req *r = arg;
    size_t len = size * n, l = len;

    if (r->state == REQ_DEAD)
        return 0;
    if (r->headers_dispatched)
        return len; /* trailers: nobody here needs them */
    if (len >= 5 && memcmp(buf, "HTTP/", 5) == 0) {
        headers_clear(&r->headers); /* a new response (after a 1xx or a redirect) */
        r->headers.bytes = len;
        return len;
    }
    r->headers.bytes += len;
    if (r->headers.bytes > HTTPC_HEADERS_MAX) {
        r->forced = HTTPC_ERR_TOO_LARGE;
        return 0;
    }
    while (l > 0 && (buf[l - 1] == '\n' || buf[l - 1] == '\r'))
        l--;
    if (l == 0)
        return headers_end(r, len);
    if (r->headers.n >= HTTPC_HEADER_LINES_MAX) {
        r->forced = HTTPC_ERR_TOO_LARGE;
        return 0;
    }
    int rc =
        is_ows(buf[0]) ? headers_continue(&r->headers, buf, l) : headers_add(&r->headers, buf, l);
    if (rc != 0) {
        r->forced = HTTPC_ERR_INTERNAL;
        return 0;
    }
    return len;
}

/*
 * The gathering buffer is full within one loop event: double it when the budget allows (the
 * first call allocates GATHER_MIN). On failure it stays as it is; the bytes are then passed
 * on in smaller pieces.
 */
static void acc_grow(struct httpc_req *r)
{
    struct httpc *c = r->c;
    size_t cap = r->acc.cap;
    size_t ncap = cap ? cap * 2 : GATHER_MIN;
    if (c->gathered - cap + ncap > GATHER_BUDGET ||
        buf_reserve_exact(&r->acc, ncap - r->acc.len) != BUF_OK)
        return;
    c->gathered += r->acc.cap - cap;
}

static size_t write_cb(char *data, size_t size, size_t n, void *arg)
{
    struct httpc_req *r = arg;
    size_t len = size * n;

    if (r->state == REQ_DEAD)
        return 0;
    if (!r->headers_dispatched || !r->cb.on_data)
        return len;
    if (r->paused) {
        r->curl_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (r->gather) {
        if (r->acc.len + len > r->acc.cap)
            acc_grow(r);
        if (r->acc.len + len > r->acc.cap) {
            acc_deliver(r);
            if (r->state == REQ_DEAD || r->forced == HTTPC_ABORTED)
                return 0;
            if (r->paused) {
                r->curl_paused = true;
                return CURL_WRITEFUNC_PAUSE;
            }
        }
        if (len <= r->acc.cap - r->acc.len) {
            memcpy(r->acc.p + r->acc.len, data, len);
            buf_commit(&r->acc, len);
            return len;
        }
    }
    int rc = r->cb.on_data(r, r->ctx, data, len);
    if (r->state == REQ_DEAD)
        return 0;
    if (rc == HTTPC_PAUSE) {
        r->paused = true;
        r->curl_paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc != 0) {
        r->forced = HTTPC_ABORTED;
        return 0;
    }
    return len;
}

static enum httpc_result map_result(const struct httpc_req *r, CURLcode code)
{
    if (r->forced != HTTPC_OK)
        return r->forced;
    switch (code) {
    case CURLE_OK:
        return HTTPC_OK;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
        return HTTPC_ERR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return HTTPC_ERR_TIMEOUT;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_OUT_OF_MEMORY:
    case CURLE_BAD_FUNCTION_ARGUMENT:
        return HTTPC_ERR_INTERNAL;
    default:
        return HTTPC_ERR_TRANSFER;
    }
}

static const char *result_message(struct httpc_req *r, enum httpc_result res, CURLcode code)
{
    switch (res) {
    case HTTPC_OK:
        return "";
    case HTTPC_ABORTED:
        return "stopped by the caller";
    case HTTPC_ERR_TOO_LARGE:
        return "response headers over the limit";
    default:
        break;
    }
    if (r->forced == HTTPC_ERR_INTERNAL)
        return "out of memory";
    return r->errbuf[0] ? r->errbuf : curl_easy_strerror(code);
}

/* Reports finished transfers. Runs after curl_multi_socket_action, outside curl callbacks. */
static void check_done(struct httpc *c)
{
    CURLMsg *msg;
    int left;

    while ((msg = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        struct httpc_req *r = (struct httpc_req *)priv;
        if (!r || r->state == REQ_DEAD)
            continue; /* cancelled: the work queue frees it */
        if (r->acc.len > 0) {
            /* the body's last bytes go first; a paused caller gets them (and the end) later */
            r->done_pending = true;
            r->done_code = msg->data.result;
            acc_flush(r);
            continue;
        }
        req_report_done(r, msg->data.result);
    }
}

static void socket_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *c = arg;
    int action =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    int running;

    curl_multi_socket_action(c->multi, fd, action, &running);
    flush_all(c);
    check_done(c);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    struct httpc *c = arg;
    int running;

    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    flush_all(c);
    check_done(c);
}

/* CURLMOPT_SOCKETFUNCTION: curl says which events it wants on a socket. */
static int socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct httpc *c = userp;
    struct sock_watch *w = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (w) {
            event_del(&w->ev);
            free(w);
            curl_multi_assign(c->multi, s, NULL);
        }
        return 0;
    }
    if (!w) {
        w = calloc(1, sizeof(*w));
        if (!w)
            return -1;
        curl_multi_assign(c->multi, s, w);
    } else {
        event_del(&w->ev);
    }
    short flags = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                  ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (event_assign(&w->ev, c->base, s, flags, socket_event_cb, c) != 0 ||
        event_add(&w->ev, NULL) != 0)
        return -1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants socket_action(TIMEOUT) after timeout_ms (-1: never). */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct httpc *c = userp;

    if (timeout_ms < 0)
        return event_del(c->timer);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv);
}

/* ---- public ---- */

struct httpc *httpc_new(struct event_base *base)
{
    struct httpc *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->base = base;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(c);
        return NULL;
    }
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, timer_event_cb, c);
    c->work = event_new(base, -1, 0, work_cb, c);
    if (!c->multi || !c->timer || !c->work)
        goto fail;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, POOL_SIZE);
    return c;
fail:
    httpc_free(c);
    return NULL;
}

void httpc_free(struct httpc *c)
{
    if (!c)
        return;
    struct httpc_req *r = c->reqs, *next;
    for (; r; r = next) {
        next = r->next;
        req_free(r);
    }
    /* Cleanup closes pooled connections; curl reports their sockets to socket_cb first. */
    if (c->multi)
        curl_multi_cleanup(c->multi);
    if (c->timer)
        event_free(c->timer);
    if (c->work)
        event_free(c->work);
    free(c);
    curl_global_cleanup();
}

struct event_base *httpc_base(const struct httpc *c)
{
    return c->base;
}

static bool has_header(const char *const *headers, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; headers && headers[i]; i++) {
        if (strncasecmp(headers[i], name, nlen) == 0 && headers[i][nlen] == ':')
            return true;
    }
    return false;
}

static int add_header(struct httpc_req *r, const char *line)
{
    /* A CR or LF would let a value smuggle in more header lines. */
    if (strpbrk(line, "\r\n"))
        return -1;
    struct curl_slist *l = curl_slist_append(r->hdrs, line);
    if (!l)
        return -1;
    r->hdrs = l;
    return 0;
}

static int setup_easy(struct httpc_req *r, const struct httpc_req_opts *o, bool takes_body)
{
    CURL *e = r->easy;
    const char *method = o->method ? o->method : "GET";
    int result = -1;
    CURLcode rc = CURLE_OK;

    for (size_t i = 0; o->headers && o->headers[i]; i++) {
        if (add_header(r, o->headers[i]) != 0)
            goto out;
    }
    if (o->body) {
        /* curl would otherwise add a form Content-Type and, for large bodies, wait a second
         * for "100 Continue". */
        if (!has_header(o->headers, "Content-Type") && add_header(r, "Content-Type:") != 0)
            goto out;
        if (!has_header(o->headers, "Expect") && add_header(r, "Expect:") != 0)
            goto out;
    }

    rc |= curl_easy_setopt(e, CURLOPT_URL, o->url);
    rc |= curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    rc |= curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    rc |= curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    rc |= curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    rc |= curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
    rc |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    rc |= curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Wait for an HTTP/2 connection being set up to the same host rather than open another. */
    rc |= curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    rc |= curl_easy_setopt(e, CURLOPT_USERAGENT, "regmirror/" REGMIRROR_VERSION);
    rc |= curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                           o->connect_timeout_ms > 0 ? o->connect_timeout_ms
                                                     : DEFAULT_CONNECT_TIMEOUT_MS);
    rc |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms > 0 ? o->timeout_ms : 0L);
    rc |= curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
    rc |=
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME,
                         o->low_speed_time_s > 0 ? o->low_speed_time_s : DEFAULT_LOW_SPEED_TIME_S);
    rc |= curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, o->follow_redirects ? 1L : 0L);
    rc |= curl_easy_setopt(e, CURLOPT_MAXREDIRS, MAX_REDIRECTS);
    rc |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);

    if (strcmp(method, "HEAD") == 0) {
        rc |= curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET") == 0 && !o->body) {
        rc |= curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        if (takes_body) {
            rc |= curl_easy_setopt(e, CURLOPT_BUFFERSIZE, BODY_BUFFER_SIZE);
            r->gather = true;
        }
    } else {
        if (o->body) {
            rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
            rc |= curl_easy_setopt(e, CURLOPT_POSTFIELDS, o->body);
        }
        rc |= curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    }
    if (rc == CURLE_OK)
        result = 0;
out:
    return result;
}

struct httpc_req *httpc_start(struct httpc *c, const struct httpc_req_opts *opts,
                              const struct httpc_callbacks *cb, void *ctx)
{
    struct httpc_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->c = c;
    r->cb = *cb;
    r->ctx = ctx;
    r->acc = BUF_INIT(GATHER_MAX);
    r->follow = opts->follow_redirects;
    r->state = REQ_PENDING;
    r->easy = curl_easy_init();
    if (!r->easy || setup_easy(r, opts, cb->on_data != NULL) != 0) {
        if (r->easy)
            curl_easy_cleanup(r->easy);
        curl_slist_free_all(r->hdrs);
        free(r);
        return NULL;
    }
    r->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = r;
    c->reqs = r;
    schedule_work(c);
    return r;
}

void httpc_pause(struct httpc_req *r)
{
    r->paused = true;
}

void httpc_resume(struct httpc_req *r)
{
    if (r->state == REQ_DEAD || !r->paused)
        return;
    r->paused = false;
    if (r->curl_paused || r->acc.len > 0 || r->done_pending)
        schedule_work(r->c);
}

void httpc_cancel(struct httpc_req *r)
{
    if (!r || r->state == REQ_DEAD)
        return;
    r->state = REQ_DEAD;
    schedule_work(r->c);
}
