/*
 * cache/redis: the blob-descriptor cache in Redis, hiredis async on the libevent loop.
 *
 * Key layout (registry:2's, so both can share one Redis; <p> is the optional key prefix):
 *   <p>blobs::<digest>                     hash  digest, size, mediatype   (global descriptor)
 *   <p>repository::<repo>::blobs           set   of digests linked into repo
 *   <p>repository::<repo>::blobs::<digest> hash  mediatype                 (per-repo media type)
 * Every key written gets EXPIRE ttl when a TTL is configured.
 *
 * Connections: a fixed set of slots (pool.maxactive, capped), each one pipelined hiredis
 * connection, dialled on first use. A digest always maps to the same slot, so the commands
 * about one digest (put, forget, get) reach Redis in the order they were issued. A slot is
 *   IDLE -> (RESOLVING) -> CONNECTING -> READY -> ... -> BACKOFF -> IDLE
 * RESOLVING is the DNS lookup of a host name, or asking the sentinels where the master is
 * (redis.sentinel): then the handshake ends with ROLE, and a server that is not the master, or
 * a READONLY, LOADING or MASTERDOWN answer, fails the slot so that it asks again.
 * The handshake ([AUTH] [SELECT] PING) is pipelined right after connect, and user commands
 * may follow it at once. Requests in flight sit in a FIFO with monotonic deadlines; one
 * timer per slot watches the head. A missed deadline, a failed handshake or a broken
 * connection fails the slot: the hiredis context is freed, hiredis calls every pending
 * callback with a NULL reply (each request answers -1 exactly once), and the slot waits
 * out an exponential backoff before it dials again. While a slot is down, gets on it answer
 * -1 from the loop at once, puts are dropped and forgets wait in a bounded retry list that
 * is sent first on the next connection.
 */
#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "config.h"
#include "log.h"

#define MAX_SLOTS 16
#define DEFAULT_SLOTS 4
#define DEFAULT_DIAL_MS 1000
#define DEFAULT_RW_MS 500
#define DEFAULT_MAX_PENDING 1024
#define BACKOFF_MIN_MS 50
#define BACKOFF_MAX_MS 2000
#define PREFIX_MAX 128
/* prefix + "repository::" + repo + "::blobs::" + digest, with room to spare */
#define KEY_MAX (PREFIX_MAX + CACHE_REPO_MAX + DIGEST_STR_MAX + 64)

enum slot_state { SLOT_IDLE, SLOT_RESOLVING, SLOT_CONNECTING, SLOT_READY, SLOT_BACKOFF };
enum req_kind { REQ_HANDSHAKE, REQ_GET, REQ_PUT, REQ_FORGET };

struct rcache;
struct slot;
struct req;

/* A pending cache_get, as the caller sees it. */
struct rop {
    struct cache_op base;
    cache_get_cb cb;
    void *ctx;
    struct req *req;           /* the request carrying it; NULL while on the done list */
    struct rop *dprev, *dnext; /* done list: answered -1 from the loop */
    bool on_done;
};

struct forget_item {
    struct forget_item *next;
    char *repo; /* NULL: global */
    struct digest d;
};

/* One operation sent to Redis: one or more pipelined commands with the same privdata. The
 * k-th reply callback belongs to the k-th command (Redis answers in order). */
struct req {
    struct req *prev, *next; /* slot FIFO */
    struct slot *slot;
    enum req_kind kind;
    int ncmds, nreplies;
    bool lost;        /* a NULL reply: the connection went away */
    bool failed;      /* an error reply */
    bool send_failed; /* a command could not be queued (the rest are not sent) */
    int64_t deadline;
    struct rop *op;         /* REQ_GET */
    struct forget_item *fi; /* REQ_FORGET */
    /* REQ_GET results */
    bool has_repo, bad;
    int member; /* SISMEMBER */
    int global; /* 1: descriptor parsed, 0: absent */
    struct cache_desc desc;
    char repo_mt[CACHE_MEDIA_TYPE_MAX];
    char errmsg[128];
};

/* The evdns base outlives the cache while a resolve is still pending (its callback runs
 * later even when cancelled). */
struct dns_holder {
    struct event_base *evb;
    struct evdns_base *dns;
    int pending;
    bool orphaned;
};

struct resolve {
    struct slot *slot; /* NULL once cancelled */
    struct dns_holder *h;
};

struct slot {
    struct rcache *c;
    enum slot_state state;
    redisAsyncContext *ac;
    struct event *timer; /* RESOLVING: dial deadline; CONNECTING/READY: FIFO head; BACKOFF */
    struct resolve *resolve;
    struct evdns_getaddrinfo_request *dnsreq;
    struct redis_sentinel_ask *ask; /* RESOLVING with a sentinel: where the master is */
    struct req *head, *tail;
    size_t inflight;
    struct forget_item *retry_head, *retry_tail;
    size_t nretry;
    int64_t dial_start, backoff_ms, idle_since;
};

struct rcache {
    struct cache base;
    struct event_base *evb;
    struct dns_holder *dnsh;         /* NULL for a numeric address */
    struct redis_sentinel *sentinel; /* set: the sentinels name host and port */
    char *host;
    int port;
    char *username, *password;
    char dbstr[16];
    int db;
    int64_t dial_ms, op_ms, idle_ms;
    int maxidle, nslots;
    char *prefix;
    char ttlstr[24];
    int64_t ttl_s;
    size_t max_pending;
    struct slot slots[MAX_SLOTS];
    struct event *done_ev;
    struct rop *done_head, *done_tail;
    struct event *idle_ev;
    bool freeing, down;
};

static void slot_fail(struct slot *s, const char *why);
static void slot_dial(struct slot *s, const char *ip, int port);
static void forget_send(struct slot *s, struct forget_item *fi);

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void timer_in(struct event *ev, int64_t ms)
{
    struct timeval tv;
    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)(ms % 1000) * 1000;
    evtimer_add(ev, &tv);
}

static bool digest_ok(const struct digest *d)
{
    size_t want = digest_hex_len(d->algo);
    return want && strnlen(d->hex, sizeof(d->hex)) == want;
}

static bool repo_ok(const char *repo)
{
    return !repo || (repo[0] && strnlen(repo, CACHE_REPO_MAX + 1) <= CACHE_REPO_MAX);
}

static void log_down(struct rcache *c, const char *why)
{
    if (c->freeing)
        return;
    if (!c->down) {
        c->down = true;
        log_warn("redis cache: %s:%d unavailable (%s); blob lookups fall back to storage", c->host,
                 c->port, why);
    } else {
        log_debug("redis cache: %s:%d: %s", c->host, c->port, why);
    }
}

static void log_up(struct rcache *c)
{
    if (c->down) {
        c->down = false;
        log_info("redis cache: connected to %s:%d again", c->host, c->port);
    }
}

/* ---- the done list: gets answered -1 from the loop, never inside cache_get ---- */

static void done_push(struct rcache *c, struct rop *op)
{
    op->req = NULL;
    op->on_done = true;
    op->dnext = NULL;
    op->dprev = c->done_tail;
    if (c->done_tail)
        c->done_tail->dnext = op;
    else
        c->done_head = op;
    c->done_tail = op;
    event_active(c->done_ev, EV_TIMEOUT, 1);
}

static void done_unlink(struct rcache *c, struct rop *op)
{
    if (op->dprev)
        op->dprev->dnext = op->dnext;
    else
        c->done_head = op->dnext;
    if (op->dnext)
        op->dnext->dprev = op->dprev;
    else
        c->done_tail = op->dprev;
    op->on_done = false;
}

static struct rop *done_pop(struct rcache *c)
{
    struct rop *op = c->done_head;
    c->done_head = op->dnext;
    if (c->done_head)
        c->done_head->dprev = NULL;
    else
        c->done_tail = NULL;
    op->on_done = false;
    return op;
}

/* Frees op, then calls its callback (so the callback can neither see nor cancel it). */
static void answer(struct rop *op, int found, const struct cache_desc *d)
{
    cache_get_cb cb = op->cb;
    void *ctx = op->ctx;
    free(op);
    cb(ctx, found, d);
}

static void done_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rcache *c = arg;
    size_t n = 0;
    for (struct rop *op = c->done_head; op; op = op->dnext)
        n++;
    /* only those queued before this run: a callback that asks again waits for the next */
    while (n-- > 0 && c->done_head)
        answer(done_pop(c), -1, NULL);
}

static void rop_cancel(struct cache_op *base)
{
    struct rop *op = (struct rop *)base;
    struct rcache *c = (struct rcache *)base->_cache;
    if (op->on_done)
        done_unlink(c, op);
    else if (op->req)
        op->req->op = NULL;
    free(op);
}

/* ---- forget retries ---- */

static void forget_item_free(struct forget_item *fi)
{
    if (fi) {
        free(fi->repo);
        free(fi);
    }
}

static void retry_push(struct slot *s, struct forget_item *fi)
{
    struct rcache *c = s->c;
    char buf[DIGEST_STR_MAX];
    if (c->freeing || s->nretry >= c->max_pending) {
        if (!c->freeing)
            log_error("redis cache: too many unsent forgets; %s may stay cached until its TTL",
                      digest_str(&fi->d, buf));
        forget_item_free(fi);
        return;
    }
    fi->next = NULL;
    if (s->retry_tail)
        s->retry_tail->next = fi;
    else
        s->retry_head = fi;
    s->retry_tail = fi;
    s->nretry++;
}

static void retry_flush(struct slot *s)
{
    while (s->retry_head && (s->state == SLOT_CONNECTING || s->state == SLOT_READY) &&
           s->inflight < s->c->max_pending) {
        struct forget_item *fi = s->retry_head;
        s->retry_head = fi->next;
        if (!s->retry_head)
            s->retry_tail = NULL;
        s->nretry--;
        forget_send(s, fi);
    }
}

/* ---- the slot FIFO of requests in flight ---- */

static void slot_arm(struct slot *s)
{
    if (s->state != SLOT_CONNECTING && s->state != SLOT_READY)
        return;
    if (s->head)
        timer_in(s->timer, s->head->deadline - now_ms());
    else
        evtimer_del(s->timer);
}

static void fifo_push(struct slot *s, struct req *r)
{
    r->next = NULL;
    r->prev = s->tail;
    if (s->tail)
        s->tail->next = r;
    else
        s->head = r;
    s->tail = r;
    s->inflight++;
    if (s->head == r)
        slot_arm(s);
}

static void fifo_remove(struct slot *s, struct req *r)
{
    bool was_head = s->head == r;
    if (r->prev)
        r->prev->next = r->next;
    else
        s->head = r->next;
    if (r->next)
        r->next->prev = r->prev;
    else
        s->tail = r->prev;
    s->inflight--;
    if (!s->inflight)
        s->idle_since = now_ms();
    if (was_head)
        slot_arm(s);
}

static struct req *req_new(struct slot *s, enum req_kind kind)
{
    struct req *r = calloc(1, sizeof(*r));
    if (r) {
        r->slot = s;
        r->kind = kind;
    }
    return r;
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata);

static void req_send(struct req *r, int argc, const char **argv)
{
    size_t lens[8];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (r->send_failed)
        return;
    if (redisAsyncCommandArgv(r->slot->ac, reply_cb, r, argc, argv, lens) == REDIS_OK)
        r->ncmds++;
    else
        r->send_failed = true;
}

/*
 * Puts r in flight after its commands were queued. Returns false (and frees r) when none
 * could be queued; the slot is failed then.
 */
static bool req_commit(struct req *r, int64_t deadline)
{
    struct slot *s = r->slot;
    bool send_failed = r->send_failed;
    /* hiredis refuses commands once it is tearing the connection down */
    const char *why = s->ac && (s->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))
                          ? "connection lost"
                          : "cannot queue a command";
    if (r->ncmds == 0) {
        free(r);
        slot_fail(s, why);
        return false;
    }
    /* deadlines never decrease along the FIFO, so the head's is the earliest */
    r->deadline = s->tail && s->tail->deadline > deadline ? s->tail->deadline : deadline;
    fifo_push(s, r);
    if (send_failed)
        slot_fail(s, why);
    return true;
}

/* ---- slots: connect, fail, close ---- */

static void slot_cancel_resolve(struct slot *s)
{
    struct evdns_getaddrinfo_request *q = s->dnsreq;
    if (s->resolve) {
        s->resolve->slot = NULL;
        s->resolve = NULL;
    }
    s->dnsreq = NULL;
    if (q)
        evdns_getaddrinfo_cancel(q);
    redis_sentinel_cancel(s->ask);
    s->ask = NULL;
}

/* Detaches the slot's context and frees it unless hiredis is already doing so (then we are
 * inside one of its callbacks and it frees the context when that returns). */
static void slot_drop_context(struct slot *s)
{
    redisAsyncContext *ac = s->ac;
    s->ac = NULL;
    if (!ac)
        return;
    ac->data = NULL;
    if (!(ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)))
        redisAsyncFree(ac); /* pending callbacks run now (or after the current one) with NULL */
}

static void slot_fail(struct slot *s, const char *why)
{
    struct rcache *c = s->c;
    if (s->state == SLOT_BACKOFF || c->freeing)
        return;
    log_down(c, why);
    slot_cancel_resolve(s);
    s->state = SLOT_BACKOFF;
    s->backoff_ms = s->backoff_ms ? s->backoff_ms * 2 : BACKOFF_MIN_MS;
    if (s->backoff_ms > BACKOFF_MAX_MS)
        s->backoff_ms = BACKOFF_MAX_MS;
    timer_in(s->timer, s->backoff_ms);
    slot_drop_context(s);
}

static void slot_close(struct slot *s)
{
    evtimer_del(s->timer);
    s->state = SLOT_IDLE;
    slot_drop_context(s);
}

static void dns_holder_free_cb(evutil_socket_t fd, short what, void *arg)
{
    struct dns_holder *h = arg;
    evdns_base_free(h->dns, 0);
    free(h);
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct resolve *r = arg;
    struct dns_holder *h = r->h;
    struct slot *s = r->slot;
    char ip[INET6_ADDRSTRLEN] = "";

    free(r);
    h->pending--;
    if (s) {
        s->resolve = NULL;
        s->dnsreq = NULL;
        if (result == 0 && res && res->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)res->ai_addr)->sin_addr, ip,
                      sizeof(ip));
        else if (result == 0 && res && res->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)res->ai_addr)->sin6_addr, ip,
                      sizeof(ip));
    }
    if (res)
        evutil_freeaddrinfo(res);
    if (s) {
        if (ip[0])
            slot_dial(s, ip, s->c->port);
        else
            slot_fail(s, result ? evutil_gai_strerror(result) : "no address");
    }
    if (h->orphaned && h->pending == 0) {
        struct timeval zero = {0, 0};
        event_base_once(h->evb, -1, EV_TIMEOUT, dns_holder_free_cb, h, &zero);
    }
}

static void sentinel_cb(void *ctx, const char *host, int port)
{
    struct slot *s = ctx;
    struct rcache *c = s->c;

    s->ask = NULL;
    if (!host) {
        slot_fail(s, "no sentinel named the master");
        return;
    }
    if (strcmp(c->host, host) != 0 || c->port != port) {
        char *h = strdup(host);
        if (!h) {
            slot_fail(s, "out of memory");
            return;
        }
        log_info("redis cache: the sentinels name %s:%d the master of %s", host, port,
                 redis_sentinel_mastername(c->sentinel));
        free(c->host);
        c->host = h;
        c->port = port;
    }
    s->dial_start = now_ms();
    slot_dial(s, c->host, c->port);
}

static void slot_connect(struct slot *s)
{
    struct rcache *c = s->c;
    struct evutil_addrinfo hints;
    struct resolve *r;
    struct evdns_getaddrinfo_request *q;

    s->dial_start = now_ms();
    if (c->sentinel) {
        s->ask = redis_sentinel_ask(c->sentinel, sentinel_cb, s);
        if (!s->ask) {
            slot_fail(s, "out of memory");
            return;
        }
        s->state = SLOT_RESOLVING;
        timer_in(s->timer, c->dial_ms);
        return;
    }
    if (!c->dnsh) {
        slot_dial(s, c->host, c->port);
        return;
    }
    r = calloc(1, sizeof(*r));
    if (!r) {
        slot_fail(s, "out of memory");
        return;
    }
    r->slot = s;
    r->h = c->dnsh;
    c->dnsh->pending++;
    s->resolve = r;
    s->state = SLOT_RESOLVING;
    timer_in(s->timer, c->dial_ms);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    q = evdns_getaddrinfo(c->dnsh->dns, c->host, NULL, &hints, dns_cb, r);
    /* the callback may have run already (hosts file, immediate failure) */
    if (s->resolve == r)
        s->dnsreq = q;
}

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct slot *s = ac->data;
    char why[160];
    if (!s || status == REDIS_OK)
        return;
    snprintf(why, sizeof(why), "connect: %s", ac->c.errstr[0] ? ac->c.errstr : "failed");
    /* hiredis frees the context after this returns */
    ac->data = NULL;
    s->ac = NULL;
    slot_fail(s, why);
}

static void on_disconnect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct slot *s = ac->data;
    char why[160];
    if (!s)
        return;
    snprintf(why, sizeof(why), "%s", ac->c.errstr[0] ? ac->c.errstr : "connection closed");
    ac->data = NULL;
    s->ac = NULL;
    slot_fail(s, why);
}

static void slot_dial(struct slot *s, const char *ip, int port)
{
    struct rcache *c = s->c;
    redisAsyncContext *ac = redisAsyncConnect(ip, port);
    struct req *r;
    char why[160];

    if (!ac) {
        slot_fail(s, "out of memory");
        return;
    }
    if (ac->err) {
        snprintf(why, sizeof(why), "connect: %s", ac->c.errstr);
        redisAsyncFree(ac);
        slot_fail(s, why);
        return;
    }
    if (redisLibeventAttach(ac, c->evb) != REDIS_OK) {
        redisAsyncFree(ac);
        slot_fail(s, "cannot attach to the event loop");
        return;
    }
    ac->data = s;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    s->ac = ac;
    s->state = SLOT_CONNECTING;
    evtimer_del(s->timer);

    r = req_new(s, REQ_HANDSHAKE);
    if (!r) {
        slot_fail(s, "out of memory");
        return;
    }
    if (c->password && c->username) {
        const char *argv[] = {"AUTH", c->username, c->password};
        req_send(r, 3, argv);
    } else if (c->password) {
        const char *argv[] = {"AUTH", c->password};
        req_send(r, 2, argv);
    }
    if (c->db) {
        const char *argv[] = {"SELECT", c->dbstr};
        req_send(r, 2, argv);
    }
    {
        const char *argv[] = {"PING"};
        req_send(r, 1, argv);
    }
    if (c->sentinel) {
        /* a sentinel's answer may be a moment old: a replica must not take our writes */
        const char *argv[] = {"ROLE"};
        req_send(r, 1, argv);
    }
    if (!req_commit(r, s->dial_start + c->dial_ms))
        return;
    /* forgets that a lost connection swallowed go first, before any newer get */
    retry_flush(s);
}

static void slot_ready(struct slot *s)
{
    struct rcache *c = s->c;
    s->state = SLOT_READY;
    s->backoff_ms = 0;
    log_up(c);
    retry_flush(s);
    if (c->idle_ms > 0 && !evtimer_pending(c->idle_ev, NULL)) {
        int64_t period = c->idle_ms / 4;
        timer_in(c->idle_ev, period < 50 ? 50 : period > 5000 ? 5000 : period);
    }
}

static void slot_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct slot *s = arg;
    switch (s->state) {
    case SLOT_RESOLVING:
        slot_fail(s, "resolving the address timed out");
        break;
    case SLOT_CONNECTING:
    case SLOT_READY:
        if (s->head && s->head->deadline <= now_ms())
            slot_fail(s, s->state == SLOT_CONNECTING ? "connect timed out" : "reply timed out");
        else
            slot_arm(s);
        break;
    case SLOT_BACKOFF:
        s->state = SLOT_IDLE;
        if (s->nretry)
            slot_connect(s);
        break;
    case SLOT_IDLE:
        break;
    }
}

static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
    struct rcache *c = arg;
    int64_t now = now_ms(), period = c->idle_ms / 4;
    int open = 0;

    for (int i = 0; i < c->nslots; i++)
        open += c->slots[i].ac != NULL;
    for (int i = 0; i < c->nslots && open > c->maxidle; i++) {
        struct slot *s = &c->slots[i];
        if (s->state == SLOT_READY && !s->inflight && !s->nretry &&
            now - s->idle_since >= c->idle_ms) {
            slot_close(s);
            open--;
        }
    }
    if (open > 0)
        timer_in(c->idle_ev, period < 50 ? 50 : period > 5000 ? 5000 : period);
}

/* The slot for digest d, able to take commands now (dialled when idle), or NULL. */
static struct slot *slot_for(struct rcache *c, const struct digest *d, struct slot **home)
{
    unsigned v = 0;
    struct slot *s;
    for (int i = 0; i < 8; i++) {
        char ch = d->hex[i];
        v = v * 16 + (unsigned)(ch <= '9' ? ch - '0' : ch - 'a' + 10);
    }
    s = &c->slots[v % (unsigned)c->nslots];
    if (home)
        *home = s;
    if (s->state == SLOT_IDLE)
        slot_connect(s);
    if (s->state != SLOT_CONNECTING && s->state != SLOT_READY)
        return NULL;
    if (s->inflight >= c->max_pending)
        return NULL;
    return s;
}

/* ---- replies ---- */

static bool parse_u64(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 20)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        if (v > (UINT64_MAX - (uint64_t)(s[i] - '0')) / 10)
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return true;
}

static bool copy_mt(char *dst, const redisReply *e)
{
    if (e->type == REDIS_REPLY_NIL) {
        dst[0] = '\0';
        return true;
    }
    if (e->type != REDIS_REPLY_STRING || e->len >= CACHE_MEDIA_TYPE_MAX ||
        memchr(e->str, '\0', (size_t)e->len))
        return false;
    memcpy(dst, e->str, (size_t)e->len);
    dst[e->len] = '\0';
    return true;
}

static void parse_hmget(struct req *r, const redisReply *rep)
{
    const redisReply *dg, *sz;
    struct digest want;
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3) {
        r->bad = true;
        return;
    }
    dg = rep->element[0];
    sz = rep->element[1];
    if (dg->type == REDIS_REPLY_NIL || sz->type == REDIS_REPLY_NIL) {
        r->global = 0; /* absent, or left by an old "length" field: a miss, as registry:2 */
        return;
    }
    want = r->desc.digest;
    if (dg->type != REDIS_REPLY_STRING || sz->type != REDIS_REPLY_STRING ||
        digest_parse(dg->str, (size_t)dg->len, &r->desc.digest) != 0 ||
        !parse_u64(sz->str, (size_t)sz->len, &r->desc.size) ||
        !copy_mt(r->desc.media_type, rep->element[2])) {
        r->bad = true;
        return;
    }
    /* the canonical digest may use another algorithm, never another hash of the same one */
    if (r->desc.digest.algo == want.algo && !digest_equal(&r->desc.digest, &want)) {
        r->bad = true;
        return;
    }
    r->global = 1;
}

static void parse_get(struct req *r, int idx, const redisReply *rep)
{
    if (!r->has_repo) {
        parse_hmget(r, rep);
        return;
    }
    switch (idx) {
    case 0:
        if (rep->type == REDIS_REPLY_INTEGER)
            r->member = rep->integer == 1;
        else
            r->bad = true;
        break;
    case 1:
        parse_hmget(r, rep);
        break;
    default:
        if (!copy_mt(r->repo_mt, rep))
            r->repo_mt[0] = '\0'; /* an unusable override: keep the global media type */
        break;
    }
}

static void req_finish(struct req *r)
{
    struct slot *s = r->slot;
    struct rop *op = r->op;
    int found = -1;
    char buf[DIGEST_STR_MAX];

    fifo_remove(s, r);
    switch (r->kind) {
    case REQ_HANDSHAKE:
        if (r->lost)
            break;
        if (r->failed || r->send_failed) {
            char why[200];
            snprintf(why, sizeof(why), "handshake: %s", r->errmsg);
            slot_fail(s, why);
        } else if (s->state == SLOT_CONNECTING) {
            slot_ready(s);
        }
        break;
    case REQ_GET:
        if (r->lost || r->failed || r->send_failed)
            found = -1;
        else if (r->bad) {
            log_debug("redis cache: unusable entry for %s: treated as a miss",
                      digest_str(&r->desc.digest, buf));
            found = 0;
        } else if ((r->has_repo && !r->member) || r->global != 1)
            found = 0;
        else {
            found = 1;
            if (r->repo_mt[0])
                memcpy(r->desc.media_type, r->repo_mt, sizeof(r->desc.media_type));
        }
        break;
    case REQ_PUT:
        if (r->failed && !r->lost)
            log_debug("redis cache: put failed: %s", r->errmsg);
        break;
    case REQ_FORGET:
        if (!r->failed && (r->lost || r->send_failed)) {
            retry_push(s, r->fi); /* DEL and SREM are idempotent: send it again */
            r->fi = NULL;
        } else if (r->failed) {
            log_warn("redis cache: forget of %s failed: %s", digest_str(&r->fi->d, buf), r->errmsg);
        }
        break;
    }
    if (s->state == SLOT_READY && s->nretry && !r->lost)
        retry_flush(s);
    forget_item_free(r->fi);
    if (op) {
        struct cache_desc desc = r->desc;
        free(r);
        answer(op, found, found == 1 ? &desc : NULL);
        return;
    }
    free(r);
}

static void reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct req *r = privdata;
    const redisReply *rep = reply;
    int idx = r->nreplies++;

    if (!rep) {
        r->lost = true;
    } else if (rep->type == REDIS_REPLY_ERROR && r->slot->c->sentinel &&
               redis_sentinel_stale_error(rep->str, rep->len)) {
        /* a failover demoted this server: as if the connection dropped (a forget is sent
         * again), and the sentinels are asked anew */
        char why[160];
        snprintf(why, sizeof(why), "%.*s", (int)rep->len, rep->str);
        r->lost = true;
        slot_fail(r->slot, why);
    } else if (rep->type == REDIS_REPLY_ERROR) {
        r->failed = true;
        if (!r->errmsg[0])
            snprintf(r->errmsg, sizeof(r->errmsg), "%.*s", (int)rep->len, rep->str);
    } else if (r->kind == REQ_HANDSHAKE && rep->type == REDIS_REPLY_ARRAY &&
               !redis_sentinel_role_is_master(rep)) {
        r->failed = true;
        snprintf(r->errmsg, sizeof(r->errmsg), "not the master");
    } else if (r->kind == REQ_GET) {
        parse_get(r, idx, rep);
    }
    if (r->nreplies >= r->ncmds)
        req_finish(r);
}

/* ---- the interface ---- */

static void key_blob(const struct rcache *c, char *buf, const char *dstr)
{
    snprintf(buf, KEY_MAX, "%sblobs::%s", c->prefix, dstr);
}

static void key_repo_set(const struct rcache *c, char *buf, const char *repo)
{
    snprintf(buf, KEY_MAX, "%srepository::%s::blobs", c->prefix, repo);
}

static void key_repo_blob(const struct rcache *c, char *buf, const char *repo, const char *dstr)
{
    snprintf(buf, KEY_MAX, "%srepository::%s::blobs::%s", c->prefix, repo, dstr);
}

static struct cache_op *r_get(struct cache *cache, const char *repo, const struct digest *d,
                              cache_get_cb cb, void *ctx)
{
    struct rcache *c = (struct rcache *)cache;
    struct rop *op;
    struct req *r;
    struct slot *s;
    char dstr[DIGEST_STR_MAX], kblob[KEY_MAX], kset[KEY_MAX], krepo[KEY_MAX];

    if (c->freeing || !digest_ok(d) || !repo_ok(repo)) {
        cb(ctx, c->freeing ? -1 : 0, NULL);
        return NULL;
    }
    op = calloc(1, sizeof(*op));
    if (!op) {
        cb(ctx, -1, NULL);
        return NULL;
    }
    op->base._cache = cache;
    op->cb = cb;
    op->ctx = ctx;
    s = slot_for(c, d, NULL);
    r = s ? req_new(s, REQ_GET) : NULL;
    if (!r) {
        done_push(c, op);
        return &op->base;
    }
    r->op = op;
    op->req = r;
    r->has_repo = repo != NULL;
    r->desc.digest = *d;
    digest_str(d, dstr);
    key_blob(c, kblob, dstr);
    if (repo) {
        key_repo_set(c, kset, repo);
        key_repo_blob(c, krepo, repo, dstr);
        const char *a0[] = {"SISMEMBER", kset, dstr};
        req_send(r, 3, a0);
    }
    const char *a1[] = {"HMGET", kblob, "digest", "size", "mediatype"};
    req_send(r, 5, a1);
    if (repo) {
        const char *a2[] = {"HGET", krepo, "mediatype"};
        req_send(r, 3, a2);
    }
    if (r->send_failed) {
        /* answered -1 from the loop; what was queued still drains through r */
        r->op = NULL;
        done_push(c, op);
    }
    req_commit(r, now_ms() + c->op_ms);
    return &op->base;
}

static void r_put(struct cache *cache, const char *repo, const struct cache_desc *desc)
{
    struct rcache *c = (struct rcache *)cache;
    struct slot *s;
    struct req *r;
    char dstr[DIGEST_STR_MAX], size[24], kblob[KEY_MAX], kset[KEY_MAX], krepo[KEY_MAX];

    if (c->freeing || !digest_ok(&desc->digest) || !repo_ok(repo) ||
        !memchr(desc->media_type, '\0', sizeof(desc->media_type)))
        return;
    s = slot_for(c, &desc->digest, NULL);
    r = s ? req_new(s, REQ_PUT) : NULL;
    if (!r)
        return; /* Redis unavailable: the entry is simply not cached */
    digest_str(&desc->digest, dstr);
    snprintf(size, sizeof(size), "%" PRIu64, desc->size);
    key_blob(c, kblob, dstr);
    if (repo) {
        key_repo_set(c, kset, repo);
        const char *a[] = {"SADD", kset, dstr};
        req_send(r, 3, a);
        if (c->ttl_s > 0) {
            const char *e[] = {"EXPIRE", kset, c->ttlstr};
            req_send(r, 3, e);
        }
    }
    {
        const char *a[] = {"HMSET", kblob, "digest", dstr, "size", size};
        const char *b[] = {"HSETNX", kblob, "mediatype", desc->media_type};
        req_send(r, 6, a);
        req_send(r, 4, b);
        if (c->ttl_s > 0) {
            const char *e[] = {"EXPIRE", kblob, c->ttlstr};
            req_send(r, 3, e);
        }
    }
    if (repo) {
        key_repo_blob(c, krepo, repo, dstr);
        const char *a[] = {"HSET", krepo, "mediatype", desc->media_type};
        req_send(r, 4, a);
        if (c->ttl_s > 0) {
            const char *e[] = {"EXPIRE", krepo, c->ttlstr};
            req_send(r, 3, e);
        }
    }
    req_commit(r, now_ms() + c->op_ms);
}

static void forget_send(struct slot *s, struct forget_item *fi)
{
    struct rcache *c = s->c;
    struct req *r = req_new(s, REQ_FORGET);
    char dstr[DIGEST_STR_MAX], k1[KEY_MAX], k2[KEY_MAX];

    if (!r) {
        retry_push(s, fi);
        return;
    }
    r->fi = fi;
    digest_str(&fi->d, dstr);
    if (fi->repo) {
        key_repo_set(c, k1, fi->repo);
        key_repo_blob(c, k2, fi->repo, dstr);
        const char *a[] = {"SREM", k1, dstr};
        const char *b[] = {"DEL", k2};
        req_send(r, 3, a);
        req_send(r, 2, b);
    } else {
        key_blob(c, k1, dstr);
        const char *a[] = {"DEL", k1};
        req_send(r, 2, a);
    }
    if (r->ncmds == 0) {
        r->fi = NULL;
        req_commit(r, 0); /* frees r and fails the slot */
        retry_push(s, fi);
        return;
    }
    req_commit(r, now_ms() + c->op_ms);
}

static void r_forget(struct cache *cache, const char *repo, const struct digest *d)
{
    struct rcache *c = (struct rcache *)cache;
    struct forget_item *fi;
    struct slot *s, *home;

    if (c->freeing || !digest_ok(d) || !repo_ok(repo))
        return;
    fi = calloc(1, sizeof(*fi));
    if (fi && repo) {
        fi->repo = strdup(repo);
        if (!fi->repo) {
            free(fi);
            fi = NULL;
        }
    }
    if (!fi) {
        log_error("redis cache: out of memory; a forget was dropped");
        return;
    }
    fi->d = *d;
    s = slot_for(c, d, &home);
    if (s && !s->nretry) {
        forget_send(s, fi);
        return;
    }
    /* sent first on the next connection (or when the slot has room again) */
    retry_push(home, fi);
}

static size_t r_pending(struct cache *cache)
{
    const struct rcache *c = (const struct rcache *)cache;
    size_t n = 0;
    for (int i = 0; i < c->nslots; i++)
        n += c->slots[i].inflight + c->slots[i].nretry;
    return n;
}

static void r_free(struct cache *cache)
{
    struct rcache *c = (struct rcache *)cache;

    c->freeing = true;
    for (int i = 0; i < c->nslots; i++) {
        struct slot *s = &c->slots[i];
        slot_cancel_resolve(s);
        s->state = SLOT_IDLE;
        slot_drop_context(s); /* answers every get in flight with -1 */
    }
    while (c->done_head)
        answer(done_pop(c), -1, NULL);
    for (int i = 0; i < c->nslots; i++) {
        struct slot *s = &c->slots[i];
        while (s->retry_head) {
            struct forget_item *fi = s->retry_head;
            s->retry_head = fi->next;
            forget_item_free(fi);
        }
        if (s->timer)
            event_free(s->timer);
    }
    if (c->done_ev)
        event_free(c->done_ev);
    if (c->idle_ev)
        event_free(c->idle_ev);
    if (c->dnsh) {
        c->dnsh->orphaned = true;
        if (c->dnsh->pending == 0) {
            evdns_base_free(c->dnsh->dns, 0);
            free(c->dnsh);
        }
    }
    redis_sentinel_free(c->sentinel);
    free(c->host);
    free(c->username);
    free(c->password);
    free(c->prefix);
    free(c);
}

static const struct cache_ops redis_ops = {
    .name = "redis",
    .get = r_get,
    .put = r_put,
    .forget = r_forget,
    .cancel = rop_cancel,
    .pending = r_pending,
    .free = r_free,
};

/* Splits "host:port" or "[v6]:port"; false when malformed. */
static bool split_addr(const char *addr, char **host, int *port)
{
    const char *colon, *h = addr;
    size_t hlen;
    char *end;
    long p;

    if (!addr || !addr[0])
        return false;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (!close || close[1] != ':')
            return false;
        h = addr + 1;
        hlen = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (!colon)
            return false;
        hlen = (size_t)(colon - addr);
    }
    if (hlen == 0 || hlen > 253)
        return false;
    p = strtol(colon + 1, &end, 10);
    if (*end || end == colon + 1 || p < 1 || p > 65535)
        return false;
    *host = strndup(h, hlen);
    *port = (int)p;
    return *host != NULL;
}

static bool is_numeric(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

static char *dup_nonempty(const char *s, bool *oom)
{
    char *d;
    if (!s || !s[0])
        return NULL;
    d = strdup(s);
    if (!d)
        *oom = true;
    return d;
}

struct cache *cache_redis_new(struct event_base *base, const struct cache_redis_config *cfg)
{
    struct rcache *c = calloc(1, sizeof(*c));
    bool oom = false;
    bool sentinel = cfg->sentinel.mastername && cfg->sentinel.mastername[0];

    if (!c)
        return NULL;
    c->base.ops = &redis_ops;
    c->evb = base;
    if (!sentinel && !split_addr(cfg->addr, &c->host, &c->port)) {
        log_error("redis cache: redis.addr: expected \"host:port\", got \"%s\"",
                  cfg->addr ? cfg->addr : "");
        free(c);
        return NULL;
    }
    if (cfg->key_prefix && strlen(cfg->key_prefix) > PREFIX_MAX) {
        log_error("redis cache: key prefix longer than %d bytes", PREFIX_MAX);
        free(c->host);
        free(c);
        return NULL;
    }
    c->username = dup_nonempty(cfg->username, &oom);
    c->password = dup_nonempty(cfg->password, &oom);
    c->prefix = strdup(cfg->key_prefix ? cfg->key_prefix : "");
    c->db = cfg->db;
    snprintf(c->dbstr, sizeof(c->dbstr), "%d", cfg->db);
    c->dial_ms = cfg->dialtimeout_ms > 0 ? cfg->dialtimeout_ms : DEFAULT_DIAL_MS;
    c->op_ms = (cfg->readtimeout_ms > 0 ? cfg->readtimeout_ms : DEFAULT_RW_MS) +
               (cfg->writetimeout_ms > 0 ? cfg->writetimeout_ms : DEFAULT_RW_MS);
    c->idle_ms = cfg->idletimeout_ms > 0 ? cfg->idletimeout_ms : 0;
    c->maxidle = cfg->maxidle > 0 ? cfg->maxidle : 0;
    c->nslots = cfg->maxactive > 0 ? cfg->maxactive : DEFAULT_SLOTS;
    if (c->nslots > MAX_SLOTS)
        c->nslots = MAX_SLOTS;
    c->ttl_s = cfg->ttl_s > 0 ? cfg->ttl_s : 0;
    snprintf(c->ttlstr, sizeof(c->ttlstr), "%" PRId64, c->ttl_s);
    c->max_pending = cfg->max_pending ? cfg->max_pending : DEFAULT_MAX_PENDING;
    c->done_ev = event_new(base, -1, 0, done_cb, c);
    c->idle_ev = evtimer_new(base, idle_cb, c);
    if (sentinel) {
        struct redis_sentinel_config sc = cfg->sentinel;
        if (sc.timeout_ms <= 0)
            sc.timeout_ms = c->dial_ms / 2;
        c->sentinel = redis_sentinel_new(base, &sc);
        c->host = strdup(cfg->sentinel.mastername); /* until the sentinels name the master */
        if (!c->sentinel || !c->host)
            goto fail;
    }
    if (oom || !c->prefix || !c->done_ev || !c->idle_ev)
        goto fail;
    for (int i = 0; i < c->nslots; i++) {
        c->slots[i].c = c;
        c->slots[i].timer = evtimer_new(base, slot_timer_cb, &c->slots[i]);
        if (!c->slots[i].timer)
            goto fail;
    }
    if (!c->sentinel && !is_numeric(c->host)) {
        c->dnsh = calloc(1, sizeof(*c->dnsh));
        if (!c->dnsh)
            goto fail;
        c->dnsh->evb = base;
        c->dnsh->dns = evdns_base_new(base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                                EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!c->dnsh->dns) {
            /* no usable resolv.conf: the hosts file still answers */
            c->dnsh->dns = evdns_base_new(base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
            if (c->dnsh->dns)
                evdns_base_load_hosts(c->dnsh->dns, NULL);
        }
        if (!c->dnsh->dns) {
            free(c->dnsh);
            c->dnsh = NULL;
            goto fail;
        }
    }
    return &c->base;
fail:
    log_error("redis cache: out of memory");
    r_free(&c->base);
    return NULL;
}

void cache_redis_config_from(struct cache_redis_config *out, const struct config *cfg)
{
    memset(out, 0, sizeof(*out));
    out->addr = cfg->redis.addr;
    redis_sentinel_config_from(&out->sentinel, cfg);
    out->username = cfg->redis.username;
    out->password = cfg->redis.password;
    out->db = cfg->redis.db;
    out->dialtimeout_ms = cfg->redis.dialtimeout_ms;
    out->readtimeout_ms = cfg->redis.readtimeout_ms;
    out->writetimeout_ms = cfg->redis.writetimeout_ms;
    out->maxidle = cfg->redis.pool.maxidle;
    out->maxactive = cfg->redis.pool.maxactive;
    out->idletimeout_ms = cfg->redis.pool.idletimeout_ms;
    out->key_prefix = "";
    out->ttl_s = CACHE_REDIS_DEFAULT_TTL_S;
}
